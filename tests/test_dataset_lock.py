"""The per-dataset lock: processes that need the same missing dataset wait for the one generating
it and use what it wrote; --overwrite waits for readers and writers; a killed holder blocks no one.

The races are run with real processes. A generator is slowed down by holding its rollouts until the
test creates a "go" file, so the other processes are surely started during its rollouts."""

import importlib.util
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import minari
import pytest

from torchrl_sym.data import _staging as staging
from torchrl_sym.data import generate as gen

ROOT = Path(__file__).resolve().parents[1]
STAGING_FILE = ROOT / "torchrl_sym" / "data" / "_staging.py"
DATASET = gen.dataset_id_for("hopper", "random")  # what the commands below build

# `python -c SLOW_GENERATOR GO_FILE <generate arguments>`: the generator's CLI whose rollouts wait
# for GO_FILE (it holds the dataset's lock from before its rollouts until the dataset is in place)
SLOW_GENERATOR = """
import sys, time
from pathlib import Path
from torchrl_sym.data import generate as gen

go, rollout = Path(sys.argv[1]), gen.rollout_episodes

def slow_rollout(*args, **kwargs):
    print("rolling out", flush=True)
    deadline = time.monotonic() + 300
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return rollout(*args, **kwargs)

gen.rollout_episodes = slow_rollout
raise SystemExit(gen.main(sys.argv[2:]))
"""

# `python -c HOLDER STAGING_PY ROOT ID shared|exclusive`: holds a dataset's lock until stdin closes
# (_staging.py is loaded by path: it needs only the standard library, and starts in a blink)
HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_staging", sys.argv[1])
staging = importlib.util.module_from_spec(spec)
sys.modules["_staging"] = staging
spec.loader.exec_module(staging)
with staging.dataset_lock(sys.argv[2], sys.argv[3], shared=sys.argv[4] == "shared",
                          purpose="testing"):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def root(tmp_path, monkeypatch):
    """An empty Minari root, the current one here and in the processes started by the test."""
    path = tmp_path / "minari"
    path.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(path))
    monkeypatch.setenv("TORCHRL_SYM_DATA", str(tmp_path / "cache"))
    return path


def _start(args, tmp_path, name, **kwargs):
    """Start ``python ARGS`` with its stdout and stderr in files ``tmp_path/name.{out,err}``."""
    out, err = (tmp_path / f"{name}.out").open("w"), (tmp_path / f"{name}.err").open("w")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=out, stderr=err, text=True, **kwargs
    )
    out.close()
    err.close()
    proc.out, proc.err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    return proc


def _wait_until(condition, procs, what, timeout=180.0):
    """Wait until ``condition()``; fail at once if one of ``procs`` exits first."""
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(
                    f"{proc.args[1:3]} exited with {proc.returncode} before {what}:\n"
                    f"{proc.err.read_text()[-3000:]}"
                )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.05)


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_processes_needing_the_same_missing_dataset_wait_and_use_the_first_ones(
    root, tmp_path, caplog
):
    """The reproduction of issue #30 point 7: a generator, and while it rolls out, the same
    command with fewer transitions (another process) and a recipe's first use of the dataset (in
    this process, to spare the test a third start of torch)."""
    from torchrl_sym.data import make_offline_replay_buffer

    go = tmp_path / "go"
    command = "hopper random --transitions 300 --num-envs 4".split()
    first = _start(["-c", SLOW_GENERATOR, str(go), *command], tmp_path, "first")
    procs, loaded = [first], {}

    def first_use():
        rb = make_offline_replay_buffer(DATASET, 16, generate_transitions=50, seed=0)
        loaded["transitions"] = rb.info.num_transitions

    loader = threading.Thread(target=first_use)
    try:
        _wait_until(lambda: "rolling out" in first.out.read_text(), procs, "the first rolls out")
        cli = _start(
            ["-m", "torchrl_sym.data.generate", "hopper", "random", "--transitions", "100"],
            tmp_path,
            "cli",
        )
        procs.append(cli)
        with caplog.at_level(logging.WARNING):
            loader.start()
            _wait_until(
                lambda: "waiting for it" in cli.err.read_text() and "waiting for it" in caplog.text,
                procs,
                "both later users wait for the lock",
            )
            assert not (root / DATASET).exists()  # nothing is written while the first rolls out
            go.touch()
            for proc in procs:
                proc.wait(timeout=180)
            loader.join(timeout=180)
    finally:
        _stop(procs)
    assert [p.returncode for p in procs] == [0, 0], [p.err.read_text()[-2000:] for p in procs]
    assert first.out.read_text().split() == ["rolling", "out", DATASET]
    # both waited for the first by name, and then used its dataset, saying so in one line
    for err in (cli.err.read_text(), caplog.text):
        assert f"is locked by pid {first.pid} on " in err
        assert "which is generating it (300 transitions, seed 0)" in err
        (used,) = [line for line in err.splitlines() if "while this process waited" in line]
        assert f"written by pid {first.pid} on " in used
        assert "using that dataset (300 transitions, seed 0) instead of generating it" in used
    assert cli.out.read_text().strip() == DATASET
    assert loaded == {"transitions": 300}
    assert minari.load_dataset(DATASET).total_steps == 300
    assert gen.read_provenance(DATASET)["transitions"] == 300
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("holder_mode", ["shared", "exclusive"])
def test_overwrite_waits_for_the_readers_and_writers_of_the_dataset(
    root, tmp_path, holder_mode, caplog, capsys
):
    gen.generate_dataset("hopper", "random", num_transitions=100, num_envs=4, progress=False)
    holder = _start(
        ["-c", HOLDER, str(STAGING_FILE), str(root), DATASET, holder_mode],
        tmp_path,
        "holder",
        stdin=subprocess.PIPE,
    )
    result = {}
    command = ["hopper", "random", "--transitions", "60", "--num-envs", "2", "--overwrite"]
    overwrite = threading.Thread(target=lambda: result.setdefault("rc", gen.main(command)))
    try:
        _wait_until(lambda: "locked" in holder.out.read_text(), [holder], "the holder locks")
        with caplog.at_level(logging.WARNING, logger="torchrl_sym.data._staging"):
            overwrite.start()
            _wait_until(lambda: "waiting for it" in caplog.text, [holder], "--overwrite waits")
            time.sleep(0.5)
            # --overwrite has not touched the dataset while the other process holds the lock
            assert overwrite.is_alive() and minari.load_dataset(DATASET).total_steps == 100
            holder.stdin.close()  # the holder releases the lock and exits
            overwrite.join(timeout=120)
    finally:
        _stop([holder])
    assert holder.returncode == 0 and not overwrite.is_alive() and result == {"rc": 0}
    if holder_mode == "shared":
        assert "locked by another process that is reading it" in caplog.text
    else:
        assert (
            f"locked by pid {holder.pid} on " in caplog.text and "which is testing" in caplog.text
        )
    assert capsys.readouterr().out.strip() == DATASET
    assert minari.load_dataset(DATASET).total_steps == 60  # replaced once the lock was free


