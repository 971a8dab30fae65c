"""Sf-AC's distribution-approximation toy (specs/sfac.md §8), on a 1-D action grid.

Behavior ``π_D``: a mixture of three Gaussians (weights 0.5 / 0.3 / 0.2, means −0.6 / 0 / 0.6,
std 0.1) truncated to (−1, 1); ``Q(a) = a``; the regularized target is the N = 2 policy
``π* = π_D [1 + (Q − λ)/τ₂]₊`` (``τ₂ = 2 c₂ τ``, λ normalizing). A single tanh-Gaussian
``π_θ(a) = N(atanh a; μ, σ²) / (1 − a²)`` is fitted to ``π*`` by minimizing, on the grid,

* ``forward_kl``: ``−Σ π* log π_θ`` (= KL(π*‖π_θ) + const; the weighted MLE, mode covering);
* ``js``: ``JS(π_θ, π*)`` (exact, including the mass of ``π_θ`` outside ``supp π*``);
* ``jeffreys``: ``Σ_{π*>0} π* f(π_θ/π*)`` with Jeffreys' ``f`` (restricted to ``supp π*``: the full
  divergence is infinite there for any full-support ``π_θ``).

The forward-KL fit has a closed form, the moments of ``u = atanh a`` under ``π*``, which the tests
use to check the optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from torchrl_sym.divergences import get_divergence, n2_policy

__all__ = [
    "FIT_OBJECTIVES",
    "MoGTarget",
    "fit_tanh_normal",
    "make_mog_target",
    "tanh_normal_density",
]

FIT_OBJECTIVES = ("forward_kl", "js", "jeffreys")
MOG_WEIGHTS = (0.5, 0.3, 0.2)
MOG_MEANS = (-0.6, 0.0, 0.6)
MOG_STD = 0.1


@dataclass
class MoGTarget:
    """The grid ``a`` (open interval (−1, 1)), its spacing, ``π_D``, ``π*`` (densities) and λ."""

    grid: torch.Tensor
    dx: float
    behavior: torch.Tensor
    target: torch.Tensor
    lam: float
    tau2: float


def make_mog_target(
    *, tau: float = 0.2, divergence: str = "jeffreys", n_grid: int = 10_000
) -> MoGTarget:
    """π_D on an ``n_grid``-point grid of (−1, 1) and the N = 2 policy of ``divergence`` at ``tau``."""
    a = torch.linspace(-1.0, 1.0, n_grid + 2, dtype=torch.float64)[1:-1]
    dx = float(a[1] - a[0])
    w, m = (
        torch.tensor(MOG_WEIGHTS, dtype=torch.float64),
        torch.tensor(MOG_MEANS, dtype=torch.float64),
    )
    density = (w * torch.exp(-0.5 * ((a[:, None] - m) / MOG_STD) ** 2)).sum(-1) / (
        MOG_STD * math.sqrt(2 * math.pi)
    )
    density = density / (density.sum() * dx)  # truncation to (−1, 1)
    tau2 = get_divergence(divergence).n2_tau(tau)
    probs, lam = n2_policy(density * dx, a, tau2)
    return MoGTarget(grid=a, dx=dx, behavior=density, target=probs / dx, lam=float(lam), tau2=tau2)


def tanh_normal_density(a: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``N(atanh a; μ, σ²) / (1 − a²)`` on (−1, 1)."""
    u = torch.atanh(a)
    sigma = log_sigma.exp()
    return torch.exp(-0.5 * ((u - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi) * (1 - a**2))


def objective(name: str, target: MoGTarget, density: torch.Tensor) -> torch.Tensor:
    """The value of fit objective ``name`` for the density ``π_θ`` on the grid (see module doc)."""
    p_star, dx = target.target, target.dx
    support = p_star > 0
    if name == "forward_kl":
        return -(p_star * torch.log(density.clamp_min(1e-300))).sum() * dx
    if name == "js":
        js = get_divergence("js")
        inside = (p_star[support] * js.f(density[support] / p_star[support])).sum()
        outside = 0.5 * math.log(2.0) * density[~support].sum()  # q·f(p/q) → p·lim f(t)/t as q → 0
        return (inside + outside) * dx
    if name == "jeffreys":
        jeffreys = get_divergence("jeffreys")
        return (
            p_star[support] * jeffreys.f(density[support].clamp_min(1e-300) / p_star[support])
        ).sum() * dx
    raise ValueError(f"Unknown fit objective {name!r}; expected one of {FIT_OBJECTIVES}.")


def fit_tanh_normal(
    name: str, target: MoGTarget, *, inits=((-0.5, -1.0), (0.0, -1.0), (0.5, -1.0), (0.5, -2.5))
) -> tuple[float, float]:
    """``(μ, σ)`` minimizing objective ``name`` (L-BFGS from each init, the best kept; log σ ∈ [−5, 2])."""
    best = None
    for mu0, ls0 in inits:
        mu = torch.tensor(float(mu0), dtype=torch.float64, requires_grad=True)
        ls = torch.tensor(float(ls0), dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS(
            [mu, ls],
            max_iter=500,
            tolerance_grad=1e-12,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure(opt=opt, mu=mu, ls=ls):
            opt.zero_grad()
            value = objective(
                name, target, tanh_normal_density(target.grid, mu, ls.clamp(-5.0, 2.0))
            )
            value.backward()
            return value

        opt.step(closure)
        with torch.no_grad():
            value = float(
                objective(name, target, tanh_normal_density(target.grid, mu, ls.clamp(-5.0, 2.0)))
            )
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, float(mu.detach()), float(ls.detach().clamp(-5.0, 2.0).exp()))
    if best is None:
        raise RuntimeError(f"No finite fit for objective {name!r}.")
    return best[1], best[2]
