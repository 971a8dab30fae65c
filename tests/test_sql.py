"""SQLLoss equals the hand-written losses of docs/specs/baselines.md §3.

§7 tests 5 (the paper-form minimizer of L_V equals the code-form one at α_c = 4α, and solves
mean (1 + (q − v)/(2α))₊ = 1) and 8 (gradient isolation), plus finiteness at extreme values and
target updates.
"""

from __future__ import annotations

import pytest
import torch
from loss_harness import (
    ACT,
    GAMMA,
    GROUPS,
    HIDDEN,
    OBS,
    OWNERS,
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
    make_batch,
    offset_outputs,
    perturb_parameters,
    samples_batch,
    samples_loss,
    spread_critics,
)

import torchrl_sym.objectives.sql as sql_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import SQLLoss

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
    with torch.no_grad():
        perturb_parameters(loss, seed, dtype, log_std=(-0.7, 2.6))
        # spread the target critic so u = min Q̄ − V has both signs and |u| of several units
        spread_critics(loss, target_bias=(3.3, 3.6), dtype=dtype)
        loss.value_network_params["module", "4", "weight"].mul_(10.0)
    return loss


def _hand_networks(loss: SQLLoss):
    """Q_i, min Q̄, V and π's (loc, scale), reading the loss's parameters only."""
    net = HandNetworks(loss, LOG_STD_BOUNDS)
    return net.q, net.min_q_bar, net.v, net.pi


# ------------------------------------------------------------------------------------------------
# The losses against the spec, on a fixed batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("form", "alpha"), [("code", 2.0), ("paper", 0.5)])
def test_sql_losses_equal_hand_written_spec_losses(form, alpha):
    w_max = 2.0  # small, so that the clip of the actor weight is exercised
    loss = _make_loss(form=form, alpha=alpha, actor_weight_max=w_max, deactivate_vmap=False)
    data = make_batch()
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
    check_batch_untouched(_make_loss(), make_batch())


# ------------------------------------------------------------------------------------------------
# §7 test 5: the minimizers of the two forms
# ------------------------------------------------------------------------------------------------


def _scalar_loss(**kwargs) -> SQLLoss:
    return samples_loss(SQLLoss, ScalarValue(), deactivate_vmap=True, **kwargs)


def _minimize_value_loss(loss: SQLLoss, q: torch.Tensor) -> float:
    """argmin_v of SQLLoss.value_loss by bisection on its autograd derivative (L_V is convex)."""
    lo, hi = float(q.min()) - 10 * loss.alpha, float(q.max()) + 10 * loss.alpha
    return bisect_value_minimizer(loss, samples_batch(q), lo, hi)


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
    data = samples_batch(q)
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


@pytest.mark.parametrize(("loss_key", "owner"), OWNERS)
def test_each_loss_reaches_only_its_own_network(loss_key, owner):
    loss = _make_loss(dtype=torch.float32, deactivate_vmap=False)
    check_gradient_isolation(loss, make_batch(dtype=torch.float32), loss_key, owner, GROUPS)


def test_value_bootstrap_inside_q_loss_carries_no_value_gradient():
    loss = _make_loss(dtype=torch.float32)
    check_value_bootstrap_carries_no_value_gradient(
        loss, lambda: make_batch(dtype=torch.float32), ("module", "4", "bias")
    )


# ------------------------------------------------------------------------------------------------
# Finiteness at extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [-1e6, 1e6])
@pytest.mark.parametrize(("q_offset", "v_offset"), [(1e6, -1e6), (-1e6, 1e6), (1e6, 1e6)])
@pytest.mark.parametrize("form", ["code", "paper"])
def test_losses_and_gradients_are_finite_for_extreme_values(form, q_offset, v_offset, reward):
    loss = _make_loss(dtype=torch.float32, form=form)
    offset_outputs(loss, q_offset, v_offset, value_layer="4")
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
    assert isinstance(vars(SQLLoss)["out_keys"], property)
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
    with pytest.raises(ValueError, match="form"):
        SQLLoss(*args, form="jax")
    with pytest.raises(ValueError, match="alpha"):
        SQLLoss(*args, alpha=-1.0)


def test_docstring_example_runs():
    check_docstring_examples(sql_module)