def test_a_killed_holder_blocks_no_one(root, tmp_path, caplog):
    holder = _start(
        ["-c", HOLDER, str(STAGING_FILE), str(root), DATASET, "exclusive"],
        tmp_path,
        "holder",
        stdin=subprocess.PIPE,
    )
    try:
        _wait_until(lambda: "locked" in holder.out.read_text(), [holder], "the holder locks")
        record = json.loads(staging.lock_path(root, DATASET).read_text())
        assert record["pid"] == holder.pid and record["dataset_id"] == DATASET
        with pytest.raises(TimeoutError, match=rf"held by pid {holder.pid} on .*which is testing"):
            with staging.dataset_lock(root, DATASET, timeout=0.3):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdin.close()
    # the kernel released the dead holder's flock: taken at once, and the dead holder is named
    start = time.monotonic()
    with (
        caplog.at_level(logging.WARNING, logger="torchrl_sym.data._staging"),
        staging.dataset_lock(root, DATASET, timeout=10) as state,
    ):
        assert time.monotonic() - start < 5 and not state.waited
        assert state.abandoned["pid"] == holder.pid
    assert f"pid {holder.pid} on " in caplog.text and "exited without releasing it" in caplog.text
    assert staging.lock_path(root, DATASET).read_text() == ""  # released normally: no record
    # and a generation goes ahead
    gen.generate_dataset("hopper", "random", num_transitions=40, num_envs=2, progress=False)
    assert minari.load_dataset(DATASET).total_steps == 40


def test_the_lock_is_reentrant_and_excludes_other_threads(root):
    lock_file = staging.lock_path(root, "test/ns/some-v0")
    assert lock_file == root / "test" / "ns" / ".some-v0.lock"
    with staging.dataset_lock(root, "test/ns/some-v0", purpose="writing it") as outer:
        assert outer.locked and not outer.waited and not outer.reentered
        assert json.loads(lock_file.read_text())["purpose"] == "writing it"
        # nested uses in the same thread: an exclusive hold covers both kinds
        with staging.dataset_lock(root, "test/ns/some-v0") as inner:
            assert inner.reentered
            with staging.dataset_lock(root, "test/ns/some-v0", shared=True):
                pass
        # another thread of this process waits like another process does
        errors = []

        def other_thread():
            try:
                with staging.dataset_lock(root, "test/ns/some-v0", timeout=0.2):
                    pass
            except TimeoutError as err:
                errors.append(err)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert errors and "another thread of this process" in str(errors[0])
    assert lock_file.read_text() == ""  # released
    # a shared hold is not upgraded (that could deadlock two readers)
    with (
        staging.dataset_lock(root, "test/ns/some-v0", shared=True),
        pytest.raises(RuntimeError, match="not upgraded"),
        staging.dataset_lock(root, "test/ns/some-v0"),
    ):
        pass
    # minari does not take the lock file for a dataset
    assert minari.list_local_datasets() == {}


def test_a_reader_of_a_read_only_store_reads_without_a_lock(root):
    os.chmod(root, 0o555)
    try:
        if os.access(root, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        with staging.dataset_lock(root, "test/ns/ro-v0", shared=True) as state:
            assert not state.locked
        with pytest.raises(PermissionError), staging.dataset_lock(root, "test/ns/ro-v0"):
            pass
    finally:
        os.chmod(root, 0o755)


def test_the_staging_module_needs_only_the_standard_library():
    """HOLDER above loads _staging.py by path (a fast lock holder); keep it importable alone."""
    spec = importlib.util.spec_from_file_location("_staging_alone", STAGING_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["_staging_alone"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["_staging_alone"]
    assert module.lock_path("/r", "a/b-v0") == Path("/r/a/.b-v0.lock")
