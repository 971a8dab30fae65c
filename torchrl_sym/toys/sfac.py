"""Sf-AC's distribution-approximation toy (docs/specs/sfac.md §8), on a 1-D action grid.

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
    "behavior_density",
    "estimator_fit",
    "fit_tanh_normal",
    "make_mog_target",
    "run",
    "sample_behavior",
    "support_objective",
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


def _fit_grid(value_of_density, target: MoGTarget, inits, what: str) -> tuple[float, float]:
    """``(μ, σ)`` minimizing ``value_of_density(π_θ on the grid)`` by L-BFGS from each init (the
    best kept; log σ ∈ [−5, 2])."""
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
            value = value_of_density(tanh_normal_density(target.grid, mu, ls.clamp(-5.0, 2.0)))
            value.backward()
            return value

        opt.step(closure)
        with torch.no_grad():
            value = float(
                value_of_density(tanh_normal_density(target.grid, mu, ls.clamp(-5.0, 2.0)))
            )
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, float(mu.detach()), float(ls.detach().clamp(-5.0, 2.0).exp()))
    if best is None:
        raise RuntimeError(f"No finite fit for {what}.")
    return best[1], best[2]


def fit_tanh_normal(
    name: str, target: MoGTarget, *, inits=((-0.5, -1.0), (0.0, -1.0), (0.5, -1.0), (0.5, -2.5))
) -> tuple[float, float]:
    """``(μ, σ)`` minimizing objective ``name`` (L-BFGS from each init, the best kept; log σ ∈ [−5, 2])."""
    return _fit_grid(
        lambda density: objective(name, target, density), target, inits, f"objective {name!r}"
    )


# ------------------------------------------------------------------ (iv) the §4 sample estimator
def behavior_density(a: torch.Tensor) -> torch.Tensor:
    """Exact ``π_D(a)``: the three-Gaussian mixture truncated to (−1, 1) (normalized by erf)."""
    w = torch.tensor(MOG_WEIGHTS, dtype=torch.float64)
    m = torch.tensor(MOG_MEANS, dtype=torch.float64)
    z = (a.to(torch.float64)[..., None] - m) / MOG_STD
    mix = (w * torch.exp(-0.5 * z**2)).sum(-1) / (MOG_STD * math.sqrt(2 * math.pi))
    cdf = lambda x: 0.5 * (1 + torch.erf((x - m) / (MOG_STD * math.sqrt(2))))  # noqa: E731
    inside = (w * (cdf(torch.tensor(1.0, dtype=torch.float64)) - cdf(torch.tensor(-1.0)))).sum()
    return mix / inside


def sample_behavior(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` exact draws of ``π_D`` (mixture draws outside (−1, 1) are redrawn)."""
    w = torch.tensor(MOG_WEIGHTS, dtype=torch.float64)
    m = torch.tensor(MOG_MEANS, dtype=torch.float64)
    out = torch.empty(0, dtype=torch.float64)
    while out.numel() < n:
        k = torch.multinomial(w, n, replacement=True, generator=generator)
        x = m[k] + MOG_STD * torch.randn(n, generator=generator, dtype=torch.float64)
        out = torch.cat([out, x[(x > -1) & (x < 1)]])
    return out[:n]


def support_objective(
    divergence: str, target: MoGTarget, density: torch.Tensor, *, kappa="balanced", drop_linear=True
) -> torch.Tensor:
    """``Σ_{π*>0} π* [f(r) − h₁(r − 1)] dx`` (``r = π_θ/π*``; without ``− h₁(r − 1)`` if not
    ``drop_linear``): the large-sample, no-clip, infinite-order limit of the §4 estimator up to a
    constant, i.e. what the (iv) fits converge to."""
    div = get_divergence(divergence)
    kappa_value = div.kappa(kappa)
    support = target.target > 0
    p_star = target.target[support]
    r = density[support].clamp_min(1e-300) / p_star
    value = div.f(r)
    if drop_linear:
        value = value - div.symmetry_coefficients(kappa_value, 1)[0] * (r - 1)
    return (p_star * value).sum() * target.dx


