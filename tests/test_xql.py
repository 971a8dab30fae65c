"""XQLLoss equals the hand-written losses of ../shared/specs/baselines.md §4.

§7 tests 6 (the minimizer of L_V is β log mean exp(q/β), the rescaled loss has the same minimizer
and the per-sample gradient −e^{−m}(e^z − 1)/β, Huber with δ = 20 is ½x² up to 20 and linear
beyond) and 8 (gradient isolation), plus finiteness at extreme values and target updates.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import SoftUpdate

import torchrl_sym.objectives.xql as xql_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import XQLLoss

B, OBS, ACT = 8, 3, 2
HIDDEN = [16, 16]
# TorchRL stores γ as a float32 buffer: 0.75 is exact in float32, so float64 checks stay tight
GAMMA = 0.75
LOG_STD_BOUNDS = (-5.0, 2.0)
LN_EPS = 1e-5  # nn.LayerNorm's default

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _make_loss(dtype=torch.float64, seed=0, **kwargs) -> XQLLoss:
    """An XQLLoss (LayerNorm value network, as the recipe) with fixed, non-trivial parameters."""
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).to(dtype)
    qvalue = make_qvalue(OBS, ACT, HIDDEN).to(dtype)
    value = make_value(OBS, HIDDEN, layer_norm=True).to(dtype)
    # torch.vmap costs ~3× a loop on these tiny critics; the tests of the numbers and of the
    # gradients use it (the default), the others loop
    kwargs = {"deactivate_vmap": True, **kwargs}
    loss = XQLLoss(actor, qvalue, value, num_qvalue_nets=2, **kwargs)
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
        target["module", "4", "bias"].copy_(torch.tensor([[5.3], [5.6]], dtype=dtype))
        online["module", "4", "weight"].mul_(10.0)
        for p in loss.value_network_params.values(True, True):  # LayerNorm's affine included
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=dtype))
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


def _ln_mlp(layers, x: torch.Tensor) -> torch.Tensor:
    """(Linear → LayerNorm → ReLU) × k → Linear, written out; ``layers`` alternates Linear, LN."""
    for (w, b), (gain, shift) in zip(layers[:-1:2], layers[1:-1:2], strict=True):
        x = x @ w.T + b
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
        x = torch.relu((x - mean) / torch.sqrt(var + LN_EPS) * gain + shift)
    w, b = layers[-1]
    return x @ w.T + b


def _hand_networks(loss: XQLLoss):
    """Q_i, min Q̄, V and π's (loc, scale), reading the loss's parameters only."""
    q_on = loss.qvalue_network_params.detach()["module"]
    q_tg = loss.target_qvalue_network_params.detach()["module"]
    v_p = loss.value_network_params.detach()["module"]
    a_p = loss.actor_network_params.detach()["module", "0", "module"]

    def q(params, i, s, a):
        return _mlp(_layers(params[i]), torch.cat([s, a], -1)).squeeze(-1)

    def v(s):
        return _ln_mlp(_layers(v_p), s).squeeze(-1)

    def pi(s):
        loc = torch.tanh(_mlp(_layers(a_p["mean"]), s))
        return loc, a_p["log_std"].clamp(*LOG_STD_BOUNDS).exp().expand_as(loc)

    def min_q_bar(s, a):
        return torch.minimum(q(q_tg, 0, s, a), q(q_tg, 1, s, a))

    return (lambda i, s, a: q(q_on, i, s, a)), min_q_bar, v, pi


def _huber(x: torch.Tensor, delta: float) -> torch.Tensor:
    return torch.where(x.abs() <= delta, 0.5 * x**2, delta * (x.abs() - 0.5 * delta))


# ------------------------------------------------------------------------------------------------
# The losses against the spec, on a fixed batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rescale", "q_loss"), [(True, "huber"), (False, "l2")])
def test_xql_losses_equal_hand_written_spec_losses(rescale, q_loss):
    beta, clip, delta, temp, w_max = 2.0, 1.0, 1.0, 3.0, 100.0  # clip and δ small: both branches
    loss = _make_loss(
        beta_loss=beta,
        max_clip=clip,
        rescale=rescale,
        q_loss=q_loss,
        huber_delta=delta,
        actor_temperature=temp,
        actor_weight_max=w_max,
        deactivate_vmap=False,
    )
    data = _make_batch()
    with torch.no_grad():
        out = loss(data)
    q, min_q_bar, v, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    r = data["next", "reward"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)

    u = min_q_bar(s, a) - v(s)
    z = torch.minimum(u / beta, torch.tensor(clip, dtype=u.dtype))
    gumbel = (torch.exp(z) - z - 1).mean()
    m = torch.clamp(z.max(), min=-1.0)
    rescaled = (torch.exp(z - m) - z * torch.exp(-m) - torch.exp(-m)).mean()
    torch.testing.assert_close(rescaled, torch.exp(-m) * gumbel)  # the rescaling is a factor
    l_v = rescaled if rescale else gumbel

    y = r + GAMMA * (1 - term) * v(s2)
    residuals = [q(0, s, a) - y, q(1, s, a) - y]
    if q_loss == "huber":
        l_q = sum(_huber(x, delta).mean() for x in residuals)
        assert any((x.abs() > delta).any() and (x.abs() < delta).any() for x in residuals)
    else:
        l_q = sum((x**2).mean() for x in residuals)

    loc, scale = pi(s)
    log_pi = torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)
    weight = torch.exp(temp * u).clamp(max=w_max)
    l_pi = -(weight * log_pi).mean()

    # every branch is exercised
    assert (u / beta > clip).any() and (u / beta < clip).any() and (u < 0).any()
    assert (weight == w_max).any() and (weight < 1).any()
    torch.testing.assert_close(out["loss_value"], l_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], l_pi, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["entropy"], -log_pi.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_mean"], weight.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["clip_fraction"], (u / beta > clip).double().mean())
    scale_expected = torch.exp(-m) if rescale else torch.tensor(1.0, dtype=m.dtype)
    torch.testing.assert_close(out["value_scale"], scale_expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(out["value"], v(s).mean(), rtol=0, atol=1e-6)
    td_error = torch.maximum(residuals[0] ** 2, residuals[1] ** 2)
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
# §7 test 6
# ------------------------------------------------------------------------------------------------


class _Scalar(nn.Module):
    """V(s) = v for every state: one learnable scalar."""

    def __init__(self):
        super().__init__()
        self.v = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, observation):
        return self.v.expand(*observation.shape[:-1], 1)


class _PerRow(nn.Module):
    """V(s_j) = v_j: one learnable value per row of a batch of fixed size."""

    def __init__(self, n: int):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, observation):
        return self.v[:, None]


class _ReadQ(nn.Module):
    """Q(s, a) = w·s + b with s the stored sample q; w = 1, b = 0 are set below."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, dtype=torch.float64)

    def forward(self, observation, action):
        return self.lin(observation)


