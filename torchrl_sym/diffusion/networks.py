"""Backbones of the diffusion behavior actor: time embeddings, ε-networks and a noise-conditioned critic.

Every ε-network here maps ``(observation [*B, S], noisy action [*B, A], time [*B]) -> ε̂ [*B, A]``
for any leading batch shape ``*B``; ``time`` is the diffusion step ``n`` (as a float) for discrete
models and ``t ∈ (0, 1]`` for continuous ones. A ``time`` with a trailing singleton ``[*B, 1]`` is
accepted too.

* :class:`SinusoidalTimeEmbedding` — ``[sin(τ f_i), cos(τ f_i)]``, ``f_i = P^{−i/(d/2)}``
  (Transformer / DDPM positional encoding; BDPO feeds the integer step n).
* :class:`GaussianFourierTimeEmbedding` — ``[sin(2π τ w_i), cos(2π τ w_i)]`` with fixed random
  ``w_i ~ N(0, scale²)`` stored in the state dict (SRPO / IDQL, scale 30, for t ∈ [0, 1]).
* :class:`ResidualMLPNoisePredictor` — IDQL's LN-ResNet as SRPO uses it (docs/specs/srpo.md §4):
  ``h = W_in [a_t, s, e(τ)]``; ``h ← h + W₂ Mish(W₁ LN(Dropout(h)))`` (×3, 256 → 1024 → 256);
  ``ε̂ = W_out Mish(h)``; ``e(τ) = W Mish(W Fourier(τ))`` (64 → 128 → 128).
* :class:`MLPNoisePredictor` — BDPO's ε-network (docs/specs/bdpo.md §5): ``ε̂ = MLP([a_n, e(n), s])``,
  body [256]×4 with Mish, ``e(n) = W Mish(W Sinusoidal(n))`` (64 → 64 → 64), orthogonal init.
* :class:`NoiseConditionedCritic` — BDPO's ensemble ``V_k(s, a_n, n)``, k = 1..E, as one module
  with stacked member weights: ``[*B, S], [*B, A], [*B] -> [E, *B, 1]``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from torchrl_sym.models import Mish

__all__ = [
    "EnsembleLinear",
    "GaussianFourierTimeEmbedding",
    "MLPNoisePredictor",
    "NoiseConditionedCritic",
    "ResidualMLPNoisePredictor",
    "SinusoidalTimeEmbedding",
    "make_time_embedding",
]


def _time_as_batch(time: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """``time`` as a float tensor of shape ``action.shape[:-1]`` (broadcast; trailing 1 dropped)."""
    time = torch.as_tensor(time, device=action.device)
    if time.dim() == action.dim() and time.shape[-1] == 1:
        time = time.squeeze(-1)
    return time.to(action.dtype).expand(action.shape[:-1])


class SinusoidalTimeEmbedding(nn.Module):
    """``τ ↦ [sin(τ f_0..f_{d/2−1}), cos(τ f_0..f_{d/2−1})]``, ``f_i = max_period^{−i/(d/2)}``.

    Args:
        dim: output size (even).
        max_period: the slowest period; 10000 as in DDPM.
    """

    def __init__(self, dim: int = 64, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalTimeEmbedding needs an even dim, got {dim}.")
        self.dim = dim
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        args = time.unsqueeze(-1) * self.freqs
        return torch.cat([args.sin(), args.cos()], dim=-1)


class GaussianFourierTimeEmbedding(nn.Module):
    """``τ ↦ [sin(2π τ w), cos(2π τ w)]`` with fixed ``w ~ N(0, scale²)`` of size ``dim/2``.

    ``w`` is a persistent buffer: it is saved with the model and must be loaded, never re-drawn
    (a model trained with one ``w`` is meaningless with another).

    Args:
        dim: output size (even).
        scale: standard deviation of the frequencies; 30 for t ∈ [0, 1] (SRPO, IDQL).
    """

    def __init__(self, dim: int = 64, scale: float = 30.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"GaussianFourierTimeEmbedding needs an even dim, got {dim}.")
        self.dim = dim
        self.register_buffer("weight", torch.randn(dim // 2) * scale)

    def forward(self, time: torch.Tensor) -> torch.Tensor:
        args = (2 * math.pi) * time.unsqueeze(-1) * self.weight
        return torch.cat([args.sin(), args.cos()], dim=-1)


def make_time_embedding(kind: str, dim: int, *, fourier_scale: float = 30.0) -> nn.Module:
    """``"sinusoidal"`` or ``"fourier"`` time features of size ``dim``."""
    if kind == "sinusoidal":
        return SinusoidalTimeEmbedding(dim)
    if kind == "fourier":
        return GaussianFourierTimeEmbedding(dim, scale=fourier_scale)
    raise ValueError(f"time_embedding must be 'sinusoidal' or 'fourier', got {kind!r}.")


def _mlp(
    sizes: Sequence[int], activation: type[nn.Module], *, layer_norm: bool = False, dropout=0.0
) -> nn.Sequential:
    """Linear layers ``sizes[0] -> … -> sizes[-1]`` with activation (and LN, dropout) between."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if i < len(sizes) - 2:
            if layer_norm:
                layers.append(nn.LayerNorm(fan_out))
            layers.append(activation())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class _ResidualBlock(nn.Module):
    """``h + W₂ Mish(W₁ LN(Dropout(h)))`` (IDQL's LN-ResNet block)."""

    def __init__(
        self,
        dim: int,
        expansion: int,
        dropout: float,
        layer_norm: bool,
        activation: type[nn.Module],
    ):
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.norm = nn.LayerNorm(dim) if layer_norm else nn.Identity()
        self.fc1 = nn.Linear(dim, expansion * dim)
        self.activation = activation()
        self.fc2 = nn.Linear(expansion * dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(self.activation(self.fc1(self.norm(self.dropout(h)))))


class ResidualMLPNoisePredictor(nn.Module):
    """IDQL / SRPO's residual-MLP ε-network ``ε_ψ(a_t, t, s)``.

    ``e = W₂ Mish(W₁ φ(t))`` (φ: time features of size ``time_dim``, ``e`` of size
    ``time_hidden``); ``h = W_in [a_t, s, e]``; ``num_blocks`` blocks
    ``h ← h + W_b Mish(W_a LN(Dropout(h)))`` of width ``hidden_dim → expansion·hidden_dim →
    hidden_dim``; ``ε̂ = W_out Mish(h)``. Defaults are SRPO's: 256 wide, 3 blocks, ×4, dropout 0.1,
    Fourier features (64, scale 30) and a 128-wide time MLP.

    Args:
        observation_dim: S.
        action_dim: A.
        hidden_dim, num_blocks, expansion, dropout, layer_norm: the residual body.
        activation: Mish (SRPO). On CPU, eager Mish costs about 10× SiLU (torch 2.13).
        time_embedding: ``"fourier"`` (continuous t) or ``"sinusoidal"`` (integer n).
        time_dim, time_hidden, fourier_scale: the time branch.

    Examples:
        >>> net = ResidualMLPNoisePredictor(11, 3, hidden_dim=32, num_blocks=1)
        >>> net(torch.randn(8, 11), torch.randn(8, 3), torch.rand(8)).shape
        torch.Size([8, 3])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        hidden_dim: int = 256,
        num_blocks: int = 3,
        expansion: int = 4,
        dropout: float = 0.1,
        layer_norm: bool = True,
        activation: type[nn.Module] = Mish,
        time_embedding: str = "fourier",
        time_dim: int = 64,
        time_hidden: int = 128,
        fourier_scale: float = 30.0,
    ):
        super().__init__()
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.time_embedding = make_time_embedding(
            time_embedding, time_dim, fourier_scale=fourier_scale
        )
        self.time_mlp = _mlp([time_dim, time_hidden, time_hidden], activation)
        self.input = nn.Linear(action_dim + observation_dim + time_hidden, hidden_dim)
        self.blocks = nn.Sequential(
            *(
                _ResidualBlock(hidden_dim, expansion, dropout, layer_norm, activation)
                for _ in range(num_blocks)
            )
        )
        self.head_activation = activation()
        self.head = nn.Linear(hidden_dim, action_dim)

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        t_emb = self.time_mlp(self.time_embedding(_time_as_batch(time, action)))
        observation = observation.expand(*action.shape[:-1], observation.shape[-1])
        h = self.input(torch.cat([action, observation, t_emb], dim=-1))
        return self.head(self.head_activation(self.blocks(h)))


def _orthogonal_init(module: nn.Module, gain: float) -> None:
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, gain)
            nn.init.zeros_(layer.bias)


class MLPNoisePredictor(nn.Module):
    """BDPO's ε-network ``ε(a_n, n, s) = MLP([a_n, e(n), s])``.

    ``e(n) = W Mish(W φ(n))`` with φ sinusoidal features of size ``time_dim`` and a time MLP of
    sizes ``time_hidden``; body ``hidden`` with ``activation`` (Mish), optional LayerNorm and
    dropout (BDPO: none), linear head to A. ``init="orthogonal"`` sets every Linear to an
    orthogonal matrix of gain √2 and a zero bias (BDPO); ``"default"`` keeps PyTorch's.

    Examples:
        >>> net = MLPNoisePredictor(11, 3, hidden=(64, 64))
        >>> net(torch.randn(4, 7, 11), torch.randn(4, 7, 3), torch.randint(1, 6, (4, 7))).shape
        torch.Size([4, 7, 3])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        hidden: Sequence[int] = (256, 256, 256, 256),
        activation: type[nn.Module] = Mish,
        layer_norm: bool = False,
        dropout: float = 0.0,
        time_embedding: str = "sinusoidal",
        time_dim: int = 64,
        time_hidden: Sequence[int] = (64, 64),
        fourier_scale: float = 30.0,
        init: str = "orthogonal",
    ):
        super().__init__()
        if init not in ("orthogonal", "default"):
            raise ValueError(f"init must be 'orthogonal' or 'default', got {init!r}.")
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.time_embedding = make_time_embedding(
            time_embedding, time_dim, fourier_scale=fourier_scale
        )
        self.time_mlp = _mlp([time_dim, *time_hidden], activation)
        t_out = time_hidden[-1] if len(time_hidden) else time_dim
        self.body = _mlp(
            [action_dim + t_out + observation_dim, *hidden, action_dim],
            activation,
            layer_norm=layer_norm,
            dropout=dropout,
        )
        if init == "orthogonal":
            _orthogonal_init(self, math.sqrt(2.0))

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        t_emb = self.time_mlp(self.time_embedding(_time_as_batch(time, action)))
        observation = observation.expand(*action.shape[:-1], observation.shape[-1])
        return self.body(torch.cat([action, t_emb, observation], dim=-1))


