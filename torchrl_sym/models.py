"""Network builders shared by the recipes (IQL, AWAC, SQL, XQL, Sf-AC, TD3+BC).

All return TorchRL modules with TorchRL's default keys, so they plug straight into TorchRL losses:

* :func:`make_gaussian_actor` — ``observation -> (loc, scale) -> action``; the IQL paper's actor
  ``π(a|s) = N(tanh(μ_θ(s)), diag(exp(clip(log σ, lo, hi))²))`` with a state-independent ``log σ``
  (the distribution itself is not squashed). Deterministic mode returns ``tanh(μ_θ(s))``.
* :func:`make_tanh_gaussian_actor` — SAC's squashed Gaussian ``a = tanh(u)``,
  ``u ~ N(μ_θ(s), σ_θ(s)²)`` with a state-dependent scale (TorchRL's ``TanhNormal``); the behavior
  policies that generate the D4RL-style datasets are of this kind.
* :func:`make_deterministic_actor` — TD3's deterministic policy ``a = tanh(MLP_θ(s))`` (ReLU).
* :func:`make_qvalue` — ``(observation, action) -> state_action_value``.
* :func:`make_value` — ``observation -> state_value`` (optionally LayerNorm, as XQL's V).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType
from torchrl.modules import (
    MLP,
    Actor,
    BatchRenorm1d,
    IndependentNormal,
    NormalParamExtractor,
    ProbabilisticActor,
    TanhNormal,
    ValueOperator,
)

__all__ = [
    "Mish",
    "ReLU",
    "TanhMeanGaussian",
    "make_batchrenorm_qvalue",
    "make_deterministic_actor",
    "make_gaussian_actor",
    "make_qvalue",
    "make_tanh_gaussian_actor",
    "make_value",
]


class ReLU(nn.ReLU):
    """``max(x, 0)``, the networks' activation; under ``torch.compile`` computed as
    ``(x + |x|) / 2``.

    The two give the same values (``x + |x| = 2x`` exactly for ``x > 0`` and ``0`` for ``x <= 0``,
    halving is exact), and the same gradient except at exactly ``x = 0`` (``1/2`` instead of 0,
    another valid subgradient). Why: inductor lowers ReLU's backward to a saved boolean mask whose
    vectorized store and load are slow on the x86 CPUs we measured (a 5×256×256 ReLU
    forward+backward: 8.1 ms compiled against 1.3 ms eager, 0.9 ms compiled in this form;
    docs/benchmarks.md), which made a compiled update slower than the eager one. Eager mode keeps
    ``torch.relu``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            return (x + x.abs()) * 0.5
        return torch.relu(x)


class Mish(nn.Mish):
    """``x · tanh(softplus(x))``, the diffusion networks' and BDPO critics' activation; under
    ``torch.compile`` computed with one exponential as ``x · n / (n + 2)``, ``n = e^x (e^x + 2)``
    (with ``x`` capped at 20 inside the exponential), its derivative computed in the same pass.

    The identity: ``tanh(log(1 + e^x)) = ((1 + e^x)² − 1) / ((1 + e^x)² + 1) = n / (n + 2)``. Above
    ``x = 20``, ``n / (n + 2)`` rounds to 1 in float32 as ``tanh(softplus(x))`` does, so the cap
    changes nothing but keeps ``n`` finite; for very negative ``x`` both go to ``x e^x``. The
    values and gradients agree with :func:`torch.nn.functional.mish` to float32 rounding
    (tests/test_models.py). Why: torch's Mish (``tanh`` of ``log1p`` of ``exp``) is about 7× SiLU
    on this project's CPU, eager and compiled alike; in SRPO's behavior network (1024-wide Mish
    activations) it was the largest cost of a bf16 update after the matmuls. This form, with the
    derivative's terms computed off the autograd graph (``x ω + (x − x̄) t`` with ``x̄`` detached
    and ``t = x_c · 4 e (e + 1) / (n + 2)²``, ``x_c = min(x, 20)``: gradient ``ω + t``, the
    exact derivative below 20 and within 1e-15 of it above; autograd's backward of the clamp is a
    boolean mask that inductor's x86 code handles slowly, as with ReLU), is about 2× faster
    forward and backward compiled (docs/benchmarks.md). With gradients off (evaluation, diffusion
    sampling) only the value is computed. Eager mode keeps torch's Mish (one kernel there against
    several).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            if not torch.is_grad_enabled():
                e = torch.exp(x.clamp(max=20.0))
                n = e * (e + 2.0)
                return x * (n / (n + 2.0))
            # ω = tanh(softplus(x)) and the derivative's second term computed off the graph; the
            # output x ω + (x − x̄) t (x̄ = x detached, so the second product is exactly 0) then
            # has gradient ω + t with no mask: autograd's own backward of the clamp is one.
            xd = x.detach()
            xc = xd.clamp(max=20.0)
            e = torch.exp(xc)
            n = e * (e + 2.0)
            r = 1.0 / (n + 2.0)
            return x * (n * r) + (x - xd) * (xc * (4.0 * e * (e + 1.0)) * r * r)
        return nn.functional.mish(x)


class TanhMeanGaussian(nn.Module):
    """``obs -> (tanh(μ(obs)), exp(clip(log σ, lo, hi)))`` with a learned state-independent log σ."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden: Sequence[int],
        *,
        log_std_init: float = 0.0,
        log_std_bounds: tuple[float, float] = (-5.0, 2.0),
        dropout: float | None = None,
    ):
        super().__init__()
        self.mean = MLP(
            in_features=obs_dim,
            out_features=action_dim,
            num_cells=list(hidden),
            activation_class=ReLU,
            dropout=dropout,
        )
        self.log_std = nn.Parameter(torch.full((action_dim,), float(log_std_init)))
        self.log_std_bounds = tuple(log_std_bounds)

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = torch.tanh(self.mean(observation))
        scale = self.log_std.clamp(*self.log_std_bounds).exp().expand_as(loc)
        return loc, scale