def estimator_fit(
    divergence: str,
    target: MoGTarget,
    actions: torch.Tensor,
    *,
    epsilon: float | None,
    n_loss: int | None,
    kappa="balanced",
    keep_linear_term: bool = False,
    max_iter: int = 200,
    init: tuple[float, float] = (0.0, -1.0),
) -> dict:
    """Fit ``(μ, σ)`` of the tanh-Gaussian with Sf-AC's §4 estimator on samples of ``π_D``.

    ``loss = −mean(w₂ log π_θ(a)) + mean(w₂ Σ_{n=n₀}^{N} h_n (r_c − 1)ⁿ)/κ`` with ``a ~ π_D``
    (``actions``), the exact ``w₂ = π*/π_D = [1 + (a − λ)/τ₂]₊`` of ``target`` and the exact
    ``π_D`` density in place of ``π̂_β``; the symmetry term is
    :func:`torchrl_sym.objectives.sfac.conditional_symmetry_term`, the one ``SfACLoss`` uses.
    L-BFGS on the full sample set (a deterministic objective once the samples are drawn).
    Returns ``μ``, ``σ``, the final loss and the fraction of samples whose ratio was clamped.
    """
    from torchrl_sym.objectives.sfac import conditional_symmetry_term

    div = get_divergence(divergence)
    kappa_value = div.kappa(kappa)
    first = 1 if keep_linear_term else 2
    exact = n_loss is None
    h = div.symmetry_coefficients(kappa_value, 1 if exact else max(n_loss, 1))
    if exact:
        series = ()
    else:
        series = tuple((n, h[n - 1]) for n in range(first, n_loss + 1)) if n_loss >= 2 else ()
        low = math.log1p(-epsilon) if epsilon < 1 else None
        high = math.log1p(epsilon)
    a = actions.to(torch.float64)
    log_beta = behavior_density(a).log()
    w2 = (1 + (a - target.lam) / target.tau2).clamp(min=0)
    mu = torch.tensor(float(init[0]), dtype=torch.float64, requires_grad=True)
    ls = torch.tensor(float(init[1]), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [mu, ls],
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-13,
        line_search_fn="strong_wolfe",
    )

    def loss_fn():
        log_pi = tanh_normal_density(a, mu, ls.clamp(-5.0, 2.0)).clamp_min(1e-300).log()
        asym = -(w2 * log_pi).mean()
        if exact:
            support = w2 > 0
            safe_w = torch.where(support, w2, torch.ones_like(w2))
            r = torch.where(support, (log_pi - log_beta - safe_w.log()).exp(), torch.ones_like(w2))
            value = div.h(r, kappa_value) - (0.0 if keep_linear_term else h[0]) * (r - 1)
            csym = torch.where(support, w2 * value, torch.zeros_like(w2))
            return asym + csym.mean() / kappa_value, torch.zeros((), dtype=torch.float64)
        if not series:
            return asym, torch.zeros((), dtype=torch.float64)
        csym, clamped = conditional_symmetry_term(
            log_pi, log_beta, w2, series, log_r_low=low, log_r_high=high
        )
        return asym + csym.mean() / kappa_value, clamped.double().mean()

    def closure():
        opt.zero_grad()
        value, _ = loss_fn()
        value.backward()
        return value

    opt.step(closure)
    with torch.no_grad():
        value, clamped = loss_fn()
    return {
        "mu": float(mu.detach()),
        "sigma": float(ls.detach().clamp(-5.0, 2.0).exp()),
        "loss": float(value),
        "clamped_frac": float(clamped),
    }


# ------------------------------------------------------------------------ recipe entry point
def _density(target: MoGTarget, mu: float, sigma: float) -> torch.Tensor:
    return tanh_normal_density(
        target.grid,
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(math.log(sigma), dtype=torch.float64),
    )


def _tv(target: MoGTarget, p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p - q).abs().sum() * target.dx / 2)


def _summary(target: MoGTarget, mu: float, sigma: float) -> dict:
    d = _density(target, mu, sigma)
    a, dx = target.grid, target.dx
    mean = float((a * d).sum() * dx)
    return {
        "mu": mu,
        "sigma": sigma,
        "mean": mean,
        "std": float((((a - mean) ** 2) * d).sum() * dx) ** 0.5,
        "mass_outside_support": float(d[target.target <= 0].sum() * dx),
        "tv_to_target": _tv(target, d, target.target),
    }


def _fit_limit(divergence: str, target: MoGTarget, kappa) -> tuple[float, float]:
    """The grid fit of :func:`support_objective`: the limit of the (iv) estimator fits."""
    return _fit_grid(
        lambda density: support_objective(divergence, target, density, kappa=kappa),
        target,
        ((0.0, -1.0), (0.5, -1.0), (0.5, -2.5)),
        f"the {divergence} limit",
    )


