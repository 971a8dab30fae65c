"""2-D bandit datasets of the QGPO / SRPO / BDPO toy experiments.

Each dataset is a cloud of 2-D points ``x`` (the *actions* of a one-step bandit) with an energy
``E(x) ∈ [0, 1]`` (the *reward*). The generators follow ``flowrl/dataset/toy2d.py`` (BDPO) and
SRPO's ``dataset/dataset.py``; the table is in ``docs/specs/bdpo.md`` §8. ``U`` is uniform on [0, 1),
``N`` a standard normal, every draw i.i.d. per point.

``8gaussians``
    k ~ U{0..7}; c_k = 4·(cos θ_k, sin θ_k) with θ_k = π/2 + kπ/4, i.e. N, NW, W, SW, S, SE, E, NE;
    x = (c_k + 0.5·N²) / 1.414.  E = k / 7.
``swissroll``
    sklearn ``make_swiss_roll(noise=1.0)``: t = 1.5π(1 + 2U), h = 21U,
    (x, h, z) = (t cos t, h, t sin t) + N³; the point is (x, z) / 5.  E = clip(‖point‖² / 9, 0, 1).
    The reference code does not clip; without it about 1.2 % of points (the noisy outer rim) have
    E > 1, up to about 1.6. We clip so that every dataset keeps E ∈ [0, 1].
``moons``
    sklearn ``make_moons(noise=0.1)``: n_out = ⌊n/2⌋ points (cos t, sin t) with label 0 and
    n_in = n − n_out points (1 − cos t, 1/2 − sin t) with label 1, t = linspace(0, π) over each
    half, shuffled, + 0.1·N²; then x ↦ 2x + (−1, −0.2).  E = label.
``rings``
    Four circles of radius 3, 2.25, 1.5, 0.75 with ⌊n/4⌋ points each (the radius-0.75 ring takes
    the remainder), angles linspace(0, 2π) without the end point, shuffled, + 0.08·N².
    E from r² *before* the noise: r² < 2 → 0; 2 ≤ r² < 5 → 1; 5 ≤ r² < 8.5 → 0.333;
    r² ≥ 8.5 → 0.667 (so radius 3 → 0.667, 2.25 → 0.333, 1.5 → 1, 0.75 → 0).
``checkerboard``
    u1 = 4U − 2, u2 = U − 2·Bernoulli(½) + (⌊u1⌋ mod 2); x = 2·(u1, u2) ∈ [−4, 4)².
    E = 1 if x₁ ∈ (0, 2] or x₁ ≤ −2 else 0, on the *final* first coordinate x₁ = 2u1 as the
    reference code computes it (so the rewarded columns alternate: [−4, −2] and (0, 2]).
``2spirals``
    s = √U·3π (the code's 540°); arm a = (−s cos s + U/2, s sin s + U/2) and its mirror −a
    (same draws), both / 3, + 0.1·N²; shuffled.  E = clip(1 − s/10, 0, 1) for both arms.

Sampling is a deterministic function of ``seed`` (a local ``numpy.random.Generator``; the global
RNGs are never touched). Points are computed in float64 and returned as float32.

Bandit form (``make_toy2d_dataset``): a constant zero observation, action = point,
reward = energy, terminated = done = True, truncated = False.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import numpy as np
import torch
from tensordict import TensorDict

__all__ = ["TOY2D_DATASETS", "make_toy2d_dataset", "sample_toy2d"]

TOY2D_DATASETS: tuple[str, ...] = (
    "8gaussians",
    "swissroll",
    "moons",
    "rings",
    "checkerboard",
    "2spirals",
)

_Sampler = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _eight_gaussians(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # k = 0..7 walks counter-clockwise from North: N, NW, W, SW, S, SE, E, NE.
    angles = np.pi / 2 + np.arange(8) * np.pi / 4
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    k = rng.integers(0, 8, size=n)
    points = (centres[k] + 0.5 * rng.standard_normal((n, 2))) / 1.414
    return points, k / 7.0


def _swissroll(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn.datasets.make_swiss_roll(n, noise=1.0, hole=False), columns (0, 2).
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    height = 21.0 * rng.random(n)
    roll = np.stack([t * np.cos(t), height, t * np.sin(t)], axis=1)
    roll += 1.0 * rng.standard_normal((n, 3))
    points = roll[:, [0, 2]] / 5.0
    # Clipped so that E ∈ [0, 1] like the other sets (see the module docstring).
    energy = np.clip(np.sum(points**2, axis=1) / 9.0, 0.0, 1.0)
    return points, energy


def _moons(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # sklearn.datasets.make_moons(n, shuffle=True, noise=0.1).
    n_out = n // 2
    n_in = n - n_out
    t_out = np.linspace(0.0, np.pi, n_out)
    t_in = np.linspace(0.0, np.pi, n_in)
    outer = np.stack([np.cos(t_out), np.sin(t_out)], axis=1)
    inner = np.stack([1.0 - np.cos(t_in), 1.0 - np.sin(t_in) - 0.5], axis=1)
    points = np.concatenate([outer, inner], axis=0)
    labels = np.concatenate([np.zeros(n_out), np.ones(n_in)])
    order = rng.permutation(n)
    points, labels = points[order], labels[order]
    points = points + 0.1 * rng.standard_normal((n, 2))
    return points * 2.0 + np.array([-1.0, -0.2]), labels


def _rings(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    radii = np.array([3.0, 2.25, 1.5, 0.75])
    counts = [n // 4, n // 4, n // 4, n - 3 * (n // 4)]
    circles = []
    for radius, count in zip(radii, counts):
        theta = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
        circles.append(radius * np.stack([np.cos(theta), np.sin(theta)], axis=1))
    points = np.concatenate(circles, axis=0)[rng.permutation(n)]
    r2 = np.sum(points**2, axis=1)
    energy = np.select(
        [r2 < 2.0, r2 < 5.0, r2 < 8.5],
        [0.0, 1.0, 0.333],
        default=0.667,
    )
    points = points + 0.08 * rng.standard_normal((n, 2))
    return points, energy


def _checkerboard(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    u1 = 4.0 * rng.random(n) - 2.0
    u2 = rng.random(n) - 2.0 * rng.integers(0, 2, size=n) + np.floor(u1) % 2
    points = 2.0 * np.stack([u1, u2], axis=1)
    x1 = points[:, 0]
    energy = (((x1 > 0.0) & (x1 <= 2.0)) | (x1 <= -2.0)).astype(np.float64)
    return points, energy


def _two_spirals(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # One arm of ⌈n/2⌉ points and its exact mirror; an odd n drops the last mirrored point.
    half = n - n // 2
    s = np.sqrt(rng.random(half)) * 3.0 * np.pi
    arm = np.stack(
        [
            -np.cos(s) * s + 0.5 * rng.random(half),
            np.sin(s) * s + 0.5 * rng.random(half),
        ],
        axis=1,
    )
    points = np.concatenate([arm, -arm], axis=0)[:n] / 3.0
    energy = np.clip(1.0 - np.concatenate([s, s])[:n] / 10.0, 0.0, 1.0)
    order = rng.permutation(n)
    points, energy = points[order], energy[order]
    points = points + 0.1 * rng.standard_normal((n, 2))
    return points, energy


_SAMPLERS: dict[str, _Sampler] = {
    "8gaussians": _eight_gaussians,
    "swissroll": _swissroll,
    "moons": _moons,
    "rings": _rings,
    "checkerboard": _checkerboard,
    "2spirals": _two_spirals,
}


def _check_positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a positive int, got {value!r} ({type(value).__name__}).")
    if value <= 0:
        raise ValueError(f"{what} must be a positive int, got {value}.")
    return int(value)


def sample_toy2d(name: str, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` points of the 2-D toy dataset ``name`` with their energies.

    Args:
        name: one of :data:`TOY2D_DATASETS`; the generators and energies are in the module
            docstring.
        n: number of points (positive int).
        seed: seed of the local ``numpy.random.Generator``; the same ``(name, n, seed)`` always
            gives the same tensors.

    Returns:
        ``(points, energy)``: float32 tensors of shapes ``[n, 2]`` and ``[n]``, ``energy ∈ [0, 1]``.

    Examples:
        >>> points, energy = sample_toy2d("8gaussians", 1000, seed=0)
        >>> points.shape, energy.shape
        (torch.Size([1000, 2]), torch.Size([1000]))
    """
    if name not in _SAMPLERS:
        raise ValueError(
            f"Unknown toy 2-D dataset {name!r}; expected one of {', '.join(TOY2D_DATASETS)}."
        )
    n = _check_positive_int(n, "n")
    points, energy = _SAMPLERS[name](n, np.random.default_rng(seed))
    return (
        torch.as_tensor(points, dtype=torch.float32),
        torch.as_tensor(energy, dtype=torch.float32),
    )