def make_gaussian_actor(
    obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256), **kwargs
) -> ProbabilisticActor:
    """The IQL paper's Gaussian actor as a TorchRL ``ProbabilisticActor`` (see module docstring)."""
    net = TensorDictModule(
        TanhMeanGaussian(obs_dim, action_dim, hidden, **kwargs),
        in_keys=["observation"],
        out_keys=["loc", "scale"],
    )
    return ProbabilisticActor(
        net,
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=IndependentNormal,
        default_interaction_type=ExplorationType.DETERMINISTIC,
        return_log_prob=False,
    )


class ClampedLogScale(nn.Module):
    """``[loc, log σ] -> (loc, exp(clip(log σ, lo, hi)))``: a state-dependent scale within bounds."""

    def __init__(self, log_std_bounds: tuple[float, float]):
        super().__init__()
        self.log_std_bounds = tuple(log_std_bounds)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = x.chunk(2, -1)
        return loc, log_scale.clamp(*self.log_std_bounds).exp()


def make_tanh_gaussian_actor(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    log_std_bounds: tuple[float, float] | None = None,
) -> ProbabilisticActor:
    """SAC's actor: ``observation -> (loc, scale)`` by an MLP, ``action = tanh(loc + scale · ε)``.

    By default the scale is ``softplus(x + softplus⁻¹(1)) + 1e-4`` (TorchRL's
    ``biased_softplus_1.0``), so an untrained actor starts near unit scale; with
    ``log_std_bounds=(lo, hi)`` it is ``exp(clip(x, lo, hi))`` (Sf-AC's ``[e⁻⁵, e²]``).
    Deterministic mode returns ``tanh(loc)``.
    """
    mlp = MLP(
        in_features=obs_dim,
        out_features=2 * action_dim,
        num_cells=list(hidden),
        activation_class=ReLU,
    )
    net = TensorDictModule(
        nn.Sequential(
            mlp,
            NormalParamExtractor(scale_mapping="biased_softplus_1.0")
            if log_std_bounds is None
            else ClampedLogScale(log_std_bounds),
        ),
        in_keys=["observation"],
        out_keys=["loc", "scale"],
    )
    return ProbabilisticActor(
        net,
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -1.0, "high": 1.0},
        default_interaction_type=ExplorationType.DETERMINISTIC,
        return_log_prob=False,
    )


def make_deterministic_actor(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    in_keys: Sequence = ("observation",),
    out_keys: Sequence = ("action",),
) -> Actor:
    """TD3's (and TD3+BC's) policy ``a = π_θ(s) = tanh(MLP_θ(s))`` in ``[-1, 1]^A``: ReLU hidden
    layers (``hidden``, 2×256 in the papers), PyTorch's default ``Linear`` init, as a TorchRL
    deterministic :class:`~torchrl.modules.Actor` (``observation -> action``).

    Examples:
        >>> actor = make_deterministic_actor(11, 3, [32, 32])
        >>> actor(observation=torch.randn(5, 11)).shape
        torch.Size([5, 3])
    """
    net = nn.Sequential(
        MLP(
            in_features=obs_dim,
            out_features=action_dim,
            num_cells=list(hidden),
            activation_class=ReLU,
        ),
        nn.Tanh(),
    )
    return Actor(net, in_keys=list(in_keys), out_keys=list(out_keys))


def make_qvalue(
    obs_dim: int, action_dim: int, hidden: Sequence[int] = (256, 256), *, layer_norm: bool = False
) -> ValueOperator:
    """``Q(s, a)`` as an MLP on the concatenation ``[s, a]``."""
    return ValueOperator(
        _mlp(obs_dim + action_dim, hidden, layer_norm),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )


def make_batchrenorm_qvalue(
    obs_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    momentum: float = 0.01,
    warmup_steps: int = 100_000,
) -> ValueOperator:
    """CrossQ's critic: ``Q(s, a)`` with batch renormalization on the input and after every hidden
    ReLU (TorchRL's ``BatchRenorm1d``), as in Bhatt et al. (ICLR 2024)."""
    layers: list[nn.Module] = [
        BatchRenorm1d(obs_dim + action_dim, momentum=momentum, warmup_steps=warmup_steps)
    ]
    width = obs_dim + action_dim
    for h in hidden:
        layers += [
            nn.Linear(width, h),
            nn.ReLU(),
            BatchRenorm1d(h, momentum=momentum, warmup_steps=warmup_steps),
        ]
        width = h
    layers.append(nn.Linear(width, 1))
    return ValueOperator(
        _CatSequential(*layers), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )


def make_value(
    obs_dim: int, hidden: Sequence[int] = (256, 256), *, layer_norm: bool = False
) -> ValueOperator:
    """``V(s)`` as an MLP."""
    return ValueOperator(
        _mlp(obs_dim, hidden, layer_norm), in_keys=["observation"], out_keys=["state_value"]
    )


def _mlp(in_features: int, hidden: Sequence[int], layer_norm: bool) -> nn.Module:
    if not layer_norm:
        return MLP(
            in_features=in_features,
            out_features=1,
            num_cells=list(hidden),
            activation_class=ReLU,
        )
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), ReLU()]
        width = h
    layers.append(nn.Linear(width, 1))
    return _CatSequential(*layers)


class _CatSequential(nn.Sequential):
    """``nn.Sequential`` on the concatenation of its inputs (as TorchRL's ``MLP`` does), so a
    ``ValueOperator`` can call it with ``(observation, action)``."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat(inputs, -1) if len(inputs) > 1 else inputs[0])
