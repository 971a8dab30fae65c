"""f-divergences (torchrl_sym.divergences) against sympy, closed forms and the spec's tables.

Sf-AC §2–4 and §10 tests 1–8 (docs/specs/sfac.md). Everything runs in float64.
"""

from __future__ import annotations

import math
import re
import warnings
from fractions import Fraction as F
from pathlib import Path

import pytest
import sympy as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrl_sym.divergences import (
    DIVERGENCE_NAMES,
    KAPPA_MODES,
    FDivergence,
    RadiusOfConvergenceWarning,
    divergence_from_densities,
    get_divergence,
    n2_policy,
    n2_policy_weight,
    n3_policy_ratio,
    n3_policy_weight,
    pearson_chi,
)

SYMMETRIC = ("jeffreys", "js", "gan")
LN2 = math.log(2.0)
DT = torch.float64

# Spec §2 table: c_2 .. c_7.
C_TABLE = {
    "jeffreys": [F(1), F(-1, 2), F(1, 3), F(-1, 4), F(1, 5), F(-1, 6)],
    "js": [F(1, 8), F(-1, 16), F(7, 192), F(-3, 128), F(31, 1920), F(-3, 256)],
    "gan": [F(1, 4), F(-1, 8), F(7, 96), F(-3, 64), F(31, 960), F(-3, 128)],
    "forward_kl": [F(1, 2), F(-1, 6), F(1, 12), F(-1, 20), F(1, 30), F(-1, 42)],
    "reverse_kl": [F(1, 2), F(-1, 3), F(1, 4), F(-1, 5), F(1, 6), F(-1, 7)],
    "pearson_chi2": [F(1), F(0), F(0), F(0), F(0), F(0)],
}
F_PRIME_AT_ONE = {
    "jeffreys": 0.0,
    "js": 0.0,
    "gan": -LN2,
    "forward_kl": 1.0,
    "reverse_kl": -1.0,
    "pearson_chi2": 0.0,
}

# Spec §4 table: (κ, h_1 as (rational part, multiple of ln 2), h_2 .. h_6).
H_TABLE = {
    ("jeffreys", "balanced"): (F(1), (F(1), 0), [F(1, 2), F(-1, 6), F(1, 12), F(-1, 20), F(1, 30)]),
    ("jeffreys", "unit"): (F(1), (F(1), 0), [F(1, 2), F(-1, 6), F(1, 12), F(-1, 20), F(1, 30)]),
    ("jeffreys", "curvature"): (F(2), (F(2), 0), [F(0), F(1, 6), F(-1, 6), F(3, 20), F(-2, 15)]),
    ("js", "balanced"): (
        F(1, 8),
        (F(1, 8), 0),
        [F(1, 16), F(-1, 48), F(1, 192), F(1, 640), F(-3, 640)],
    ),
    ("js", "unit"): (
        F(1),
        (F(1), 0),
        [F(-3, 8), F(13, 48), F(-41, 192), F(113, 640), F(-289, 1920)],
    ),
    ("js", "curvature"): (
        F(1, 4),
        (F(1, 4), 0),
        [F(0), F(1, 48), F(-5, 192), F(17, 640), F(-49, 1920)],
    ),
    ("gan", "balanced"): (
        F(1, 4),
        (F(1, 4), -1),
        [F(1, 8), F(-1, 24), F(1, 96), F(1, 320), F(-3, 320)],
    ),
    ("gan", "unit"): (
        F(1),
        (F(1), -1),
        [F(-1, 4), F(5, 24), F(-17, 96), F(49, 320), F(-43, 320)],
    ),
    ("gan", "curvature"): (
        F(1, 2),
        (F(1, 2), -1),
        [F(0), F(1, 24), F(-5, 96), F(17, 320), F(-49, 960)],
    ),
}


def _sympy_generator(name: str, t: sp.Symbol) -> sp.Expr:
    log = sp.log
    return {
        "forward_kl": t * log(t),
        "reverse_kl": -log(t),
        "pearson_chi2": (t - 1) ** 2,
        "jeffreys": (t - 1) * log(t),
        "js": sp.Rational(1, 2) * (t * log(t) - (1 + t) * log((1 + t) / 2)),
        "gan": t * log(t) - (1 + t) * log(1 + t) + 2 * log(2),
    }[name]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread avoids OpenMP spin-waits under contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _simplex(raw: list[float], floor: float = 0.0) -> torch.Tensor:
    x = torch.tensor(raw, dtype=DT) + floor
    return x / x.sum()


