"""Sf-AC's 1-D distribution-approximation toy: the target policy and the three grid fits."""

import math

import pytest
import torch

from torchrl_sym.toys import (
    FIT_OBJECTIVES,
    fit_tanh_normal,
    make_mog_target,
    objective,
    tanh_normal_density,
)


@pytest.fixture(scope="module")
def target():
    return make_mog_target(tau=0.2, divergence="jeffreys", n_grid=4000)


@pytest.fixture(scope="module")
def fits(target):
    return {name: fit_tanh_normal(name, target) for name in FIT_OBJECTIVES}


def _density(target, mu, sigma):
    return tanh_normal_density(
        target.grid,
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(math.log(sigma), dtype=torch.float64),
    )


def test_target_is_the_n2_policy(target):
    assert float(target.behavior.sum() * target.dx) == pytest.approx(1.0, abs=1e-9)
    assert float(target.target.sum() * target.dx) == pytest.approx(1.0, abs=1e-9)
    ratio = target.target / target.behavior
    positive = target.target > 0
    # π* = π_D [1 + (Q − λ)/τ₂]₊ with Q(a) = a and τ₂ = 2 c₂ τ = 0.4 for Jeffreys
    torch.testing.assert_close(
        ratio[positive], 1 + (target.grid[positive] - target.lam) / 0.4, rtol=1e-6, atol=1e-9
    )
    assert bool(((target.grid[~positive] - target.lam) / 0.4 <= -1 + 1e-9).all())


def test_forward_kl_fit_matches_its_closed_form(target, fits):
    # −Σ π* log π_θ for a tanh-Gaussian is minimized by the moments of u = atanh a under π*
    u = torch.atanh(target.grid)
    mean = float((u * target.target).sum() * target.dx)
    std = float((((u - mean) ** 2) * target.target).sum().mul(target.dx).sqrt())
    mu, sigma = fits["forward_kl"]
    assert mu == pytest.approx(mean, abs=1e-5) and sigma == pytest.approx(std, abs=1e-5)


def test_each_fit_minimizes_its_own_objective(target, fits):
    for name, (mu, sigma) in fits.items():
        own = float(objective(name, target, _density(target, mu, sigma)))
        assert math.isfinite(own)
        for other, (mu2, sigma2) in fits.items():
            if other != name:
                assert (
                    own <= float(objective(name, target, _density(target, mu2, sigma2))) + 1e-9
                ), (name, other)


def test_js_fit_puts_less_mass_where_the_target_is_zero(target, fits):
    outside = {
        name: float((_density(target, *fit) * target.dx)[target.target == 0].sum())
        for name, fit in fits.items()
    }
    assert outside["js"] < outside["forward_kl"]


def test_unknown_objective(target):
    with pytest.raises(ValueError, match="reverse"):
        objective("reverse", target, target.target)
