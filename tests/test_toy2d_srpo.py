"""SRPO's 2-D bandit (docs/specs/srpo.md §8) on a small, fast configuration: at 1/β = 0 the points sit on
their targets; at 1/β = 1 they have moved into regions of higher behavior density."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_sym.toys import srpo

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "datasets": ["moons"],
    "num_samples": 20_000,
    "behavior_steps": 1500,
    "behavior_batch": 512,
    "hidden": [64, 64, 64],
    "activation": "silu",
    "inverse_betas": [0.0, 0.5, 1.0],
    "point_steps": 300,
    "draws": 16,
    "model_samples": 4000,
    "kde_points": 5000,
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("toy")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return out, srpo.run(OmegaConf.create(SMALL), out, 0)
    finally:
        torch.set_num_threads(threads)


def test_unregularized_points_sit_on_their_targets(result):
    _, res = result
    moons = res["moons"]
    assert moons["max_distance_at_0"] < 1e-2
    solutions, targets = torch.tensor(moons["solutions"]), torch.tensor(moons["targets"])
    assert targets.shape == (49, 2) and solutions.shape == (3, 49, 2)
    assert float((solutions[0] - targets).norm(dim=-1).max()) < 1e-2


def test_regularized_points_move_into_high_behavior_density(result):
    _, res = result
    moons = res["moons"]
    at_one = moons["mean_log_density"][-1]
    assert at_one > moons["mean_log_density_targets"] + 1.0
    assert moons["mean_log_density"][0] == pytest.approx(moons["mean_log_density_targets"], abs=0.5)
    assert moons["fraction_denser_than_target_at_1"] > 0.6
    # the pull grows with 1/β: points leave their targets further as the regularization grows
    distances = moons["mean_distance"]
    assert distances[0] < 1e-2 < distances[1] < distances[2]


def test_the_fitted_model_is_a_behavior_model(result):
    _, res = result
    moons = res["moons"]
    curve = moons["behavior_loss_curve"]
    assert curve[-1] < 0.85 * curve[0]
    # its samples lie where the data is: under the data KDE they are far denser than the grid
    # targets, and denser than samples of the Gaussian with the data's mean and covariance
    from torchrl_sym.data.toy2d import sample_toy2d

    points, _ = sample_toy2d("moons", SMALL["num_samples"], seed=0)
    ref = points[: SMALL["kde_points"]]
    gauss = torch.distributions.MultivariateNormal(points.mean(0), torch.cov(points.T))
    baseline = float(srpo.kde_log_density(gauss.sample((4000,)), ref, 0.15).mean())
    assert moons["model_sample_log_density"] > baseline + 1.0
    assert moons["model_sample_log_density"] > moons["mean_log_density_targets"] + 10.0


def test_figure_and_numbers_are_written(result):
    out, res = result
    png = out / "toy2d_srpo.png"
    assert png.is_file() and png.stat().st_size > 10_000
    json.dumps(res)  # JSON-able as returned
    assert all(math.isfinite(v) for v in res["moons"]["mean_log_density"])


def test_kde_log_density_of_a_single_point_is_the_gaussian_log_pdf():
    x = torch.tensor([[0.3, -0.4]])
    q = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    h = 0.5
    expected = -0.5 * ((q - x) ** 2).sum(-1) / h**2 - math.log(2 * math.pi * h**2)
    torch.testing.assert_close(srpo.kde_log_density(q, x, h), expected.double())


def test_bad_sweep_is_reported(tmp_path):
    with pytest.raises(ValueError, match="inverse_betas"):
        srpo.run(OmegaConf.create({**SMALL, "inverse_betas": [0.5, 1.0]}), tmp_path, 0)


def test_recipe_dispatches_to_the_srpo_toy(tmp_path):
    overrides = [
        "algo=srpo",
        f"out_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'hydra'}",
        "threads=1",
        "algo.datasets=[8gaussians]",
        "algo.num_samples=4000",
        "algo.behavior_steps=20",
        "algo.behavior_batch=256",
        "algo.hidden=[16,16]",
        "algo.activation=silu",
        "algo.grid=[-1,1]",
        "algo.inverse_betas=[0.0,1.0]",
        "algo.point_steps=5",
        "algo.point_steps_unregularized=5",
        "algo.draws=2",
        "algo.model_samples=500",
        "algo.kde_points=500",
        "algo.sampler_steps=5",
    ]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "toy2d.py"), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((tmp_path / "toy2d_srpo.json").read_text())
    assert record["algo"] == "srpo" and record["config"]["grid"] == [-1, 1]
    assert len(record["result"]["8gaussians"]["solutions"]) == 2
    assert (tmp_path / "toy2d_srpo.png").is_file()