def _sample_loss(value_module: nn.Module, **kwargs) -> XQLLoss:
    qvalue = TensorDictModule(
        _ReadQ(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    value = TensorDictModule(value_module, in_keys=["observation"], out_keys=["state_value"])
    actor = make_gaussian_actor(1, 1, [4]).double()
    loss = XQLLoss(actor, qvalue, value, num_qvalue_nets=2, deactivate_vmap=True, **kwargs)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "lin", "weight"].fill_(1.0)
            params["module", "lin", "bias"].fill_(0.0)
    return loss


def _samples_batch(q: torch.Tensor, reward: torch.Tensor | None = None) -> TensorDict:
    n = len(q)
    return TensorDict(
        {
            "observation": q[:, None],
            "action": torch.zeros(n, 1, dtype=q.dtype),
            "next": {
                "observation": q[:, None],
                "reward": torch.zeros(n, 1, dtype=q.dtype) if reward is None else reward[:, None],
                "terminated": torch.ones(n, 1, dtype=torch.bool),  # y = r
                "done": torch.ones(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def _minimize_value_loss(loss: XQLLoss, q: torch.Tensor, lo: float, hi: float) -> float:
    """argmin_v of XQLLoss.value_loss by bisection on its autograd derivative (L_V is convex)."""
    data = _samples_batch(q)
    (v_param,) = loss.value_network_params.values(True, True)

    def slope(v: float) -> float:
        with torch.no_grad():
            v_param.fill_(v)
        v_param.grad = None
        value_loss, meta = loss.value_loss(data)
        value_loss.backward()
        assert meta["clip_fraction"] == 0  # the bracket keeps z below max_clip
        return float(v_param.grad)

    assert slope(lo) < 0 < slope(hi)
    for _ in range(48):  # (hi − lo) · 2⁻⁴⁸ < 1e-12
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_value_minimizer_is_the_soft_maximum_with_or_without_rescaling(beta):
    q = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = 1.5 * q + 0.4
    soft_max = beta * float(torch.logsumexp(q / beta, 0) - math.log(len(q)))
    # z = (q − v)/β < max_clip = 7 on the whole bracket: the unclipped problem
    lo, hi = float(q.max()) - 6 * beta, float(q.max()) + 1.0
    for rescale in (False, True):
        loss = _sample_loss(_Scalar(), beta_loss=beta, max_clip=7.0, rescale=rescale)
        v_star = _minimize_value_loss(loss, q, lo, hi)
        assert v_star == pytest.approx(soft_max, abs=1e-6), rescale
    assert soft_max > float(q.mean()) + 0.5  # a soft maximum, not the mean


@pytest.mark.parametrize("case", ["m_is_max_z", "m_is_minus_one", "some_z_clipped"])
def test_rescaled_per_sample_gradient(case):
    beta, clip = 2.0, 7.0
    g = torch.Generator().manual_seed(5)
    q = torch.randn(B, generator=g, dtype=torch.float64)
    z_target = {
        "m_is_max_z": torch.rand(B, generator=g, dtype=torch.float64) * 3.5 - 1.5,
        "m_is_minus_one": -1.2 - torch.rand(B, generator=g, dtype=torch.float64),
        "some_z_clipped": torch.linspace(-2.0, 9.0, B, dtype=torch.float64),
    }[case]
    loss = _sample_loss(_PerRow(B), beta_loss=beta, max_clip=clip, rescale=True, reduction="sum")
    (v_param,) = loss.value_network_params.values(True, True)
    with torch.no_grad():
        v_param.copy_(q - beta * z_target)
    value_loss, _ = loss.value_loss(_samples_batch(q))
    value_loss.backward()

    z = (q - v_param.detach()) / beta
    m = torch.clamp(z.clamp(max=clip).max(), min=-1.0)
    expected = -torch.exp(-m) * (torch.exp(z) - 1) / beta
    expected = torch.where(z > clip, 0.0, expected)  # the clip stops the gradient
    torch.testing.assert_close(v_param.grad, expected, rtol=0, atol=1e-12)
    if case == "m_is_minus_one":
        assert m == -1.0 and z.max() < -1.0
    if case == "some_z_clipped":
        assert (z > clip).any() and (v_param.grad == 0).any()


def test_huber_with_delta_20_is_half_square_then_linear():
    x = torch.linspace(-40.0, 40.0, 161, dtype=torch.float64)  # steps of 0.5, ±20 included
    data = _samples_batch(x, reward=torch.zeros_like(x))  # Q = x, y = r = 0: residual x
    per_sample = {}
    for q_loss in ("huber", "l2"):
        loss = _sample_loss(_Scalar(), q_loss=q_loss, huber_delta=20.0, reduction="none")
        with torch.no_grad():
            per_sample[q_loss], _ = loss.qvalue_loss(data)
    huber = per_sample["huber"] / 2  # two identical critics
    inside = x.abs() <= 20
    torch.testing.assert_close(huber[inside], 0.5 * x[inside] ** 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(huber[~inside], 20 * (x[~inside].abs() - 10), rtol=0, atol=1e-12)
    # linear beyond δ (zero second differences), continuous at ±20, and l2 is x² (no ½)
    outer = huber[x > 20]
    torch.testing.assert_close(
        outer[2:] - 2 * outer[1:-1] + outer[:-2], torch.zeros(len(outer) - 2, dtype=x.dtype)
    )
    assert float(huber[x == 20]) == 200.0 and float(huber[x == 20.5]) == 200.0 + 20 * 0.5
    torch.testing.assert_close(per_sample["l2"] / 2, x**2, rtol=0, atol=1e-12)


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
        loss.value_network_params["module", "6", "bias"].add_(1.0)
        loss_q2, _ = loss.qvalue_loss(_make_batch(dtype=torch.float32))
    assert abs(float(loss_q2) - float(loss_q.detach())) > 1e-3


# ------------------------------------------------------------------------------------------------
# Finiteness at extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [-1e6, 1e6])
@pytest.mark.parametrize(("q_offset", "v_offset"), [(1e6, -1e6), (-1e6, 1e6), (1e6, 1e6)])
@pytest.mark.parametrize(("rescale", "q_loss"), [(True, "huber"), (False, "l2")])
def test_losses_and_gradients_are_finite_for_extreme_values(
    rescale, q_loss, q_offset, v_offset, reward
):
    loss = _make_loss(dtype=torch.float32, rescale=rescale, q_loss=q_loss)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "4", "bias"].fill_(q_offset)
        loss.value_network_params["module", "6", "bias"].fill_(v_offset)
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
    with pytest.raises(ValueError, match="q_loss"):
        XQLLoss(*args, q_loss="smooth_l1")
    with pytest.raises(ValueError, match="beta_loss"):
        XQLLoss(*args, beta_loss=0.0)


def test_docstring_example_runs():
    result = doctest.testmod(xql_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
