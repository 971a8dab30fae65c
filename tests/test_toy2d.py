"""The 2-D bandit datasets match the generators and energies of docs/specs/bdpo.md §8."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrl_sym.data.toy2d import TOY2D_DATASETS, make_toy2d_dataset, sample_toy2d

N = 20_000


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name in TOY2D_DATASETS:
        points, energy = sample_toy2d(name, N, seed=0)
        out[name] = (points.numpy().astype(np.float64), energy.numpy().astype(np.float64))
    return out


def test_names() -> None:
    assert TOY2D_DATASETS == (
        "8gaussians",
        "swissroll",
        "moons",
        "rings",
        "checkerboard",
        "2spirals",
    )


@pytest.mark.parametrize("name", TOY2D_DATASETS)
def test_shapes_dtypes_ranges(name: str) -> None:
    points, energy = sample_toy2d(name, 1001, seed=3)
    assert points.shape == (1001, 2) and points.dtype == torch.float32
    assert energy.shape == (1001,) and energy.dtype == torch.float32
    assert torch.isfinite(points).all() and torch.isfinite(energy).all()
    assert energy.min() >= 0.0 and energy.max() <= 1.0
    # Every toy action lives in about [-4.5, 4.5]^2 (the BDPO no-clipping range).
    assert points.abs().max() < 4.6


@pytest.mark.parametrize("name", TOY2D_DATASETS)
def test_seed_determinism(name: str) -> None:
    p1, e1 = sample_toy2d(name, 500, seed=7)
    p2, e2 = sample_toy2d(name, 500, seed=7)
    p3, _ = sample_toy2d(name, 500, seed=8)
    assert torch.equal(p1, p2) and torch.equal(e1, e2)
    assert not torch.equal(p1, p3)


def test_global_rng_untouched() -> None:
    # The legacy numpy state is exactly what must stay untouched, hence the noqa.
    torch_state = torch.get_rng_state()
    numpy_state = np.random.get_state()  # noqa: NPY002
    sample_toy2d("8gaussians", 100, seed=1)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()  # noqa: NPY002
    np.testing.assert_array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"'8gausians'.*8gaussians, swissroll, moons"):
        sample_toy2d("8gausians", 10)


@pytest.mark.parametrize("n", [0, -3])
def test_non_positive_n(n: int) -> None:
    with pytest.raises(ValueError, match=f"positive int, got {n}"):
        sample_toy2d("moons", n)


@pytest.mark.parametrize("n", [2.5, "10", True])
def test_non_int_n(n: object) -> None:
    with pytest.raises(TypeError, match="positive int"):
        sample_toy2d("moons", n)  # type: ignore[arg-type]


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(TOY2D_DATASETS), n=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_small_and_odd_n(name: str, n: int, seed: int) -> None:
    points, energy = sample_toy2d(name, n, seed=seed)
    assert points.shape == (n, 2) and energy.shape == (n,)
    assert torch.isfinite(points).all() and ((energy >= 0) & (energy <= 1)).all()


def test_eight_gaussians(samples) -> None:
    points, energy = samples["8gaussians"]
    angles = np.pi / 2 + np.arange(8) * np.pi / 4  # N, NW, W, SW, S, SE, E, NE
    centres = 4.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1) / 1.414
    np.testing.assert_allclose(centres[0], [0.0, 4 / 1.414], atol=1e-12)  # k = 0 is North
    np.testing.assert_allclose(centres[2], [-4 / 1.414, 0.0], atol=1e-12)  # k = 2 is West
    dist = np.linalg.norm(points[:, None, :] - centres[None], axis=-1)
    nearest = dist.argmin(axis=1)
    assert np.mean(np.isclose(energy, nearest / 7.0, atol=1e-6)) > 0.99
    # Energies are exactly k / 7 and each mode has frequency 1/8.
    k = np.rint(energy * 7)
    np.testing.assert_allclose(energy, k / 7, atol=1e-6)
    freqs = np.bincount(k.astype(int), minlength=8) / N
    np.testing.assert_allclose(freqs, 1 / 8, atol=0.02)
    # |N(0, σ² I₂)| is Rayleigh with mean σ√(π/2); the whole set is scaled by 1/1.414.
    mean_dist = dist[np.arange(N), k.astype(int)].mean()
    assert mean_dist == pytest.approx(0.5 * math.sqrt(math.pi / 2) / 1.414, rel=0.1)


def test_swissroll(samples) -> None:
    points, energy = samples["swissroll"]
    # Energy is ‖x‖²/9 clipped to [0, 1]; only the noisy outer rim (≈1.2 %) is clipped.
    np.testing.assert_allclose(energy, np.minimum((points**2).sum(1) / 9, 1.0), atol=1e-5)
    clipped = np.mean(energy == 1.0)
    assert 0.002 < clipped < 0.03
    # Radius of the noiseless roll is t/5 with t ~ U(1.5π, 4.5π): mean 3π/5 ≈ 1.885.
    assert np.linalg.norm(points, axis=1).mean() == pytest.approx(3 * math.pi / 5, rel=0.05)


def test_moons(samples) -> None:
    points, energy = samples["moons"]
    assert set(np.unique(energy)) == {0.0, 1.0}
    assert energy.mean() == pytest.approx(0.5, abs=1e-4)  # sklearn: n//2 outer, rest inner
    # Undo the affine map; label 0 lies near the unit upper arc, label 1 near the lower arc
    # centred at (1, 0.5), both with radius 1 (noise std 0.1).
    raw = (points - np.array([-1.0, -0.2])) / 2.0
    outer, inner = raw[energy == 0], raw[energy == 1]
    r_outer = np.linalg.norm(outer, axis=1)
    r_inner = np.linalg.norm(inner - np.array([1.0, 0.5]), axis=1)
    assert np.median(np.abs(r_outer - 1.0)) < 0.1
    assert np.median(np.abs(r_inner - 1.0)) < 0.1
    assert np.mean(outer[:, 1] > -0.2) > 0.97  # upper half-plane arc
    assert np.mean(inner[:, 1] < 0.7) > 0.97  # lower arc, y = 1/2 - sin t ≤ 1/2
    assert outer.mean(0) == pytest.approx([0.0, 2 / math.pi], abs=0.03)
    assert inner.mean(0) == pytest.approx([1.0, 0.5 - 2 / math.pi], abs=0.03)


def test_rings(samples) -> None:
    points, energy = samples["rings"]
    radius = np.linalg.norm(points, axis=1)
    ring = np.abs(radius[:, None] - np.array([3.0, 2.25, 1.5, 0.75])[None]).argmin(axis=1)
    # Equal counts (N divisible by 4), identified by the nearest radius (noise 0.08 ≪ 0.375).
    np.testing.assert_array_equal(np.bincount(ring, minlength=4), [N // 4] * 4)
    # r² rule before noise: 9 → 0.667, 5.0625 → 0.333, 2.25 → 1, 0.5625 → 0.
    expected = np.array([0.667, 0.333, 1.0, 0.0])[ring]
    np.testing.assert_allclose(energy, expected, atol=1e-6)
    residual = radius - np.array([3.0, 2.25, 1.5, 0.75])[ring]
    assert residual.std() == pytest.approx(0.08, rel=0.1)


def test_checkerboard(samples) -> None:
    points, energy = samples["checkerboard"]
    assert points.min() >= -4.0 and points.max() < 4.0
    x1, x2 = points[:, 0], points[:, 1]
    rule = ((x1 > 0) & (x1 <= 2)) | (x1 <= -2)
    np.testing.assert_array_equal(energy, rule.astype(np.float64))
    assert energy.mean() == pytest.approx(0.5, abs=0.02)
    # Checkerboard: a point's 2×2 cell (i, j) has i + j even.
    cells = np.floor(x1 / 2) + np.floor(x2 / 2)
    assert np.all(cells % 2 == 0)
    # All eight occupied cells equally likely.
    _, counts = np.unique(
        np.stack([np.floor(x1 / 2), np.floor(x2 / 2)], 1), axis=0, return_counts=True
    )
    assert len(counts) == 8
    np.testing.assert_allclose(counts / N, 1 / 8, atol=0.015)


def test_two_spirals(samples) -> None:
    points, energy = samples["2spirals"]
    assert energy.min() >= 0.0 and energy.max() <= 1.0
    # s ~ √U·3π so E = 1 − s/10 ∈ [1 − 0.3π, 1]; E[s] = 2π.
    assert energy.min() >= 1 - 0.3 * math.pi - 1e-6
    assert energy.mean() == pytest.approx(1 - 2 * math.pi / 10, abs=0.01)
    # The mirror arm makes the cloud point-symmetric: histograms of x and −x agree.
    assert points.mean(0) == pytest.approx([0.0, 0.0], abs=0.03)
    edges = np.linspace(-4.5, 4.5, 19)
    h_pos, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=[edges, edges])
    h_neg, _, _ = np.histogram2d(-points[:, 0], -points[:, 1], bins=[edges, edges])
    assert 0.5 * np.abs(h_pos - h_neg).sum() / N < 0.05
    # ...but not symmetric under a reflection of one axis (it is a spiral, not a blob).
    h_flip, _, _ = np.histogram2d(-points[:, 0], points[:, 1], bins=[edges, edges])
    assert 0.5 * np.abs(h_pos - h_flip).sum() / N > 0.2
    # Energy falls with the distance from the centre (|point| ≈ s/3).
    radius = np.linalg.norm(points, axis=1)
    assert np.corrcoef(radius, energy)[0, 1] < -0.95


@pytest.mark.parametrize("name", TOY2D_DATASETS)
def test_ted_dataset(name: str) -> None:
    td = make_toy2d_dataset(name, 257, seed=5, observation_dim=3)
    points, energy = sample_toy2d(name, 257, seed=5)
    assert td.batch_size == torch.Size([257])
    expected = {
        "observation": ((257, 3), torch.float32),
        "action": ((257, 2), torch.float32),
        ("next", "observation"): ((257, 3), torch.float32),
        ("next", "reward"): ((257, 1), torch.float32),
        ("next", "done"): ((257, 1), torch.bool),
        ("next", "terminated"): ((257, 1), torch.bool),
        ("next", "truncated"): ((257, 1), torch.bool),
    }
    assert set(td.keys(include_nested=True, leaves_only=True)) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert td[key].shape == shape and td[key].dtype == dtype, key
    assert torch.equal(td["action"], points)
    assert torch.equal(td["next", "reward"].squeeze(-1), energy)
    assert (td["observation"] == 0).all() and (td["next", "observation"] == 0).all()
    assert td["next", "terminated"].all() and td["next", "done"].all()
    assert not td["next", "truncated"].any()


def test_ted_default_observation_dim_and_bad_dim() -> None:
    assert make_toy2d_dataset("rings", 8)["observation"].shape == (8, 1)
    with pytest.raises(ValueError, match="observation_dim"):
        make_toy2d_dataset("rings", 8, observation_dim=0)
