"""XQLLoss equals the hand-written losses of docs/specs/baselines.md §4.

§7 tests 6 (the minimizer of L_V is β log mean exp(q/β), the rescaled loss has the same minimizer
and the per-sample gradient −e^{−m}(e^z − 1)/β, Huber with δ = 20 is ½x² up to 20 and linear
beyond) and 8 (gradient isolation), plus finiteness at extreme values and target updates.
"""

from __future__ import annotations

import math

import pytest
import torch
from loss_harness import (
    ACT,
    GAMMA,
    GROUPS,
    HIDDEN,
    OBS,
    OWNERS,
    B,
    HandNetworks,
    ScalarValue,
    bisect_value_minimizer,
    check_batch_untouched,
    check_docstring_examples,
    check_finite,
    check_gradient_isolation,
    check_keyword_call,
    check_set_keys,
    check_soft_update,
    check_sum_reduction,
    check_value_bootstrap_carries_no_value_gradient,
    ln_mlp,
    make_batch,
    offset_outputs,
    perturb_parameters,
    samples_batch,
    samples_loss,
    spread_critics,
)
from torch import nn

import torchrl_sym.objectives.xql as xql_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import XQLLoss

LOG_STD_BOUNDS = (-5.0, 2.0)

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
    with torch.no_grad():
        g = perturb_parameters(loss, seed, dtype, log_std=(-0.7, 2.6))
        # spread the target critic so u = min Q̄ − V has both signs and |u| of several units
        spread_critics(loss, target_bias=(5.3, 5.6), dtype=dtype)
        for p in loss.value_network_params.values(True, True):  # LayerNorm's affine included
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=dtype))
    return loss


def _hand_networks(loss: XQLLoss):
    """Q_i, min Q̄, V and π's (loc, scale), reading the loss's parameters only."""
    net = HandNetworks(loss, LOG_STD_BOUNDS, value_mlp=ln_mlp)
    return net.q, net.min_q_bar, net.v, net.pi


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
    data = make_batch()
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
    check_batch_untouched(_make_loss(), make_batch())


# ------------------------------------------------------------------------------------------------
# §7 test 6
# ------------------------------------------------------------------------------------------------


class _PerRow(nn.Module):
    """V(s_j) = v_j: one learnable value per row of a batch of fixed size."""

    def __init__(self, n: int):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(n, dtype=torch.float64))

    def forward(self, observation):
        return self.v[:, None]


def _sample_loss(value_module: nn.Module, **kwargs) -> XQLLoss:
    return samples_loss(XQLLoss, value_module, deactivate_vmap=True, **kwargs)


def _clip_inactive(meta: dict) -> None:
    assert meta["clip_fraction"] == 0  # the bracket keeps z below max_clip


def _minimize_value_loss(loss: XQLLoss, q: torch.Tensor, lo: float, hi: float) -> float:
    """argmin_v of XQLLoss.value_loss by bisection on its autograd derivative (L_V is convex)."""
    return bisect_value_minimizer(loss, samples_batch(q), lo, hi, check_metadata=_clip_inactive)


@pytest.mark.parametrize("beta", [1.0, 2.0])
def test_value_minimizer_is_the_soft_maximum_with_or_without_rescaling(beta):
    q = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = 1.5 * q + 0.4
    soft_max = beta * float(torch.logsumexp(q / beta, 0) - math.log(len(q)))
    # z = (q − v)/β < max_clip = 7 on the whole bracket: the unclipped problem
    lo, hi = float(q.max()) - 6 * beta, float(q.max()) + 1.0
    for rescale in (False, True):
        loss = _sample_loss(ScalarValue(), beta_loss=beta, max_clip=7.0, rescale=rescale)
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
    value_loss, _ = loss.value_loss(samples_batch(q))
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
    data = samples_batch(x, reward=torch.zeros_like(x))  # Q = x, y = r = 0: residual x
    per_sample = {}
    for q_loss in ("huber", "l2"):
        loss = _sample_loss(ScalarValue(), q_loss=q_loss, huber_delta=20.0, reduction="none")
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


@pytest.mark.parametrize(("loss_key", "owner"), OWNERS)
def test_each_loss_reaches_only_its_own_network(loss_key, owner):
    loss = _make_loss(dtype=torch.float32, deactivate_vmap=False)
    check_gradient_isolation(loss, make_batch(dtype=torch.float32), loss_key, owner, GROUPS)


def test_value_bootstrap_inside_q_loss_carries_no_value_gradient():
    loss = _make_loss(dtype=torch.float32)
    check_value_bootstrap_carries_no_value_gradient(
        loss, lambda: make_batch(dtype=torch.float32), ("module", "6", "bias")
    )


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
    offset_outputs(loss, q_offset, v_offset, value_layer="6")
    data = make_batch(dtype=torch.float32)
    data["next", "reward"].fill_(reward)
    check_finite(loss, loss(data), GROUPS)


# ------------------------------------------------------------------------------------------------
# Targets, keys, reductions, docstring
# ------------------------------------------------------------------------------------------------


def test_soft_update_moves_only_the_critic_targets():
    check_soft_update(_make_loss(), untouched=["value_network_params"])


def test_keyword_call_returns_the_out_keys_in_order():
    check_keyword_call(_make_loss(), make_batch())


def test_out_keys_are_each_losss_own():
    """``out_keys`` is a property with a per-instance list, as in the other losses (a class-level
    list would be shared, and mutated, by every instance); it names the forward's entries."""
    assert isinstance(vars(XQLLoss)["out_keys"], property)
    a, b = _make_loss(), _make_loss()
    assert a.out_keys == b.out_keys and a.out_keys is not b.out_keys
    a.out_keys.append("extra")
    assert "extra" not in b.out_keys and "extra" not in _make_loss().out_keys
    assert set(b(make_batch()).keys()) == set(b.out_keys)


def test_set_keys_renames_the_batch_entries():
    loss, ref_loss = _make_loss(), _make_loss()
    check_set_keys(loss, ref_loss, make_batch())


def test_sum_reduction_is_batch_size_times_mean():
    check_sum_reduction(_make_loss, make_batch(), ("loss_actor", "loss_qvalue", "loss_value"))


def test_bad_arguments_are_named():
    args = make_gaussian_actor(OBS, ACT, HIDDEN), make_qvalue(OBS, ACT, HIDDEN), make_value(OBS)
    with pytest.raises(ValueError, match="q_loss"):
        XQLLoss(*args, q_loss="smooth_l1")
    with pytest.raises(ValueError, match="beta_loss"):
        XQLLoss(*args, beta_loss=0.0)


def test_docstring_example_runs():
    check_docstring_examples(xql_module)
