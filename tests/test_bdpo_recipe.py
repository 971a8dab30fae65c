"""recipes/bdpo.py: the three stages run end to end, the paper budget and the per-task settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# named like a task, so that configs/tasks/bdpo/walker2d-medium.yaml applies (dataset= still wins)
DATASET = "test/walker2d/medium-v0"
TINY = [
    "bdpo.actor_hidden=[32,32]",
    "bdpo.critic_hidden=[32,32]",
    "bdpo.ensemble_size=3",
    "bdpo.num_samples=2",
    "bdpo.eval_samples=3",
    "eval.episodes=1",
    "eval.max_steps=30",
    "logger.backend=tensorboard",
    "checkpoint.keep=10",
]
# Table 4 of the paper: (ρ, η), and E = 20 on hopper-medium only
PUBLISHED = {"halfcheetah": (0.5, 0.05), "hopper": (2.0, 0.2), "walker2d": (1.0, 0.15)}


@pytest.fixture(scope="module")
def recipe_dataset():
    import minari

    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    if DATASET not in minari.list_local_datasets():
        episodes = rollout_episodes("Walker2d-v5", None, 1000, seed=0, progress=False)
        write_minari_dataset(DATASET, episodes, env_id="Walker2d-v5")
    return DATASET


def _run(*overrides, timeout=400):
    cmd = [sys.executable, str(ROOT / "recipes" / "bdpo.py"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_smoke_run_goes_through_the_three_stages(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    _run(
        "profile=smoke",
        f"dataset={recipe_dataset}",
        *TINY,
        f"hydra.run.dir={run_dir}",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 150  # 50 behavior + 50 critic warm-up + 50 train
    cfg = (run_dir / "config.yaml").read_text()
    assert "eta: 0.15" in cfg and "rho: 1.0" in cfg and f"dataset: {recipe_dataset}" in cfg
    tags = _tags(run_dir)
    for tag in (
        "behavior/loss_behavior",
        "critic_warmup/loss_qvalue",
        "critic_warmup/loss_value",
        "critic_warmup/q_penalty",
        "train/loss_actor",
        "train/loss_qvalue",
        "train/actor_penalty",
        "eval/return",
    ):
        assert tag in tags, (tag, sorted(tags))
    assert "critic_warmup/loss_actor" not in tags  # no actor update during the warm-up
    assert [s for s, _ in tags["eval/return"]] == [150]
    # the penalty starts at exactly 0: actor = actor EMA = behavior EMA after pretraining
    assert tags["critic_warmup/q_penalty"][0][1] < 1e-3
    # the checkpoint at the end of pretraining holds π = π̄ = ν̄
    state = torch.load(run_dir / "checkpoints" / "ckpt_000000050.pt", weights_only=False)
    model = state["modules"]["loss"]
    behavior = {
        k[len("target_behavior_network_params.") :]: v
        for k, v in model.items()
        if k.startswith("target_behavior_network_params.")
    }
    assert behavior
    for prefix in ("actor_network_params.", "target_actor_network_params."):
        for key, value in behavior.items():
            torch.testing.assert_close(model[prefix + key], value)
    # cosine learning rates over warm-up + train (critics reach 0, the actor is stepped 10 times)
    assert tags["train/lr_qvalue"][-1][1] == pytest.approx(0.0, abs=1e-9)
    actor_lr = tags["train/lr_actor"][-1][1]
    assert 0 < actor_lr < 1e-5


def test_paper_budget_and_default_budget_compose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        paper = OmegaConf.to_container(
            compose("bdpo", overrides=["experiment=paper"]), resolve=True
        )
        default = OmegaConf.to_container(compose("bdpo"), resolve=True)
    assert paper["bdpo"]["behavior_steps"] == 2_000_000 and paper["bdpo"]["warmup_steps"] == 50_000
    assert paper["bdpo"]["warmup_steps"] + paper["train"]["steps"] == 2_000_000
    assert paper["eval"]["interval"] == 50_000 and paper["eval"]["episodes"] == 10
    assert default["bdpo"]["behavior_steps"] < 10_000 and default["train"]["steps"] < 10_000
    for cfg in (paper, default):
        hp = cfg["bdpo"]
        assert (hp["num_steps"], hp["num_samples"], hp["update_ratio"], hp["ema_tau"]) == (
            5,
            10,
            5,
            0.005,
        )
        assert (hp["actor_lr"], hp["critic_lr"], hp["behavior_lr"]) == (1e-5, 3e-4, 3e-4)
        assert hp["actor_hidden"] == [256] * 4 and hp["critic_hidden"] == [256] * 3
        assert (
            cfg["data"]["batch_size"] == 256 and cfg["data"]["reward_transform"] == "return_range"
        )


@pytest.mark.parametrize("env", sorted(PUBLISHED))
@pytest.mark.parametrize("kind", ["medium", "medium-replay", "medium-expert"])
def test_task_files_hold_the_published_settings(env, kind):
    from hydra import compose, initialize_config_dir

    from torchrl_sym.train import recipe

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        base = compose("bdpo", overrides=[f"dataset=torchrl_sym/{env}/{kind}-v0"])
    cfg = recipe.apply_task(base, CONFIGS)
    rho, eta = PUBLISHED[env]
    assert (cfg.bdpo.rho, cfg.bdpo.eta) == (rho, eta)
    assert cfg.bdpo.ensemble_size == (20 if (env, kind) == ("hopper", "medium") else 10)
    assert cfg.dataset == f"torchrl_sym/{env}/{kind}-v0"
