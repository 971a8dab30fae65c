"""Data errors: broken datasets raise (never regenerate), bad paths, what the cache keeps, staging."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import minari
import numpy as np
import pytest
import torch

from torchrl_sym.data import DatasetError, load_offline_dataset
from torchrl_sym.data import _staging as staging
from torchrl_sym.data import generate as gen

ROOT = Path(__file__).resolve().parents[1]
OURS = "torchrl_sym/hopper/random-v0"
THEIRS = "test/hopper/theirs-v0"


@pytest.fixture(scope="module")
def template_root(tmp_path_factory):
    """A Minari root holding a small generated dataset (ours) and a small foreign one."""
    root = tmp_path_factory.mktemp("minari_template")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        gen.generate_dataset(
            "hopper", "random", num_transitions=200, seed=3, progress=False, version=0
        )
        episodes = gen.rollout_episodes("Hopper-v5", None, 150, seed=0, progress=False)
        gen.write_minari_dataset(THEIRS, episodes, env_id="Hopper-v5")
    return root


@pytest.fixture
def minari_root(template_root, tmp_path, monkeypatch):
    """A private copy of the template root, as the current Minari root."""
    root = tmp_path / "minari"
    shutil.copytree(template_root, root)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def no_generation(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a dataset that is on disk was generated again")

    monkeypatch.setattr(gen, "generate_dataset", fail)
    monkeypatch.setattr(gen, "rollout_episodes", fail)


def _load(dataset_id, tmp_path, **kwargs):
    return load_offline_dataset(dataset_id, root=tmp_path / "cache", **kwargs)


# ------------------------------------------- 1. a corrupt or incomplete Minari dataset raises


def test_truncated_main_data_raises_and_names_the_rebuild_command(
    minari_root, tmp_path, no_generation
):
    main = minari_root / OURS / "data" / "main_data.hdf5"
    os.truncate(main, main.stat().st_size // 2)
    with pytest.raises(DatasetError) as err:
        _load(OURS, tmp_path)
    msg = str(err.value)
    assert f"'{OURS}'" in msg and str(main) in msg and "truncated" in msg
    # the generator's command, with the size and seed the dataset was built with
    assert "`python -m torchrl_sym.data.generate hopper random --transitions 200 --seed 3 " in msg
    assert "--overwrite`" in msg and "not regenerated automatically" in msg
    assert err.value.path == main and err.value.dataset_id == OURS
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("array", ["actions", "observations"])
def test_episode_without_an_array_raises_naming_it(minari_root, tmp_path, no_generation, array):
    main = minari_root / OURS / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:
        del f["episode_2"][array]
    with pytest.raises(DatasetError) as err:
        _load(OURS, tmp_path)
    msg = str(err.value)
    assert f"'{OURS}'" in msg and str(main) in msg
    assert f"lacks the arrays ['{array}'] in group 'episode_2'" in msg
    assert "python -m torchrl_sym.data.generate hopper random" in msg
    # nothing was cached for it
    assert not list((tmp_path / "cache").rglob("dataset.json"))


def test_invalid_metadata_json_raises_instead_of_regenerating(minari_root, tmp_path, no_generation):
    meta = minari_root / OURS / "data" / "metadata.json"
    meta.write_text('{"dataset_id": "torchrl_sym/hopper/random-v0", ')
    # minari itself no longer lists it: it used to be taken for missing and generated again
    with pytest.warns(UserWarning, match="Misconfigured"):
        assert OURS not in minari.list_local_datasets()
    with pytest.raises(DatasetError) as err:
        _load(OURS, tmp_path)
    msg = str(err.value)
    assert f"'{OURS}'" in msg and str(meta) in msg and "is not valid JSON" in msg
    assert "python -m torchrl_sym.data.generate hopper random" in msg and "--overwrite" in msg


def test_broken_foreign_dataset_says_to_delete_and_download_again(minari_root, tmp_path):
    meta = minari_root / THEIRS / "data" / "metadata.json"
    meta.write_text("not json at all")
    with pytest.raises(DatasetError) as err:
        _load(THEIRS, tmp_path)
    msg = str(err.value)
    assert f"'{THEIRS}'" in msg and str(meta) in msg and "is not valid JSON" in msg
    assert f"Delete the dataset directory {minari_root / THEIRS}" in msg
    assert f"minari.download_dataset('{THEIRS}')" in msg


def test_dataset_directory_without_data_or_main_file(minari_root, tmp_path, no_generation):
    (minari_root / OURS / "data" / "main_data.hdf5").unlink()
    with pytest.raises(DatasetError, match=r"main_data\.hdf5 is missing"):
        _load(OURS, tmp_path)
    shutil.rmtree(minari_root / OURS / "data")
    with pytest.raises(DatasetError, match="has no data/ folder") as err:
        _load(OURS, tmp_path)
    assert "--overwrite" in str(err.value)


def test_the_named_command_rebuilds_a_broken_dataset(minari_root, tmp_path):
    meta = minari_root / OURS / "data" / "metadata.json"
    meta.write_text("{")
    # without --overwrite the generator refuses at once (before any rollout)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gen, "rollout_episodes", lambda *a, **k: pytest.fail("rolled out first"))
        with pytest.raises(FileExistsError, match="overwrite"):
            gen.generate_dataset("hopper", "random", num_transitions=200, seed=3, version=0)
    command = ["hopper", "random", "--transitions", "200", "--seed", "3", "--version", "0"]
    assert gen.main([*command, "--overwrite"]) == 0
    _, info = _load(OURS, tmp_path)
    assert info.num_transitions == 200


def test_missing_dataset_is_still_generated_on_first_use(minari_root, tmp_path):
    shutil.rmtree(minari_root / OURS)
    _, info = _load(OURS, tmp_path, generate_transitions=64)
    assert info.num_transitions == 64


def test_damaged_cache_is_rebuilt_from_the_intact_source(minari_root, tmp_path, caplog):
    first, info = _load(OURS, tmp_path)
    cache = info.cache_path
    record = json.loads((cache / "dataset.json").read_text())
    assert record["cache_files"] and "writer.json" not in record["cache_files"]
    victim = cache / "observation.memmap"
    assert victim.is_file()
    os.truncate(victim, 100)  # would read as garbage through a memmap
    with caplog.at_level(logging.WARNING, logger="torchrl_sym.data.offline"):
        again, info2 = _load(OURS, tmp_path)
    assert str(victim) in caplog.text and "converting again" in caplog.text
    assert info2.cache_path == cache
    assert torch.equal(again["observation"], first["observation"])
    assert (again == first).all()
    # a damaged marker is handled the same way; nothing is left beside the cache
    (cache / "dataset.json").write_text("{")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchrl_sym.data.offline"):
        third, _ = _load(OURS, tmp_path)
    assert str(cache / "dataset.json") in caplog.text
    assert (third == first).all()
    assert [p.name for p in cache.parent.iterdir()] == [cache.name]


# ---------------------------------------------------- 2. bad paths: three distinct messages


def _write_d4rl(path, n=20, obs_dim=11, act_dim=3, next_obs_rows=None):
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.create_dataset("observations", data=rng.normal(size=(n, obs_dim)).astype(np.float32))
        f.create_dataset("actions", data=rng.uniform(-1, 1, (n, act_dim)).astype(np.float32))
        f.create_dataset("rewards", data=rng.normal(size=n).astype(np.float32))
        f.create_dataset("terminals", data=np.zeros(n, bool))
        f.create_dataset("timeouts", data=np.zeros(n, bool))
        rows = n if next_obs_rows is None else next_obs_rows
        f.create_dataset("next_observations", data=np.zeros((rows, obs_dim), np.float32))


def test_d4rl_file_with_zero_rows(tmp_path):
    path = tmp_path / "hopper-empty-v2.hdf5"
    _write_d4rl(path, n=0)
    with pytest.raises(DatasetError) as err:
        _load(path, tmp_path)
    msg = str(err.value)
    assert f"D4RL file '{path}' has 0 rows" in msg and "holds no transitions" in msg
    assert "export or download it again" in msg


def test_directory_instead_of_a_file(tmp_path):
    plain = tmp_path / "d4rl_files"
    plain.mkdir()
    (plain / "hopper-medium-v2.hdf5").write_bytes(b"")
    with pytest.raises(IsADirectoryError) as err:
        _load(plain, tmp_path)
    msg = str(err.value)
    assert f"'{plain}' is a directory, not a D4RL-v2 hdf5 file" in msg
    assert "It holds hopper-medium-v2.hdf5: pass the path of one of those files" in msg
    named = tmp_path / "walker2d-medium-v2.hdf5"
    named.mkdir()
    for given in (named, str(named)):
        with pytest.raises(IsADirectoryError, match=rf"'{named}' is a directory"):
            _load(given, tmp_path)
    as_str = tmp_path / "somewhere"
    as_str.mkdir()
    with pytest.raises(IsADirectoryError, match=r"Pass the path of the \.hdf5 file itself"):
        _load(str(as_str), tmp_path)


def test_minari_dataset_directory_is_recognized(minari_root, tmp_path):
    with pytest.raises(IsADirectoryError, match="looks like a Minari dataset directory"):
        _load(str(minari_root / THEIRS), tmp_path)


@pytest.mark.parametrize("given", ["./data/hopper.npz", "/no/such/dir/hopper", "hopper medium"])
def test_path_that_is_not_a_minari_id(tmp_path, given):
    with pytest.raises(ValueError) as err:
        _load(given, tmp_path)
    msg = str(err.value)
    assert f"'{given}' is not a Minari dataset id" in msg
    assert "'[namespace/]name-v<N>'" in msg and "no file exists at that path" in msg
    assert "D4RL-v2 hdf5 file" in msg


def test_the_three_messages_are_distinct(tmp_path):
    empty = tmp_path / "hopper-empty-v2.hdf5"
    _write_d4rl(empty, n=0)
    folder = tmp_path / "folder.hdf5"
    folder.mkdir()
    messages = set()
    for given, kind in ((empty, DatasetError), (folder, IsADirectoryError), ("a b", ValueError)):
        with pytest.raises(kind) as err:
            _load(given, tmp_path)
        messages.add(str(err.value).split(":")[0])
    assert len(messages) == 3


# ------------------------------------------------ 3. a rejected file leaves nothing in the cache


def _cache_entries(tmp_path, source, name):
    folder = tmp_path / "cache" / source / name
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_ragged_d4rl_file_is_not_cached(tmp_path):
    path = tmp_path / "hopper-ragged-v2.hdf5"
    _write_d4rl(path, n=20, next_obs_rows=18)
    with pytest.raises(ValueError, match="first dimension"):
        _load(path, tmp_path)
    assert _cache_entries(tmp_path, "d4rl", "hopper-ragged-v2") == []


def test_wrong_observation_width_is_not_cached(minari_root, tmp_path, monkeypatch):
    path = tmp_path / "hopper-wide-v2.hdf5"
    _write_d4rl(path, obs_dim=17, act_dim=3)
    written = []
    real = staging.make_staging_dir
    monkeypatch.setattr(
        staging, "make_staging_dir", lambda *a, **k: written.append(a) or real(*a, **k)
    )
    with pytest.raises(ValueError, match=r"observations of shape \(17,\), but env 'Hopper-v5'"):
        _load(path, tmp_path)
    assert written == []  # rejected before anything was written
    assert _cache_entries(tmp_path, "d4rl", "hopper-wide-v2") == []
    # a Minari dataset checked against the wrong env: likewise
    with pytest.raises(ValueError, match="Walker2d-v5"):
        _load(THEIRS, tmp_path, env="Walker2d-v5")
    assert written == [] and not list((tmp_path / "cache").rglob("*.memmap"))
    # with the check skipped the same file is accepted, and cached once
    _, info = _load(path, tmp_path, env=None)
    assert (info.cache_path / "dataset.json").is_file()
    assert _cache_entries(tmp_path, "d4rl", "hopper-wide-v2") == [info.cache_path.name]


# ----------------------------------------------- 4. staging directories of dead writers go away


def _staging_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.name.startswith(".tmp-"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_staging(root: Path, name: str, **record) -> Path:
    path = root / f".tmp-{name}"
    path.mkdir(parents=True)
    (path / "writer.json").write_text(json.dumps(record))
    (path / "payload.bin").write_bytes(b"x" * 10)
    return path


CHILD = """
import time
import minari
from torchrl_sym.data import generate as gen

