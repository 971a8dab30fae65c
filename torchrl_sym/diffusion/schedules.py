"""Noise schedules of variance-preserving (VP) ε-prediction diffusion models.

Every schedule here describes the same forward process, the VP marginal

    a_t = α_t · a_0 + σ_t · ε,      ε ~ N(0, I),      α_t² + σ_t² = 1,

indexed either by a discrete step ``n ∈ {0, …, N}`` (DDPM; BDPO) or by a continuous time
``t ∈ [0, 1]`` (VP-SDE; SRPO). ``n = 0`` / ``t = 0`` is the clean action (α = 1, σ = 0).

Discrete schedules (:class:`DiscreteSchedule`) are defined by ``β_n``, n = 1..N:
``α_n = 1 − β_n``, ``ᾱ_n = Π_{k≤n} α_k`` and the marginal ``(√ᾱ_n, √(1 − ᾱ_n))``.

* :class:`VPDiscreteSchedule` — BDPO's ``vp_beta_schedule`` (b_min = 0.1, b_max = 10):
  ``β_n = 1 − exp(−b_min/N − ½(b_max − b_min)(2n − 1)/N²)``, hence
  ``ᾱ_n = exp(−b_min n/N − ½(b_max − b_min) n²/N²)`` and ``ᾱ_N = e^{−5.05}`` for every N.
* :class:`LinearDiscreteSchedule` — DDPM's ``β_n = linspace(1e-4, 0.02, N)`` (TorchRL's
  ``DiffusionActor`` schedule).
* :class:`CosineDiscreteSchedule` — Nichol & Dhariwal (2021): ``ᾱ_n = f(n)/f(0)``,
  ``f(n) = cos²(π/2 · (n/N + s)/(1 + s))``, ``β_n`` clipped to 0.999.

Continuous schedules (:class:`ContinuousSchedule`) give ``log α_t`` in closed form:

* :class:`VPSDESchedule` — SRPO's ``marginal_prob_std`` (β₀ = 0.1, β₁ = 20):
  ``log α_t = −¼ t² (β₁ − β₀) − ½ t β₀``, ``σ_t = √(1 − α_t²)``.
* :class:`CosineContinuousSchedule` — ``α_t = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s))``,
  used up to ``t_max = 0.9946`` where ``α_t`` is still about 0.008.

Reverse (sampling) steps are described by a :class:`SamplingGrid`: K + 1 points
``0 = τ_0 < τ_1 < … < τ_K`` with their (α_k, σ_k), and per step k → k − 1 the coefficients of the
Gaussian posterior ``q(a_{k−1} | a_k, a_0)`` of the VP process. With ``α_{k|k−1} = α_k/α_{k−1}``
and ``σ²_{k|k−1} = 1 − α²_{k|k−1}``:

    mean  = α_{k−1} σ²_{k|k−1}/σ_k² · a_0  +  α_{k|k−1} σ_{k−1}²/σ_k² · a_k
    var   = σ²_{k|k−1} σ_{k−1}² / σ_k²                    (the exact posterior variance)

On a discrete schedule's native grid (K = N, τ_k = k) these are DDPM's
``√ᾱ_{n−1} β_n/(1 − ᾱ_n)``, ``√α_n (1 − ᾱ_{n−1})/(1 − ᾱ_n)`` and ``β_n (1 − ᾱ_{n−1})/(1 − ᾱ_n)``,
and ``σ²_{k|k−1} = β_n``. The reverse kernel's variance is either the exact posterior variance
(``variance="posterior"``) or ``σ²_{k|k−1}`` (``variance="beta"``, DDPM's σ_n² = β_n; BDPO's code),
which keeps the n = 1 kernel non-degenerate. Grids on fewer steps take every (N/K)-th step of a
discrete schedule (rounded) and ``τ_k = k · t_max / K`` on a continuous one, so a model trained on
one schedule can be sampled with any step count.

Schedules are ``nn.Module`` s whose only state is non-persistent float32 buffers (so they follow
``.to(device)`` and stay out of state dicts); the grid coefficients are computed in float64 as
Python floats, which ``torch.compile`` folds into constants.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

__all__ = [
    "ContinuousSchedule",
    "CosineContinuousSchedule",
    "CosineDiscreteSchedule",
    "DiscreteSchedule",
    "LinearDiscreteSchedule",
    "NoiseSchedule",
    "SamplingGrid",
    "VPDiscreteSchedule",
    "VPSDESchedule",
]

Variance = Literal["posterior", "beta"]
_VARIANCES = ("posterior", "beta")


@dataclass(frozen=True)
class SamplingGrid:
    """A reverse-process grid with K steps, as float64 Python floats.

    Every field is a tuple of length K + 1 indexed by the grid point k = 0..K (k = 0 is clean).
    The per-step fields (``coef_x0`` … ``kernel_var``) describe the step k → k − 1 and hold 0 at
    k = 0.

    Attributes:
        times: the model's time input τ_k (the step n for discrete schedules, t for continuous).
        alphas, sigmas: the marginal (α_k, σ_k); α_0 = 1, σ_0 = 0.
        coef_x0, coef_xt: posterior mean ``coef_x0[k] · a_0 + coef_xt[k] · a_k``.
        posterior_var: exact posterior variance of a_{k−1} given (a_k, a_0).
        beta: ``σ²_{k|k−1} = 1 − α_k²/α_{k−1}²`` (``β_n`` on a native discrete grid).
        kernel_var: the reverse kernel's variance, ``posterior_var`` or ``beta``.
    """

    times: tuple[float, ...]
    alphas: tuple[float, ...]
    sigmas: tuple[float, ...]
    coef_x0: tuple[float, ...]
    coef_xt: tuple[float, ...]
    posterior_var: tuple[float, ...]
    beta: tuple[float, ...]
    kernel_var: tuple[float, ...]

    @property
    def num_steps(self) -> int:
        return len(self.times) - 1

    def table(self, name: str, reference: torch.Tensor) -> torch.Tensor:
        """Field ``name`` as a tensor ``[K + 1]`` on ``reference``'s device and dtype."""
        return torch.tensor(getattr(self, name), dtype=reference.dtype, device=reference.device)