def _positive_simplex(size: int):
    return st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size).map(
        lambda raw: _simplex(raw, floor=0.05)
    )


# ------------------------------------------------------------------ §10.1 Taylor coefficients
@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_taylor_coefficients_match_sympy_and_the_spec_table(name):
    d = get_divergence(name)
    t = sp.Symbol("t", positive=True)
    f = _sympy_generator(name, t)
    assert sp.simplify(f.subs(t, 1)) == 0
    assert d.taylor_coefficient(0) == 0.0
    c1 = sp.diff(f, t).subs(t, 1)
    assert float(c1) == pytest.approx(F_PRIME_AT_ONE[name], abs=1e-15)
    assert d.taylor_coefficient(1) == pytest.approx(float(c1), abs=1e-12)
    derivative = f
    for n in range(1, 8):
        derivative = sp.diff(derivative, t)
        if n < 2:
            continue
        exact = sp.nsimplify(sp.simplify(derivative.subs(t, 1) / sp.factorial(n)))
        assert exact.is_Rational, (name, n, exact)
        table = C_TABLE[name][n - 2]
        assert exact == sp.Rational(table.numerator, table.denominator), (name, n)
        assert d.taylor_coefficient_rational(n) == table
        assert d.taylor_coefficient(n) == pytest.approx(float(exact), abs=1e-12)
    assert d.taylor_coefficients(7) == [float(c) for c in C_TABLE[name]]
    assert d.taylor_coefficients(1) == []
    assert d.curvature == 2 * float(C_TABLE[name][0])


@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_taylor_closed_forms_hold_to_high_order(name):
    # The series of f(1 + x), summed to order 80 at x = 0.3, reproduces f (radius of convergence 1).
    d = get_divergence(name)
    x = 0.3
    series = d.taylor_coefficient(1) * x + sum(d.taylor_coefficient(n) * x**n for n in range(2, 81))
    assert series == pytest.approx(d.f(torch.tensor(1 + x, dtype=DT)).item(), rel=1e-13, abs=1e-15)
    gen = {
        "jeffreys": lambda n: (-1) ** n / (n - 1),
        "js": lambda n: (-1) ** n * (1 - 2.0 ** (1 - n)) / (2 * n * (n - 1)),
        "gan": lambda n: 2 * (-1) ** n * (1 - 2.0 ** (1 - n)) / (2 * n * (n - 1)),
        "forward_kl": lambda n: (-1) ** n / (n * (n - 1)),
        "reverse_kl": lambda n: (-1) ** n / n,
        "pearson_chi2": lambda n: 1.0 if n == 2 else 0.0,
    }[name]
    for n in range(2, 40):
        assert d.taylor_coefficient(n) == pytest.approx(gen(n), rel=1e-14, abs=0)


def test_gan_coefficients_are_twice_js():
    js, gan = get_divergence("js"), get_divergence("gan")
    for n in range(2, 30):
        assert gan.taylor_coefficient_rational(n) == 2 * js.taylor_coefficient_rational(n)


# ------------------------------------------------------------------ generators and derivatives
@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_f_and_f_prime_are_finite_and_correct_on_a_wide_range(name):
    d = get_divergence(name)
    t = torch.logspace(-6, 6, 241, dtype=DT).requires_grad_(True)
    value = d.f(t)
    (autograd,) = torch.autograd.grad(value.sum(), t)
    derivative = d.f_prime(t.detach())
    assert torch.isfinite(value).all() and torch.isfinite(derivative).all()
    torch.testing.assert_close(derivative, autograd, rtol=1e-10, atol=1e-12)
    # against sympy evaluated with 30 significant digits
    s = sp.Symbol("t", positive=True)
    expr = _sympy_generator(name, s)
    dexpr = sp.diff(expr, s)
    for point in (1e-6, 0.01, 0.5, 0.999, 1.001, 3.0, 1e3, 1e6):
        tv = torch.tensor(point, dtype=DT)
        ref = float(expr.subs(s, sp.Float(point, 30)).evalf(30))
        dref = float(dexpr.subs(s, sp.Float(point, 30)).evalf(30))
        assert d.f(tv).item() == pytest.approx(ref, rel=1e-10, abs=1e-15)
        assert d.f_prime(tv).item() == pytest.approx(dref, rel=1e-10, abs=1e-15)
    assert d.f(torch.tensor(1.0, dtype=DT)).item() == 0.0