def hang(*args, **kwargs):
    print("writing", flush=True)
    time.sleep(600)

minari.create_dataset_from_buffers = hang
gen.write_minari_dataset("test/hopper/killed-v0", [], env_id="Hopper-v5")
"""


def test_sigkilled_generator_leaves_staging_that_the_next_run_removes(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    env = dict(os.environ, MINARI_DATASETS_PATH=str(root), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline().strip() == "writing", "the writer did not start"
        (left,) = _staging_dirs(root)
        record = json.loads((left / "writer.json").read_text())
        assert record["pid"] == child.pid and record["hostname"] == socket.gethostname()
        # while the writer lives, nothing removes its directory
        assert gen.remove_stale_staging() == [] and left.is_dir()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert left.is_dir()  # SIGKILL: the writer could not clean up

    live = staging.make_staging_dir(root)  # a live writer: this process
    other_host = _fake_staging(
        root, "otherhost", pid=_dead_pid(), hostname="not-" + socket.gethostname()
    )
    unmarked = root / ".tmp-unmarked"
    unmarked.mkdir()
    # the next write removes the dead writer's directory, and only it
    episodes = gen.rollout_episodes("Hopper-v5", None, 30, seed=0, progress=False)
    gen.write_minari_dataset("test/hopper/next-v0", episodes, env_id="Hopper-v5")
    assert not left.exists()
    assert _staging_dirs(root) == sorted([live, other_host, unmarked])
    assert "test/hopper/next-v0" in minari.list_local_datasets()


def test_loader_removes_dead_writers_staging_and_keeps_live_ones(minari_root, tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        host = socket.gethostname()
        dead = _fake_staging(minari_root, "dead", pid=_dead_pid(), hostname=host)
        alive = _fake_staging(minari_root, "alive", pid=sleeper.pid, hostname=host)
        _, info = _load(THEIRS, tmp_path)
        assert not dead.exists() and alive.is_dir()
        # the conversion cache's staging directories are cleaned the same way
        cache_dead = _fake_staging(info.cache_path.parent, "x-dead", pid=_dead_pid(), hostname=host)
        cache_alive = _fake_staging(
            info.cache_path.parent, "x-alive", pid=sleeper.pid, hostname=host
        )
        _load(THEIRS, tmp_path)
        assert not cache_dead.exists() and cache_alive.is_dir()
    finally:
        sleeper.kill()
        sleeper.wait()
    # its writer is gone now: the next load removes it
    _load(THEIRS, tmp_path)
    assert not alive.exists() and not cache_alive.exists()


def test_a_reused_pid_does_not_keep_a_dead_writers_directory(tmp_path):
    ticks = staging._start_ticks(os.getpid())
    if ticks is None:
        pytest.skip("no /proc on this system")
    host = socket.gethostname()
    mine = {"pid": os.getpid(), "hostname": host, "start_ticks": ticks}
    assert not staging.writer_is_dead(mine)
    # same pid, but the recorded writer started at another time: that writer is dead
    assert staging.writer_is_dead(dict(mine, start_ticks=ticks - 1))
    assert not staging.writer_is_dead(dict(mine, hostname="not-" + host))
    assert not staging.writer_is_dead({"pid": "12", "hostname": host})
    assert staging.writer_is_dead({"pid": _dead_pid(), "hostname": host})
