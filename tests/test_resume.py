"""The run directory: resume=DIR continues the run DIR holds, one writer per directory, writable
checkpoints, refused overrides, no duplicated evaluations, seeded global RNGs."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from torchrl_sym.train.rundir import (
    ResumeError,
    RunDirLock,
    check_writable,
    is_fixed_on_resume,
    overridden_keys,
    resume_config,
    seed_everything,
)

ROOT = Path(__file__).resolve().parents[1]


def _recipe(recipe, *overrides, cwd=None, check=True):
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides]
    proc = subprocess.run(
        cmd, cwd=cwd or ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def _eval_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "eval_returns.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (relative name -> bytes)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


SMOKE = ["profile=smoke", "logger.backend=none", "data.batch_size=32"]


# ------------------------------------------------------------------------------ units


def test_seed_everything_seeds_every_global_rng():
    seed_everything(7)
    a = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    random.random(), np.random.rand(), torch.rand(1)  # noqa: NPY002
    seed_everything(7)
    b = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_check_writable_names_the_directory(tmp_path):
    assert check_writable(tmp_path / "ok" / "checkpoints").is_dir()
    assert not any((tmp_path / "ok" / "checkpoints").iterdir())  # the probe is removed
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match=r"checkpoint directory .*file/checkpoints"):
        check_writable(blocker / "checkpoints")


def test_lock_is_exclusive_and_released(tmp_path):
    lock = RunDirLock(tmp_path).acquire()
    record = json.loads((tmp_path / ".lock").read_text())
    assert record["pid"] == os.getpid()
    with pytest.raises(RuntimeError, match="already in use by this process"):
        RunDirLock(tmp_path).acquire()
    lock.release()
    assert not (tmp_path / ".lock").exists()
    with RunDirLock(tmp_path):
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def _write_lock(run_dir: Path, pid: int, start_time):
    import socket

    (run_dir / ".lock").write_text(
        json.dumps(
            {
                "pid": pid,
                "host": socket.gethostname(),
                "start_time": start_time,
                "since": "then",
                "command": "python recipes/x.py",
            }
        )
    )


def test_lock_of_a_live_process_is_refused_and_a_dead_ones_recovered(tmp_path):
    from torchrl_sym.train.rundir import _process_start_time

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(tmp_path, child.pid, _process_start_time(child.pid))
        with pytest.raises(RuntimeError, match=rf"in use by pid {child.pid} .*recipes/x.py"):
            RunDirLock(tmp_path).acquire()
        # the same pid with another start time is another process: the lock is stale
        _write_lock(tmp_path, child.pid, "1")
        RunDirLock(tmp_path).acquire().release()
    finally:
        child.kill()
        child.wait()
    _write_lock(tmp_path, child.pid, _process_start_time(child.pid))  # its writer is dead now
    with RunDirLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_lock_on_another_host_is_never_taken_over(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "x"}))
    with pytest.raises(RuntimeError, match="pid 1 on elsewhere"):
        RunDirLock(tmp_path).acquire()


def _saved_run(tmp_path, **extra):
    cfg = OmegaConf.create(
        {
            "algo": "iql",
            "dataset": "d/hopper/medium-v0",
            "seed": 0,
            "resume": None,
            "train": {"steps": 50, "max_steps_per_stage": 50},
            "iql": {"hidden": [256, 256], "lr": 3e-4},
            "data": {"batch_size": 256, "reward_transform": "return_range"},
            **extra,
        }
    )
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    return cfg


def test_resume_config_applies_only_the_overrides(tmp_path):
    saved = _saved_run(tmp_path)
    current = OmegaConf.merge(saved, {"train": {"steps": 10000, "max_steps_per_stage": None}})
    current.iql.lr = 1e-3  # the current composition's default differs, but it is not overridden
    merged, changes = resume_config(tmp_path, current, ["train.steps"], recipe_algo="iql")
    assert merged.train.steps == 10000 and merged.train.max_steps_per_stage == 50
    assert merged.iql.lr == 3e-4 and merged.resume == str(tmp_path)
    assert changes == {"train.steps": (50, 10000)}
    assert OmegaConf.load(tmp_path / "config.yaml") == saved  # never rewritten


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("iql.hidden", [64, 64]),
        ("dataset", "d/walker2d/medium-v0"),
        ("seed", 3),
        ("data.reward_transform", "identity"),
    ],
)
def test_resume_config_refuses_what_the_checkpoint_holds(tmp_path, key, value):
    saved = _saved_run(tmp_path)
    current = OmegaConf.create(OmegaConf.to_container(saved))
    OmegaConf.update(current, key, value)
    with pytest.raises(ResumeError) as err:
        resume_config(tmp_path, current, [key], recipe_algo="iql")
    message = str(err.value)
    old = OmegaConf.select(saved, key)
    old = OmegaConf.to_container(old) if OmegaConf.is_config(old) else old
    assert key in message and repr(old) in message and repr(value) in message
    assert "\n" not in message and len(message) < 400  # one short line, no tensor dump


def test_resume_config_refuses_another_recipe_and_a_missing_config(tmp_path):
    saved = _saved_run(tmp_path)
    with pytest.raises(ResumeError, match=r"algo='iql'.*algo='sfac'.*recipes/iql.py"):
        resume_config(tmp_path, saved, [], recipe_algo="sfac")
    with pytest.raises(ResumeError, match=r"config\.yaml does not exist"):
        resume_config(tmp_path / "nothing", saved, [], recipe_algo="iql")


def test_fixed_keys_and_group_overrides():
    for key in ("algo", "dataset", "eval.mode", "sfac.hidden", "bdpo.actor_hidden", "bdpo.ensemble_size",
                "srpo.behavior.hidden_dim", "bdpo.q_layer_norm", "crossq.critic_hidden"):  # fmt: skip
        assert is_fixed_on_resume(key), key
    for key in ("train.steps", "eval.interval", "logger.backend", "sfac.lr", "compile"):
        assert not is_fixed_on_resume(key), key
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "torchrl_sym" / "configs"), version_base="1.3"):
        defaults = compose("iql")
        smoke = compose("iql", overrides=["profile=smoke", "seed=0", "train.steps=7"])
    keys = overridden_keys(smoke, defaults, ["profile=smoke", "seed=0", "train.steps=7"])
    # seed is named (even at its default value); the group's keys are found by their effect
    assert {"seed", "train.steps", "train.max_steps_per_stage", "eval.episodes"} <= set(keys)
    assert "dataset" not in keys and not any(k.startswith("hydra") for k in keys)


# ------------------------------------------------------------------------------ recipes


def test_resume_continues_the_run_it_claims_to_be(tmp_path, recipe_dataset):
    """A smoke run resumed with README's resume=DIR stays a smoke run, in its own directory,
    with its config.yaml untouched, its log appended to, and its summary's metrics kept."""
    run_dir = tmp_path / "run"
    _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    config = (run_dir / "config.yaml").read_bytes()
    hydra_record = _snapshot(run_dir / ".hydra")
    log_lines = (run_dir / "iql.log").read_text().count("\n")
    before = set(tmp_path.iterdir())

    _recipe("iql", f"resume={run_dir}", cwd=tmp_path)
    assert set(tmp_path.iterdir()) == before  # no outputs/<algo>/<time>/ beside it
    assert (run_dir / "config.yaml").read_bytes() == config
    assert _snapshot(run_dir / ".hydra") == hydra_record
    assert (run_dir / "iql.log").read_text().count("\n") > log_lines
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 50 and summary["resumed"] is True  # not 10,000 steps
    assert "eval/normalized_score" in summary  # kept from the final checkpoint
    assert summary["dataset"]["id"] == recipe_dataset and summary["dataset"]["transitions"] == 2000
    assert _eval_steps(run_dir) == [50]
    (record,) = (run_dir / "resumes").iterdir()
    assert OmegaConf.load(record / "overrides.yaml").command_line == [f"resume={run_dir}"]
    assert OmegaConf.load(record / "overrides.yaml").resumed_at_step == 50
    assert summary["resumes"] == [{"launch": record.name, "at_step": 50}]
    assert not (run_dir / ".lock").exists()

    # extending a finished run's budget continues its last stage
    _recipe("iql", f"resume={run_dir}", "train.max_steps_per_stage=null", "train.steps=70",
            "eval.interval=10", cwd=tmp_path)  # fmt: skip
    assert _eval_steps(run_dir) == [50, 60, 70]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 70
    assert [r["at_step"] for r in summary["resumes"]] == [50, 50]  # every launch, oldest first
    assert (run_dir / "config.yaml").read_bytes() == config


