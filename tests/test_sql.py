"""SQLLoss equals the hand-written losses of ../shared/specs/baselines.md §3.

§7 tests 5 (the paper-form minimizer of L_V equals the code-form one at α_c = 4α, and solves
mean (1 + (q − v)/(2α))₊ = 1) and 8 (gradient isolation), plus finiteness at extreme values and
target updates.
"""

from __future__ import annotations

import doctest

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import SoftUpdate

import torchrl_sym.objectives.sql as sql_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import SQLLoss

B, OBS, ACT = 8, 3, 2
HIDDEN = [16, 16]
# TorchRL stores γ as a float32 buffer: 0.75 is exact in float32, so float64 checks stay tight
GAMMA = 0.75
LOG_STD_BOUNDS = (-5.0, 2.0)

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _make_loss(dtype=torch.float64, seed=0, **kwargs) -> SQLLoss:
    """An SQLLoss with fixed, deliberately non-trivial parameters."""
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).to(dtype)
    qvalue = make_qvalue(OBS, ACT, HIDDEN).to(dtype)
    value = make_value(OBS, HIDDEN).to(dtype)
    # torch.vmap costs ~3× a loop on these tiny critics; the tests of the numbers and of the
    # gradients use it (the default), the others loop
    kwargs = {"deactivate_vmap": True, **kwargs}
    loss = SQLLoss(actor, qvalue, value, num_qvalue_nets=2, **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        loss.actor_network_params["module", "0", "module", "log_std"].copy_(
            torch.tensor([-0.7, 2.6], dtype=dtype)
        )
        online = loss.qvalue_network_params
        target = loss.target_qvalue_network_params
        for key, p in online.items(True, True):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
            target[key].copy_(p + 0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
        # spread the target critic so u = min Q̄ − V has both signs and |u| of several units
        target["module", "4", "weight"].mul_(40.0)
        target["module", "4", "bias"].copy_(torch.tensor([[3.3], [3.6]], dtype=dtype))
        online["module", "4", "weight"].mul_(10.0)
        loss.value_network_params["module", "4", "weight"].mul_(10.0)
    return loss


def _make_batch(dtype=torch.float64, seed=0) -> TensorDict:
    g = torch.Generator().manual_seed(seed + 2)
    terminated = torch.zeros(B, 1, dtype=torch.bool)
    truncated = torch.zeros(B, 1, dtype=torch.bool)
    terminated[[0, 3]] = True
    truncated[1] = True  # truncated, not terminated: still bootstraps
    return TensorDict(
        {
            "observation": torch.randn(B, OBS, generator=g, dtype=dtype),
            "action": (torch.rand(B, ACT, generator=g, dtype=dtype) * 2 - 1) * (1 - 1e-5),
            "next": {
                "observation": torch.randn(B, OBS, generator=g, dtype=dtype),
                "reward": torch.randn(B, 1, generator=g, dtype=dtype),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[B],
    )


def _layers(params: TensorDict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    keys = sorted(params.keys(), key=int)
    return [(params[k, "weight"], params[k, "bias"]) for k in keys]


def _mlp(layers, x: torch.Tensor) -> torch.Tensor:
    """Linear → ReLU → … → Linear, written out."""
    for w, b in layers[:-1]:
        x = torch.relu(x @ w.T + b)
    w, b = layers[-1]
    return x @ w.T + b


def _hand_networks(loss: SQLLoss):
    """Q_i, min Q̄, V and π's (loc, scale), reading the loss's parameters only."""
    q_on = loss.qvalue_network_params.detach()["module"]
    q_tg = loss.target_qvalue_network_params.detach()["module"]
    v_p = loss.value_network_params.detach()["module"]
    a_p = loss.actor_network_params.detach()["module", "0", "module"]

    def q(params, i, s, a):
        return _mlp(_layers(params[i]), torch.cat([s, a], -1)).squeeze(-1)

    def v(s):
        return _mlp(_layers(v_p), s).squeeze(-1)

    def pi(s):
        loc = torch.tanh(_mlp(_layers(a_p["mean"]), s))
        return loc, a_p["log_std"].clamp(*LOG_STD_BOUNDS).exp().expand_as(loc)

    def min_q_bar(s, a):
        return torch.minimum(q(q_tg, 0, s, a), q(q_tg, 1, s, a))

    return (lambda i, s, a: q(q_on, i, s, a)), min_q_bar, v, pi


# ------------------------------------------------------------------------------------------------
# The losses against the spec, on a fixed batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "alpha"), [("code", 2.0), ("paper", 0.5)])
def test_sql_losses_equal_hand_written_spec_losses(form, alpha):
    w_max = 2.0  # small, so that the clip of the actor weight is exercised
    loss = _make_loss(form=form, alpha=alpha, actor_weight_max=w_max, deactivate_vmap=False)
    data = _make_batch()
    with torch.no_grad():
        out = loss(data)
    q, min_q_bar, v, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    r = data["next", "reward"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)

    u = min_q_bar(s, a) - v(s)
    z = u / alpha + 0.5 if form == "code" else 1 + u / (2 * alpha)
    l_v = (torch.where(z > 0, z**2, 0.0) + v(s) / alpha).mean()
    y = r + GAMMA * (1 - term) * v(s2)
    l_q = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()
    loc, scale = pi(s)
    log_pi = torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)
    weight = u.clamp(min=0).clamp(0, w_max)
    l_pi = -(weight * log_pi).mean()

    # every branch is exercised
    assert (z <= 0).any() and (z > 0).any()
    assert (
        (weight == 0).any() and (weight == w_max).any() and ((weight > 0) & (weight < w_max)).any()
    )
    torch.testing.assert_close(out["loss_value"], l_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], l_pi, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["sparsity"], (z <= 0).double().mean(), rtol=0, atol=0)
    torch.testing.assert_close(out["entropy"], -log_pi.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_mean"], weight.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["value"], v(s).mean(), rtol=0, atol=1e-6)
    td_error = torch.maximum((q(0, s, a) - y) ** 2, (q(1, s, a) - y) ** 2)
    torch.testing.assert_close(data["td_error"], td_error, rtol=0, atol=1e-6)
    assert l_v.abs() > 1e-2 and l_q > 1e-2 and l_pi.abs() > 1e-2


def test_the_loss_does_not_modify_the_batch():
    loss = _make_loss()
    data = _make_batch()
    data["action"][0] = torch.tensor([1.5, -2.0], dtype=data["action"].dtype)  # out of range
    before = data.clone()
    loss(data)
    assert set(data.keys(True, True)) - set(before.keys(True, True)) == {"td_error"}
    assert (data.exclude("td_error") == before).all()


# ------------------------------------------------------------------------------------------------
# §7 test 5: the minimizers of the two forms
# ------------------------------------------------------------------------------------------------


class _Scalar(nn.Module):
    """V(s) = v for every state: one learnable scalar."""

    def __init__(self):
        super().__init__()
        self.v = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, observation):
        return self.v.expand(*observation.shape[:-1], 1)


class _ReadQ(nn.Module):
    """Q(s, a) = w·s + b with s the stored sample q; w = 1, b = 0 are set below."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, dtype=torch.float64)

    def forward(self, observation, action):
        return self.lin(observation)


def _scalar_loss(**kwargs) -> SQLLoss:
    qvalue = TensorDictModule(
        _ReadQ(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    value = TensorDictModule(_Scalar(), in_keys=["observation"], out_keys=["state_value"])
    actor = make_gaussian_actor(1, 1, [4]).double()
    loss = SQLLoss(actor, qvalue, value, num_qvalue_nets=2, deactivate_vmap=True, **kwargs)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "lin", "weight"].fill_(1.0)
            params["module", "lin", "bias"].fill_(0.0)
    return loss


def _samples_batch(q: torch.Tensor) -> TensorDict:
    return TensorDict(
        {"observation": q[:, None], "action": torch.zeros(len(q), 1, dtype=q.dtype)},
        batch_size=[len(q)],
    )


def _minimize_value_loss(loss: SQLLoss, q: torch.Tensor) -> float:
    """argmin_v of SQLLoss.value_loss by bisection on its autograd derivative (L_V is convex)."""
    data = _samples_batch(q)
    (v_param,) = loss.value_network_params.values(True, True)

    def slope(v: float) -> float:
        with torch.no_grad():
            v_param.fill_(v)
        v_param.grad = None
        value_loss, _ = loss.value_loss(data)
        value_loss.backward()
        return float(v_param.grad)

    lo, hi = float(q.min()) - 10 * loss.alpha, float(q.max()) + 10 * loss.alpha
    assert slope(lo) < 0 < slope(hi)
    for _ in range(48):  # (hi − lo) · 2⁻⁴⁸ < 1e-12
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


def _paper_root(q: torch.Tensor, alpha: float) -> float:
    """The root of mean_n (1 + (q − v)/(2α))₊ = 1, exactly.

    If the k largest samples (sum S_k) are the ones with z > 0, the condition is linear in v:
    k + (S_k − k v)/(2α) = n, so v = (S_k + 2α (k − n))/k; the right k is the one whose v keeps
    exactly those samples positive.
    """
    qs = torch.sort(q.double(), descending=True).values.tolist()
    n, s_k = len(qs), 0.0
    for k in range(1, n + 1):
        s_k += qs[k - 1]
        v = (s_k + 2 * alpha * (k - n)) / k
        threshold = v - 2 * alpha  # z > 0  ⇔  q > v − 2α
        if qs[k - 1] > threshold and (k == n or qs[k] <= threshold):
            return v
    raise AssertionError("no root found")


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_paper_form_minimizer_equals_code_form_minimizer_at_four_alpha(alpha):
    q = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = 1.5 * q + 0.4  # not centred, not unit scale
    v_paper = _minimize_value_loss(_scalar_loss(alpha=alpha, form="paper"), q)
    v_code = _minimize_value_loss(_scalar_loss(alpha=4 * alpha, form="code"), q)
    assert v_paper == pytest.approx(v_code, abs=1e-6)
    # the minimizer solves mean (1 + (q − v)/(2α))₊ = 1, and is the exact piecewise-linear root
    assert float((1 + (q - v_paper) / (2 * alpha)).clamp(min=0).mean()) == pytest.approx(
        1.0, abs=1e-9
    )
    assert v_paper == pytest.approx(_paper_root(q, alpha), abs=1e-9)
    # the equivalence is specific to α_c = 4α: the code form at α_c = α is the paper form at α/4
    assert abs(_paper_root(q, alpha / 4) - v_paper) > 0.1
    if alpha == 0.5:  # and for small α the minimizer is sparse: rows with z ≤ 0 exist
        assert float((q <= v_paper - 2 * alpha).double().mean()) > 0.05


def test_value_loss_is_the_hand_formula_at_any_v():
    q = torch.randn(200, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    data = _samples_batch(q)
    for form, alpha in (("code", 2.0), ("paper", 0.5)):
        loss = _scalar_loss(alpha=alpha, form=form)
        (v_param,) = loss.value_network_params.values(True, True)
        for v in (-3.0, 0.0, 0.37, 2.0):
            with torch.no_grad():
                v_param.fill_(v)
                got, meta = loss.value_loss(data)
            z = (q - v) / alpha + 0.5 if form == "code" else 1 + (q - v) / (2 * alpha)
            expected = (z.clamp(min=0) ** 2 + v / alpha).mean()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
            assert meta["sparsity"] == (z <= 0).double().mean()


# ------------------------------------------------------------------------------------------------
# §7 test 8: gradient isolation
# ------------------------------------------------------------------------------------------------

_GROUPS = ("actor_network_params", "value_network_params", "qvalue_network_params")


def _grads(params: TensorDict) -> list[torch.Tensor | None]:
    return [p.grad for p in params.values(True, True)]


def _is_zero(grads) -> bool:
    return all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize(
    ("loss_key", "owner"),
    [
        ("loss_actor", "actor_network_params"),
        ("loss_value", "value_network_params"),
        ("loss_qvalue", "qvalue_network_params"),
    ],
)
def test_each_loss_reaches_only_its_own_network(loss_key, owner):
    loss = _make_loss(dtype=torch.float32, deactivate_vmap=False)
    for p in loss.parameters():
        p.grad = None
    out = loss(_make_batch(dtype=torch.float32))
    out[loss_key].backward()
    assert all(g is not None and g.any() for g in _grads(getattr(loss, owner))), owner
    for other in _GROUPS:
        if other != owner:
            assert _is_zero(_grads(getattr(loss, other))), (loss_key, other)
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad and p.grad is None
    param_ids = {id(p) for g in _GROUPS for p in getattr(loss, g).values(True, True)}
    assert all(id(p) in param_ids for p in loss.parameters())
    for key, value in out.items():
        if not key.startswith("loss_"):
            assert not value.requires_grad, key


def test_value_bootstrap_inside_q_loss_carries_no_value_gradient():
    loss = _make_loss(dtype=torch.float32)
    loss_q, _ = loss.qvalue_loss(_make_batch(dtype=torch.float32))
    loss_q.backward()
    assert _is_zero(_grads(loss.value_network_params))
    with torch.no_grad():  # yet y depends on V
        loss.value_network_params["module", "4", "bias"].add_(1.0)
        loss_q2, _ = loss.qvalue_loss(_make_batch(dtype=torch.float32))
    assert abs(float(loss_q2) - float(loss_q.detach())) > 1e-3


# ------------------------------------------------------------------------------------------------
# Finiteness at extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [-1e6, 1e6])
@pytest.mark.parametrize(("q_offset", "v_offset"), [(1e6, -1e6), (-1e6, 1e6), (1e6, 1e6)])
@pytest.mark.parametrize("form", ["code", "paper"])
def test_losses_and_gradients_are_finite_for_extreme_values(form, q_offset, v_offset, reward):
    loss = _make_loss(dtype=torch.float32, form=form)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "4", "bias"].fill_(q_offset)
        loss.value_network_params["module", "4", "bias"].fill_(v_offset)
    data = _make_batch(dtype=torch.float32)
    data["next", "reward"].fill_(reward)
    out = loss(data)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for group in _GROUPS:
        for g in _grads(getattr(loss, group)):
            assert g is not None and torch.isfinite(g).all(), group


# ------------------------------------------------------------------------------------------------
# Targets, keys, reductions, docstring
# ------------------------------------------------------------------------------------------------


def test_soft_update_moves_only_the_critic_targets():
    loss = _make_loss()
    targets = [name for name, _ in loss.named_children() if "target" in name]
    assert targets == ["target_qvalue_network_params"]
    updater = SoftUpdate(loss, tau=0.005)
    before = loss.target_qvalue_network_params.clone()
    value_before = loss.value_network_params.clone()
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    updater.step()
    after = loss.target_qvalue_network_params
    for key, online in loss.qvalue_network_params.items(True, True):
        expected = 0.995 * before[key] + 0.005 * online.detach()
        torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-12)
        assert (after[key] != before[key]).all()
    assert (loss.value_network_params == value_before).all()


def test_keyword_call_returns_the_out_keys_in_order():
    loss = _make_loss()
    data = _make_batch()
    kwargs = {"_".join(k) if isinstance(k, tuple) else k: data.get(k) for k in loss.in_keys}
    assert set(kwargs) == {
        "action",
        "observation",
        "next_observation",
        "next_reward",
        "next_done",
        "next_terminated",
    }
    outs = loss(**kwargs)
    ref = loss(data)
    assert len(outs) == len(loss.out_keys)
    for key, value in zip(loss.out_keys, outs, strict=True):
        torch.testing.assert_close(value, ref[key])


def test_set_keys_renames_the_batch_entries():
    loss, ref_loss = _make_loss(), _make_loss()
    data = _make_batch()
    renamed = data.clone()
    renamed["next", "r"] = renamed["next"].pop("reward")
    renamed["next", "term"] = renamed["next"].pop("terminated")
    loss.set_keys(reward="r", terminated="term")
    assert ("next", "r") in loss.in_keys and ("next", "reward") not in loss.in_keys
    out = loss(renamed)
    ref = ref_loss(data)
    for key in ref.keys():
        torch.testing.assert_close(out[key], ref[key])


def test_sum_reduction_is_batch_size_times_mean():
    data = _make_batch()
    mean = _make_loss()(data.clone())
    total = _make_loss(reduction="sum")(data.clone())
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        torch.testing.assert_close(total[key], B * mean[key])


def test_bad_arguments_are_named():
    args = make_gaussian_actor(OBS, ACT, HIDDEN), make_qvalue(OBS, ACT, HIDDEN), make_value(OBS)
    with pytest.raises(ValueError, match="form"):
        SQLLoss(*args, form="jax")
    with pytest.raises(ValueError, match="alpha"):
        SQLLoss(*args, alpha=-1.0)


def test_docstring_example_runs():
    result = doctest.testmod(sql_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
