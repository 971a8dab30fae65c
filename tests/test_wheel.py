"""The package as a user installs it: a (non-editable) wheel, its console scripts run from outside
the checkout, with the configs and the behavior policies it ships."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
_NOT_SOURCE = (".git", ".venv", ".ci-venv", "build", "dist", "*.egg-info", "outputs", "multirun",
               "runs", "results", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis")  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``pip wheel`` of the checkout, installed with ``--target`` (no editable finder, no
    checkout on the path): returns ``(wheel, target dir, env)``."""
    work = tmp_path_factory.mktemp("wheel")
    # a clean copy of the source: setuptools builds in <source>/build/, whose leftovers from an
    # earlier build (files since deleted) would otherwise end up in the wheel
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(work), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = work.glob("torchrl_sym-*.whl")
    target = work / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
         str(wheel)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    return wheel, target, env


def _script(installed, name, *args, cwd, timeout=300):
    _, target, env = installed
    proc = subprocess.run(
        [str(target / "bin" / name), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, f"{name} {args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_the_wheel_ships_the_configs_and_every_policy_version(installed):
    wheel, _, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in (
        "torchrl_sym/configs/sfac.yaml",
        "torchrl_sym/configs/common.yaml",
        "torchrl_sym/configs/task/hopper-medium.yaml",
        "torchrl_sym/configs/tasks/xql/walker2d-medium.yaml",
        "torchrl_sym/configs/experiment/cpu.yaml",
        "torchrl_sym/configs/experiment/bdpo/cpu.yaml",
        "torchrl_sym/configs/profile/bdpo/smoke.yaml",
        "torchrl_sym/configs/hydra/launcher/slurm.yaml",
        "torchrl_sym/configs/toy2d/toy2d.yaml",
        "torchrl_sym/configs/toy2d/algo/srpo.yaml",
        "torchrl_sym/data/policies/hopper_expert.pt",
        "torchrl_sym/data/policies/v1/hopper_expert.pt",
        "torchrl_sym/data/policies/v1/walker2d_medium_replay.npz",
        "torchrl_sym/recipes/sfac.py",
    ):
        assert required in names, required
    shipped = {n for n in names if n.startswith("torchrl_sym/configs/") and n.endswith(".yaml")}
    in_checkout = {
        str(p.relative_to(ROOT)) for p in (ROOT / "torchrl_sym" / "configs").rglob("*.yaml")
    }
    assert shipped == in_checkout


def test_console_scripts_run_from_the_installed_wheel(installed, tmp_path, recipe_dataset):
    _, target, env = installed
    where = subprocess.run(
        [sys.executable, "-c", "import torchrl_sym; print(torchrl_sym.__file__)"],
        cwd=tmp_path, capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert where.stdout.strip().startswith(str(target))  # not the checkout

    assert "sfac" in _script(installed, "torchrl-sym-train", "--help", cwd=tmp_path)
    job = yaml.safe_load(
        _script(installed, "torchrl-sym-train", "xql", "task=walker2d-medium", "--cfg", "job",
                cwd=tmp_path)
    )  # fmt: skip
    assert job["task"] == "walker2d-medium" and job["xql"]["beta_loss"] == 10.0
    run_dir = tmp_path / "run"
    _script(
        installed, "torchrl-sym-train", "iql", "profile=smoke", f"dataset={recipe_dataset}",
        "logger.backend=none", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 50
    assert "--version" in _script(installed, "torchrl-sym-generate", "--help", cwd=tmp_path)
    assert "--out" in _script(installed, "torchrl-sym-report", "--help", cwd=tmp_path)


def test_train_names_the_recipes_for_an_unknown_one(installed, tmp_path):
    _, target, env = installed
    proc = subprocess.run(
        [str(target / "bin" / "torchrl-sym-train"), "iqll"],
        cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "unknown recipe 'iqll'" in proc.stderr and "sfac" in proc.stderr


def test_the_wheel_metadata_has_the_license_and_the_split_extras(installed):
    """MIT as an SPDX expression with the LICENSE file, a base install without the recipes' and
    the report's packages, and the extras recipes, report, cluster and dev (which pulls the rest)."""
    from email.parser import Parser

    wheel, _, _ = installed
    archive = zipfile.ZipFile(wheel)
    (meta_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    meta = Parser().parsestr(archive.read(meta_name).decode())
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in archive.namelist())
    assert set(meta.get_all("Provides-Extra")) == {"recipes", "report", "cluster", "dev"}
    requires = meta.get_all("Requires-Dist")
    base = {r.split(";")[0].split("[")[0].split("<")[0].split(">")[0].strip() for r in requires
            if "extra ==" not in r}  # fmt: skip
    assert {"torch", "torchrl", "tensordict", "gymnasium", "mujoco", "minari"} <= base
    assert not base & {"hydra-core", "tensorboard", "rliable", "matplotlib", "scipy", "pandas"}
    mujoco = [r for r in requires if r.startswith("mujoco")]
    assert len(mujoco) == 1 and "<5" in mujoco[0]  # a bounded major version
    assert any(r.startswith("torchrl_sym[") and 'extra == "dev"' in r for r in requires)
