"""Tests for torchrl_sym.train.checkpoint: atomic writes, RNG capture, keep-N, kill safety."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import torchrl_sym.train.checkpoint as checkpoint_module
from torchrl_sym.train.checkpoint import (
    CheckpointManager,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _draws() -> tuple:
    """One draw from each global generator that rng_state captures."""
    return (
        random.random(),
        np.random.rand(3).tolist(),  # noqa: NPY002 - the legacy global RNG is under test
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_rng_state_restores_python_numpy_and_torch() -> None:
    random.seed(1)
    np.random.seed(2)  # noqa: NPY002
    torch.manual_seed(3)
    _draws()  # move away from the seeded positions
    state = rng_state()
    first = _draws()
    _draws()
    set_rng_state(state)
    assert _draws() == first


def test_set_rng_state_rejects_incomplete_state() -> None:
    with pytest.raises(ValueError, match="numpy"):
        set_rng_state({"python": random.getstate(), "torch": torch.get_rng_state()})


def test_round_trip_of_tensors_model_optimizer_and_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(16, 4)).pow(2).mean().backward()
    optimizer.step()
    state = {
        "step": 17,
        "tensors": {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([True, False])},
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "meta": {"name": "run", "values": [1, 2.5, None]},
    }
    expected_draws = _draws()
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, state)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]

    loaded = load_checkpoint(path)
    assert loaded["step"] == 17 and loaded["meta"] == state["meta"]
    for key, value in state["tensors"].items():
        assert torch.equal(loaded["tensors"][key], value)
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    fresh.load_state_dict(loaded["model"])
    for p_fresh, p_model in zip(fresh.parameters(), model.parameters()):
        assert torch.equal(p_fresh, p_model)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=1e-3)
    fresh_optimizer.load_state_dict(loaded["optimizer"])
    restored, original = fresh_optimizer.state_dict(), optimizer.state_dict()
    assert restored["param_groups"] == original["param_groups"]
    for index, moments in original["state"].items():
        for name, value in moments.items():
            assert torch.equal(restored["state"][index][name], value)
    set_rng_state(loaded["rng"])
    assert _draws() == expected_draws


def test_failed_save_keeps_previous_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails with a pickle error
        save_checkpoint(path, {"step": 2, "bad": lambda: None})
    assert load_checkpoint(path) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_load_checkpoint_missing_file_names_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_manager_keeps_newest_n_sorted_by_step(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    assert manager.latest() is None and manager.load_latest() is None
    for step in (5, 9, 10, 100, 1_000_000_000):
        manager.save(step, {"step": step})
    names = [p.name for p in manager.checkpoints()]
    assert names == ["ckpt_000000010.pt", "ckpt_000000100.pt", "ckpt_1000000000.pt"]
    assert manager.latest() == tmp_path / "ckpt_1000000000.pt"
    assert manager.load_latest()["step"] == 1_000_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)


def test_manager_rejects_bad_keep(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep"):
        CheckpointManager(tmp_path, keep=0)


def test_save_at_earlier_step_deletes_abandoned_newer_checkpoints(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (10, 20, 30):
        manager.save(step, {"step": step})
    with pytest.warns(UserWarning, match="abandoned"):
        manager.save(25, {"step": 25})
    assert [manager.step_of(p) for p in manager.checkpoints()] == [20, 25]
    assert manager.load_latest()["step"] == 25


@pytest.mark.parametrize("corruption", ["truncated", "garbage", "empty"])
def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, corruption: str) -> None:
    manager = CheckpointManager(tmp_path, keep=3)
    for step in (1, 2, 3):
        manager.save(step, {"step": step, "w": torch.full((1000,), float(step))})
    newest = manager.path_for(3)
    data = newest.read_bytes()
    newest.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[
            corruption
        ]
    )
    with pytest.warns(UserWarning, match="ckpt_000000003.pt"):
        assert manager.latest() == manager.path_for(2)
    with pytest.warns(UserWarning, match="ckpt_000000003.pt"):
        state = manager.load_latest()
    assert state["step"] == 2 and torch.equal(state["w"], torch.full((1000,), 2.0))


def test_all_corrupt_gives_none_with_warning(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path)
    (tmp_path / "ckpt_000000001.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="No loadable checkpoint"):
        assert manager.load_latest() is None


def test_temp_files_are_ignored_and_stale_ones_removed(tmp_path: Path) -> None:
    CheckpointManager(tmp_path).save(1, {"step": 1})
    live = tmp_path / f"ckpt_000000009.pt.tmp-{os.getpid()}"
    stale = tmp_path / f"ckpt_000000008.pt.tmp-{_dead_pid()}"
    for path in (live, stale):
        path.write_bytes(b"partial")
    manager = CheckpointManager(tmp_path)
    assert not stale.exists()  # its writer is dead
    assert live.exists()  # a live process may still be writing it
    assert manager.checkpoints() == [manager.path_for(1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert manager.latest() == manager.path_for(1)
        assert manager.load_latest() == {"step": 1}


# A real kill: a writer process saving ~64 MB checkpoints in a loop is SIGKILLed mid-write.

_WRITER = textwrap.dedent(
    """
    import sys

    import torch

    from torchrl_sym.train.checkpoint import CheckpointManager

    directory, numel = sys.argv[1], int(sys.argv[2])
    manager = CheckpointManager(directory, keep=2)
    state = manager.load_latest()
    step = 0 if state is None else state["step"] + 1
    while True:
        payload = torch.full((numel,), float(step))
        manager.save(step, {"step": step, "payload": payload, "tag": f"step-{step}"})
        step += 1
    """
)
_NUMEL = 16_000_000  # float32: 64 MB per checkpoint


def _wait_for(
    condition, proc: subprocess.Popen, timeout: float, what: str, required: bool = True
) -> bool:
    """Polls ``condition`` until true; on timeout raises if ``required``, else returns False."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"writer exited with {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            if required:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            return False
        time.sleep(0.002)
    return True


def test_sigkill_during_writes_leaves_latest_loadable(tmp_path: Path) -> None:
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    directory = tmp_path / "ckpts"
    directory.mkdir()
    repo_root = Path(checkpoint_module.__file__).resolve().parents[2]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(repo_root), os.environ.get("PYTHONPATH", "")])
    )
    rng = random.Random(0)
    last_step = -1
    killed_mid_write = 0

    def steps_on_disk() -> list[int]:
        return [int(p.name[5:14]) for p in directory.glob("ckpt_*.pt")]

    for round_index in range(3):
        proc = subprocess.Popen(
            [sys.executable, str(script), str(directory), str(_NUMEL)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            # Wait for a checkpoint from this run, then for its next write to start, and kill
            # at a random moment of that write (a 64 MB save takes ~50-250 ms here).
            _wait_for(
                lambda previous=last_step: max(steps_on_disk(), default=-1) > previous,
                proc,
                timeout=30,
                what=f"a checkpoint after step {last_step}",
            )
            # Not required: a save_checkpoint that wrote in place (no temp file) must still be
            # killed and then caught by the checks below.
            _wait_for(
                lambda: any(directory.glob("*.tmp-*")),
                proc,
                timeout=2,
                what="a write to start",
                required=False,
            )
            time.sleep(rng.uniform(0.0, 0.04))
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, round_index

        temps = list(directory.glob("*.tmp-*"))
        killed_mid_write += bool(temps)
        assert all(f".tmp-{proc.pid}" in p.name for p in temps)
        manager = CheckpointManager(directory, keep=2)
        assert not list(directory.glob("*.tmp-*"))  # the dead writer's partial file is removed
        assert len(manager.checkpoints()) <= 3  # keep=2, plus one saved but not yet pruned
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no file at a checkpoint path is partial
            latest = manager.latest()
            state = manager.load_latest()
        assert latest is not None and latest.suffix == ".pt"
        step = manager.step_of(latest)
        assert step > last_step  # the run made progress since the previous kill
        assert state["step"] == step and state["tag"] == f"step-{step}"
        assert state["payload"].shape == (_NUMEL,)
        assert torch.equal(state["payload"], torch.full((_NUMEL,), float(step)))
        for path in manager.checkpoints():  # every listed checkpoint is complete
            assert load_checkpoint(path)["step"] == manager.step_of(path)
        last_step = step
    assert killed_mid_write >= 1