def test_refused_resume_writes_nothing(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    files = _snapshot(run_dir)
    before = set(tmp_path.iterdir())
    refused = {
        ("iql", "iql.hidden=[64,64]"): "iql.hidden is [256, 256] in the run and [64, 64]",
        ("iql", "dataset=torchrl_sym/hopper/expert-v0"): "dataset is 'test/hopper/recipe-v0'",
        ("sfac", None): "holds a run of algo='iql'",
    }
    for (recipe, override), message in refused.items():
        args = [f"resume={run_dir}"] + ([override] if override else [])
        proc = _recipe(recipe, *args, cwd=tmp_path, check=False)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
        assert "TensorDict" not in proc.stderr
    proc = _recipe("iql", f"resume={tmp_path / 'missing'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "is not a run directory" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3  # one line, not a traceback
    assert set(tmp_path.iterdir()) == before  # no directory was made
    after = _snapshot(run_dir)
    # the refused launches at most appended to the run's log; nothing else changed
    assert {k: v for k, v in after.items() if k != "iql.log"} == {
        k: v for k, v in files.items() if k != "iql.log"
    }
    # a fresh run pointed at an existing run's directory is refused as well
    proc = _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, f"hydra.run.dir={run_dir}",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0 and f"continue it with resume={run_dir}" in proc.stderr


def test_resume_without_a_loadable_checkpoint_restarts_without_duplicates(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, "eval.interval=25",
            f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    assert _eval_steps(run_dir) == [25, 50]
    for path in (run_dir / "checkpoints").glob("ckpt_*.pt"):
        path.write_bytes(b"corrupt")  # as if every checkpoint were damaged
    proc = _recipe("iql", f"resume={run_dir}", cwd=tmp_path)
    assert "the run restarts from step 0" in proc.stdout + proc.stderr
    assert _eval_steps(run_dir) == [25, 50]  # redone once, not appended twice
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is False
    assert [r["at_step"] for r in summary["resumes"]] == [0]  # the launch restarted at step 0


def test_second_writer_fails_at_once_and_a_killed_runs_lock_is_recovered(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "recipes" / "iql.py"), f"dataset={recipe_dataset}",
           "logger.backend=none", "train.steps=100000", "checkpoint.interval=20",
           "eval.interval=100000", "train.progress=false", "data.batch_size=32",
           f"hydra.run.dir={run_dir}"]  # fmt: skip
    first = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not list((run_dir / "checkpoints").glob("ckpt_*.pt")):
            assert first.poll() is None and time.monotonic() < deadline, "first run ended early"
            time.sleep(0.1)
        start = time.monotonic()
        proc = _recipe("iql", f"resume={run_dir}", cwd=tmp_path, check=False)
        assert proc.returncode != 0 and f"in use by pid {first.pid}" in proc.stderr
        assert time.monotonic() - start < 120  # at once: before any data or training
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (run_dir / ".lock").exists()  # a killed run cannot release its lock
    _recipe("iql", f"resume={run_dir}", "train.steps=60", "eval.interval=60", cwd=tmp_path)
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] >= 60
    assert not (run_dir / ".lock").exists()


def test_unwritable_checkpoint_directory_fails_before_training(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").write_text("a file where the checkpoint directory goes")
    proc = _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, f"hydra.run.dir={run_dir}",
                   cwd=tmp_path, check=False)  # fmt: skip
    assert proc.returncode != 0 and "checkpoint directory" in proc.stderr
    assert "not writable" in proc.stderr and not (run_dir / "eval_returns.csv").exists()


def test_two_fresh_runs_with_one_seed_save_the_same_rng_states(tmp_path, recipe_dataset):
    states = []
    for name in ("a", "b"):
        run_dir = tmp_path / name
        _recipe("iql", f"dataset={recipe_dataset}", *SMOKE, "eval.max_steps=5",
                f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
        ckpt = max((run_dir / "checkpoints").glob("ckpt_*.pt"))
        states.append(torch.load(ckpt, weights_only=False)["rng"])
    a, b = states
    assert a["python"] == b["python"]
    assert all(np.array_equal(x, y) for x, y in zip(a["numpy"][1:], b["numpy"][1:]))
    assert torch.equal(a["torch"], b["torch"])