def test_generators_at_zero_are_their_limits():
    t0 = torch.tensor(0.0, dtype=DT)
    expected = {
        "forward_kl": 0.0,
        "reverse_kl": math.inf,
        "pearson_chi2": 1.0,
        "jeffreys": math.inf,
        "js": 0.5 * LN2,
        "gan": 2 * LN2,
    }
    for name, value in expected.items():
        assert get_divergence(name).f(t0).item() == pytest.approx(value, abs=1e-15)


def test_get_divergence_rejects_unknown_names_listing_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown divergence 'jefreys'.*jeffreys.*js.*gan"):
        get_divergence("jefreys")
    with pytest.raises(ValueError, match="forward_kl, reverse_kl, pearson_chi2"):
        FDivergence("kl")
    assert get_divergence("js") == FDivergence("js")


# --------------------------------------------------------------------------- §10.2 symmetry
@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_symmetry_condition_on_a_grid(name):
    d = get_divergence(name)
    t = torch.logspace(-4, 4, 401, dtype=DT)
    gap = d.f(t) - t * d.f(1 / t)
    linear = {"jeffreys": 0.0, "js": 0.0, "gan": -2 * LN2}.get(name)
    if name in SYMMETRIC:
        assert d.is_symmetric
        # f(t) and t f(1/t) are each O(t ln t): compare the gap at that scale
        scale = 1 + d.f(t).abs() + (t * d.f(1 / t)).abs()
        assert ((gap - linear * (t - 1)).abs() <= 1e-14 * scale).all()
    else:
        # not linear in (t − 1): gap(t) ≠ gap(2)·(t − 1) somewhere (gap(1) = 0 always)
        assert not d.is_symmetric
        two = torch.tensor(2.0, dtype=DT)
        slope = (d.f(two) - two * d.f(1 / two)).item()
        assert (gap - slope * (t - 1)).abs().max() > 1e-2


@pytest.mark.parametrize("name", SYMMETRIC)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_symmetric_divergences_are_symmetric(name, data):
    size = data.draw(st.integers(2, 8))
    p = data.draw(_positive_simplex(size))
    q = data.draw(_positive_simplex(size))
    d = get_divergence(name)
    forward, backward = d.divergence(p, q).item(), d.divergence(q, p).item()
    assert forward >= -1e-15  # GAN's linear term cancels only up to rounding
    assert forward == pytest.approx(backward, rel=1e-12, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gan_is_twice_js_and_js_is_the_mixture_kl(data):
    # zeros allowed: the perspective limits at q = 0 keep both identities exact
    size = data.draw(st.integers(2, 8))
    raw = st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 3.0]), min_size=size, max_size=size)
    p_raw = data.draw(raw.filter(lambda v: sum(v) > 0))
    q_raw = data.draw(raw.filter(lambda v: sum(v) > 0))
    p, q = _simplex(p_raw), _simplex(q_raw)
    js, gan, kl = (get_divergence(n) for n in ("js", "gan", "forward_kl"))
    d_js = js.divergence(p, q).item()
    assert gan.divergence(p, q).item() == pytest.approx(2 * d_js, rel=1e-12, abs=1e-12)
    m = 0.5 * (p + q)
    mixture = 0.5 * kl.divergence(p, m).item() + 0.5 * kl.divergence(q, m).item()
    assert d_js == pytest.approx(mixture, rel=1e-12, abs=1e-12)
    assert js.divergence(q, p).item() == pytest.approx(d_js, rel=1e-12, abs=1e-12)
    assert 0 <= d_js <= LN2 + 1e-15


def test_disjoint_supports_use_the_perspective_limit():
    p = torch.tensor([1.0, 0.0], dtype=DT)
    q = torch.tensor([0.0, 1.0], dtype=DT)
    assert get_divergence("js").divergence(p, q).item() == pytest.approx(LN2, abs=1e-15)
    assert get_divergence("gan").divergence(p, q).item() == pytest.approx(2 * LN2, abs=1e-15)
    assert get_divergence("reverse_kl").divergence(p, q).item() == math.inf
    assert get_divergence("jeffreys").divergence(p, q).item() == math.inf
    # forward KL ignores q where p = 0
    p = torch.tensor([0.5, 0.5, 0.0], dtype=DT)
    q = torch.tensor([0.25, 0.25, 0.5], dtype=DT)
    assert get_divergence("forward_kl").divergence(p, q).item() == pytest.approx(LN2, abs=1e-15)


