"""Sweeps beyond one process: hydra's submitit launcher (local executor for real, the SLURM
preset composed) and the Ray preset (composed where hydra-ray-launcher is installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[cluster]'")


def _compose_hydra(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("iql", overrides=list(overrides), return_hydra_config=True).hydra


def _two_seed_sweep(sweep, dataset, *launcher, env=None) -> list:
    """A smoke IQL sweep over seeds 0 and 1 through ``launcher``; the two finished run dirs."""
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "iql.py"),
        "-m",
        "seed=0,1",
        "profile=smoke",
        f"dataset={dataset}",
        "logger.backend=csv",
        *launcher,
        f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env or os.environ.copy()
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    runs = sorted(p.parent for p in sweep.glob("*/summary.json"))
    assert [p.name for p in runs] == ["0_seed0", "1_seed1"]
    assert all(json.loads((r / "summary.json").read_text())["global_step"] == 50 for r in runs)
    return runs


def test_two_seed_sweep_through_submitits_local_executor(tmp_path, recipe_dataset):
    sweep = tmp_path / "sweep"
    runs = _two_seed_sweep(
        sweep,
        recipe_dataset,
        "hydra/launcher=submitit_local",
        "hydra.launcher.timeout_min=15",
        "hydra.launcher.cpus_per_task=1",
    )
    for seed, run in enumerate(runs):
        config = (run / "config.yaml").read_text()
        assert f"seed: {seed}" in config
        rows = (run / "eval_returns.csv").read_text().splitlines()
        assert rows[0] == "step,episode,return,normalized_score" and len(rows) > 1
    # each run was a submitit job: a job folder with its own log per run
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2, sorted((sweep / ".submitit").rglob("*"))


def test_slurm_presets_compose_to_submitits_slurm_launcher():
    gpu = _compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert gpu.launcher._target_.endswith("SlurmLauncher")
    assert (gpu.launcher.gpus_per_node, gpu.launcher.cpus_per_task, gpu.launcher.partition) == (
        1,
        4,
        "gpu",
    )
    cpu = _compose_hydra("hydra/launcher=slurm_cpu")
    assert cpu.launcher._target_.endswith("SlurmLauncher")
    assert (cpu.launcher.gpus_per_node, cpu.launcher.cpus_per_task) == (0, 1)


def test_ray_preset_composes_where_the_ray_launcher_is_installed():
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher",
        reason="hydra-ray-launcher is not installed (it pins cloudpickle<3; docs/training.md)",
    )
    launcher = _compose_hydra("hydra/launcher=ray_cluster").launcher
    assert launcher._target_.endswith("RayLauncher")
    assert (launcher.ray.remote.num_cpus, launcher.ray.remote.num_gpus) == (1, 0)


def test_two_seed_sweep_through_the_ray_launcher(tmp_path, recipe_dataset):
    """Runs only where hydra-ray-launcher is installed (not in the extras: it pins cloudpickle<3):
    a local Ray instance runs both seeds as Ray tasks."""
    pytest.importorskip(
        "hydra_plugins.hydra_ray_launcher",
        reason="hydra-ray-launcher is not installed (it pins cloudpickle<3; docs/training.md)",
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray instance
    _two_seed_sweep(
        tmp_path / "sweep",
        recipe_dataset,
        "hydra/launcher=ray_cluster",
        "+hydra.launcher.ray.init.num_cpus=2",
        env=env,
    )