class EnsembleLinear(nn.Module):
    """E independent affine maps ``y_e = x_e W_e + b_e`` evaluated as one batched matmul.

    ``forward(x)`` takes ``x [E, N, in]`` (one input per member) or, with ``shared=True``,
    ``x [N, in]`` (the same input for every member) and returns ``[E, N, out]``. Each member is
    initialized independently (orthogonal with ``gain``, zero bias).
    """

    def __init__(self, num_members: int, in_features: int, out_features: int, gain: float = 1.0):
        super().__init__()
        self.num_members, self.in_features, self.out_features = (
            num_members,
            in_features,
            out_features,
        )
        self.weight = nn.Parameter(torch.empty(num_members, in_features, out_features))
        # used as x @ W, its gradient comes contiguous: stacked seeds keep this layout
        # (torchrl_sym.train.stacking)
        self.weight._stack_contiguous = True
        self.bias = nn.Parameter(torch.zeros(num_members, out_features))
        for w in self.weight.data:
            nn.init.orthogonal_(w, gain)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        if shared:
            x = x.unsqueeze(0).expand(self.num_members, *x.shape)
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight)

    def extra_repr(self) -> str:
        return f"num_members={self.num_members}, in={self.in_features}, out={self.out_features}"


class _EnsembleLayerNorm(nn.Module):
    def __init__(self, num_members: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_members, 1, dim))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class NoiseConditionedCritic(nn.Module):
    """BDPO's value ensemble ``V_k(s, a_n, n)``, k = 1..E, on noisy actions at step n.

    Member k: ``e_k(n) = W Mish(W φ(n))`` (φ sinusoidal ``time_dim``, time MLP ``time_hidden``,
    BDPO: 64 → 128 → 64); ``V_k = MLP_k([s, a_n, e_k(n)])`` with ``hidden`` (BDPO [256]×3), Mish,
    LayerNorm after every hidden layer (BDPO: always on for V) and a scalar head. Members share no
    weights; they are stored stacked (``[E, in, out]``) and run as batched matmuls, so the whole
    ensemble is one module for ``convert_to_functional`` / EMA targets.

    Args:
        observation_dim, action_dim: S and A.
        num_members: E.
        hidden, layer_norm, activation: the value MLP.
        time_dim, time_hidden: the time branch.

    Returns (forward):
        ``[E, *B, 1]`` for inputs ``[*B, S]``, ``[*B, A]``, ``[*B]``.

    Examples:
        >>> v = NoiseConditionedCritic(11, 3, num_members=4, hidden=(32, 32))
        >>> v(torch.randn(8, 5, 11), torch.randn(8, 5, 3), torch.randint(0, 5, (8, 5))).shape
        torch.Size([4, 8, 5, 1])
    """

    def __init__(
        self,
        observation_dim: int,
        action_dim: int,
        *,
        num_members: int = 10,
        hidden: Sequence[int] = (256, 256, 256),
        layer_norm: bool = True,
        activation: type[nn.Module] = Mish,
        time_dim: int = 64,
        time_hidden: Sequence[int] = (128, 64),
    ):
        super().__init__()
        if num_members < 1 or not len(hidden) or not len(time_hidden):
            raise ValueError("NoiseConditionedCritic needs num_members ≥ 1 and non-empty widths.")
        self.observation_dim, self.action_dim = observation_dim, action_dim
        self.num_members = num_members
        self.time_embedding = SinusoidalTimeEmbedding(time_dim)
        gain = math.sqrt(2.0)
        sizes = [time_dim, *time_hidden]
        self.time_layers = nn.ModuleList(
            EnsembleLinear(num_members, i, o, gain) for i, o in itertools.pairwise(sizes)
        )
        sizes = [observation_dim + action_dim + time_hidden[-1], *hidden]
        self.layers = nn.ModuleList(
            EnsembleLinear(num_members, i, o, gain) for i, o in itertools.pairwise(sizes)
        )
        self.norms = nn.ModuleList(
            _EnsembleLayerNorm(num_members, o) if layer_norm else nn.Identity() for o in hidden
        )
        self.head = EnsembleLinear(num_members, hidden[-1], 1, 1.0)
        self.activation = activation()

    def forward(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor
    ) -> torch.Tensor:
        batch = action.shape[:-1]
        time = _time_as_batch(time, action).reshape(-1)
        observation = observation.expand(*batch, observation.shape[-1])
        e = self.time_embedding(time)
        for i, layer in enumerate(self.time_layers):
            e = layer(e, shared=i == 0)
            if i < len(self.time_layers) - 1:
                e = self.activation(e)
        x = torch.cat([observation, action], dim=-1).reshape(
            -1, self.observation_dim + self.action_dim
        )
        h = torch.cat([x.unsqueeze(0).expand(self.num_members, *x.shape), e], dim=-1)
        for layer, norm in zip(self.layers, self.norms):
            h = self.activation(norm(layer(h)))
        return self.head(h).reshape(self.num_members, *batch, 1)
