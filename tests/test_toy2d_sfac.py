"""``recipes/toy2d.py algo=sfac``: Sf-AC's distribution-approximation toy and its numbers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from torchrl_sym.toys import sfac as toy

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "name": "sfac",
    "taus": [0.1],
    "target_divergence": "jeffreys",
    "n_grid": 2000,
    "kappa": "balanced",
    "estimator": {
        "divergences": ["jeffreys", "js"],
        "samples": 20000,
        "epsilons": [0.05, 0.5],
        "n_losses": [3],
        "show_epsilon": 0.5,
        "show_n_loss": 3,
    },
}


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    numbers = toy.run(OmegaConf.create(SMALL), out, seed=0)
    assert (out / "toy2d_sfac.png").stat().st_size > 10_000
    return numbers["taus"]["0.1"]


def test_js_fit_seeks_the_main_mode_where_forward_kl_covers(result):
    fits = result["fits"]
    fkl, js = fits["forward_kl"], fits["js"]
    # forward KL (the weighted MLE) spreads over both modes of π*; the exact JS fit puts less
    # than half as much mass where π* = 0 and is narrower, centred nearer the dominant mode
    assert js["mass_outside_support"] < 0.6 * fkl["mass_outside_support"]
    assert js["std"] < fkl["std"] - 0.01
    assert js["mean"] > fkl["mean"]
    assert js["tv_to_target"] < fkl["tv_to_target"]


def test_exact_sample_estimator_reaches_its_grid_limit(result):
    # with the exact h(r) (no truncation, no clip) the §4 estimator on samples of π_D is a
    # Monte-Carlo estimate of Σ_{supp π*} π* [f(r) − h₁(r − 1)]: its fit matches the grid fit
    for div in ("jeffreys", "js"):
        entry = result["estimator"][div]
        assert entry["exact_series_unclipped"]["tv_to_limit"] < 0.01, div
        assert entry["forward_kl_tv_to_limit"] > 0.03, div  # the limit is not the forward fit


def test_clip_interpolates_between_weighted_mle_and_the_symmetric_fit(result):
    for div in ("jeffreys", "js"):
        sweep = {s["epsilon"]: s for s in result["estimator"][div]["sweep"]}
        tight, wide = sweep[0.05], sweep[0.5]
        # a tight clip zeroes the symmetry gradient on most rows: the fit is the weighted MLE
        assert tight["tv_to_forward_kl"] < 0.005, div
        assert tight["clamped_frac"] > wide["clamped_frac"]
        # widening the clip moves the fit toward the symmetric limit
        assert wide["tv_to_limit"] < tight["tv_to_limit"] - 0.005, div


def test_estimator_uses_the_loss_symmetry_term(monkeypatch):
    """(iv) calls SfACLoss's own ``conditional_symmetry_term`` (not a copy of it)."""
    import torchrl_sym.objectives.sfac as sfac_module

    calls = []
    original = sfac_module.conditional_symmetry_term

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(sfac_module, "conditional_symmetry_term", spy)
    target = toy.make_mog_target(tau=0.2, n_grid=500)
    actions = toy.sample_behavior(500, torch.Generator().manual_seed(0))
    toy.estimator_fit("js", target, actions, epsilon=0.3, n_loss=3, max_iter=5)
    assert calls and calls[0]["log_r_high"] == pytest.approx(torch.log1p(torch.tensor(0.3)).item())


def test_behavior_sampler_and_density_agree():
    draws = toy.sample_behavior(200_000, torch.Generator().manual_seed(1))
    assert draws.abs().max() < 1
    hist = torch.histc(draws, bins=40, min=-1, max=1) / (draws.numel() * 0.05)
    centres = torch.linspace(-1 + 0.025, 1 - 0.025, 40, dtype=torch.float64)
    assert torch.allclose(hist.double(), toy.behavior_density(centres), atol=0.08)


def test_recipe_writes_figure_and_numbers(tmp_path):
    out = tmp_path / "docs"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "toy2d.py"),
        "algo=sfac",
        f"out_dir={out}",
        "algo.taus=[0.2]",
        "algo.n_grid=1000",
        "algo.estimator.samples=5000",
        "algo.estimator.epsilons=[0.5]",
        "algo.estimator.n_losses=[2]",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    subprocess.run(cmd, check=True, cwd=tmp_path, capture_output=True, timeout=600)
    record = json.loads((out / "toy2d_sfac.json").read_text())
    assert record["algo"] == "sfac" and record["config"]["taus"] == [0.2]
    fits = record["result"]["taus"]["0.2"]["fits"]
    assert set(fits) == {"forward_kl", "js", "jeffreys"}
    assert (out / "toy2d_sfac.png").stat().st_size > 10_000


def test_unknown_toy_is_named(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "toy2d.py"),
        "algo=sfac",
        "algo.name=nope",
        f"out_dir={tmp_path}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "algo='nope' is not a toy" in proc.stderr