def _grid_from_marginals(
    times: list[float],
    log_alphas: list[float],
    variance: str,
    sigma2: list[float] | None = None,
) -> SamplingGrid:
    """Posterior coefficients between consecutive grid points of a VP process (float64)."""
    alphas = [math.exp(la) for la in log_alphas]
    if sigma2 is None:
        sigma2 = [-math.expm1(2.0 * la) for la in log_alphas]
    coef_x0, coef_xt, post_var, beta = [0.0], [0.0], [0.0], [0.0]
    for k in range(1, len(times)):
        # σ²_{k|k−1} = 1 − α²_{k|k−1}; expm1 keeps precision when the step is small.
        b = -math.expm1(2.0 * (log_alphas[k] - log_alphas[k - 1]))
        alpha_step = math.exp(log_alphas[k] - log_alphas[k - 1])
        coef_x0.append(alphas[k - 1] * b / sigma2[k])
        coef_xt.append(alpha_step * sigma2[k - 1] / sigma2[k])
        post_var.append(b * sigma2[k - 1] / sigma2[k])
        beta.append(b)
    return SamplingGrid(
        times=tuple(float(t) for t in times),
        alphas=tuple(alphas),
        sigmas=tuple(math.sqrt(s) for s in sigma2),
        coef_x0=tuple(coef_x0),
        coef_xt=tuple(coef_xt),
        posterior_var=tuple(post_var),
        beta=tuple(beta),
        kernel_var=tuple(post_var if variance == "posterior" else beta),
    )


