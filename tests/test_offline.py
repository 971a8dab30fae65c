"""make_offline_replay_buffer: Minari, D4RL hdf5 and toy sources; caching; preprocessing; errors."""

import itertools
import os
import shutil
import time
from pathlib import Path

import h5py
import minari
import numpy as np
import pytest
import torch
from minari_reference import minari_reference
from tensordict import TensorDict

from torchrl_sym.data import ACTION_CLIP, load_offline_dataset, make_offline_replay_buffer
from torchrl_sym.data import offline as offline_mod


def test_minari_load_equals_episodes_exactly(hopper_minari_id):
    data, info = load_offline_dataset(hopper_minari_id, action_clip=None)
    ref, returns = minari_reference(hopper_minari_id)
    assert data.shape[0] == ref["act"].shape[0] == info.num_transitions
    assert data["observation"].dtype == torch.float32
    np.testing.assert_array_equal(data["observation"].numpy(), ref["obs"].astype(np.float32))
    np.testing.assert_array_equal(
        data["next", "observation"].numpy(), ref["next_obs"].astype(np.float32)
    )
    np.testing.assert_array_equal(data["action"].numpy(), ref["act"].astype(np.float32))
    np.testing.assert_array_equal(
        data["next", "reward"].squeeze(-1).numpy(), ref["rew"].astype(np.float32)
    )
    np.testing.assert_array_equal(data["next", "terminated"].squeeze(-1).numpy(), ref["term"])
    np.testing.assert_array_equal(data["next", "truncated"].squeeze(-1).numpy(), ref["trunc"])
    np.testing.assert_array_equal(
        data["next", "done"].squeeze(-1).numpy(), ref["term"] | ref["trunc"]
    )
    # real data, not the all-zero tensors TorchRL 0.14.1's converter stores
    assert data["observation"].abs().sum() > 0 and data["next", "reward"].abs().sum() > 0
    assert ref["term"].any(), "random Hopper episodes end by falling"
    assert info.env_id == "Hopper-v5"
    assert info.num_episodes == len(returns)
    np.testing.assert_allclose(info.episode_returns.numpy(), returns, rtol=1e-5)
    assert (info.ref_min_score, info.ref_max_score) == (-20.0, 3000.0)


def test_second_load_comes_from_cache_and_is_identical(hopper_minari_id, monkeypatch):
    first, info = load_offline_dataset(hopper_minari_id)
    assert (info.cache_path / "dataset.json").is_file()

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again instead of reading the cache")

    monkeypatch.setattr(offline_mod, "_convert_minari", no_conversion)
    second, info2 = load_offline_dataset(hopper_minari_id)
    assert info2.cache_path == info.cache_path
    assert (first == second).all()
    # no temporary directories left beside the cache
    assert not [p for p in info.cache_path.parent.iterdir() if p.name.startswith(".tmp-")]


def test_cache_is_rebuilt_when_the_dataset_changes(tmp_path):
    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    dataset_id = "test/hopper/changing-v0"
    eps = rollout_episodes("Hopper-v5", None, 200, seed=1, progress=False)
    write_minari_dataset(dataset_id, eps, env_id="Hopper-v5")
    a, info_a = load_offline_dataset(dataset_id, root=tmp_path)
    time.sleep(0.01)
    eps = rollout_episodes("Hopper-v5", None, 300, seed=2, progress=False)
    write_minari_dataset(dataset_id, eps, env_id="Hopper-v5", overwrite=True)
    b, info_b = load_offline_dataset(dataset_id, root=tmp_path)
    assert info_a.cache_path != info_b.cache_path
    assert b.shape[0] == 300 and a.shape[0] == 200


def test_killed_conversion_leaves_no_cache(hopper_minari_id, tmp_path, monkeypatch):
    real_memmap = TensorDict.memmap

    def crash(self, prefix, *args, **kwargs):
        real_memmap(self, prefix, *args, **kwargs)
        raise KeyboardInterrupt  # the process dies after writing the arrays, before the rename

    monkeypatch.setattr(TensorDict, "memmap", crash)
    with pytest.raises(KeyboardInterrupt):
        load_offline_dataset(hopper_minari_id, root=tmp_path)
    monkeypatch.undo()
    leftovers = [p for p in tmp_path.rglob("*") if p.is_dir() and not p.name.startswith(".tmp-")]
    assert not any((p / "dataset.json").exists() for p in leftovers)
    data, _ = load_offline_dataset(hopper_minari_id, root=tmp_path)
    ref, _ = minari_reference(hopper_minari_id)
    np.testing.assert_array_equal(
        data["next", "observation"].numpy(), ref["next_obs"].astype(np.float32)
    )