def make_toy2d_dataset(name: str, n: int, *, seed: int = 0, observation_dim: int = 1) -> TensorDict:
    """The toy 2-D dataset ``name`` as a one-step bandit in TorchRL's TED layout.

    Every transition has the constant observation ``0 ∈ R^observation_dim``, action = point
    ``x ∈ R²`` and reward ``E(x)``, and ends the episode (``terminated = done = True``,
    ``truncated = False``), so a critic's target is ``y = r``. Actions are not clipped: they
    lie in about [−4.5, 4.5]².

    Args:
        name: one of :data:`TOY2D_DATASETS`.
        n: number of transitions (positive int).
        seed: seed passed to :func:`sample_toy2d`.
        observation_dim: size of the dummy observation (positive int).

    Returns:
        TensorDict with ``batch_size=[n]`` and entries ``"observation"`` float32 ``[n, d]``,
        ``"action"`` float32 ``[n, 2]``, ``("next", "observation")`` float32 ``[n, d]``,
        ``("next", "reward")`` float32 ``[n, 1]`` and ``("next", "done" | "terminated" |
        "truncated")`` bool ``[n, 1]``.

    Examples:
        >>> td = make_toy2d_dataset("moons", 512, seed=1)
        >>> td["action"].shape, td["next", "reward"].shape
        (torch.Size([512, 2]), torch.Size([512, 1]))
    """
    points, energy = sample_toy2d(name, n, seed=seed)
    observation_dim = _check_positive_int(observation_dim, "observation_dim")
    observation = torch.zeros(n, observation_dim, dtype=torch.float32)
    return TensorDict(
        {
            "observation": observation,
            "action": points,
            "next": {
                "observation": observation.clone(),
                "reward": energy.unsqueeze(-1),
                "done": torch.ones(n, 1, dtype=torch.bool),
                "terminated": torch.ones(n, 1, dtype=torch.bool),
                "truncated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )
