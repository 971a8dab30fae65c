"""IQL through TorchRL's IQLLoss with our networks equals the hand-written losses of the spec.

docs/specs/baselines.md §1 (IQL losses) and §7, tests 3 (losses on a fixed batch; expectile
minimizer) and 8 (gradient isolation). The loss is built exactly as ``recipes/iql.py`` builds it.
"""

from __future__ import annotations

import math

import pytest
import torch
from loss_harness import (
    GROUPS,
    OWNERS,
    HandNetworks,
    ScalarValue,
    check_gradient_isolation,
    check_value_bootstrap_carries_no_value_gradient,
    perturb_parameters,
    samples_batch,
    samples_loss,
    spread_critics,
    transitions,
)
from tensordict import TensorDict
from torchrl.objectives import IQLLoss

from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value

B, OBS, ACT = 64, 5, 2
HIDDEN = [256, 256]
EXPECTILE, TEMPERATURE, GAMMA = 0.7, 3.0, 0.99

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _make_loss(dtype=torch.float64, seed=0) -> IQLLoss:
    """The recipe's IQLLoss (recipes/iql.py) with fixed, deliberately non-trivial parameters."""
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=(-5.0, 2.0)).to(dtype)
    qvalue = make_qvalue(OBS, ACT, HIDDEN).to(dtype)
    value = make_value(OBS, HIDDEN).to(dtype)
    loss = IQLLoss(
        actor,
        qvalue,
        value,
        num_qvalue_nets=2,
        expectile=EXPECTILE,
        temperature=TEMPERATURE,
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():
        # log σ: one component inside the bounds, one above (clipped to 2)
        perturb_parameters(loss, seed, dtype, log_std=(-0.7, 2.6))
        # spread the target critic so u = min Q̄ − V has both signs and β·u exceeds log 100
        spread_critics(loss, target_bias=(0.3, 0.6), dtype=dtype)
        loss.value_network_params["module", "4", "weight"].mul_(10.0)
    return loss


def _make_batch(dtype=torch.float64, seed=0) -> TensorDict:
    g = torch.Generator().manual_seed(seed + 2)
    terminated = torch.rand(B, 1, generator=g) < 0.25
    truncated = (torch.rand(B, 1, generator=g) < 0.25) & ~terminated
    terminated[0], truncated[1] = True, True  # both kinds present whatever the draw
    terminated[1] = False
    # inside and outside [−1, 1]: the loss does not clip dataset actions
    return transitions(g, terminated, truncated, OBS, ACT, lambda u: 1.2 * u * 2 - 1.2, dtype)


def _hand_networks(loss: IQLLoss):
    """Callables Q_i, Q̄_i, V, (loc, scale) that read the loss's parameters and nothing else."""
    net = HandNetworks(loss, (-5.0, 2.0))
    return net.q, net.q_bar, net.v, net.pi


def test_iql_losses_equal_hand_written_spec_losses():
    loss = _make_loss()
    data = _make_batch()
    with torch.no_grad():
        out = loss(data.clone())
    q, q_bar, v, pi = _hand_networks(loss)
    s, a = data["observation"], data["action"]
    r = data["next", "reward"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)

    # L_V = mean_B |τ − 1(u < 0)| u²,  u = min(Q̄₁, Q̄₂)(s, a) − V(s)
    u = torch.minimum(q_bar(0, s, a), q_bar(1, s, a)) - v(s)
    l_v = ((EXPECTILE - (u < 0).to(u.dtype)).abs() * u**2).mean()

    # y = r + γ (1 − terminated) V(s'); truncated-only rows still bootstrap
    y = r + GAMMA * (1 - term) * v(data["next", "observation"])
    # TorchRL: distance_loss("l2") is the elementwise (Q_i − y)² (no ½), summed over the two heads
    # (.sum(0)) and then averaged over the batch: mean_B[(Q₁ − y)² + (Q₂ − y)²], i.e. exactly the
    # spec's L_Q, which equals mse(Q₁, y) + mse(Q₂, y) — the sum of the two MSEs, not their mean.
    l_q = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()

    # L_π = −mean_B min(exp(β (min Q̄ − V)), 100) · log π(a|s), with π = N(tanh μ(s), σ)
    loc, scale = pi(s)
    log_pi = torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)
    weight = torch.exp(TEMPERATURE * u).clamp(max=100.0)
    l_pi = -(weight * log_pi).mean()

    # the batch exercises every branch of the formulas
    assert (u < 0).any() and (u > 0).any()
    assert (weight == 100.0).any() and (weight < 1.0).any()
    assert (term == 1).any() and (data["next", "truncated"] & ~data["next", "terminated"]).any()
    assert (a.abs() > 1).any()
    assert not torch.allclose(q_bar(0, s, a), q(0, s, a), atol=1e-3)
    assert not torch.allclose(q(0, s, a), q(1, s, a), atol=1e-3)
    assert loss.actor_network_params["module", "0", "module", "log_std"][1] == 2.6  # clipped in π

    torch.testing.assert_close(out["loss_value"], l_v, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], l_pi, rtol=0, atol=1e-6)
    # "entropy" is TorchRL's name for −mean_B log π(a|s) on the dataset actions
    torch.testing.assert_close(out["entropy"], -log_pi.mean(), rtol=0, atol=1e-6)
    # and the numbers are not degenerate
    assert l_v > 1e-2 and l_q > 1e-2 and l_pi.abs() > 1e-2


