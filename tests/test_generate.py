"""D4RL-style generation: determinism, schema and Minari round trip, reference scores, first use."""

import json

import minari
import numpy as np
import pytest
import torch

from torchrl_sym.data import generate as gen
from torchrl_sym.data import load_offline_dataset, make_offline_replay_buffer, normalized_score
from torchrl_sym.data.policies import (
    CARD_SETS,
    POLICY_KINDS,
    available_policies,
    load_behavior_policy,
    load_card,
    load_medium_replay,
)
from torchrl_sym.envs import resolve_env_id

SHIPPED = sorted({family for family, _ in available_policies()})
# (family, dataset version) of every shipped policy set
SHIPPED_VERSIONS = [
    (family, version)
    for version in CARD_SETS
    for family in sorted({f for f, _ in available_policies(version)})
]


def _card(family, kind):
    """The card of the policies generate_dataset uses by default (the family's newest version)."""
    return load_card(family, kind, gen.latest_version(family))


needs_policies = pytest.mark.skipif(not SHIPPED, reason="no behavior policies shipped")


def test_rollouts_are_deterministic_from_the_seed():
    a = gen.rollout_episodes("Hopper-v5", None, 400, seed=5, num_envs=4, progress=False)
    b = gen.rollout_episodes("Hopper-v5", None, 400, seed=5, num_envs=4, progress=False)
    c = gen.rollout_episodes("Hopper-v5", None, 400, seed=6, num_envs=4, progress=False)
    assert gen.episodes_sha256(a) == gen.episodes_sha256(b) != gen.episodes_sha256(c)
    assert sum(len(ep.actions) for ep in a) == 400  # exactly the budget
    assert [ep.id for ep in a] == sorted(ep.id for ep in a)
    for ep in a:
        assert ep.observations.shape == (len(ep.actions) + 1, 11)
        assert np.all(np.abs(ep.actions) <= 1.0)
        assert ep.seed == 5 + ep.id
    # every episode ends in a terminal or the time limit, except at most num_envs cut by the budget
    cut = [ep for ep in a if not (ep.terminations[-1] or ep.truncations[-1])]
    assert len(cut) <= 4
    # episode i starts from the state gymnasium resets to with seed 5 + i
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    for ep in a[:3]:
        obs, _ = env.reset(seed=5 + ep.id)
        np.testing.assert_array_equal(ep.observations[0], obs)


def test_vectorization_does_not_change_an_episode():
    """An episode's transitions depend on its seed and the actions; replaying them reproduces it."""
    import gymnasium as gym

    episodes = gen.rollout_episodes("Walker2d-v5", None, 300, seed=0, num_envs=3, progress=False)
    env = gym.make("Walker2d-v5")
    for ep in episodes[:3]:
        env.reset(seed=ep.seed)
        for t, action in enumerate(ep.actions):
            obs, r, term, _trunc, _ = env.step(action)
            np.testing.assert_array_equal(obs, ep.observations[t + 1])
            assert r == ep.rewards[t] and term == ep.terminations[t]