@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_divergence_gradients_are_finite_with_zeros_off_the_support(name):
    # entries with q = 0 (and p = 0) must not leak 0·inf = NaN into the gradient
    p = torch.tensor([0.0, 0.3, 0.7], dtype=DT, requires_grad=True)
    q = torch.tensor([0.0, 0.5, 0.5], dtype=DT, requires_grad=True)
    value = get_divergence(name).divergence(p, q)
    grad_p, grad_q = torch.autograd.grad(value, (p, q))
    assert torch.isfinite(value)
    assert torch.isfinite(grad_p[1:]).all() and torch.isfinite(grad_q[1:]).all()
    assert not grad_p.isnan().any() and not grad_q.isnan().any()
    # d/dp_i of Σ q f(p/q) is f'(p_i/q_i)
    d = get_divergence(name)
    torch.testing.assert_close(grad_p[1:], d.f_prime(p.detach()[1:] / q.detach()[1:]))


def test_divergence_reduces_along_dim():
    p = _simplex([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]).reshape(2, 3)
    q = torch.full((2, 3), 1 / 3, dtype=DT)
    p = p / p.sum(-1, keepdim=True)
    d = get_divergence("jeffreys")
    along_last = d.divergence(p, q)
    along_first = d.divergence(p.T, q.T, dim=0)
    assert along_last.shape == (2,)
    torch.testing.assert_close(along_first, along_last)
    row = (p[0] - q[0]) * torch.log(p[0] / q[0])
    assert along_last[0].item() == pytest.approx(row.sum().item(), rel=1e-14)


# --------------------------------------------------------------- §10.3 Gaussian closed form
@pytest.mark.parametrize(("mu1", "s1", "mu2", "s2"), [(0.0, 1.0, 0.5, 1.5), (-1.0, 0.7, 0.3, 0.9)])
def test_jeffreys_between_gaussians_by_quadrature(mu1, s1, mu2, s2):
    x = torch.linspace(-25.0, 25.0, 20001, dtype=DT)
    dx = (x[1] - x[0]).item()

    def normal(mu, s):
        return torch.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    p_x, q_x = normal(mu1, s1), normal(mu2, s2)
    assert (q_x > 0).all() and (p_x > 0).all()
    closed = 0.5 * (
        (s1**2 - s2**2) ** 2 / (s1**2 * s2**2) + (mu1 - mu2) ** 2 * (1 / s1**2 + 1 / s2**2)
    )
    jeffreys = get_divergence("jeffreys")
    quad = divergence_from_densities(jeffreys, p_x, q_x, dx).item()
    assert quad == pytest.approx(closed, abs=1e-6)
    # and the two KLs it is the sum of
    kl = get_divergence("forward_kl")
    kl_pq = divergence_from_densities(kl, p_x, q_x, dx).item()
    kl_closed = math.log(s2 / s1) + (s1**2 + (mu1 - mu2) ** 2) / (2 * s2**2) - 0.5
    assert kl_pq == pytest.approx(kl_closed, abs=1e-6)
    assert divergence_from_densities("jeffreys", q_x, p_x, dx).item() == pytest.approx(
        closed, abs=1e-6
    )


# -------------------------------------------------------------------- §10.4 Pearson–Vajda
def _close_pair(data, size: int, max_dev: float) -> tuple[torch.Tensor, torch.Tensor]:
    q = data.draw(_positive_simplex(size))
    raw = torch.tensor(
        data.draw(st.lists(st.floats(-1.0, 1.0), min_size=size, max_size=size)), dtype=DT
    )
    delta = raw - (q * raw).sum()  # E_q[δ] = 0 so that p sums to 1
    scale = delta.abs().max()
    if scale < 1e-3:
        delta = torch.zeros(size, dtype=DT)
        delta[0], delta[1] = 1.0 / q[0], -1.0 / q[1]
        scale = delta.abs().max()
    delta = delta * (max_dev / scale)
    return q * (1 + delta), q