def test_iql_td_error_priority_is_max_head_squared_error():
    loss = _make_loss()
    data = _make_batch()
    with torch.no_grad():
        loss(data)
    q, _, v, _ = _hand_networks(loss)
    s, a = data["observation"], data["action"]
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)
    y = data["next", "reward"].squeeze(-1) + GAMMA * (1 - term) * v(data["next", "observation"])
    expected = torch.maximum((q(0, s, a) - y) ** 2, (q(1, s, a) - y) ** 2)
    torch.testing.assert_close(data["td_error"], expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The expectile property of L_V, through IQLLoss.value_loss itself
# ------------------------------------------------------------------------------------------------


def _expectile_loss(tau: float) -> IQLLoss:
    return samples_loss(IQLLoss, ScalarValue(), actor_hidden=[8], expectile=tau, loss_function="l2")


def _expectile_root(q: torch.Tensor, tau: float) -> float:
    """The root of Σ |τ − 1(q < v)| (q − v) = 0, exactly, by sorting.

    Between consecutive order statistics the sum is linear in v, so on the segment holding the
    root v = (τ·S_hi + (1 − τ)·S_lo) / (τ·n_hi + (1 − τ)·n_lo), with S/n the sums/counts of the
    samples at or above / below v.
    """
    qs = torch.sort(q.double()).values.tolist()
    n = len(qs)
    total = sum(qs)
    s_lo = 0.0
    for k in range(n + 1):  # k samples strictly below v
        s_hi = total - s_lo
        v = (tau * s_hi + (1 - tau) * s_lo) / (tau * (n - k) + (1 - tau) * k)
        lo = qs[k - 1] if k > 0 else -math.inf
        hi = qs[k] if k < n else math.inf
        if lo < v <= hi:
            return v
        if k < n:
            s_lo += qs[k]
    raise AssertionError("no root found")


def _minimize_value_loss(loss: IQLLoss, q: torch.Tensor) -> float:
    """argmin_v of IQLLoss.value_loss, found by L-BFGS on the value network's single parameter."""
    data = samples_batch(q)
    (v_param,) = loss.value_network_params.values(True, True)
    opt = torch.optim.LBFGS(
        [v_param],
        lr=1.0,
        max_iter=200,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value_loss, _ = loss.value_loss(data)
        value_loss.backward()
        return value_loss

    for _ in range(5):
        opt.step(closure)
    return float(v_param.detach())


@pytest.mark.parametrize("tau", [0.5, 0.7, 0.9])
def test_value_loss_minimizer_is_the_expectile(tau):
    q = torch.randn(1000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    q = q * 1.5 + 0.4  # not centred, not unit scale
    v_star = _minimize_value_loss(_expectile_loss(tau), q)
    root = _expectile_root(q, tau)
    # the root solves the first-order condition of the spec's L_V
    w = (tau - (q < root).double()).abs()
    assert abs(float((w * (q - root)).sum())) < 1e-8
    assert v_star == pytest.approx(root, abs=1e-4)
    if tau == 0.5:
        assert v_star == pytest.approx(float(q.mean()), abs=1e-4)
    else:  # an upper expectile lies well above the mean
        assert v_star > float(q.mean()) + 0.2


def test_value_loss_is_the_hand_formula_at_any_v():
    q = torch.randn(200, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    loss = _expectile_loss(0.7)
    data = samples_batch(q)
    (v_param,) = loss.value_network_params.values(True, True)
    for v in (-1.0, 0.0, 0.37, 2.0):
        with torch.no_grad():
            v_param.fill_(v)
            got, _ = loss.value_loss(data)
        u = q - v
        expected = ((0.7 - (u < 0).double()).abs() * u**2).mean()
        # TorchRL builds the weights with torch.where(diff > 0, τ, 1 − τ) on Python floats, which
        # yields float32 weights even for float64 inputs: agreement to float32 precision only
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=0)


# ------------------------------------------------------------------------------------------------
# §7 test 8: gradient isolation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("loss_key", "owner"), OWNERS)
def test_each_loss_reaches_only_its_own_network(loss_key, owner):
    loss = _make_loss(dtype=torch.float32)
    data = _make_batch(dtype=torch.float32)
    check_gradient_isolation(loss, data, loss_key, owner, GROUPS, diagnostics=False)


def test_value_bootstrap_inside_q_loss_carries_no_value_gradient():
    """V(s') inside y is evaluated with detached (target) value parameters."""
    loss = _make_loss(dtype=torch.float32)
    check_value_bootstrap_carries_no_value_gradient(
        loss, lambda: _make_batch(dtype=torch.float32), ("module", "4", "bias")
    )
