"""Stacked seeds end to end: run directories, the report, resume after SIGKILL, errors."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run(recipe, *overrides, timeout=400, check=True):
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _returns(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "eval_returns.csv", newline="") as f:
        return [(int(r["step"]), float(r["return"])) for r in csv.DictReader(f)]


def test_stacked_smoke_run_writes_one_run_directory_per_seed(tmp_path, recipe_dataset):
    from torchrl_sym.report import find_run_dirs, load_run

    run_dir = tmp_path / "stacked"
    _run(
        "iql",
        "profile=smoke",
        f"dataset={recipe_dataset}",
        "seed=4",
        "stack_seeds=3",
        f"hydra.run.dir={run_dir}",
    )
    assert (run_dir / "stack.yaml").is_file() and not (run_dir / "config.yaml").exists()
    assert (run_dir / "checkpoints" / "ckpt_000000050.pt").is_file()
    runs, skipped = find_run_dirs([run_dir])
    assert [r.name for r in runs] == ["seed_4", "seed_5", "seed_6"] and not skipped
    for seed, path in zip((4, 5, 6), runs):
        run = load_run(path)
        assert run.seed == seed
        summary = json.loads((path / "summary.json").read_text())
        assert summary["global_step"] == 50
        assert summary["stacked"] == {"seeds": 3, "index": seed - 4, "seed": seed}
        prov = summary["provenance"]
        assert prov["versions"]["torch"] == torch.__version__ and prov["cpu"]
        assert prov["precision"] == "fp32" and prov["device"] == "cpu"
        assert (path / "tensorboard").is_dir()
        assert [step for step, _ in _returns(path)] == [50]
    # the checkpoint holds the three seeds: every module tensor has a leading dim of 3
    state = torch.load(run_dir / "checkpoints" / "ckpt_000000050.pt", weights_only=False)
    tensors = [v for v in state["modules"]["loss"].values() if isinstance(v, torch.Tensor)]
    assert tensors and all(v.shape[0] == 3 for v in tensors)
    # the report counts three seeds in one cell
    out = tmp_path / "report.md"
    subprocess.run(
        [sys.executable, "-m", "torchrl_sym.report", str(run_dir), "--out", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    table = [line for line in out.read_text().splitlines() if line.startswith("| iql |")]
    assert table and table[0].split("|")[3].strip().startswith("3")


def test_stacked_iql_seeds_equal_single_seed_runs(tmp_path, recipe_dataset):
    """IQL draws no random number in its loss: seed k of a stacked run is then the single-seed
    run of seed k, to float rounding: the same parameters after 60 updates, evaluated from the
    same start states (returns equal up to how MuJoCo amplifies that rounding)."""
    from torchrl_sym.train.stacking import seed_checkpoint

    common = [
        f"dataset={recipe_dataset}",
        "train.steps=60",
        "eval.interval=30",
        "eval.episodes=2",
        "eval.max_steps=40",
        "iql.hidden=[32,32]",
        "data.batch_size=32",
        "logger.backend=none",
        "train.progress=false",
    ]
    _run("iql", *common, "seed=1", "stack_seeds=2", f"hydra.run.dir={tmp_path / 'stacked'}")
    final = "checkpoints/ckpt_000000060.pt"
    stacked_state = torch.load(tmp_path / "stacked" / final, weights_only=False)
    for k, seed in enumerate((1, 2)):
        _run("iql", *common, f"seed={seed}", f"hydra.run.dir={tmp_path / f'single{seed}'}")
        single_state = torch.load(tmp_path / f"single{seed}" / final, weights_only=False)
        mine = seed_checkpoint(stacked_state, k)["modules"]["loss"]
        for key, value in single_state["modules"]["loss"].items():
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                torch.testing.assert_close(mine[key], value, rtol=1e-4, atol=1e-5, msg=key)
        single = _returns(tmp_path / f"single{seed}")
        stacked = _returns(tmp_path / "stacked" / f"seed_{seed}")
        assert [s for s, _ in stacked] == [s for s, _ in single] == [30, 30, 60, 60]
        for (_, a), (_, b) in zip(stacked, single):
            assert a == pytest.approx(b, rel=0.05)


@pytest.mark.slow
def test_killed_stacked_run_resumes_exactly(tmp_path, recipe_dataset):
    """A stacked Sf-AC run (random draws in its loss) killed after a checkpoint and resumed ends
    with the same parameters, targets and optimizer states as one never interrupted."""
    overrides = [
        f"dataset={recipe_dataset}",
        "stack_seeds=2",
        "train.steps=300",
        "checkpoint.interval=50",
        "eval.interval=150",
        "eval.episodes=1",
        "eval.max_steps=20",
        "sfac.hidden=[32,32]",
        "sfac.behavior_warmup_fraction=0",
        "data.batch_size=32",
        "logger.backend=none",
        "train.progress=false",
    ]
    straight = tmp_path / "straight"
    _run("sfac", *overrides, f"hydra.run.dir={straight}")
    killed = tmp_path / "killed"
    cmd = [sys.executable, str(ROOT / "recipes" / "sfac.py"), *overrides, f"hydra.run.dir={killed}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    ckpts = killed / "checkpoints"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if ckpts.is_dir() and any(p.name >= "ckpt_000000100.pt" for p in ckpts.glob("ckpt_*.pt")):
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    _run("sfac", f"resume={killed}")
    a = torch.load(straight / "checkpoints" / "ckpt_000000300.pt", weights_only=False)
    b = torch.load(ckpts / "ckpt_000000300.pt", weights_only=False)
    for key, value in a["modules"]["loss"].items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, b["modules"]["loss"][key]), key
    for key, opt in a["optimizers"].items():
        for pid, state in opt["state"].items():
            for name, value in state.items():
                assert torch.equal(value, b["optimizers"][key]["state"][pid][name]), (key, name)
    for seed in (0, 1):
        assert _returns(straight / f"seed_{seed}") == _returns(killed / f"seed_{seed}")


@pytest.mark.parametrize(
    ("recipe", "override", "message"),
    [
        ("iql", "seed=abc", "seed='abc' is not an integer"),
        ("iql", "stack_seeds=0", "stack_seeds=0 must be >= 1"),
        ("iql", "stack_seeds=two", "stack_seeds='two' is not an integer"),
        ("iql", "precision=fp16", "precision='fp16' is not a precision"),
        ("iql", "eval.start_states=random", "eval.start_states='random'"),
        ("sac", "stack_seeds=2", "recipes/sac.py cannot stack seeds"),
    ],
)
def test_bad_shared_options_fail_with_one_line(tmp_path, recipe_dataset, recipe, override, message):
    extra = [f"dataset={recipe_dataset}"] if recipe != "sac" else []
    proc = _run(
        recipe, *extra, override, f"hydra.run.dir={tmp_path / 'run'}", check=False, timeout=120
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "invalid literal for int()" not in proc.stderr
    assert not (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_stacked_srpo_reuses_the_stages_of_a_stacked_run(tmp_path, recipe_dataset):
    """``srpo.init_from`` with stacked runs: each seed of a stacked run loads its own seed's
    behavior model and critic from a stacked run of the same seeds, and a single-seed run loads
    the slice of one ``seed_<s>`` directory."""
    from torchrl_sym.train.stacking import seed_checkpoint

    small = [
        f"dataset={recipe_dataset}",
        "profile=smoke",
        "srpo.behavior.hidden_dim=32",
        "srpo.behavior.num_blocks=1",
        "srpo.critic.hidden=[32,32]",
        "srpo.policy.hidden=[32,32]",
        "logger.backend=none",
    ]
    first = tmp_path / "first"
    _run("srpo", *small, "seed=2", "stack_seeds=2", f"hydra.run.dir={first}")
    source = torch.load(sorted((first / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=False)
    again = tmp_path / "again"
    _run(
        "srpo",
        *small,
        "seed=2",
        "stack_seeds=2",
        f"srpo.init_from={first}",
        f"hydra.run.dir={again}",
    )
    reused = torch.load(sorted((again / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=False)
    assert reused["global_step"] == 50  # the policy stage only
    for name in ("behavior", "critic"):
        for key, value in source["modules"][name].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(reused["modules"][name][key], value), (name, key)
    single = tmp_path / "single"
    _run("srpo", *small, "seed=3", f"srpo.init_from={first / 'seed_3'}", f"hydra.run.dir={single}")
    one = torch.load(sorted((single / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=False)
    want = seed_checkpoint(source, 1)["modules"]["behavior"]
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(one["modules"]["behavior"][key], value), key
    proc = _run(
        "srpo",
        *small,
        "seed=7",
        f"srpo.init_from={first}",
        f"hydra.run.dir={tmp_path / 'bad'}",
        check=False,
    )
    assert proc.returncode != 0 and "holds no seed 7" in proc.stderr


def test_a_directory_left_by_a_failed_start_is_free_for_the_corrected_command(
    tmp_path, recipe_dataset
):
    """A launch that fails on a bad dataset leaves only its config.yaml: the corrected command
    runs in the same directory; a directory whose run trained is still refused."""
    run_dir = tmp_path / "run"
    bad = _run(
        "iql",
        "profile=smoke",
        "dataset=nope/hopper/none-v0",
        f"hydra.run.dir={run_dir}",
        check=False,
        timeout=200,
    )
    assert bad.returncode != 0 and "nope/hopper/none-v0" in bad.stderr
    assert (run_dir / "config.yaml").is_file()
    _run("iql", "profile=smoke", f"dataset={recipe_dataset}", f"hydra.run.dir={run_dir}")
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 50
    again = _run(
        "iql",
        "profile=smoke",
        f"dataset={recipe_dataset}",
        f"hydra.run.dir={run_dir}",
        check=False,
        timeout=200,
    )
    assert again.returncode != 0 and "already holds a run" in again.stderr