@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_pearson_vajda_partial_sums_converge_inside_the_radius(name, data):
    size = data.draw(st.integers(2, 8))
    max_dev = data.draw(st.floats(0.05, 0.3))
    p, q = _close_pair(data, size, max_dev)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert ((p / q - 1).abs() <= 0.3 + 1e-12).all()
    d = get_divergence(name)
    exact = d.divergence(p, q).item()
    assert exact > 0
    x = (p / q - 1).abs()
    orders = torch.arange(201, dtype=DT)
    abs_moments = (q * x[None, :] ** orders[:, None]).sum(-1).tolist()  # E_Q|x|ⁿ, n = 0..200
    chi = [pearson_chi(p, q, n).item() for n in range(13)]
    abs_c = [abs(d.taylor_coefficient(n)) for n in range(201)]
    for order in range(2, 13):
        partial = d.pearson_vajda(p, q, order).item()
        # the series equals Σ c_n χⁿ_P term by term
        terms = sum(d.taylor_coefficient(n) * chi[n] for n in range(2, order + 1))
        assert partial == pytest.approx(terms, rel=1e-12, abs=1e-15)
        # the remainder is bounded by the tail Σ_{n>N} |c_n| E_Q|x|ⁿ
        tail = sum(abs_c[n] * abs_moments[n] for n in range(order + 1, 201))
        assert abs(partial - exact) <= tail + 1e-10 * exact  # + rounding of D_f near t = 1
    s10 = d.pearson_vajda(p, q, 10).item()
    assert abs(s10 - exact) < 1e-4 * exact