def test_random_dataset_via_cli_with_provenance(capsys):
    assert (
        gen.main(["hopper", "random", "--transitions", "300", "--seed", "1", "--num-envs", "4"])
        == 0
    )
    dataset_id = capsys.readouterr().out.strip()
    # without --version: the family's newest shipped policy set (its reference scores)
    assert dataset_id == f"torchrl_sym/hopper/random-v{gen.latest_version('hopper')}"
    ds = minari.load_dataset(dataset_id)
    assert ds.total_steps == 300 and ds.env_spec.id == "Hopper-v5"
    prov = gen.read_provenance(dataset_id)
    sha = gen.episodes_sha256(
        gen.rollout_episodes("Hopper-v5", None, 300, seed=1, num_envs=4, progress=False)
    )
    assert prov["sha256"] == sha and sha in ds.storage.metadata["description"]
    assert prov["seed"] == 1 and prov["transitions"] == 300 and "torch" in prov["versions"]
    # --version 0 still builds the first release's id, never reusing the other version's data
    assert gen.main(["hopper", "random", "--transitions", "300", "--seed", "1", "--num-envs", "4",
                     "--version", "0"]) == 0  # fmt: skip
    assert capsys.readouterr().out.strip() == "torchrl_sym/hopper/random-v0"
    _, info = load_offline_dataset(dataset_id)
    assert info.num_transitions == 300 and info.env_id == "Hopper-v5"
    # a second call refuses to overwrite unless asked
    assert gen.main(["hopper", "random", "--transitions", "300"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert gen.main(["hopper", "random", "--transitions", "200", "--overwrite"]) == 0
    assert minari.load_dataset(dataset_id).total_steps == 200


def test_failed_write_leaves_no_dataset(monkeypatch):
    episodes = gen.rollout_episodes("Hopper-v5", None, 50, seed=0, progress=False)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(minari, "create_dataset_from_buffers", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        gen.write_minari_dataset("test/hopper/broken-v0", episodes, env_id="Hopper-v5")
    assert "test/hopper/broken-v0" not in minari.list_local_datasets()


def test_bad_arguments(capsys):
    with pytest.raises(ValueError, match="kind"):
        gen.generate_dataset("hopper", "medium-ish", num_transitions=10)
    with pytest.raises(ValueError, match="num_transitions"):
        gen.rollout_episodes("Hopper-v5", None, 0)
    with pytest.raises(ValueError, match="antmaze"):
        gen.generate_dataset("antmaze-umaze-v2", "random", num_transitions=10)
    with pytest.raises(SystemExit):
        gen.main(["hopper", "expert-ish"])
    with pytest.raises(SystemExit):
        gen.main(["hopper", "random", "--all"])


# ------------------------------------------------------------------ shipped policies and datasets


@needs_policies
@pytest.mark.parametrize(("family", "version"), SHIPPED_VERSIONS)
def test_every_shipped_policy_loads_and_acts(family, version):
    import gymnasium as gym

    from torchrl_sym.envs import resolve_env_id

    env = gym.make(resolve_env_id(family))
    obs, _ = env.reset(seed=0)
    for kind in POLICY_KINDS:
        policy = load_behavior_policy(family, kind, version)
        card = load_card(family, kind, version)
        assert card["env_id"] == resolve_env_id(family) and card["kind"] == kind
        assert card["episodes"] == 20 and card["return_std"] >= 0
        assert card["training_env_steps"] > 0 and card["reproduce"]
        batch = np.stack([obs, obs])
        a1 = policy.act(batch, torch.Generator().manual_seed(0))
        a2 = policy.act(batch, torch.Generator().manual_seed(0))
        assert a1.shape == (2, env.action_space.shape[0]) and np.all(np.abs(a1) <= 1)
        np.testing.assert_array_equal(a1, a2)  # reproducible from the generator
        assert not np.array_equal(a1[0], a1[1])  # stochastic
        det = policy.act(batch, deterministic=True)
        np.testing.assert_allclose(det[0], det[1], rtol=1e-5, atol=1e-6)  # same state, same action
        _, r, *_ = env.step(det[0])
        assert np.isfinite(r)
    # D4RL's ordering of the reference policies
    assert (
        load_card(family, "random", version)["return_mean"]
        < load_card(family, "medium", version)["return_mean"]
        < load_card(family, "expert", version)["return_mean"]
    )


@needs_policies
def test_medium_and_expert_generation_round_trip_with_reference_scores():
    family = SHIPPED[0]
    medium = gen.generate_dataset(
        family, "medium", num_transitions=300, seed=0, num_envs=4, progress=False, overwrite=True
    )
    again = gen.read_provenance(medium)["sha256"]
    gen.generate_dataset(
        family, "medium", num_transitions=300, seed=0, num_envs=4, progress=False, overwrite=True
    )
    assert gen.read_provenance(medium)["sha256"] == again  # deterministic from the seed
    ds = minari.load_dataset(medium)
    md = ds.storage.metadata
    assert md["ref_min_score"] == _card(family, "random")["return_mean"]
    assert md["ref_max_score"] == _card(family, "expert")["return_mean"]
    assert md["ref_min_score"] < md["ref_max_score"]
    _data, info = load_offline_dataset(medium)
    assert info.num_transitions == 300 and (info.ref_min_score, info.ref_max_score) == (
        md["ref_min_score"],
        md["ref_max_score"],
    )
    assert normalized_score(info, md["ref_max_score"]) == pytest.approx(100.0)
    prov = gen.read_provenance(medium)
    assert prov["policies"]["medium"]["sha256"] == _card(family, "medium")["sha256"]
    # the loaded dataset names the exact data (what a run's summary.json records)
    assert (
        info.metadata["sha256"] == prov["sha256"] and info.metadata["episodes"] == prov["episodes"]
    )
    assert info.metadata["episodes"] == info.num_episodes

    # medium-expert = the medium dataset followed by the expert dataset (same size and seed)
    gen.generate_dataset(
        family, "medium", num_transitions=200, seed=0, num_envs=4, progress=False, overwrite=True
    )
    gen.generate_dataset(
        family, "expert", num_transitions=200, seed=0, num_envs=4, progress=False, overwrite=True
    )
    both = gen.generate_dataset(
        family,
        "medium-expert",
        num_transitions=200,
        seed=0,
        num_envs=4,
        progress=False,
        overwrite=True,
    )
    me, _ = load_offline_dataset(both, action_clip=None)
    parts = [
        load_offline_dataset(gen.dataset_id_for(family, k), action_clip=None)[0]
        for k in ("medium", "expert")
    ]
    assert me.shape[0] == 400
    np.testing.assert_array_equal(
        me["observation"].numpy(), np.concatenate([p["observation"].numpy() for p in parts])
    )
    # reading the parts from disk equals rolling them out again
    fresh = gen.rollout_episodes(
        resolve_env_id(family),
        gen.behavior_policy(family, "medium", 0),
        200,
        seed=0,
        num_envs=4,
        progress=False,
    )
    np.testing.assert_array_equal(fresh[0].actions, minari.load_dataset(both)[0].actions)


@needs_policies
def test_medium_replay_is_the_shipped_replay_buffer():
    family = SHIPPED[0]
    dataset_id = gen.generate_dataset(family, "medium-replay", progress=False, overwrite=True)
    episodes = load_medium_replay(family, gen.latest_version(family))
    data, info = load_offline_dataset(dataset_id, action_clip=None)
    assert info.num_episodes == len(episodes)
    obs = np.concatenate([e["observations"][:-1] for e in episodes]).astype(np.float32)
    np.testing.assert_array_equal(data["observation"].numpy(), obs)
    rewards = np.concatenate([e["rewards"] for e in episodes]).astype(np.float32)
    np.testing.assert_array_equal(data["next", "reward"].squeeze(-1).numpy(), rewards)
    # the buffer ends at the medium snapshot
    assert data.shape[0] == _card(family, "medium")["training_env_steps"]


@needs_policies
def test_first_use_generates_the_embedded_default_at_a_small_size(monkeypatch):
    family = SHIPPED[0]
    dataset_id = gen.dataset_id_for(family, "expert")
    if dataset_id in minari.list_local_datasets():
        minari.delete_dataset(dataset_id)
    rb = make_offline_replay_buffer(dataset_id, 32, generate_transitions=200, seed=0)
    assert (
        rb.info.num_transitions == 200
        and rb.info.ref_max_score == _card(family, "expert")["return_mean"]
    )
    monkeypatch.setattr(gen, "generate_dataset", lambda *a, **k: pytest.fail("generated twice"))
    assert make_offline_replay_buffer(dataset_id, 32).info.num_transitions == 200
    assert json.loads(json.dumps(gen.read_provenance(dataset_id)))["kind"] == "expert"


def test_all_generates_every_env_and_kind_and_skips_existing(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(
        gen,
        "generate_dataset",
        lambda env, kind, **kw: (
            calls.append((env, kind, kw["num_transitions"])) or gen.dataset_id_for(env, kind)
        ),
    )
    existing = gen.dataset_id_for("walker2d", "random")
    monkeypatch.setattr("torchrl_sym.data._staging.local_minari_ids", lambda: [existing])
    assert gen.main(["--all", "--transitions", "10"]) == 0
    expected = [
        (e, k, 10)
        for e in gen.ENV_FAMILIES
        for k in gen.DATASET_KINDS
        if gen.dataset_id_for(e, k) != existing
    ]
    assert calls == expected and len(calls) == 14
    assert f"{existing} exists" in capsys.readouterr().out


@needs_policies
def test_datasets_doc_is_rendered_from_the_datasets():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_datasets_doc.py"
    spec = importlib.util.spec_from_file_location("make_datasets_doc", path)
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    family = SHIPPED[0]
    dataset_id = gen.generate_dataset(
        family, "medium", num_transitions=250, seed=0, num_envs=4, progress=False, overwrite=True
    )
    registry = doc.update_registry({})
    assert registry[dataset_id]["sha256"] == gen.read_provenance(dataset_id)["sha256"]
    page = doc.render(registry, runs={})
    (row,) = [line for line in page.splitlines() if line.startswith(f"| `{dataset_id}` |")]
    _, info = load_offline_dataset(dataset_id)
    g = info.episode_returns.numpy()
    assert f"| 250 | {info.num_episodes:,} | {g.mean():.1f} ± {g.std():.1f} |" in row
    expert = _card(family, "expert")
    assert f"{expert['return_mean']:.1f} ± {expert['return_std']:.1f}" in page


def test_datasets_doc_matches_its_registry_cards_and_runs():
    """docs/datasets.md is what scripts/make_datasets_doc.py renders from the committed registry,
    the shipped cards and docs/behavior_runs/ (regenerate it after changing any of them)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "make_datasets_doc.py"
    spec = importlib.util.spec_from_file_location("make_datasets_doc", path)
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    assert doc.main(["--check"]) == 0


# ------------------------------------------------------------------ Ctrl-C during a write

# `python -c INTERRUPTED WHERE`: the generator's CLI, told "writing" (on stdout) when the test is
# to send SIGINT. WHERE is
#   write: inside the Minari write (the KeyboardInterrupt propagates as usual);
#   dropped-before-rename / dropped-after-rename: inside a __del__ (the KeyboardInterrupt is
#   printed as "Exception ignored ..." and dropped, as in issue #30 point 9b), before or after the
#   finished dataset is renamed into place.
INTERRUPTED = """
import os, signal, sys, time
import minari
from torchrl_sym.data import generate as gen

# as in a terminal: a child started from a non-interactive shell may inherit SIGINT ignored
signal.signal(signal.SIGINT, signal.default_int_handler)
where, real_create, real_rename = sys.argv[1], minari.create_dataset_from_buffers, os.rename

class SleepsInDel:
    def __del__(self):
        print("writing", flush=True)
        time.sleep(60)

def create(*args, **kwargs):
    if where == "write":
        print("writing", flush=True)
        time.sleep(60)
    if where == "dropped-before-rename":
        SleepsInDel()  # collected at once: its __del__ runs here
    return real_create(*args, **kwargs)

def rename(src, dst):
    real_rename(src, dst)
    if where == "dropped-after-rename" and os.path.basename(dst) == "random-v1":
        SleepsInDel()

minari.create_dataset_from_buffers = create
os.rename = rename
raise SystemExit(gen.main(["hopper", "random", "--transitions", "200", "--num-envs", "4",
                           "--version", "1"]))
"""


@pytest.mark.parametrize("where", ["write", "dropped-before-rename", "dropped-after-rename"])
def test_ctrl_c_while_writing_exits_130_and_says_what_is_on_disk(tmp_path, where):
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = tmp_path / "minari"
    env = dict(os.environ, MINARI_DATASETS_PATH=str(root), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, where],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "writing", child.stderr.read()[-3000:]
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    dataset_id = "torchrl_sym/hopper/random-v1"
    final = root / dataset_id
    assert child.returncode == 130, err[-3000:]  # never 0 after a Ctrl-C
    if where != "write":  # the scenario of the issue: the KeyboardInterrupt itself was dropped
        assert "Exception ignored" in err and "KeyboardInterrupt" in err
    last = err.strip().splitlines()[-1]
    if where == "dropped-after-rename":
        assert last == (
            f"interrupted after dataset '{dataset_id}' was written completely: it is kept at "
            f"{final}"
        )
        assert out.strip() == ""  # its id is not printed as a success
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MINARI_DATASETS_PATH", str(root))
            assert minari.load_dataset(dataset_id).total_steps == 200
            assert gen.read_provenance(dataset_id)["transitions"] == 200
    else:
        assert last == (
            f"interrupted before dataset '{dataset_id}' was written: there is no dataset at "
            f"{final} (nothing partial is kept)"
        )
        assert not final.exists()
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]  # staging removed


def test_a_dropped_interrupt_is_raised_again_at_the_end_of_the_guard():
    import signal
    import threading

    from torchrl_sym.data._staging import honour_interrupts

    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        pytest.skip("SIGINT is handled by the test runner here")
    with pytest.raises(KeyboardInterrupt), honour_interrupts() as guard:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pass  # dropped, as Python does for one raised in a __del__
        assert guard.interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    # outside the main thread nothing is installed, and nothing is counted
    seen = []
    thread = threading.Thread(target=lambda: seen.append(honour_interrupts().__enter__()))
    thread.start()
    thread.join()
    assert not seen[0].interrupted
