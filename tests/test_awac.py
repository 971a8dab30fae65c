"""AWACLoss equals the hand-written losses of ../shared/specs/baselines.md §2.

§7 tests 4 (batch-softmax weights, the BC limits, exp_clip = IQL's actor form with V = Q(s, ã)) and
8 (gradient isolation), plus finiteness at extreme values and target updates. The actions the loss
samples (ã ~ π(·|s), a' ~ π(·|s')) are reproduced exactly by re-seeding torch and drawing from the
hand-built Gaussian in the same order (ã first, then a').
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import IQLLoss, SoftUpdate

import torchrl_sym.objectives.awac as awac_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue
from torchrl_sym.objectives import AWACLoss

B, OBS, ACT = 8, 3, 2
HIDDEN = [16, 16]
# TorchRL stores γ as a float32 buffer: 0.75 is exact in float32, so float64 checks stay tight
GAMMA, LAMBDA, W_MAX = 0.75, 0.5, 100.0
LOG_STD_BOUNDS = (-6.0, 0.0)  # rlkit's AWAC policy
SEED = 1234

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _make_loss(dtype=torch.float64, seed=0, **kwargs) -> AWACLoss:
    """An AWACLoss with fixed, deliberately non-trivial parameters."""
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).to(dtype)
    qvalue = make_qvalue(OBS, ACT, HIDDEN).to(dtype)
    # torch.vmap costs ~3× a loop on these tiny critics; the tests of the numbers and of the
    # gradients use it (the default), the others loop
    kwargs = {"lambda_": LAMBDA, "w_max": W_MAX, "deactivate_vmap": True, **kwargs}
    loss = AWACLoss(actor, qvalue, num_qvalue_nets=2, **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        # log σ: one component inside the bounds, one above (clipped to 0)
        loss.actor_network_params["module", "0", "module", "log_std"].copy_(
            torch.tensor([-0.7, 0.4], dtype=dtype)
        )
        online = loss.qvalue_network_params
        target = loss.target_qvalue_network_params
        for key, p in online.items(True, True):
            # distinct heads, and target ≠ online, so using the wrong one shows up
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
            target[key].copy_(p + 0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
        # a critic that cares about the action, so that A/λ spans several units
        online["module", "4", "weight"].mul_(30.0)
        target["module", "4", "weight"].mul_(30.0)
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


def _hand_networks(loss: AWACLoss):
    """Q_i (online), Q̄_i (target) and π's (loc, scale), reading the loss's parameters only."""
    q_on = loss.qvalue_network_params.detach()["module"]
    q_tg = loss.target_qvalue_network_params.detach()["module"]
    a_p = loss.actor_network_params.detach()["module", "0", "module"]

    def q(params, i, s, a):
        return _mlp(_layers(params[i]), torch.cat([s, a], -1)).squeeze(-1)

    def pi(s):
        loc = torch.tanh(_mlp(_layers(a_p["mean"]), s))
        return loc, a_p["log_std"].clamp(*LOG_STD_BOUNDS).exp().expand_as(loc)

    def min_q(s, a):
        return torch.minimum(q(q_on, 0, s, a), q(q_on, 1, s, a))

    def min_q_bar(s, a):
        return torch.minimum(q(q_tg, 0, s, a), q(q_tg, 1, s, a))

    return (lambda i, s, a: q(q_on, i, s, a)), min_q, min_q_bar, pi


def _log_prob(pi, s, a):
    loc, scale = pi(s)
    return torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)


def _draw(pi, s):
    loc, scale = pi(s)
    return torch.distributions.Normal(loc, scale).sample()


# ------------------------------------------------------------------------------------------------
# The losses against the spec, on a fixed batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entropy_coef", [0.0, 0.2])
@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_awac_losses_equal_hand_written_spec_losses(weight_mode, entropy_coef):
    loss = _make_loss(weight_mode=weight_mode, entropy_coef=entropy_coef, deactivate_vmap=False)
    data = _make_batch()
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = loss(data)

    q, min_q, min_q_bar, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    r = data["next", "reward"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)
    torch.manual_seed(SEED)
    a_tilde = _draw(pi, s)  # drawn first, by the actor loss
    a_next = _draw(pi, s2)  # then by the critic loss

    # y = r + γ (1 − d) [min Q̄(s', a') − α log π(a'|s')], L_Q = Σ_i mean_B (Q_i − y)²
    y = r + GAMMA * (1 - term) * (min_q_bar(s2, a_next) - entropy_coef * _log_prob(pi, s2, a_next))
    l_q = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()

    # A = min Q(s, a) − min Q(s, ã), online critics
    adv = min_q(s, a) - min_q(s, a_tilde)
    log_pi = _log_prob(pi, s, a)
    if weight_mode == "batch_softmax":
        w = torch.softmax(adv / LAMBDA, 0)
        l_pi = -(B * w * log_pi).mean()
        mult = B * w
        assert mult.max() > 2.0 and mult.min() < 0.1  # far from uniform
    else:
        mult = torch.exp(adv / LAMBDA).clamp(max=W_MAX)
        l_pi = -(mult * log_pi).mean()
        assert (mult == W_MAX).any() and (mult < 1.0).any()  # both sides of the clip

    assert (adv > 0).any() and (adv < 0).any()
    assert not torch.allclose(min_q_bar(s2, a_next), min_q(s2, a_next), atol=1e-3)
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], l_pi, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["entropy"], -log_pi.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["advantage"], adv.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_mean"], mult.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_max"], mult.max(), rtol=0, atol=1e-6)
    ess = mult.sum() ** 2 / (B * (mult**2).sum())
    torch.testing.assert_close(out["weight_ess"], ess, rtol=0, atol=1e-6)
    # priority: max over the heads of (Q_i − y)²
    td_error = torch.maximum((q(0, s, a) - y) ** 2, (q(1, s, a) - y) ** 2)
    torch.testing.assert_close(data["td_error"], td_error, rtol=0, atol=1e-6)
    assert l_q > 1e-2 and l_pi.abs() > 1e-2


def test_the_loss_does_not_modify_the_batch():
    loss = _make_loss()
    data = _make_batch()
    data["action"][0] = torch.tensor([1.5, -2.0], dtype=data["action"].dtype)  # out of range
    before = data.clone()
    loss(data)
    assert set(data.keys(True, True)) - set(before.keys(True, True)) == {"td_error"}
    assert (data.exclude("td_error") == before).all()


def test_delay_qvalue_false_bootstraps_from_the_online_critics():
    loss = _make_loss(delay_qvalue=False)
    assert "target_qvalue_network_params" not in dict(loss.named_children())
    data = _make_batch()
    torch.manual_seed(SEED)
    with torch.no_grad():
        got, _ = loss.qvalue_loss(data)
    q, min_q, _, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)
    torch.manual_seed(SEED)
    a_next = _draw(pi, s2)
    y = data["next", "reward"].squeeze(-1) + GAMMA * (1 - term) * min_q(s2, a_next)
    expected = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# §7 test 4
# ------------------------------------------------------------------------------------------------


def test_batch_softmax_weights_sum_to_one():
    for seed in range(3):
        loss = _make_loss(seed=seed)
        out = loss(_make_batch(seed=seed))
        # the reported multiplier is B·w, so mean_B(B·w) = Σ_B w
        torch.testing.assert_close(out["weight_mean"], torch.tensor(1.0, dtype=torch.float64))
        assert out["weight_max"] > 1.5


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_equal_advantages_give_plain_behavior_cloning(weight_mode):
    loss = _make_loss(weight_mode=weight_mode)
    with torch.no_grad():  # Q_i(s, a) = b_i for every (s, a): A ≡ 0
        loss.qvalue_network_params["module", "4", "weight"].zero_()
    data = _make_batch()
    out = loss(data)
    _, _, _, pi = _hand_networks(loss)
    log_pi = _log_prob(pi, data["observation"], data["action"])
    assert out["advantage"] == 0
    torch.testing.assert_close(out["weight_max"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out["weight_ess"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out["loss_actor"], -log_pi.mean(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_infinite_temperature_recovers_behavior_cloning(weight_mode):
    data = _make_batch()
    loss = _make_loss(weight_mode=weight_mode, lambda_=1e9)
    out = loss(data)
    _, _, _, pi = _hand_networks(loss)
    log_pi = _log_prob(pi, data["observation"], data["action"])
    torch.testing.assert_close(out["loss_actor"], -log_pi.mean(), rtol=0, atol=1e-6)
    # while at λ = LAMBDA the same batch is far from BC
    far = _make_loss(weight_mode=weight_mode)(data)
    assert abs(float(far["loss_actor"].detach() + log_pi.mean())) > 0.1


class _Lookup(nn.Module):
    """V(s) = the value stored in the batch under "v_pi"."""

    def forward(self, v_pi):
        return v_pi


def test_exp_clip_equals_the_iql_actor_with_v_replaced_by_q_of_a_policy_sample():
    loss = _make_loss(weight_mode="exp_clip")
    data = _make_batch()
    torch.manual_seed(SEED)
    got, _ = loss.actor_loss(data)

    _, min_q, _, pi = _hand_networks(loss)
    torch.manual_seed(SEED)
    v_pi = min_q(data["observation"], _draw(pi, data["observation"]))

    # TorchRL's IQL actor: −mean min(exp(T (min Q̄(s, a) − V(s))), 100) log π(a|s), with
    # T = 1/λ, Q̄ := AWAC's online critics and V(s) := min_i Q_i(s, ã)
    torch.manual_seed(0)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).double()
    value = TensorDictModule(_Lookup(), in_keys=["v_pi"], out_keys=["state_value"])
    iql = IQLLoss(
        actor,
        make_qvalue(OBS, ACT, HIDDEN).double(),
        value,
        num_qvalue_nets=2,
        temperature=1.0 / LAMBDA,
    )
    with torch.no_grad():
        for key, p in iql.actor_network_params.items(True, True):
            p.copy_(loss.actor_network_params[key])
        for key, p in iql.target_qvalue_network_params.items(True, True):
            p.copy_(loss.qvalue_network_params[key])
    data_iql = data.clone()
    data_iql["v_pi"] = v_pi[:, None]
    expected, _ = iql.actor_loss(data_iql)
    assert W_MAX == 100.0  # IQL's clip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert expected.abs() > 0.1


# ------------------------------------------------------------------------------------------------
# §7 test 8: gradient isolation
# ------------------------------------------------------------------------------------------------

_GROUPS = ("actor_network_params", "qvalue_network_params")


def _grads(params: TensorDict) -> list[torch.Tensor | None]:
    return [p.grad for p in params.values(True, True)]


def _is_zero(grads) -> bool:
    return all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
@pytest.mark.parametrize(
    ("loss_key", "owner"),
    [("loss_actor", "actor_network_params"), ("loss_qvalue", "qvalue_network_params")],
)
def test_each_loss_reaches_only_its_own_network(loss_key, owner, weight_mode):
    loss = _make_loss(
        dtype=torch.float32, weight_mode=weight_mode, entropy_coef=0.2, deactivate_vmap=False
    )
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
    # the diagnostics carry no graph
    for key, value in out.items():
        if not key.startswith("loss_"):
            assert not value.requires_grad, key


# ------------------------------------------------------------------------------------------------
# Finiteness at extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q_offset", "reward"), [(1e6, -1e6), (-1e6, 1e6)])
@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_losses_and_gradients_are_finite_for_extreme_values(weight_mode, q_offset, reward):
    loss = _make_loss(dtype=torch.float32, weight_mode=weight_mode, entropy_coef=0.2, lambda_=0.1)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            # |Q| ≈ 1e6 and advantages of order 1e5: A/λ ≈ 1e6
            params["module", "4", "weight"].mul_(1e4)
            params["module", "4", "bias"].fill_(q_offset)
    data = _make_batch(dtype=torch.float32)
    data["next", "reward"].fill_(reward)
    out = loss(data)
    assert out["advantage"].abs() > 100  # A/λ > 1000: exp(A/λ) would overflow
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
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    updater.step()
    after = loss.target_qvalue_network_params
    for key, online in loss.qvalue_network_params.items(True, True):
        expected = 0.995 * before[key] + 0.005 * online.detach()
        torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-12)
        assert (after[key] != before[key]).all()


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
    torch.manual_seed(SEED)
    outs = loss(**kwargs)
    torch.manual_seed(SEED)
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
    torch.manual_seed(SEED)
    out = loss(renamed)
    torch.manual_seed(SEED)
    ref = ref_loss(data)
    for key in ref.keys():
        torch.testing.assert_close(out[key], ref[key])


def test_sum_reduction_is_batch_size_times_mean():
    data = _make_batch()
    torch.manual_seed(SEED)
    mean = _make_loss()(data.clone())
    torch.manual_seed(SEED)
    total = _make_loss(reduction="sum")(data.clone())
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(total[key], B * mean[key])


def test_bad_arguments_are_named():
    actor, qvalue = make_gaussian_actor(OBS, ACT, HIDDEN), make_qvalue(OBS, ACT, HIDDEN)
    with pytest.raises(ValueError, match="weight_mode"):
        AWACLoss(actor, qvalue, weight_mode="softmax")
    with pytest.raises(ValueError, match="lambda_"):
        AWACLoss(actor, qvalue, lambda_=0.0)
    with pytest.raises(ValueError, match="w_max"):
        AWACLoss(actor, qvalue, w_max=math.inf)


def test_docstring_example_runs():
    result = doctest.testmod(awac_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
