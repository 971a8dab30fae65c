"""recipes/sac.py (smoke, resume) and the build of behavior policies and cards from its run."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrl_sym.recipes.build_policies import build, select_sampled_medium, select_snapshots

ROOT = Path(__file__).resolve().parents[1]


def _sac(run_dir, *overrides):
    resuming = any(o.startswith("resume=") for o in overrides)
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "sac.py"),
        "env=hopper",
        "compile=false",
        "logger.backend=none",
        *([] if resuming else [f"hydra.run.dir={run_dir}"]),  # a resumed run writes its own dir
        *overrides,
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=os.environ.copy()
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


@pytest.fixture(scope="module")
def sac_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sac") / "run"
    _sac(
        run_dir,
        "train.max_steps_per_stage=150",
        "save_interval=50",
        "sac.frames_per_batch=50",
        "sac.batch_size=32",
        "eval.episodes=2",
    )
    return run_dir


def test_sac_run_saves_actors_evaluations_replay_and_checkpoints(sac_run):
    with open(sac_run / "actors" / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frames"]) for r in rows] == [50, 100, 150]
    assert all(np.isfinite(float(r["return_mean"])) for r in rows)
    for frames in (50, 100, 150):
        assert (sac_run / "actors" / f"actor_{frames:08d}.pt").is_file()
    replay = torch.load(sac_run / "replay_buffer.pt", weights_only=False)
    assert replay.shape[0] == 150
    # transitions in collection order: within a trajectory, s' of step t is s of step t + 1
    traj = replay["collector", "traj_ids"].reshape(-1)
    same = traj[1:] == traj[:-1]
    torch.testing.assert_close(
        replay["next", "observation"][:-1][same], replay["observation"][1:][same]
    )
    assert json.loads((sac_run / "summary.json").read_text())["frames"] == 150
    state = torch.load(sorted((sac_run / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=False)
    assert state["frames"] == 150 and state["buffer"].shape[0] == 150


def test_sac_resumes_from_its_checkpoint(sac_run, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(sac_run, run_dir)
    _sac(
        tmp_path / "unused",
        f"resume={run_dir}",
        "train.max_steps_per_stage=200",
        "save_interval=50",
        "sac.frames_per_batch=50",
        "sac.batch_size=32",
        "eval.episodes=1",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["frames"] == 200
    (record,) = (run_dir / "resumes").glob("*/overrides.yaml")
    assert "resumed_at_step: 150" in record.read_text()  # its frame count
    assert torch.load(run_dir / "replay_buffer.pt", weights_only=False).shape[0] == 200
    with open(run_dir / "actors" / "evals.csv") as f:
        assert [int(r["frames"]) for r in csv.DictReader(f)] == [50, 100, 150, 200]


def test_crossq_trains_and_resumes(tmp_path):
    """algo=crossq: batch-renormalized critics, no target networks, the delayed actor step; the
    checkpoint holds the critics' running statistics and a resumed run continues the evaluations."""
    run_dir = tmp_path / "crossq"
    common = ["save_interval=50", "sac.frames_per_batch=50", "sac.batch_size=32"]
    _sac(run_dir, "algo=crossq", "train.max_steps_per_stage=100", "eval.episodes=1", *common)
    state = torch.load(sorted((run_dir / "checkpoints").glob("ckpt_*.pt"))[-1], weights_only=False)
    assert not any("target_" in k and "network" in k for k in state["loss"])  # no target nets
    tracked = [v for k, v in state["loss"].items() if k.endswith("num_batches_tracked")]
    assert tracked and all(int(t.min()) > 0 for t in tracked)  # batch renorm statistics move
    assert set(state["optims"]) == {"critic", "actor"}
    # the actor is SAC's plain MLP, so the dataset builder loads it the same way
    actor = torch.load(run_dir / "actors" / "actor_00000100.pt", weights_only=True)
    assert not any("running" in k for k in actor)
    _sac(run_dir, f"resume={run_dir}", "train.max_steps_per_stage=150", "eval.episodes=1", *common)
    with open(run_dir / "actors" / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frames"]) for r in rows] == [50, 100, 150]
    seconds = [float(r["seconds"]) for r in rows]
    assert seconds == sorted(seconds)  # wall time accumulates across the resumed segment
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["algo"] == "crossq" and summary["frames"] == 150


def test_select_snapshots_follows_d4rl():
    evals = [(5000, 100.0), (10000, 400.0), (15000, 1100.0), (20000, 3000.0), (25000, 2500.0)]
    # expert: the best evaluated snapshot; medium: the earlier one closest to a third of it
    assert select_snapshots(evals) == (20000, 15000)
    with pytest.raises(ValueError, match="medium"):
        select_snapshots([(5000, 900.0), (10000, 100.0)])


def test_build_writes_policies_cards_and_replay(sac_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sac_run, run)
    # a tiny run's evaluations are noise: fix them so the expert is the last snapshot (150) and
    # the medium the one closest to a third of its return (50)
    (run / "actors" / "evals.csv").write_text(
        "frames,return_mean,return_std\n50,95.0,1\n100,200.0,1\n150,300.0,1\n"
    )
    out = tmp_path / "policies"
    cards = build("hopper", run, out, episodes=3, random_episodes=5)
    assert set(cards) == {"expert", "medium", "random"}
    for kind in ("expert", "medium"):
        card = json.loads((out / f"hopper_{kind}.json").read_text())
        assert card["env_id"] == "Hopper-v5" and card["episodes"] == 3 and card["train_seed"] == 0
        assert card["training_env_steps"] == {"expert": 150, "medium": 50}[kind]
        assert "python recipes/sac.py algo=sac env=hopper" in card["reproduce"][0]
        blob = torch.load(out / f"hopper_{kind}.pt", weights_only=True)
        assert blob["obs_dim"] == 11 and blob["act_dim"] == 3
        saved = torch.load(
            sac_run / "actors" / f"actor_{card['training_env_steps']:08d}.pt", weights_only=True
        )
        assert all(torch.equal(saved[k], blob["state_dict"][k]) for k in saved)
    random_card = json.loads((out / "hopper_random.json").read_text())
    assert (
        random_card["episodes"] == 5
        and random_card["return_mean"] == cards["random"]["return_mean"]
    )
    z = np.load(out / "hopper_medium_replay.npz")
    lengths = z["episode_lengths"]
    assert lengths.sum() == cards["medium"]["training_env_steps"] == z["actions"].shape[0]
    assert z["observations"].shape[0] == lengths.sum() + len(lengths)
    replay = torch.load(sac_run / "replay_buffer.pt", weights_only=False)
    np.testing.assert_array_equal(z["actions"], replay["action"][: lengths.sum()].numpy())
    np.testing.assert_array_equal(z["observations"][0], replay["observation"][0].numpy())


def test_select_sampled_medium_targets_a_third_of_the_expert_after_min_replay():
    evals = [(10, 900.0), (20, 1200.0), (30, 1500.0), (40, 2000.0), (50, 3000.0)]
    sampled = {10: 800.0, 20: 1000.0, 30: 1150.0, 40: 1500.0, 50: 2600.0}
    calls = []

    def rollout(frames):
        calls.append(frames)
        return sampled[frames]

    # target 1000: the sampled return decides (20), not the deterministic one (10: 900)
    frames, value, tried = select_sampled_medium(evals, 3000.0, rollout)
    assert (frames, value) == (20, 1000.0) and calls == [10, 20]  # stops once within 5%
    # only snapshots after min_frames count (the medium-replay size)
    frames, _, tried = select_sampled_medium(evals, 3000.0, rollout, min_frames=25)
    assert frames == 30 and all(f >= 25 for f, _ in tried)
    with pytest.raises(ValueError, match="No snapshot after 60"):
        select_sampled_medium(evals, 3000.0, rollout, min_frames=60)
    with pytest.raises(ValueError, match="near a third"):
        select_sampled_medium([(10, 5.0)], 3000.0, rollout)


def test_build_with_a_medium_run_writes_sampled_returns_and_a_version_folder(sac_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sac_run, run)
    (run / "actors" / "evals.csv").write_text(
        "frames,return_mean,return_std\n50,95.0,1\n100,200.0,1\n150,300.0,1\n"
    )
    seen = []
    import torchrl_sym.recipes.build_policies as build_module

    real = build_module._evaluate

    def evaluate(env_id, actor, episodes, *, sampled=False, seed=build_module.EVAL_SEED):
        mean, std = real(env_id, actor, episodes, sampled=sampled, seed=seed)
        seen.append(sampled)
        if sampled and episodes == 2:  # the medium candidates: make 100 frames the closest
            return (100.0 if len([s for s in seen if s]) == 1 else 5.0), std
        return (300.0 if not sampled else mean), std

    build_module._evaluate = evaluate
    try:
        cards = build(
            "hopper", run, tmp_path / "v1", episodes=2, random_episodes=3, medium_run=run,
            min_replay=100, medium_episodes=2, version=1,
        )  # fmt: skip
    finally:
        build_module._evaluate = real
    medium = cards["medium"]
    assert medium["training_env_steps"] >= 100 and medium["dataset_version"] == 1
    assert {"sampled_return_mean", "sampled_return_std", "selection"} <= set(medium)
    assert all(f >= 100 for f, _ in medium["selection"]["sampled_returns_tried"])
    assert "--medium-run" in medium["reproduce"][1] and "--version 1" in medium["reproduce"][1]
    z = np.load(tmp_path / "v1" / "hopper_medium_replay.npz")
    assert z["episode_lengths"].sum() == medium["training_env_steps"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_sac_on_cuda_without_cuda_is_a_clear_error(tmp_path):
    cmd = [sys.executable, str(ROOT / "recipes" / "sac.py"), "device=cuda", "logger.backend=none",
           f"hydra.run.dir={tmp_path / 'run'}"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "CUDA is not available; use device=cpu" in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_crossq_trains_on_cuda(tmp_path):
    run_dir = tmp_path / "cuda"
    _sac(run_dir, "algo=crossq", "device=cuda", "train.max_steps_per_stage=100",
         "save_interval=50", "sac.frames_per_batch=50", "sac.batch_size=32", "eval.episodes=1")  # fmt: skip
    state = torch.load(run_dir / "replay_buffer.pt", weights_only=False)
    assert state.device.type == "cpu" and state.shape[0] == 100  # saved for the CPU-side build