def run(cfg, out_dir, seed: int = 0) -> dict:
    """Fit the tanh-Gaussian to π* under each objective, for each τ of ``cfg.taus``, and write
    ``toy2d_sfac.png``: densities (left) and the §4 estimator's distance to its limit (right).

    ``cfg``: ``taus``, ``target_divergence`` (whose N = 2 policy is the target), ``n_grid``,
    ``kappa`` and ``estimator`` (``divergences``, ``samples``, ``epsilons``, ``n_losses``,
    ``show_epsilon``, ``show_n_loss``: the estimator fit drawn on the left).
    """
    import matplotlib

    matplotlib.use("Agg")
    from pathlib import Path

    import matplotlib.pyplot as plt

    est = cfg.estimator
    kappa = cfg.get("kappa", "balanced")
    results = {"target_divergence": cfg.target_divergence, "taus": {}}
    taus = list(cfg.taus)
    fig, axes = plt.subplots(len(taus), 2, figsize=(12, 4.2 * len(taus)), squeeze=False)
    colors = {"forward_kl": "C0", "js": "C3", "jeffreys": "C2"}
    labels = {
        "forward_kl": "(i) forward KL (weighted MLE)",
        "js": "(ii) JS, exact",
        "jeffreys": "(iii) Jeffreys on supp π*",
    }
    for row, tau in enumerate(taus):
        target = make_mog_target(
            tau=float(tau), divergence=cfg.target_divergence, n_grid=int(cfg.n_grid)
        )
        support = target.grid[target.target > 0]
        entry = {
            "lambda": target.lam,
            "tau2": target.tau2,
            "support": [float(support.min()), float(support.max())],
            "fits": {},
            "estimator": {},
        }
        ax, ax_tv = axes[row]
        a = target.grid.numpy()
        ax.fill_between(a, target.behavior.numpy(), color="0.85", label="π_D (behavior)")
        ax.plot(a, target.target.numpy(), color="k", lw=2, label="π* (N = 2 target)")
        for name in FIT_OBJECTIVES:
            mu, sigma = fit_tanh_normal(name, target)
            entry["fits"][name] = _summary(target, mu, sigma)
            ax.plot(a, _density(target, mu, sigma).numpy(), color=colors[name], label=labels[name])
        actions = sample_behavior(int(est.samples), torch.Generator().manual_seed(seed))
        for div in est.divergences:
            lim_mu, lim_sigma = _fit_limit(div, target, kappa)
            limit = _density(target, lim_mu, lim_sigma)
            forward = _density(
                target,
                entry["fits"]["forward_kl"]["mu"],
                entry["fits"]["forward_kl"]["sigma"],
            )
            exact = estimator_fit(div, target, actions, epsilon=None, n_loss=None, kappa=kappa)
            exact_d = _density(target, exact["mu"], exact["sigma"])
            sweep = []
            for n_loss in est.n_losses:
                tvs = []
                for eps in est.epsilons:
                    fit = estimator_fit(
                        div, target, actions, epsilon=float(eps), n_loss=int(n_loss), kappa=kappa
                    )
                    d = _density(target, fit["mu"], fit["sigma"])
                    fit.update(
                        epsilon=float(eps),
                        n_loss=int(n_loss),
                        tv_to_limit=_tv(target, d, limit),
                        tv_to_forward_kl=_tv(target, d, forward),
                    )
                    sweep.append(fit)
                    tvs.append(fit["tv_to_limit"])
                    if float(eps) == float(est.show_epsilon) and int(n_loss) == int(
                        est.show_n_loss
                    ):
                        ax.plot(
                            a,
                            d.numpy(),
                            color=colors.get(div, "C4"),
                            ls="--",
                            label=f"(iv) {div} estimator, ε={eps}, N_loss={n_loss}",
                        )
                ax_tv.plot(
                    list(est.epsilons),
                    tvs,
                    marker="o",
                    color=colors.get(div, "C4"),
                    ls=["-", "--", ":", "-."][list(est.n_losses).index(n_loss) % 4],
                    label=f"{div}, N_loss={n_loss}",
                )
            ax_tv.axhline(
                _tv(target, forward, limit), color=colors.get(div, "C4"), lw=0.8, alpha=0.5
            )
            entry["estimator"][div] = {
                "limit": {"mu": lim_mu, "sigma": lim_sigma},
                "exact_series_unclipped": {**exact, "tv_to_limit": _tv(target, exact_d, limit)},
                "forward_kl_tv_to_limit": _tv(target, forward, limit),
                "sweep": sweep,
            }
        ax.set_title(
            f"τ = {tau} ({cfg.target_divergence} N = 2 target, τ₂ = {target.tau2:.3g}, "
            f"λ = {target.lam:.3f}); Q(a) = a"
        )
        ax.set_xlabel("action a")
        ax.set_ylabel("density")
        ax.legend(fontsize=7, loc="upper left")
        ax_tv.set_title(
            f"τ = {tau}: (iv) estimator vs its limit; faint line: (i) forward KL",
        )
        ax_tv.set_xlabel("ratio clip ε")
        ax_tv.set_ylabel("TV( (iv) fit, limit fit )")
        ax_tv.set_xscale("log")
        ax_tv.legend(fontsize=7)
        results["taus"][str(tau)] = entry
    fig.suptitle(
        "Sf-AC toy (docs/specs/sfac.md §8): one tanh-Gaussian fitted to the sparse target π*",
        fontsize=11,
    )
    fig.tight_layout()
    out = Path(out_dir) / "toy2d_sfac.png"
    tmp = out.with_name(".toy2d_sfac.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return results
