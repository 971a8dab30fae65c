"""Noise schedules (torchrl_sym.diffusion.schedules) against the specs' tables and closed forms.

BDPO §1 / §10 test 1-2 (docs/specs/bdpo.md) and SRPO §3 / §10 test 1 (docs/specs/srpo.md).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrl_sym.diffusion.schedules import (
    CosineContinuousSchedule,
    CosineDiscreteSchedule,
    LinearDiscreteSchedule,
    VPDiscreteSchedule,
    VPSDESchedule,
)

DISCRETE = (VPDiscreteSchedule, LinearDiscreteSchedule, CosineDiscreteSchedule)
CONTINUOUS = (VPSDESchedule, CosineContinuousSchedule)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread avoids OpenMP spin-waits under contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _vp_abar_closed_form(n: int, big_n: int, b_min=0.1, b_max=10.0) -> float:
    return math.exp(-b_min * n / big_n - 0.5 * (b_max - b_min) * n**2 / big_n**2)


# ------------------------------------------------------------------------ BDPO discrete VP (§1)
def test_bdpo_n5_table_to_four_decimals():
    s = VPDiscreteSchedule(5, variance="beta")
    betas = [0.1959, 0.4588, 0.6358, 0.7549, 0.8350]
    abar = [0.80413, 0.43518, 0.15850, 0.03885, 0.00641]
    weights = [0.6218, 0.7505, 1.0372, 1.6020, 2.5472]
    for n in range(1, 6):
        assert s.betas[n].item() == pytest.approx(betas[n - 1], abs=5e-5)
        assert s.alphas_cumprod[n].item() == pytest.approx(abar[n - 1], abs=5e-6)
        assert s.kl_weight[n].item() == pytest.approx(weights[n - 1], abs=5e-5)
    # the index-0 entries describe the clean action
    assert s.betas[0] == 0 and s.alphas_cumprod[0] == 1 and s.kl_weight[0] == 0


def test_bdpo_n50_end_values():
    s = VPDiscreteSchedule(50, variance="beta")
    assert s.betas[1].item() == pytest.approx(0.00397, abs=5e-6)
    assert s.betas[50].item() == pytest.approx(0.17965, abs=5e-6)
    assert s.kl_weight[1].item() == pytest.approx(0.5020, abs=5e-5)
    assert s.kl_weight[50].item() == pytest.approx(0.1102, abs=5e-5)


@pytest.mark.parametrize("big_n", [2, 5, 10, 50])
def test_vp_alpha_bar_closed_form_and_terminal_value(big_n):
    s = VPDiscreteSchedule(big_n)
    for n in range(big_n + 1):
        # float64 internals: the grid's α_n = √ᾱ_n is exact to ~1e-15
        assert s.grid().alphas[n] ** 2 == pytest.approx(_vp_abar_closed_form(n, big_n), rel=1e-12)
        assert s.alphas_cumprod[n].item() == pytest.approx(_vp_abar_closed_form(n, big_n), rel=1e-6)
    assert s.grid().alphas[big_n] ** 2 == pytest.approx(math.exp(-5.05), rel=1e-12)
    assert math.exp(-5.05) == pytest.approx(0.0064093, abs=5e-8)


def test_kl_weight_is_the_gaussian_kl_in_eps_and_score_form():
    """BDPO §10 test 2: KL(N(μ_π, β_n I) ‖ N(μ_ν, β_n I)) = w_n Σ(ε_π − ε_ν)² = score form."""
    s = VPDiscreteSchedule(5, variance="beta")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    for n in range(1, 6):
        b = s.betas[n].double()
        a = 1 - b
        abar = s.alphas_cumprod[n].double()
        eps_pi, eps_nu = torch.randn(2, 64, 3, generator=gen, dtype=torch.float64)
        mu_pi = (x - b / torch.sqrt(1 - abar) * eps_pi) / torch.sqrt(a)
        mu_nu = (x - b / torch.sqrt(1 - abar) * eps_nu) / torch.sqrt(a)
        std = torch.sqrt(b).expand_as(x)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu_pi, std), torch.distributions.Normal(mu_nu, std)
        ).sum(-1)
        w = s.kl_weight[n].double()
        eps_form = w * ((eps_pi - eps_nu) ** 2).sum(-1)
        score_pi, score_nu = -eps_pi / torch.sqrt(1 - abar), -eps_nu / torch.sqrt(1 - abar)
        score_form = b / (2 * (1 - b)) * ((score_pi - score_nu) ** 2).sum(-1)
        torch.testing.assert_close(kl, eps_form, rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(kl, score_form, rtol=1e-6, atol=1e-9)


def test_exact_posterior_variance_makes_the_first_kl_weight_infinite():
    s = VPDiscreteSchedule(5, variance="posterior")
    assert s.kernel_variance[1] == 0 and math.isinf(s.kl_weight[1].item())
    assert torch.isfinite(s.kl_weight[2:]).all()


# ------------------------------------------------------------------------ SRPO VP-SDE (§3)
SRPO_TABLE = {
    # t: (α_t, σ_t, σ_t²)
    0.001: (0.9999, 0.0105, 0.0001),
    0.02: (0.9970, 0.0772, 0.0060),
    0.1: (0.9467, 0.3221, 0.1037),
    0.25: (0.7237, 0.6902, 0.4763),
    0.5: (0.2812, 0.9597, 0.9209),
    0.75: (0.0587, 0.9983, 0.9966),
    0.98: (0.0080, 1.0000, 0.9999),
    1.0: (0.0066, 1.0000, 1.0000),
}


def test_srpo_vpsde_table_to_four_decimals():
    s = VPSDESchedule()
    t = torch.tensor(list(SRPO_TABLE), dtype=torch.float64)
    alpha, sigma = s.marginal(t)
    for i, (a, sg, s2) in enumerate(SRPO_TABLE.values()):
        assert alpha[i].item() == pytest.approx(a, abs=5e-5)
        assert sigma[i].item() == pytest.approx(sg, abs=5e-5)
        assert (sigma[i] ** 2).item() == pytest.approx(s2, abs=5e-5)


def test_srpo_log_alpha_formula_is_exact():
    s = VPSDESchedule(0.1, 20.0)
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    expected = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    assert torch.equal(s.log_alpha(t), expected)
    for ti in t.tolist():
        assert s.log_alpha_float(ti) == pytest.approx(
            -0.25 * ti**2 * 19.9 - 0.05 * ti, rel=1e-15, abs=1e-300
        )
    # the SDE's β(t) is the derivative of −2 log α_t
    tt = t.clone().requires_grad_()
    (grad,) = torch.autograd.grad((-2 * s.log_alpha(tt)).sum(), tt)
    torch.testing.assert_close(grad, s.beta(t))


# ------------------------------------------------------------------------ properties of all
@settings(max_examples=30, deadline=None)
@given(
    cls=st.sampled_from(DISCRETE),
    big_n=st.integers(1, 400),
    variance=st.sampled_from(["posterior", "beta"]),
)
def test_discrete_alpha_bar_decreases_and_vp_identity_holds(cls, big_n, variance):
    s = cls(big_n, variance=variance)
    abar = s.alphas_cumprod.double()
    assert abar[0] == 1 and (abar[1:] < abar[:-1]).all() and (abar > 0).all()
    alpha, sigma = s.marginal(torch.arange(big_n + 1))
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones(big_n + 1), atol=1e-6, rtol=0)
    g = s.grid()
    for a, sg in zip(g.alphas, g.sigmas):
        assert a**2 + sg**2 == pytest.approx(1.0, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(cls=st.sampled_from(CONTINUOUS), t=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=20))
def test_continuous_alpha_decreases_and_vp_identity_holds(cls, t):
    s = cls()
    t = torch.tensor(sorted(t), dtype=torch.float64)
    alpha, sigma = s.marginal(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t), atol=1e-12, rtol=0)
    # float32 keeps σ_t accurate near t = 0 (no 1 − α² cancellation)
    t32 = torch.tensor([1e-6, 1e-4], dtype=torch.float32)
    torch.testing.assert_close(
        s.marginal(t32)[1].double(), s.marginal(t32.double())[1], rtol=1e-5, atol=0
    )
    assert (alpha[1:] <= alpha[:-1]).all()
    assert s.marginal(torch.tensor(0.0))[0] == 1 and s.marginal(torch.tensor(0.0))[1] == 0


def test_linear_and_cosine_discrete_definitions():
    lin = LinearDiscreteSchedule(100)
    torch.testing.assert_close(lin.betas[1:], torch.linspace(1e-4, 0.02, 100))
    cos = CosineDiscreteSchedule(100)
    n = torch.arange(101, dtype=torch.float64) / 100
    f = torch.cos((n + 0.008) / 1.008 * math.pi / 2) ** 2
    # ᾱ_N = 0 in the formula; the β clip at 0.999 keeps it positive
    torch.testing.assert_close(
        cos.alphas_cumprod[:-1].double(), (f / f[0])[:-1], rtol=1e-5, atol=1e-7
    )
    assert cos.betas[-1].item() == pytest.approx(0.999)
    cosc = CosineContinuousSchedule()
    assert cosc.marginal(torch.tensor(cosc.t_max))[0].item() == pytest.approx(0.0085, abs=5e-4)


# ------------------------------------------------------------------------ sampling grids
def _bayes_posterior(alpha_s, sigma_s, alpha_t, sigma_t):
    """q(x_s | x_t, x_0) by conditioning the joint Gaussian: precision-weighted combination."""
    a_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - a_ts**2 * sigma_s**2
    precision = 1 / sigma_s**2 + a_ts**2 / var_ts
    var = 1 / precision
    return var * alpha_s / sigma_s**2, var * a_ts / var_ts, var, var_ts


@pytest.mark.parametrize(
    "schedule,steps",
    [
        (VPDiscreteSchedule(50), 50),
        (VPDiscreteSchedule(50), 7),
        (LinearDiscreteSchedule(1000), 20),
        (VPSDESchedule(), 20),
        (CosineContinuousSchedule(), 5),
    ],
)
def test_grid_posterior_equals_bayes_conditioning(schedule, steps):
    g = schedule.grid(steps)
    assert g.num_steps == steps and g.times[0] == 0 and g.alphas[0] == 1 and g.sigmas[0] == 0
    assert list(g.times) == sorted(set(g.times))
    # k = 1 lands on the clean action: the mean is x̂_0 and the posterior variance is 0
    assert g.coef_x0[1] == pytest.approx(1.0) and g.coef_xt[1] == 0 and g.posterior_var[1] == 0
    for k in range(2, steps + 1):
        c0, ct, var, beta = _bayes_posterior(
            g.alphas[k - 1], g.sigmas[k - 1], g.alphas[k], g.sigmas[k]
        )
        assert g.coef_x0[k] == pytest.approx(c0, rel=1e-9)
        assert g.coef_xt[k] == pytest.approx(ct, rel=1e-9)
        assert g.posterior_var[k] == pytest.approx(var, rel=1e-9)
        assert g.beta[k] == pytest.approx(beta, rel=1e-9)


def test_native_grid_is_ddpm_and_kernel_variance_follows_the_option():
    for variance in ("posterior", "beta"):
        s = VPDiscreteSchedule(5, variance=variance)
        g = s.grid()
        b, a, abar = s.betas.double(), s.alphas.double(), s.alphas_cumprod.double()
        for n in range(1, 6):
            assert g.times[n] == n
            assert g.beta[n] == pytest.approx(b[n].item(), rel=1e-6)
            assert g.coef_x0[n] == pytest.approx(
                (abar[n - 1].sqrt() * b[n] / (1 - abar[n])).item(), rel=1e-6
            )
            assert g.coef_xt[n] == pytest.approx(
                (a[n].sqrt() * (1 - abar[n - 1]) / (1 - abar[n])).item(), rel=1e-6
            )
            post = (b[n] * (1 - abar[n - 1]) / (1 - abar[n])).item()
            assert g.posterior_var[n] == pytest.approx(post, rel=1e-6, abs=1e-12)
            expected = post if variance == "posterior" else b[n].item()
            assert s.kernel_variance[n].item() == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_sub_grids_take_evenly_spaced_steps():
    s = VPDiscreteSchedule(50)
    assert s.grid(5).times == (0.0, 10.0, 20.0, 30.0, 40.0, 50.0)
    assert s.grid(50).times == tuple(float(n) for n in range(51))
    assert VPSDESchedule().grid(4).times == (0.0, 0.25, 0.5, 0.75, 1.0)
    with pytest.raises(ValueError, match="at most 50"):
        s.grid(51)
    with pytest.raises(ValueError, match="positive int"):
        s.grid(0)


def test_schedules_hold_no_persistent_state_and_follow_dtype_casts():
    s = VPDiscreteSchedule(5)
    assert s.state_dict() == {} and list(s.parameters()) == []
    assert s.double().alphas_cumprod.dtype == torch.float64
    with pytest.raises(ValueError, match="variance"):
        VPDiscreteSchedule(5, variance="exact")
    with pytest.raises(ValueError, match="betas"):
        LinearDiscreteSchedule(10, beta_start=0.0)


def test_base_schedules_are_abstract():
    from torchrl_sym.diffusion.schedules import ContinuousSchedule, NoiseSchedule

    for cls in (NoiseSchedule, ContinuousSchedule):
        with pytest.raises(TypeError, match="abstract"):
            cls()