def test_replay_buffer_static_batches_without_replacement(hopper_minari_id):
    rb = make_offline_replay_buffer(hopper_minari_id, 64, seed=0)
    n = rb.info.num_transitions
    seen = []
    for _ in range(n // 64):
        batch = rb.sample()
        assert batch.batch_size == torch.Size([64])
        assert (
            batch["observation"].dtype == torch.float32 and batch["action"].dtype == torch.float32
        )
        assert (
            batch["next", "reward"].shape == (64, 1) and batch["next", "done"].dtype == torch.bool
        )
        assert batch.device == torch.device("cpu")
        seen.append(batch["observation"])
    seen = torch.cat(seen)
    # one epoch without replacement: every row drawn at most once
    assert torch.unique(seen, dim=0).shape[0] == seen.shape[0] == (n // 64) * 64
    # the next epoch still returns full batches
    assert rb.sample().batch_size == torch.Size([64])


def test_replay_buffer_seed_and_resume(hopper_minari_id):
    a = make_offline_replay_buffer(hopper_minari_id, 32, seed=3)
    b = make_offline_replay_buffer(hopper_minari_id, 32, seed=3)
    c = make_offline_replay_buffer(hopper_minari_id, 32, seed=4)
    assert (a.sample() == b.sample()).all()
    assert not torch.equal(a.sample()["observation"], c.sample()["observation"])
    for _ in range(5):
        a.sample()
    state = a.state_dict()
    assert "storage" not in state  # the dataset is reloaded from its source, not checkpointed
    expected = [a.sample()["action"] for _ in range(70)]  # crosses an epoch boundary
    resumed = make_offline_replay_buffer(hopper_minari_id, 32, seed=99)
    resumed.load_state_dict(state)
    for want in expected:
        torch.testing.assert_close(resumed.sample()["action"], want, rtol=0, atol=0)


def _write_d4rl(
    path,
    *,
    n_episodes=(7, 5, 9),
    terminal_last=(True, False, True),
    next_obs=True,
    obs_dim=11,
    act_dim=3,
    seed=0,
):
    """A D4RL-v2 style file: episodes end in a terminal or a timeout; returns the arrays."""
    rng = np.random.default_rng(seed)
    obs, nxt, act, rew, term, tout = [], [], [], [], [], []
    for length, ends_in_terminal in zip(n_episodes, terminal_last):
        chain = rng.normal(size=(length + 1, obs_dim))
        obs.append(chain[:-1])
        nxt.append(chain[1:])
        act.append(rng.uniform(-1, 1, size=(length, act_dim)))
        rew.append(rng.normal(size=length))
        t = np.zeros(length, bool)
        o = np.zeros(length, bool)
        (t if ends_in_terminal else o)[-1] = True
        term.append(t)
        tout.append(o)
    arrays = {
        "observations": np.concatenate(obs).astype(np.float32),
        "actions": np.concatenate(act).astype(np.float32),
        "rewards": np.concatenate(rew).astype(np.float32),
        "terminals": np.concatenate(term),
        "timeouts": np.concatenate(tout),
    }
    if next_obs:
        arrays["next_observations"] = np.concatenate(nxt).astype(np.float32)
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
    return arrays


def test_d4rl_file_with_next_observations(tmp_path):
    path = tmp_path / "hopper-medium-v2.hdf5"
    arr = _write_d4rl(path)
    data, info = load_offline_dataset(path, action_clip=None)
    assert info.source == "d4rl" and info.env_id == "Hopper-v5"
    np.testing.assert_array_equal(data["observation"].numpy(), arr["observations"])
    np.testing.assert_array_equal(data["next", "observation"].numpy(), arr["next_observations"])
    np.testing.assert_array_equal(data["action"].numpy(), arr["actions"])
    np.testing.assert_array_equal(data["next", "reward"].squeeze(-1).numpy(), arr["rewards"])
    np.testing.assert_array_equal(data["next", "terminated"].squeeze(-1).numpy(), arr["terminals"])
    np.testing.assert_array_equal(data["next", "truncated"].squeeze(-1).numpy(), arr["timeouts"])
    assert info.num_episodes == 3
    bounds = np.cumsum([0, 7, 5, 9])
    want = [arr["rewards"][a:b].astype(np.float64).sum() for a, b in itertools.pairwise(bounds)]
    np.testing.assert_allclose(info.episode_returns.numpy(), want, rtol=1e-6)


def test_d4rl_file_without_next_observations_follows_qlearning_dataset(tmp_path):
    path = tmp_path / "walker2d-medium-replay-v2.hdf5"
    arr = _write_d4rl(path, next_obs=False, obs_dim=17, act_dim=6)
    data, info = load_offline_dataset(path)
    # qlearning_dataset: s' = s_{i+1}; rows that end in a timeout and the final row are dropped
    obs = arr["observations"]
    keep = ~arr["timeouts"]
    keep[-1] = False
    idx = np.nonzero(keep)[0]
    np.testing.assert_array_equal(data["observation"].numpy(), obs[idx])
    np.testing.assert_array_equal(data["next", "observation"].numpy(), obs[idx + 1])
    assert data.shape[0] == 7 + 4 + 8
    assert info.env_id == "Walker2d-v5"


def test_return_range_spreads_episode_returns_to_exactly_1000(tmp_path):
    path = tmp_path / "halfcheetah-medium-v2.hdf5"
    _write_d4rl(path, obs_dim=17, act_dim=6)
    data, info = load_offline_dataset(path, reward_transform="return_range")
    bounds = np.cumsum([0, 7, 5, 9])
    r = data["next", "reward"].squeeze(-1).double().numpy()
    returns = np.array([r[a:b].sum() for a, b in itertools.pairwise(bounds)])
    assert returns.max() - returns.min() == pytest.approx(1000.0, rel=1e-5)
    raw = info.episode_returns.numpy()
    assert info.reward_scale == pytest.approx(1000.0 / (raw.max() - raw.min()))


def test_minus_one_and_identity(tmp_path):
    path = tmp_path / "hopper-x-v2.hdf5"
    arr = _write_d4rl(path)
    data, _ = load_offline_dataset(path, reward_transform="minus_one")
    np.testing.assert_allclose(
        data["next", "reward"].squeeze(-1).numpy(), arr["rewards"] - 1, rtol=1e-6
    )
    with pytest.raises(ValueError, match="reward_transform"):
        load_offline_dataset(path, reward_transform="iql_scale")


def test_action_clipping(tmp_path):
    path = tmp_path / "hopper-clip-v2.hdf5"
    arr = _write_d4rl(path)
    with h5py.File(path, "r+") as f:
        a = f["actions"][...]
        a[0] = [1.0, -1.0, 0.5]
        f["actions"][...] = a
    data, info = load_offline_dataset(path)
    assert info.action_clip == ACTION_CLIP
    assert data["action"][0].tolist() == pytest.approx([ACTION_CLIP, -ACTION_CLIP, 0.5])
    assert float(data["action"].abs().max()) <= ACTION_CLIP
    data, info = load_offline_dataset(path, action_clip=None)
    assert data["action"][0, 0] == 1.0 and info.action_clip is None
    toy, info = load_offline_dataset("toy2d/8gaussians", toy2d_size=512)
    assert info.action_clip is None and float(toy["action"].abs().max()) > 1.5
    del arr


def test_observation_statistics_and_normalization(hopper_minari_id):
    raw, info = load_offline_dataset(hopper_minari_id)
    norm, ninfo = load_offline_dataset(hopper_minari_id, normalize_observations=True)
    obs = raw["observation"]
    torch.testing.assert_close(info.observation_loc, obs.mean(0))
    torch.testing.assert_close(info.observation_scale, obs.std(0) + 1e-3)
    torch.testing.assert_close(
        norm["observation"], (obs - info.observation_loc) / info.observation_scale
    )
    torch.testing.assert_close(
        norm["next", "observation"],
        (raw["next", "observation"] - info.observation_loc) / info.observation_scale,
    )
    assert norm["observation"].mean(0).abs().max() < 1e-4
    assert info.observation_norm() is None
    transform = ninfo.observation_norm()
    out = transform._apply_transform(obs[:5])
    torch.testing.assert_close(out, norm["observation"][:5], rtol=1e-5, atol=1e-5)


def test_toy2d_source_is_a_bandit():
    rb = make_offline_replay_buffer("toy2d/moons", 128, toy2d_size=1024, seed=0)
    batch = rb.sample()
    assert batch["action"].shape == (128, 2)
    assert batch["next", "terminated"].all() and batch["next", "done"].all()
    assert rb.info.num_episodes == 1024  # one-step episodes
    assert torch.equal(batch["observation"], torch.zeros(128, 1))


def test_tensordict_source_and_device_placement():
    n = 100
    td = TensorDict(
        {
            "observation": torch.randn(n, 4, dtype=torch.float64),
            "action": torch.rand(n, 2) * 2 - 1,
            "next": {
                "observation": torch.randn(n, 4),
                "reward": torch.randn(n),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    rb = make_offline_replay_buffer(td, 10, device="cpu", seed=0)
    batch = rb.sample()
    assert batch["observation"].dtype == torch.float32 and batch["next", "reward"].shape == (10, 1)
    assert not batch["next", "truncated"].any()


# ---------------------------------------------------------------------------------- bad input


def test_unknown_id_names_it_lists_local_and_says_how_to_create(hopper_minari_id):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        make_offline_replay_buffer("torchrl_sym/hopper/medim-v0", 256)
    msg = str(err.value)
    assert "torchrl_sym/hopper/medim-v0" in msg
    assert hopper_minari_id in msg
    assert "python -m torchrl_sym.data.generate" in msg
    assert "offline" in msg
    assert time.monotonic() - start < 5.0


def test_unknown_id_does_not_wait_on_the_network(monkeypatch):
    monkeypatch.delenv("TORCHRL_SYM_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    calls = []
    monkeypatch.setattr(minari, "download_dataset", lambda *a, **k: calls.append(a))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="nothere/x-v0"):
        make_offline_replay_buffer("nothere/x-v0", 256)
    # this machine has no route to the Minari remote: the probe answers at once, no download tried
    assert time.monotonic() - start < 5.0
    assert calls == []
    with pytest.raises(FileNotFoundError, match="download=False"):
        make_offline_replay_buffer("nothere/x-v0", 256, download=False)


def test_remote_id_is_downloaded_then_loaded(hopper_minari_id, monkeypatch):
    """The remote path: when the remote answers, minari.download_dataset fetches the id."""
    from minari.storage.datasets_root_dir import get_dataset_path

    remote_id = "remote/hopper/random-v0"
    src = Path(get_dataset_path(hopper_minari_id))

    def fake_download(dataset_id):
        assert dataset_id == remote_id
        dest = Path(get_dataset_path(dataset_id))
        shutil.copytree(src, dest)
        import json

        meta_path = dest / "data" / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["dataset_id"] = remote_id
        meta_path.write_text(json.dumps(meta))

    monkeypatch.setattr(offline_mod, "_remote_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(minari, "download_dataset", fake_download)
    try:
        data, info = load_offline_dataset(remote_id)
        ref, _ = minari_reference(hopper_minari_id)
        np.testing.assert_array_equal(data["observation"].numpy(), ref["obs"].astype(np.float32))
        assert info.dataset_id == remote_id
    finally:
        shutil.rmtree(get_dataset_path(remote_id), ignore_errors=True)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does-not-exist\.hdf5"):
        make_offline_replay_buffer(str(tmp_path / "does-not-exist.hdf5"), 8)
    bad = tmp_path / "hopper-garbage-v2.hdf5"
    bad.write_bytes(b"this is not hdf5")
    with pytest.raises(ValueError, match=r"hopper-garbage-v2\.hdf5"):
        make_offline_replay_buffer(bad, 8)
    partial = tmp_path / "hopper-partial-v2.hdf5"
    with h5py.File(partial, "w") as f:
        f.create_dataset("observations", data=np.zeros((4, 11), np.float32))
        f.create_dataset("actions", data=np.zeros((4, 3), np.float32))
    with pytest.raises(KeyError, match="rewards") as err:
        make_offline_replay_buffer(partial, 2)
    assert "terminals" in str(err.value) and "timeouts" in str(err.value)
    ragged = tmp_path / "hopper-ragged-v2.hdf5"
    arr = _write_d4rl(ragged)
    with h5py.File(ragged, "r+") as f:
        del f["rewards"]
        f.create_dataset("rewards", data=arr["rewards"][:-2])
    with pytest.raises(ValueError, match="first dimension"):
        make_offline_replay_buffer(ragged, 2)


def test_non_finite_values_are_reported_by_field_and_count(tmp_path):
    path = tmp_path / "hopper-nan-v2.hdf5"
    arr = _write_d4rl(path)
    with h5py.File(path, "r+") as f:
        r = f["rewards"][...]
        r[[1, 4, 6]] = [np.nan, np.inf, -np.inf]
        f["rewards"][...] = r
        o = f["observations"][...]
        o[2, 3] = np.nan
        f["observations"][...] = o
    with pytest.raises(ValueError) as err:
        make_offline_replay_buffer(path, 4)
    msg = str(err.value)
    assert "next/reward: 3" in msg and "observation: 1" in msg
    assert "action" not in msg.replace("transitions", "")
    # nothing was cached for the bad file
    assert not list(Path(os.environ["TORCHRL_SYM_DATA"]).glob("d4rl/hopper-nan-v2/*/dataset.json"))
    del arr


def test_shape_mismatch_with_env(tmp_path):
    path = tmp_path / "hopper-wrongdim-v2.hdf5"
    _write_d4rl(path, obs_dim=17, act_dim=6)
    # the env is inferred from the file name, and the data does not fit it
    with pytest.raises(
        ValueError, match=r"observations of shape \(17,\), but env 'Hopper-v5' expects \(11,\)"
    ):
        make_offline_replay_buffer(path, 4)
    data, info = load_offline_dataset(path, env=None)  # the check can be skipped explicitly
    assert info.env_id is None and data["observation"].shape[1] == 17
    other = tmp_path / "unnamed.hdf5"
    _write_d4rl(other, obs_dim=11, act_dim=6)
    with pytest.raises(
        ValueError, match=r"actions of shape \(6,\), but env 'Hopper-v5' expects \(3,\)"
    ):
        load_offline_dataset(other, env="Hopper-v5")
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        load_offline_dataset(other, env="NoSuchEnv-v0")


def test_bad_batch_size(hopper_minari_id):
    with pytest.raises(ValueError, match="batch_size"):
        make_offline_replay_buffer(hopper_minari_id, 0)
    with pytest.raises(ValueError, match="exceeds"):
        make_offline_replay_buffer(hopper_minari_id, 10**7)


def test_sampling_on_a_cuda_device_when_available(hopper_minari_id):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    rb = make_offline_replay_buffer(hopper_minari_id, 64, device="cuda", seed=0)
    assert rb.sample().device.type == "cuda"


def test_missing_torchrl_sym_dataset_is_generated_on_first_use_then_reused(monkeypatch):
    from torchrl_sym.data import generate

    dataset_id = "torchrl_sym/walker2d/random-v0"
    assert dataset_id not in minari.list_local_datasets()
    rb = make_offline_replay_buffer(dataset_id, 16, generate_transitions=120, seed=0)
    assert rb.info.num_transitions == 120 and rb.info.env_id == "Walker2d-v5"
    ref, _ = minari_reference(dataset_id)
    data, _ = load_offline_dataset(dataset_id, action_clip=None)
    np.testing.assert_array_equal(data["observation"].numpy(), ref["obs"].astype(np.float32))

    def no_generation(*args, **kwargs):
        raise AssertionError("generated again instead of reusing the dataset on disk")

    monkeypatch.setattr(generate, "generate_dataset", no_generation)
    assert make_offline_replay_buffer(dataset_id, 16).info.num_transitions == 120


def test_with_batch_size_shares_the_data_and_has_its_own_sampler():
    buffer = make_offline_replay_buffer("toy2d/8gaussians", 32, seed=0, toy2d_size=1000)
    big = buffer.with_batch_size(128, seed=1)
    assert big.data["action"].data_ptr() == buffer.data["action"].data_ptr()  # no copy
    assert big.info is buffer.info
    assert big.sample().batch_size == (128,) and buffer.sample().batch_size == (32,)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        buffer.with_batch_size(0, seed=None)