class NoiseSchedule(nn.Module, abc.ABC):
    """Base class: a VP marginal ``(α, σ)`` as a function of the model time, and sampling grids.

    Subclasses set ``discrete`` and implement :meth:`marginal`, :meth:`grid` and
    :attr:`default_steps`.
    """

    discrete: bool

    def __init__(self, variance: Variance = "posterior"):
        super().__init__()
        if variance not in _VARIANCES:
            raise ValueError(f"variance must be one of {_VARIANCES}, got {variance!r}.")
        self.variance = variance
        self._grids: dict[int, SamplingGrid] = {}

    @property
    @abc.abstractmethod
    def default_steps(self) -> int:
        """Steps of the sampling grid used when none is given."""

    @abc.abstractmethod
    def marginal(self, time: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α, σ)`` at the model time ``time`` (same shape as ``time``)."""

    @abc.abstractmethod
    def _build_grid(self, steps: int) -> SamplingGrid:
        """The reverse grid with ``steps`` steps."""

    def grid(self, steps: int | None = None) -> SamplingGrid:
        """The reverse grid with ``steps`` steps (``None``: :attr:`default_steps`); cached."""
        steps = self.default_steps if steps is None else steps
        grid = self._grids.get(steps)
        if grid is None:
            if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
                raise ValueError(f"steps must be a positive int, got {steps!r}.")
            grid = self._grids[steps] = self._build_grid(steps)
        return grid


class DiscreteSchedule(NoiseSchedule):
    """A DDPM schedule with N steps, given by ``β_1..β_N`` (float64).

    Buffers (float32, length N + 1, index n = 0..N; index 0 is the clean action):
    ``betas`` (β_0 = 0), ``alphas``, ``alphas_cumprod`` (ᾱ_0 = 1), ``sqrt_alphas_cumprod``,
    ``sqrt_one_minus_alphas_cumprod``, ``posterior_variance`` (exact; 0 at n ≤ 1),
    ``kernel_variance`` (per ``variance``), ``posterior_mean_coef_x0``, ``posterior_mean_coef_xt``
    and ``kl_weight``.

    ``kl_weight[n]`` is the factor ``w_n`` in ``KL(N(μ_π, σ_n²) ‖ N(μ_ν, σ_n²)) = w_n ‖ε_π − ε_ν‖²``
    for two ε-models that share ``a_n``: ``w_n = β_n² / (2 α_n (1 − ᾱ_n) σ_n²)``; with
    ``variance="beta"`` it is BDPO's ``β_n / (2 (1 − β_n)(1 − ᾱ_n))``; with the exact posterior
    variance it is infinite at n = 1.

    Args:
        betas: ``β_1..β_N``, each in (0, 1).
        variance: the reverse kernel's variance, ``"posterior"`` (exact) or ``"beta"`` (σ_n² = β_n).
    """

    discrete = True

    def __init__(self, betas, *, variance: Variance = "posterior"):
        super().__init__(variance)
        betas = np.asarray(betas, dtype=np.float64).reshape(-1)
        if betas.size == 0 or not np.all((betas > 0) & (betas < 1)):
            raise ValueError("betas must be a non-empty sequence of values in (0, 1).")
        self.num_steps = int(betas.size)
        b = np.concatenate([[0.0], betas])
        a = 1.0 - b
        log_abar = np.cumsum(np.log(a))
        abar = np.exp(log_abar)
        self._log_abar = log_abar.tolist()
        native = self._grid_from_steps(list(range(self.num_steps + 1)))
        with np.errstate(divide="ignore", invalid="ignore"):
            kernel = np.asarray(native.kernel_var)
            kl = np.where(b > 0, b**2 / (2.0 * a * (1.0 - abar) * kernel), 0.0)
        tables = {
            "betas": b,
            "alphas": a,
            "alphas_cumprod": abar,
            "sqrt_alphas_cumprod": np.sqrt(abar),
            "sqrt_one_minus_alphas_cumprod": np.sqrt(-np.expm1(log_abar)),
            "posterior_variance": np.asarray(native.posterior_var),
            "kernel_variance": kernel,
            "posterior_mean_coef_x0": np.asarray(native.coef_x0),
            "posterior_mean_coef_xt": np.asarray(native.coef_xt),
            "kl_weight": kl,
        }
        for name, value in tables.items():
            self.register_buffer(
                name, torch.as_tensor(value, dtype=torch.float32), persistent=False
            )
        self._grids[self.num_steps] = native

    @property
    def default_steps(self) -> int:
        return self.num_steps

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, variance={self.variance!r}"

    def _grid_from_steps(self, steps: list[int]) -> SamplingGrid:
        return _grid_from_marginals(
            [float(n) for n in steps], [0.5 * self._log_abar[n] for n in steps], self.variance
        )

    def _build_grid(self, steps: int) -> SamplingGrid:
        if steps > self.num_steps:
            raise ValueError(
                f"A discrete schedule with N = {self.num_steps} steps cannot be sampled with "
                f"{steps} steps; use at most {self.num_steps}."
            )
        # Every (N/K)-th step, rounded half up; distinct because N/K ≥ 1.
        points = [math.floor(k * self.num_steps / steps + 0.5) for k in range(steps + 1)]
        return self._grid_from_steps(points)

    def marginal(self, time: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(√ᾱ_n, √(1 − ᾱ_n))`` at integer steps ``n`` (a float ``n`` is truncated)."""
        n = torch.as_tensor(time, device=self.alphas_cumprod.device).long()
        return self.sqrt_alphas_cumprod[n], self.sqrt_one_minus_alphas_cumprod[n]


