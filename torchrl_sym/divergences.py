r"""f-divergences for behavior regularization (pure math on tensors).

This module is the mathematical layer of Sf-AC (``docs/specs/sfac.md`` §2–4, reference: Zhu et al.,
*Symmetric Behavior Regularized Policy Optimization*, arXiv 2508.04225). Every function works
elementwise or reduces along one ``dim``, keeps dtype and device, and is exact in float64 unless
its docstring says it truncates a series.

**f-divergence.** For a convex generator ``f`` with ``f(1) = 0``,

    D_f(P‖Q) = E_Q[f(P/Q)] = Σ_i q_i f(p_i/q_i)            (discrete)

with the perspective limits ``0·f(0/0) = 0`` and ``0·f(p/0) = p · lim_{t→∞} f(t)/t``.

**Symmetry.** ``D_f(P‖Q) = D_f(Q‖P)`` for all P, Q iff ``f(t) − t f(1/t) = c (t − 1)`` (the
linear term integrates to zero). Jeffreys and Jensen–Shannon have c = 0; GAN has
``c = −2 ln 2``. Forward KL (``t ln t``), reverse KL (``−ln t``) and Pearson χ² are not symmetric.

| name           | f(t)                                         | c_n = f⁽ⁿ⁾(1)/n!, n ≥ 2       |
|----------------|----------------------------------------------|-------------------------------|
| forward_kl     | t ln t                                       | (−1)ⁿ/(n(n−1))                |
| reverse_kl     | −ln t                                        | (−1)ⁿ/n                       |
| pearson_chi2   | (t − 1)²                                     | c₂ = 1, c_n = 0 for n > 2     |
| jeffreys       | (t − 1) ln t                                 | (−1)ⁿ/(n−1)                   |
| js             | ½[t ln t − (1 + t) ln((1 + t)/2)]            | (−1)ⁿ(1 − 2^{1−n})/(2n(n−1))  |
| gan            | t ln t − (1 + t) ln(1 + t) + 2 ln 2          | 2 × js                        |

``c_0 = f(1) = 0`` and ``c_1 = f'(1)`` (0 for Jeffreys/JS, ``−ln 2`` for GAN, ±1 for the KLs).
With the ``+2 ln 2`` normalization ``f_gan = 2 f_js − (t − 1) ln 2``, hence ``D_GAN = 2 D_JS``
exactly, and ``D_JS(P‖Q) = ½KL(P‖M) + ½KL(Q‖M)`` with ``M = (P + Q)/2``.

**Pearson–Vajda series.** With ``χⁿ_P(P‖Q) = E_Q[(P/Q − 1)ⁿ]`` (odd orders may be negative),

    D_f(P‖Q) = Σ_{n≥2} c_n χⁿ_P(P‖Q)

(orders 0 and 1 vanish because ``E_Q[P/Q − 1] = 0``). The generators' series in ``x = t − 1``
have radius of convergence 1 (singularity of ``ln t`` at t = 0), so the expansion is faithful
only where ``|P/Q − 1| < 1``; :meth:`FDivergence.pearson_vajda` warns outside that radius. The
truncation at order N is ``D_f^{(N)} = Σ_{n=2}^{N} c_n χⁿ_P``.

**Analytic regularized policy.** Maximizing ``E_π[Q] − τ D_f^{(N)}(π‖π_D)`` with a normalizer λ
gives, with ``x = π*/π_D − 1`` and advantage ``A = Q − λ``, the stationarity condition
``Σ_{n=2}^{N} n c_n x^{n−1} = A/τ`` (π* = 0 where no root ``x ≥ −1`` exists).

* N = 2: ``π* = π_D [1 + A/τ₂]₊`` with ``τ₂ = 2 c₂ τ`` (:func:`n2_policy`); sparse where
  ``A ≤ −τ₂``.
* N = 3: ``2c₂ x + 3c₃ x² = A/τ`` has the root ``x = [−2c₂ + √(4c₂² + 12 c₃ A/τ)]/(6c₃)``,
  which is real iff ``4c₂² + 12 c₃ A/τ ≥ 0``, i.e. ``A/τ ≤ c₂²/(−3c₃)`` when c₃ < 0 (2/3 for
  Jeffreys, 1/12 for JS, 1/6 for GAN), and tends to the N = 2 root ``A/(2c₂τ)`` as c₃ → 0
  (:func:`n3_policy_ratio`).

**Asymmetric / conditional-symmetry split.** For ``r = π_θ/π*`` and any κ, with
``h(r) = f(r) + κ ln r``,

    D_f(π_θ‖π*) = E_{π*}[f(r)] = κ KL(π*‖π_θ) + E_{π*}[h(r)]

(:meth:`FDivergence.decompose`). The Taylor coefficients of h at r = 1 are
``h_n = c_n + κ (−1)^{n+1}/n`` (:meth:`FDivergence.symmetry_coefficients`); κ = f''(1) makes
h₂ = 0. For Jeffreys with κ = 1, ``h(r) = r ln r`` and the split is KL(π*‖π_θ) + KL(π_θ‖π*).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import Tensor

__all__ = [
    "DIVERGENCE_NAMES",
    "KAPPA_MODES",
    "FDivergence",
    "RadiusOfConvergenceWarning",
    "divergence_from_densities",
    "get_divergence",
    "n2_policy",
    "n2_policy_weight",
    "n3_policy_ratio",
    "n3_policy_weight",
    "pearson_chi",
]

DIVERGENCE_NAMES: tuple[str, ...] = (
    "forward_kl",
    "reverse_kl",
    "pearson_chi2",
    "jeffreys",
    "js",
    "gan",
)
KAPPA_MODES: tuple[str, ...] = ("balanced", "unit", "curvature")
_SYMMETRIC = frozenset({"jeffreys", "js", "gan"})
_LN2 = math.log(2.0)


class RadiusOfConvergenceWarning(UserWarning):
    """A Pearson–Vajda series was evaluated where ``|P/Q − 1| > 1`` (it need not converge)."""


# ---------------------------------------------------------------------------------- generators
def _safe_positive(t: Tensor) -> tuple[Tensor, Tensor]:
    """``(t > 0, t with non-positive entries replaced by 1)``: keeps unselected branches finite."""
    positive = t > 0
    return positive, torch.where(positive, t, torch.ones_like(t))


def _js_log_ratio(t: Tensor) -> Tensor:
    """``ln(2t/(1 + t))`` for ``t > 0``: log1p near t = 1 (accuracy of the O(x) terms), a plain log
    for small t (where ``(t − 1)/(t + 1)`` rounds to −1 and log1p would give −inf). The unused
    branch gets a harmless argument so no inf/NaN reaches the gradient."""
    small = t < 0.5
    near = torch.where(small, torch.ones_like(t), t)
    far = torch.where(small, t, torch.ones_like(t))
    return torch.where(
        small, torch.log(2 * far) - torch.log1p(far), torch.log1p((near - 1) / (near + 1))
    )


def _f_js(t: Tensor) -> Tensor:
    # ½[t ln(2t/(1+t)) − ln((1+t)/2)] with log1p on arguments that vanish at t = 1, so the O(x²)
    # value near t = 1 comes from two O(x) terms rather than two O(1) ones.
    positive, ts = _safe_positive(t)
    first = torch.where(positive, ts * _js_log_ratio(ts), torch.zeros_like(t))
    return 0.5 * (first - torch.log1p((t - 1) / 2))


_GENERATORS = {
    "forward_kl": lambda t: torch.xlogy(t, t),
    "reverse_kl": lambda t: -torch.log(t),
    "pearson_chi2": lambda t: (t - 1) ** 2,
    "jeffreys": lambda t: (t - 1) * torch.log(t),
    "js": _f_js,
    "gan": lambda t: 2 * _f_js(t) - _LN2 * (t - 1),
}

_DERIVATIVES = {
    "forward_kl": lambda t: torch.log(t) + 1,
    "reverse_kl": lambda t: -1 / t,
    "pearson_chi2": lambda t: 2 * (t - 1),
    "jeffreys": lambda t: torch.log(t) + 1 - 1 / t,
    "js": lambda t: 0.5 * _js_log_ratio(t),
    "gan": lambda t: -torch.log1p(1 / t),
}

# lim_{t→∞} f(t)/t = f'(∞): the perspective q f(p/q) at q = 0, per unit of p.
_SLOPE_AT_INFINITY = {
    "forward_kl": math.inf,
    "reverse_kl": 0.0,
    "pearson_chi2": math.inf,
    "jeffreys": math.inf,
    "js": 0.5 * _LN2,
    "gan": 0.0,
}

_FIRST_DERIVATIVE_AT_ONE = {
    "forward_kl": 1.0,
    "reverse_kl": -1.0,
    "pearson_chi2": 0.0,
    "jeffreys": 0.0,
    "js": 0.0,
    "gan": -_LN2,
}


def _rational_coefficient(name: str, n: int) -> Fraction:
    """Closed form of ``c_n = f⁽ⁿ⁾(1)/n!`` for n ≥ 2 (all rational)."""
    sign = 1 if n % 2 == 0 else -1
    if name == "forward_kl":
        return Fraction(sign, n * (n - 1))
    if name == "reverse_kl":
        return Fraction(sign, n)
    if name == "pearson_chi2":
        return Fraction(1 if n == 2 else 0)
    if name == "jeffreys":
        return Fraction(sign, n - 1)
    js = sign * (1 - Fraction(1, 2 ** (n - 1))) / (2 * n * (n - 1))
    return js if name == "js" else 2 * js


def _check_order(order: int, what: str) -> int:
    if isinstance(order, bool) or not isinstance(order, int) or order < 0:
        raise ValueError(f"{what} must be a non-negative int, got {order!r}.")
    return order


def _perspective(name: str, p: Tensor, q: Tensor) -> Tensor:
    """Elementwise ``q f(p/q)`` with the limits at q = 0 (``p·f'(∞)``, 0 when p = 0 too)."""
    q_positive, q_safe = _safe_positive(q)
    # t = 1 (f = 0) in the unselected branch, so its gradient is 0 rather than 0·inf = NaN
    ratio = torch.where(q_positive, p / q_safe, torch.ones_like(p))
    inner = q * _GENERATORS[name](ratio)
    slope = _SLOPE_AT_INFINITY[name]
    if math.isinf(slope):
        edge = torch.where(p > 0, torch.full_like(p, math.inf), torch.zeros_like(p))
    else:
        edge = p * slope
    return torch.where(q_positive, inner, edge)


def _deviation(p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
    """``(q > 0, x = (p − q)/q)`` with x = 0 where q = 0 (the caller handles those entries)."""
    q_positive, q_safe = _safe_positive(q)
    return q_positive, torch.where(q_positive, (p - q) / q_safe, torch.zeros_like(p))


@dataclass(frozen=True)
class FDivergence:
    """The f-divergence with generator ``name`` (one of :data:`DIVERGENCE_NAMES`).

    Build it with :func:`get_divergence` or ``FDivergence("jeffreys")``. All tensor methods are
    elementwise in their inputs (``f``, ``f_prime``, ``h``) or reduce along ``dim``.
    """

    name: str

    def __post_init__(self):
        if self.name not in _GENERATORS:
            raise ValueError(_unknown_name_message(self.name))

    # -------------------------------------------------------------------- generator and slope
    def f(self, t: Tensor) -> Tensor:
        """The generator ``f(t)`` elementwise for ``t ≥ 0`` (t = 0 by its limit, possibly +inf)."""
        return _GENERATORS[self.name](t)

    def f_prime(self, t: Tensor) -> Tensor:
        """``f'(t)`` elementwise for ``t > 0``.

        forward_kl ``ln t + 1``; reverse_kl ``−1/t``; pearson_chi2 ``2(t − 1)``; jeffreys
        ``ln t + 1 − 1/t``; js ``½ ln(2t/(1 + t))``; gan ``ln(t/(1 + t))``.
        """
        return _DERIVATIVES[self.name](t)

    @property
    def slope_at_infinity(self) -> float:
        """``lim_{t→∞} f(t)/t`` (``+inf`` for KL/χ²/Jeffreys, ½ ln 2 for JS, 0 for GAN/reverse KL)."""
        return _SLOPE_AT_INFINITY[self.name]

    def h(self, r: Tensor, kappa: float | str) -> Tensor:
        """The conditional-symmetry integrand ``h(r) = f(r) + κ ln r`` elementwise."""
        return self.f(r) + self.kappa(kappa) * torch.log(r)

    # ---------------------------------------------------------------------- Taylor coefficients
    def taylor_coefficient(self, n: int) -> float:
        """``c_n = f⁽ⁿ⁾(1)/n!`` in closed form: ``c_0 = 0``, ``c_1 = f'(1)``, c_n (n ≥ 2) per table."""
        _check_order(n, "n")
        if n == 0:
            return 0.0
        if n == 1:
            return _FIRST_DERIVATIVE_AT_ONE[self.name]
        return float(_rational_coefficient(self.name, n))

    def taylor_coefficient_rational(self, n: int) -> Fraction:
        """``c_n`` as an exact fraction, for n ≥ 2 (every generator's c_n is rational there)."""
        if _check_order(n, "n") < 2:
            raise ValueError(
                f"taylor_coefficient_rational needs n >= 2, got {n} (c_1 may be irrational)."
            )
        return _rational_coefficient(self.name, n)

    def taylor_coefficients(self, order: int) -> list[float]:
        """``[c_2, …, c_order]`` (empty for order < 2)."""
        return [self.taylor_coefficient(n) for n in range(2, _check_order(order, "order") + 1)]

    @property
    def curvature(self) -> float:
        """``f''(1) = 2 c_2``."""
        return 2.0 * self.taylor_coefficient(2)

    @property
    def is_symmetric(self) -> bool:
        """Whether ``f(t) − t f(1/t)`` is linear in ``t − 1`` (Jeffreys, JS, GAN)."""
        return self.name in _SYMMETRIC

    # --------------------------------------------------------------------------- divergences
    def divergence(self, p: Tensor, q: Tensor, dim: int = -1) -> Tensor:
        """Exact discrete ``D_f(P‖Q) = Σ_i q_i f(p_i/q_i)`` along ``dim``.

        Entries with ``q_i = 0`` contribute ``p_i · lim_{t→∞} f(t)/t`` (0 when p_i = 0 too), so
        divergences with disjoint supports are exact (e.g. ``D_JS = ln 2``) or +inf.
        """
        return _perspective(self.name, p, q).sum(dim)

    def pearson_vajda(
        self, p: Tensor, q: Tensor, order: int, dim: int = -1, *, warn: bool = True
    ) -> Tensor:
        """Truncated series ``Σ_{n=2}^{order} c_n χⁿ_P(P‖Q)`` along ``dim`` (0 for order < 2).

        Evaluated as ``Σ_i q_i Σ_n c_n x_iⁿ`` with ``x_i = p_i/q_i − 1``; entries with q_i = 0
        and p_i > 0 give +inf. Emits one :class:`RadiusOfConvergenceWarning` per call (when
        ``warn``) if ``max |p/q − 1| > 1``, where the series need not converge.
        """
        coefficients = self.taylor_coefficients(order)
        q_positive, x = _deviation(p, q)
        if warn and not torch.compiler.is_compiling():
            outside = (x.abs() > 1) | (~q_positive & (p > 0))
            if bool(outside.any()):
                max_dev = torch.where(outside & ~q_positive, math.inf, x.abs()).max()
                warnings.warn(
                    f"pearson_vajda({self.name!r}, order={order}): max |p/q - 1| = "
                    f"{float(max_dev):.4g} > 1 is outside the radius of convergence 1; the "
                    "truncated series is not a faithful approximation of D_f there.",
                    RadiusOfConvergenceWarning,
                    stacklevel=2,
                )
        poly = torch.zeros_like(x)
        for c in reversed(coefficients):  # Horner in x, then the x² factor of the n ≥ 2 terms
            poly = poly * x + c
        inner = q * poly * x * x
        edge = torch.where(
            p > 0,
            torch.full_like(p, math.inf if coefficients else 0.0),
            torch.zeros_like(p),
        )
        return torch.where(q_positive, inner, edge).sum(dim)

    # ------------------------------------------------------------ asymmetric / symmetric split
    def kappa(self, mode: str | float) -> float:
        """κ for a mode: ``"balanced"`` f''(1)/2, ``"unit"`` 1, ``"curvature"`` f''(1), or a float > 0."""
        if isinstance(mode, str):
            if mode == "balanced":
                return 0.5 * self.curvature
            if mode == "unit":
                return 1.0
            if mode == "curvature":
                return self.curvature
            raise ValueError(
                f"Unknown kappa mode {mode!r}; expected one of {KAPPA_MODES} or a positive float."
            )
        if isinstance(mode, bool) or not isinstance(mode, (int, float)):
            raise ValueError(
                f"kappa must be one of {KAPPA_MODES} or a positive float, got {mode!r}."
            )
        value = float(mode)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(
                f"kappa must be a finite positive float (it divides the symmetry term), got {mode!r}; "
                f"or use one of {KAPPA_MODES}."
            )
        return value

    def symmetry_coefficients(self, kappa: float | str, order: int) -> list[float]:
        """``[h_1, …, h_order]`` with ``h_n = c_n + κ (−1)^{n+1}/n`` (Taylor coefficients of
        ``h(r) = f(r) + κ ln r`` at r = 1); ``kappa`` may be a mode name."""
        kappa = self.kappa(kappa) if isinstance(kappa, str) else float(kappa)
        return [
            self.taylor_coefficient(n) + kappa * (1 if n % 2 else -1) / n
            for n in range(1, _check_order(order, "order") + 1)
        ]

    def decompose(
        self, p_theta: Tensor, p_star: Tensor, kappa: float | str, dim: int = -1
    ) -> tuple[Tensor, Tensor]:
        """``(κ KL(π*‖π_θ), E_{π*}[f(r) + κ ln r])`` with ``r = π_θ/π*``, along ``dim``.

        The two terms sum to ``D_f(π_θ‖π*)`` exactly; entries with π* = 0 are outside the
        expectation (use full-support π_θ and π* for the identity to be finite).
        """
        kappa = self.kappa(kappa)
        star_positive, star_safe = _safe_positive(p_star)
        log_r = torch.log(p_theta) - torch.log(star_safe)
        zero = torch.zeros_like(log_r)
        kl = torch.where(star_positive, -p_star * log_r, zero).sum(dim)
        symmetric = torch.where(
            star_positive, p_star * (self.f(p_theta / star_safe) + kappa * log_r), zero
        ).sum(dim)
        return kappa * kl, symmetric

    def n2_tau(self, tau: float) -> float:
        """The N = 2 policy temperature ``τ₂ = 2 c₂ τ`` (Jeffreys 2τ, JS τ/4, GAN τ/2)."""
        return 2.0 * self.taylor_coefficient(2) * tau


def _unknown_name_message(name: object) -> str:
    return f"Unknown divergence {name!r}; expected one of {', '.join(DIVERGENCE_NAMES)}."


def get_divergence(name: str) -> FDivergence:
    """The :class:`FDivergence` called ``name`` (one of :data:`DIVERGENCE_NAMES`)."""
    if name not in _GENERATORS:
        raise ValueError(_unknown_name_message(name))
    return FDivergence(name)


def divergence_from_densities(
    divergence: FDivergence | str, p_x: Tensor, q_x: Tensor, dx: float, dim: int = -1
) -> Tensor:
    """``∫ q(x) f(p(x)/q(x)) dx`` by the trapezoid rule on a uniform grid of spacing ``dx``.

    ``p_x``, ``q_x`` are densities sampled on the same grid along ``dim``; points with
    ``q(x) = 0`` use the perspective limit as in :meth:`FDivergence.divergence`.
    """
    name = (
        divergence.name if isinstance(divergence, FDivergence) else get_divergence(divergence).name
    )
    return torch.trapezoid(_perspective(name, p_x, q_x), dx=dx, dim=dim)


def pearson_chi(p: Tensor, q: Tensor, n: int, dim: int = -1) -> Tensor:
    """Pearson–Vajda ``χⁿ_P(P‖Q) = E_Q[(P/Q − 1)ⁿ] = Σ_i q_i (p_i/q_i − 1)ⁿ`` along ``dim``.

    Entries with q_i = 0 contribute 0 if p_i = 0, ``p_i`` for n = 1 and +inf for n ≥ 2
    (P not absolutely continuous w.r.t. Q).
    """
    _check_order(n, "n")
    q_positive, x = _deviation(p, q)
    inner = q * x**n
    if n == 0:
        edge = torch.zeros_like(p)
    elif n == 1:
        edge = p
    else:
        edge = torch.where(p > 0, torch.full_like(p, math.inf), torch.zeros_like(p))
    return torch.where(q_positive, inner, edge).sum(dim)


# ------------------------------------------------------------------------- analytic policies
def _check_temperature(value: float, what: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be a finite positive float, got {value!r}.")
    return float(value)


def n2_policy_weight(advantage: Tensor, tau2: float) -> Tensor:
    """The N = 2 importance weight ``π*/π_D = [1 + A/τ₂]₊`` elementwise."""
    return torch.clamp(1 + advantage / _check_temperature(tau2, "tau2"), min=0)


def n2_policy(
    behavior_probs: Tensor, q_values: Tensor, tau2: float, dim: int = -1
) -> tuple[Tensor, Tensor]:
    """The N = 2 policy on a discrete action set: ``π* = π_D [1 + (Q − λ)/τ₂]₊``, Σ π* = 1.

    λ is solved exactly (sparsemax-style): sort the actions with π_D > 0 by Q descending; the
    active set is the longest prefix k with ``Σ_{i≤k} π_D,i (Q_i − Q_k) < τ₂`` and then
    ``λ = [Σ_{i≤k} π_D,i (Q_i + τ₂) − τ₂] / Σ_{i≤k} π_D,i``. λ is also the minimizer of the sparse
    value loss ``E_{π_D}[(1 + (Q − V)/τ₂)₊² + 2V/τ₂]``.

    Args:
        behavior_probs: π_D ≥ 0, summing to 1 along ``dim``.
        q_values: Q, same shape (entries where π_D = 0 are ignored).
        tau2: τ₂ > 0 (``FDivergence.n2_tau(τ)``).
        dim: the action dimension.

    Returns:
        ``(pi_star, lam)``: π* with the shape of ``behavior_probs`` (renormalized against
        rounding) and λ with ``dim`` removed.
    """
    tau2 = _check_temperature(tau2, "tau2")
    pi = behavior_probs.movedim(dim, -1)
    q = q_values.movedim(dim, -1)
    valid = pi > 0
    key = torch.where(valid, q, torch.full_like(q, -math.inf))
    key_sorted, order = torch.sort(key, dim=-1, descending=True)
    pi_sorted = torch.gather(pi, -1, order)
    valid_sorted = torch.isfinite(key_sorted)
    q_sorted = torch.where(valid_sorted, key_sorted, torch.zeros_like(key_sorted))
    mass = torch.cumsum(pi_sorted, -1)
    weighted = torch.cumsum(pi_sorted * q_sorted, -1)
    active = valid_sorted & (weighted - q_sorted * mass < tau2)
    last = (active.sum(-1, keepdim=True) - 1).clamp(min=0)
    mass_k = torch.gather(mass, -1, last).squeeze(-1)
    weighted_k = torch.gather(weighted, -1, last).squeeze(-1)
    lam = (weighted_k + tau2 * (mass_k - 1)) / mass_k
    pi_star = pi * n2_policy_weight(q - lam.unsqueeze(-1), tau2)
    pi_star = pi_star / pi_star.sum(-1, keepdim=True)
    return pi_star.movedim(-1, dim), lam


def n3_policy_ratio(advantage_over_tau: Tensor, c2: float, c3: float) -> Tensor:
    """The N = 3 root ``x = π*/π_D − 1`` of ``2c₂ x + 3c₃ x² = A/τ`` (elementwise in A/τ).

    ``x = [−2c₂ + √(4c₂² + 12 c₃ A/τ)]/(6c₃)`` is the root continuous with the N = 2 solution;
    it is evaluated in the rationalized form ``x = 2(A/τ) / (2c₂ + √(4c₂² + 12 c₃ A/τ))``, which
    is exact for every c₃ and equals the N = 2 root ``A/(2c₂τ)`` at c₃ = 0 (no cancellation as
    c₃ → 0). Returns NaN where ``4c₂² + 12 c₃ A/τ < 0`` (no real root: ``A/τ > c₂²/(−3c₃)`` for
    c₃ < 0), where the truncated objective has no stationary point. Requires c₂ > 0.
    """
    if not c2 > 0:
        raise ValueError(f"c2 must be positive (f''(1) > 0), got {c2!r}.")
    y = advantage_over_tau
    return 2 * y / (2 * c2 + torch.sqrt(4 * c2 * c2 + 12 * c3 * y))


def n3_policy_weight(advantage_over_tau: Tensor, c2: float, c3: float) -> Tensor:
    """``π*/π_D = [1 + x]₊`` for the N = 3 root ``x`` (:func:`n3_policy_ratio`); NaN where no root."""
    return torch.clamp(1 + n3_policy_ratio(advantage_over_tau, c2, c3), min=0)