def test_pearson_vajda_warns_outside_the_radius_of_convergence():
    p = torch.tensor([0.05, 0.95], dtype=DT)
    q = torch.tensor([0.5, 0.5], dtype=DT)  # p/q − 1 = 0.9 at most: inside, no warning
    d = get_divergence("jeffreys")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.pearson_vajda(p, q, 6)
    p = torch.tensor([0.9, 0.1], dtype=DT)
    q = torch.tensor([0.3, 0.7], dtype=DT)  # p/q − 1 = 2
    with pytest.warns(RadiusOfConvergenceWarning, match=r"max \|p/q - 1\| = 2 > 1") as record:
        value = d.pearson_vajda(p, q, 6)
    assert len(record) == 1
    assert torch.isfinite(value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.pearson_vajda(p, q, 6, warn=False)


def test_pearson_chi_low_orders_and_support():
    p = _simplex([1.0, 2.0, 3.0])
    q = _simplex([3.0, 2.0, 1.0])
    assert pearson_chi(p, q, 0).item() == pytest.approx(1.0, abs=1e-15)
    assert pearson_chi(p, q, 1).item() == pytest.approx(0.0, abs=1e-15)
    chi2 = ((p - q) ** 2 / q).sum().item()
    assert pearson_chi(p, q, 2).item() == pytest.approx(chi2, rel=1e-14)
    assert get_divergence("pearson_chi2").divergence(p, q).item() == pytest.approx(chi2, rel=1e-14)
    q0 = torch.tensor([0.0, 0.5, 0.5], dtype=DT)
    assert pearson_chi(p, q0, 2).item() == math.inf
    assert pearson_chi(torch.tensor([0.0, 0.5, 0.5], dtype=DT), q0, 2).item() == 0.0


# --------------------------------------------------------------------- §10.5 decomposition
@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
@pytest.mark.parametrize("kappa", [0.1, 1.0, 2.0])
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_asymmetric_plus_conditional_symmetry_is_the_divergence(name, kappa, data):
    size = data.draw(st.integers(2, 8))
    pi_star = data.draw(_positive_simplex(size))
    pi_theta = data.draw(_positive_simplex(size))
    d = get_divergence(name)
    kl_term, sym_term = d.decompose(pi_theta, pi_star, kappa)
    total = d.divergence(pi_theta, pi_star).item()
    assert (kl_term + sym_term).item() == pytest.approx(total, rel=1e-12, abs=1e-12)
    kl = get_divergence("forward_kl").divergence(pi_star, pi_theta).item()
    assert kl_term.item() == pytest.approx(kappa * kl, rel=1e-12, abs=1e-13)
    r = pi_theta / pi_star
    h_mean = (pi_star * d.h(r, kappa)).sum().item()
    assert sym_term.item() == pytest.approx(h_mean, rel=1e-12, abs=1e-13)


def test_jeffreys_unit_split_is_the_two_kls():
    pi_star = _simplex([1.0, 2.0, 3.0, 4.0])
    pi_theta = _simplex([2.0, 2.0, 1.0, 5.0])
    kl = get_divergence("forward_kl")
    kl_term, sym_term = get_divergence("jeffreys").decompose(pi_theta, pi_star, "unit")
    assert kl_term.item() == pytest.approx(kl.divergence(pi_star, pi_theta).item(), rel=1e-13)
    assert sym_term.item() == pytest.approx(kl.divergence(pi_theta, pi_star).item(), rel=1e-13)


# ------------------------------------------------------------------ §10.6 h_n coefficients
@pytest.mark.parametrize(("name", "mode"), list(H_TABLE))
def test_symmetry_coefficients_match_the_spec_table(name, mode):
    d = get_divergence(name)
    kappa, (h1_rational, h1_ln2), higher = H_TABLE[(name, mode)]
    assert d.kappa(mode) == float(kappa)
    h = d.symmetry_coefficients(d.kappa(mode), 6)
    assert h == d.symmetry_coefficients(mode, 6)
    assert h[0] == pytest.approx(float(h1_rational) + h1_ln2 * LN2, abs=1e-15)
    for n, expected in enumerate(higher, start=2):
        # exact: c_n (rational) + κ(−1)^{n+1}/n with rational κ
        exact = d.taylor_coefficient_rational(n) + kappa * F((-1) ** (n + 1), n)
        assert exact == expected, (name, mode, n)
        assert h[n - 1] == pytest.approx(float(expected), abs=1e-15)


@pytest.mark.parametrize("name", DIVERGENCE_NAMES)
def test_h2_vanishes_iff_kappa_is_the_curvature(name):
    d = get_divergence(name)
    for kappa in [0.05, 0.125, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, d.curvature]:
        h2 = d.symmetry_coefficients(kappa, 2)[1]
        assert (abs(h2) < 1e-15) == (kappa == d.curvature)
    assert d.symmetry_coefficients("curvature", 2)[1] == 0.0
    assert d.symmetry_coefficients("balanced", 2)[1] == pytest.approx(d.taylor_coefficient(2) / 2)


def test_jeffreys_unit_series_sums_to_r_log_r():
    h = get_divergence("jeffreys").symmetry_coefficients(1.0, 60)
    r = 1.4
    series = sum(h[n - 1] * (r - 1) ** n for n in range(2, 61))
    assert series == pytest.approx(r * math.log(r) - (r - 1), abs=1e-10)


def test_kappa_modes_and_errors():
    d = get_divergence("js")
    assert (d.kappa("balanced"), d.kappa("unit"), d.kappa("curvature")) == (0.125, 1.0, 0.25)
    assert d.kappa(0.3) == 0.3 and d.kappa(2) == 2.0
    with pytest.raises(ValueError, match=r"'balance'.*balanced.*unit.*curvature"):
        d.kappa("balance")
    for bad in (0.0, -1.0, math.nan, True, None):
        with pytest.raises(ValueError, match="kappa"):
            d.kappa(bad)
    assert d.n2_tau(1.0) == 0.25
    assert get_divergence("jeffreys").n2_tau(0.5) == 1.0
    assert get_divergence("gan").n2_tau(1.0) == 0.5


# --------------------------------------------------------------------- §10.7 N = 2 policy
def _sparse_value_loss(pi_d, q, v, alpha):
    z = 1 + (q - v) / (2 * alpha)
    return (pi_d * (torch.where(z > 0, z * z, torch.zeros_like(z)) + v / alpha)).sum()


@pytest.mark.parametrize("name", SYMMETRIC)
@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_n2_policy_normalizes_satisfies_kkt_and_matches_the_sparse_value(name, data):
    size = data.draw(st.integers(2, 10))
    pi_d = _simplex(data.draw(st.lists(st.floats(0.0, 1.0), min_size=size, max_size=size)), 0.02)
    q = torch.tensor(
        data.draw(st.lists(st.floats(-3.0, 3.0), min_size=size, max_size=size)), dtype=DT
    )
    tau = data.draw(st.sampled_from([0.05, 0.2, 1.0, 3.0]))
    d = get_divergence(name)
    c2 = d.taylor_coefficient(2)
    tau2 = d.n2_tau(tau)
    pi_star, lam = n2_policy(pi_d, q, tau2)
    assert lam.shape == ()
    assert pi_star.sum().item() == pytest.approx(1.0, abs=1e-14)
    assert (pi_star >= 0).all()
    lhs = 2 * c2 * (pi_star / pi_d - 1)
    rhs = (q - lam) / tau
    active = pi_star > 0
    torch.testing.assert_close(lhs[active], rhs[active], rtol=1e-9, atol=1e-9)
    assert (rhs[~active] <= -2 * c2 + 1e-9).all()
    torch.testing.assert_close(pi_star, pi_d * n2_policy_weight(q - lam, tau2), rtol=1e-12, atol=0)

    # the sparse value loss E_D[1(z>0) z² + V/α], α = τ₂/2, is minimized at V = λ
    alpha = tau2 / 2

    def slope(v):
        z = 1 + (q - v) / (2 * alpha)
        return (1 / alpha) * (1 - (pi_d * z.clamp(min=0)).sum().item())

    lo, hi = q.min().item() - 1.0, q.max().item() + tau2 + 1.0
    assert slope(lo) < 0 < slope(hi)
    for _ in range(64):  # interval width ≲ 10 · 2⁻⁶⁴
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    v_star = 0.5 * (lo + hi)
    assert v_star == pytest.approx(lam.item(), abs=1e-6)
    at_lam = _sparse_value_loss(pi_d, q, lam, alpha).item()
    for step in (1e-3, -1e-3):
        assert _sparse_value_loss(pi_d, q, lam + step, alpha).item() > at_lam


def test_n2_policy_hand_example_batched_and_zero_behavior_mass():
    pi_d = torch.tensor([[0.2, 0.3, 0.5, 0.0], [0.25, 0.25, 0.25, 0.25]], dtype=DT)
    q = torch.tensor([[1.0, 0.0, -1.0, 5.0], [0.0, 0.0, 0.0, 0.0]], dtype=DT)
    pi_star, lam = n2_policy(pi_d, q, 0.5)
    # row 0: active {0, 1}; λ = (0.2·1.5 + 0.3·0.5 − 0.5)/0.5 = −0.1
    torch.testing.assert_close(lam, torch.tensor([-0.1, 0.0], dtype=DT))
    torch.testing.assert_close(
        pi_star, torch.tensor([[0.64, 0.36, 0.0, 0.0], [0.25] * 4], dtype=DT)
    )
    # the action dimension may be any dim
    pi_t, lam_t = n2_policy(pi_d.T, q.T, 0.5, dim=0)
    torch.testing.assert_close(pi_t, pi_star.T)
    torch.testing.assert_close(lam_t, lam)
    with pytest.raises(ValueError, match="tau2"):
        n2_policy(pi_d, q, 0.0)


def test_n2_policy_with_all_actions_active_is_the_mean_q():
    pi_d = _simplex([1.0, 2.0, 3.0])
    q = torch.tensor([0.1, 0.0, -0.1], dtype=DT)
    pi_star, lam = n2_policy(pi_d, q, 10.0)
    assert lam.item() == pytest.approx((pi_d * q).sum().item(), abs=1e-15)
    assert (pi_star > 0).all()


# --------------------------------------------------------------------- §10.8 N = 3 root
@pytest.mark.parametrize(
    ("name", "threshold"), [("jeffreys", 2 / 3), ("js", 1 / 12), ("gan", 1 / 6)]
)
def test_n3_root_is_real_exactly_below_the_threshold(name, threshold):
    d = get_divergence(name)
    c2, c3 = d.taylor_coefficient(2), d.taylor_coefficient(3)
    assert c2**2 / (-3 * c3) == pytest.approx(threshold, rel=1e-15)
    y = torch.linspace(-5 * threshold, 5 * threshold, 1001, dtype=DT)
    y = torch.cat(
        [y, torch.tensor([threshold, threshold * (1 - 1e-9), threshold * (1 + 1e-9)], dtype=DT)]
    )
    x = n3_policy_ratio(y, c2, c3)
    real = torch.isfinite(x)
    assert torch.equal(real, y <= threshold)
    # the returned root satisfies the N = 3 stationarity condition and is the one at x = 0 for A = 0
    torch.testing.assert_close((2 * c2 * x + 3 * c3 * x * x)[real], y[real], rtol=1e-12, atol=1e-12)
    naive = (-2 * c2 + torch.sqrt(4 * c2**2 + 12 * c3 * y[real])) / (6 * c3)
    torch.testing.assert_close(x[real], naive, rtol=1e-9, atol=1e-12)
    assert n3_policy_ratio(torch.zeros((), dtype=DT), c2, c3).item() == 0.0
    # at the threshold the double root is x = −c₂/(3c₃)
    at = n3_policy_ratio(torch.tensor(threshold, dtype=DT), c2, c3).item()
    assert at == pytest.approx(-c2 / (3 * c3), rel=1e-7)
    w = n3_policy_weight(y, c2, c3)
    assert torch.equal(torch.isnan(w), ~real)
    assert (w[real] >= 0).all()


def test_n3_root_tends_to_the_n2_root():
    c2 = 0.5
    y = torch.linspace(-0.8, 0.8, 41, dtype=DT)  # real roots for every c3 below (|c3| ≤ 0.1)
    n2_root = y / (2 * c2)
    previous = math.inf
    for c3 in (-1e-1, -1e-2, -1e-3, -1e-6, -1e-12, 0.0, 1e-12):
        err = (n3_policy_ratio(y, c2, c3) - n2_root).abs().max().item()
        assert err <= previous or err < 1e-10
        previous = err
    torch.testing.assert_close(n3_policy_ratio(y, c2, 0.0), n2_root, rtol=0, atol=1e-15)
    torch.testing.assert_close(n3_policy_ratio(y, c2, -1e-12), n2_root, rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="c2"):
        n3_policy_ratio(y, 0.0, -0.1)


def test_reverse_kl_with_unit_kappa_has_no_symmetry_term():
    # h(r) = −ln r + ln r ≡ 0: the reverse-KL generator is pure KL(π*‖π_θ)
    d = get_divergence("reverse_kl")
    assert d.symmetry_coefficients("unit", 8) == [0.0] * 8
    _, sym_term = d.decompose(_simplex([1.0, 2.0, 3.0]), _simplex([3.0, 1.0, 1.0]), "unit")
    assert sym_term.item() == pytest.approx(0.0, abs=1e-15)


# -------------------------------------------------------------- docs/sfac.md tables = the code
def _doc_section() -> str:
    text = (Path(__file__).resolve().parents[1] / "docs" / "sfac.md").read_text()
    start = text.index("## The f-divergence family")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _doc_number(cell: str) -> float:
    """'1/4 - ln 2', '-ln 2', '-3/128', '0' -> float."""
    cell = cell.replace(" ", "")
    ln2_terms = cell.count("ln2")
    assert ln2_terms <= 1, cell
    sign = -1.0 if "-ln2" in cell else 1.0
    rational = cell.replace("-ln2", "").replace("+ln2", "").replace("ln2", "")
    value = float(F(rational)) if rational else 0.0
    return value + (sign * LN2 if ln2_terms else 0.0)


def test_docs_tables_match_the_code():
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in _doc_section().splitlines()
        if re.match(r"\| `\w+` \|", line)
    ]
    c_rows = [r for r in rows if len(r) == 11]
    h_rows = [r for r in rows if len(r) == 9]
    assert {r[0].strip("`") for r in c_rows} == set(DIVERGENCE_NAMES)
    for row in c_rows:
        d = get_divergence(row[0].strip("`"))
        assert _doc_number(row[1]) == pytest.approx(d.taylor_coefficient(1), abs=1e-15)
        assert _doc_number(row[2]) == d.curvature
        assert [F(c) for c in row[3:9]] == [d.taylor_coefficient_rational(n) for n in range(2, 8)]
        assert row[9] == ("yes" if d.is_symmetric else "no")
        assert _doc_number(row[10]) == d.n2_tau(1.0)
    covered = set()
    for row in h_rows:
        d = get_divergence(row[0].strip("`"))
        for mode in row[1].split(" = "):
            covered.add((d.name, mode))
            kappa = d.kappa(mode)
            assert _doc_number(row[2]) == kappa
            h = d.symmetry_coefficients(mode, 6)
            for cell, value in zip(row[3:], h):
                assert _doc_number(cell) == pytest.approx(value, abs=1e-15), (row, mode)
    assert covered == {(n, m) for n in DIVERGENCE_NAMES for m in KAPPA_MODES}


@pytest.mark.parametrize("name", ["js", "gan"])
def test_js_and_gan_are_finite_with_finite_gradients_for_tiny_ratios(name):
    div = get_divergence(name)
    t = torch.tensor(
        [1e-300, 1e-30, 1e-8, 0.3, 0.5, 0.7, 1.0, 3.0], dtype=torch.float64, requires_grad=True
    )
    value = div.f(t)
    assert torch.isfinite(value).all()
    # f(t) → f(0) as t → 0 (½ ln 2 for JS)
    assert float(value[0]) == pytest.approx(
        float(div.f(torch.zeros(1, dtype=torch.float64))[0]), abs=1e-12
    )
    value.sum().backward()
    assert torch.isfinite(t.grad).all()
    torch.testing.assert_close(t.grad, div.f_prime(t.detach()), rtol=1e-9, atol=1e-12)