class VPDiscreteSchedule(DiscreteSchedule):
    """BDPO's discrete VP schedule: ``β_n = 1 − exp(−b_min/N − ½(b_max − b_min)(2n − 1)/N²)``.

    ``ᾱ_n = exp(−b_min n/N − ½(b_max − b_min) n²/N²)`` is the continuous VP-SDE with
    (β₀, β₁) = (b_min, b_max) at ``t = n/N``; ``ᾱ_N = exp(−(b_min + b_max)/2)`` = e^{−5.05}.

    Examples:
        >>> s = VPDiscreteSchedule(5, variance="beta")
        >>> [round(b, 4) for b in s.betas[1:].tolist()]
        [0.1959, 0.4588, 0.6358, 0.7549, 0.835]
    """

    def __init__(
        self,
        num_steps: int,
        *,
        beta_min: float = 0.1,
        beta_max: float = 10.0,
        variance: Variance = "posterior",
    ):
        n = np.arange(1, num_steps + 1, dtype=np.float64)
        log_alpha = -beta_min / num_steps - 0.5 * (beta_max - beta_min) * (2 * n - 1) / num_steps**2
        super().__init__(-np.expm1(log_alpha), variance=variance)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, beta_min={self.beta_min}, beta_max={self.beta_max}"


class LinearDiscreteSchedule(DiscreteSchedule):
    """DDPM's linear schedule ``β_n = linspace(beta_start, beta_end, N)`` (Ho et al., 2020)."""

    def __init__(
        self,
        num_steps: int,
        *,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        variance: Variance = "posterior",
    ):
        super().__init__(np.linspace(beta_start, beta_end, num_steps), variance=variance)
        self.beta_start, self.beta_end = float(beta_start), float(beta_end)


class CosineDiscreteSchedule(DiscreteSchedule):
    """Nichol & Dhariwal's cosine schedule: ``ᾱ_n ∝ cos²(π/2 · (n/N + s)/(1 + s))``."""

    def __init__(
        self,
        num_steps: int,
        *,
        s: float = 0.008,
        max_beta: float = 0.999,
        variance: Variance = "posterior",
    ):
        t = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
        abar = f / f[0]
        betas = np.clip(1.0 - abar[1:] / abar[:-1], 1e-12, max_beta)
        super().__init__(betas, variance=variance)
        self.s, self.max_beta = float(s), float(max_beta)


class ContinuousSchedule(NoiseSchedule):
    """A continuous-time VP schedule given by ``log α_t``; ``σ_t = √(1 − α_t²)``.

    Subclasses implement :meth:`log_alpha` for tensors and :meth:`log_alpha_float` for floats.
    ``t_max`` is the last grid time (where sampling starts); ``default_steps`` the grid size used
    when a sampler is not told otherwise.
    """

    discrete = False

    def __init__(
        self, *, t_max: float = 1.0, default_steps: int = 50, variance: Variance = "posterior"
    ):
        super().__init__(variance)
        if not 0.0 < t_max <= 1.0:
            raise ValueError(f"t_max must lie in (0, 1], got {t_max}.")
        self.t_max = float(t_max)
        self._default_steps = int(default_steps)

    @property
    def default_steps(self) -> int:
        return self._default_steps

    @abc.abstractmethod
    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """``log α_t`` elementwise."""

    @abc.abstractmethod
    def log_alpha_float(self, t: float) -> float:
        """``log α_t`` for a Python float (grid construction without tensors)."""

    def sigma2(self, t: torch.Tensor) -> torch.Tensor:
        """``σ_t² = 1 − α_t²``; subclasses may override it with a form precise near t = 0."""
        return -torch.expm1(2.0 * self.log_alpha(t))

    def sigma2_float(self, t: float) -> float:
        return -math.expm1(2.0 * self.log_alpha_float(t))

    def alpha(self, t: torch.Tensor) -> torch.Tensor:
        return self.log_alpha(t).exp()

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(self.sigma2(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """``λ_t = log(α_t²/σ_t²)``."""
        return 2.0 * self.log_alpha(t) - torch.log(self.sigma2(t))

    def marginal(self, time: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(α_t, σ_t)`` at continuous times ``t``."""
        if not isinstance(time, torch.Tensor):
            t = torch.tensor(time, dtype=torch.get_default_dtype())
        elif not time.is_floating_point():
            t = time.to(torch.get_default_dtype())
        else:
            t = time
        return self.log_alpha(t).exp(), torch.sqrt(self.sigma2(t))

    def _build_grid(self, steps: int) -> SamplingGrid:
        times = [k * self.t_max / steps for k in range(steps + 1)]
        return _grid_from_marginals(
            times,
            [self.log_alpha_float(t) for t in times],
            self.variance,
            [self.sigma2_float(t) for t in times],
        )


class VPSDESchedule(ContinuousSchedule):
    """SRPO's VP-SDE: ``log α_t = −¼ t² (β₁ − β₀) − ½ t β₀`` with β(t) = β₀ + t (β₁ − β₀).

    Examples:
        >>> s = VPSDESchedule()
        >>> alpha, sigma = s.marginal(torch.tensor([0.5]))
        >>> round(alpha.item(), 4), round(sigma.item(), 4)
        (0.2812, 0.9597)
    """

    def __init__(
        self,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        *,
        t_max: float = 1.0,
        default_steps: int = 50,
        variance: Variance = "posterior",
    ):
        super().__init__(t_max=t_max, default_steps=default_steps, variance=variance)
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, t_max={self.t_max}"

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """The SDE's ``β(t) = β₀ + t (β₁ − β₀)``."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def log_alpha_float(self, t: float) -> float:
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min


class CosineContinuousSchedule(ContinuousSchedule):
    """``α_t = cos(π/2 · (t + s)/(1 + s)) / cos(π/2 · s/(1 + s))`` (Nichol & Dhariwal, 2021).

    ``α_1 = 0``, so sampling starts at ``t_max = 0.9946`` (α ≈ 0.008, as VP-SDE's α_1 ≈ 0.007);
    times above ``t_max`` are clamped to it.
    """

    def __init__(
        self,
        s: float = 0.008,
        *,
        t_max: float = 0.9946,
        default_steps: int = 50,
        variance: Variance = "posterior",
    ):
        super().__init__(t_max=t_max, default_steps=default_steps, variance=variance)
        self.s = float(s)
        self._log_norm = math.log(math.cos(math.pi / 2 * self.s / (1 + self.s)))

    def extra_repr(self) -> str:
        return f"s={self.s}, t_max={self.t_max}"

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(max=self.t_max)
        log_alpha = torch.log(torch.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_norm
        return log_alpha.clamp(max=0.0)  # α_0 = 1 exactly, not 1 + rounding

    def log_alpha_float(self, t: float) -> float:
        t = min(t, self.t_max)
        log_alpha = math.log(math.cos(math.pi / 2 * (t + self.s) / (1 + self.s))) - self._log_norm
        return min(log_alpha, 0.0)

    # 1 − cos²x/cos²x₀ = sin(x − x₀) sin(x + x₀)/cos²x₀: no cancellation near t = 0.
    def sigma2(self, t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(min=0.0, max=self.t_max)
        h = math.pi / 2 / (1 + self.s)
        return torch.sin(h * t) * torch.sin(h * (t + 2 * self.s)) / math.exp(2 * self._log_norm)

    def sigma2_float(self, t: float) -> float:
        t = min(max(t, 0.0), self.t_max)
        h = math.pi / 2 / (1 + self.s)
        return math.sin(h * t) * math.sin(h * (t + 2 * self.s)) / math.exp(2 * self._log_norm)
