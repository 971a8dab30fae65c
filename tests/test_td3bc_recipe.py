"""recipes/td3bc.py: TorchRL's TD3BCLoss set up as the paper (docs/specs/baselines.md §5) end to end.

A smoke run checks the run directory, the loss's α through its logged λ, the policy delay through
the optimizers' step counts, and that the dataset's observation statistics reach the evaluation
env (the evaluated return is replayed from the checkpoint with and without them).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"
TASKS = [
    f"{env}-{kind}"
    for env in ("halfcheetah", "hopper", "walker2d")
    for kind in ("medium", "medium-replay", "medium-expert")
]

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _run(*overrides, timeout=300):
    cmd = [sys.executable, str(ROOT / "recipes" / "td3bc.py"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _recipe():
    return importlib.import_module("torchrl_sym.recipes.td3bc")


def _tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _compose(*overrides, **kwargs):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("td3bc", overrides=list(overrides), **kwargs)


def test_smoke_run(tmp_path, recipe_dataset):
    from omegaconf import OmegaConf
    from torchrl.objectives import TD3BCLoss

    from torchrl_sym.data import make_offline_replay_buffer
    from torchrl_sym.envs import make_env
    from torchrl_sym.train import evaluate_policy

    run_dir = tmp_path / "run"
    _run("profile=smoke", f"dataset={recipe_dataset}", f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 50 and summary["resumed"] is False
    with open(run_dir / "eval_returns.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["episode"]) for r in rows] == [("50", "0")]
    ret = float(rows[0]["return"])
    assert float(rows[0]["normalized_score"]) == pytest.approx(
        100 * (ret + 20.272305) / (3234.3 + 20.272305), rel=1e-5
    )  # hopper's D4RL reference returns
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.td3bc.alpha == 2.5 and cfg.data.normalize_observations is True
    assert cfg.data.reward_transform == "identity"

    # the run's loss is TorchRL's TD3BCLoss with α = 2.5: λ · mean|Q_1(s, π(s))| = α on the logs
    tags = _tags(run_dir)
    assert [s for s, _ in tags["train/loss_qvalue"]] == [25, 50]
    assert [s for s, _ in tags["train/loss_actor"]] == [50]  # the actor runs on even steps
    (_, lmbd), (_, q_abs) = tags["train/lmbd"][-1], tags["train/q_actor_abs_mean"][-1]
    assert lmbd * q_abs == pytest.approx(2.5, rel=1e-5)
    assert "train/bc_loss" in tags and "eval/normalized_score" in tags
    state = torch.load(run_dir / "checkpoints" / "ckpt_000000050.pt", weights_only=False)
    # policy delay 2: the critic optimizer stepped 50 times, the actor's 25
    steps = {
        name: {int(s["step"]) for s in opt["state"].values()}
        for name, opt in state["optimizers"].items()
    }
    assert steps == {"train/qvalue/0": {50}, "train/actor/0": {25}}
    info = make_offline_replay_buffer(recipe_dataset, 8, normalize_observations=True).info
    S, A = info.observation_shape[0], info.action_shape[0]
    loss = _recipe().make_loss(S, A, cfg.td3bc)
    assert isinstance(loss, TD3BCLoss)
    assert (loss.alpha, loss.policy_noise, loss.noise_clip) == (2.5, 0.2, 0.5)
    assert loss.loss_function == "l2" and loss.num_qvalue_nets == 2
    loss.load_state_dict(state["modules"]["loss"])  # strict: same networks as the run's

    # the evaluation env standardized observations with the dataset's statistics: replaying the
    # evaluated episode with them gives the logged return, without them another one
    assert not torch.allclose(info.observation_loc, torch.zeros(S))
    from torchrl_sym.train.evaluate import evaluation_seeds

    seed = evaluation_seeds(int(cfg.seed), 1, cfg.eval.get("start_states", "legacy"))[0]

    def replay(norm):
        env = make_env(info.env_id, seed=seed, observation_norm=norm)
        returns = evaluate_policy(env, loss.actor_network, num_episodes=1, max_steps=50, seed=seed)
        return float(returns[0])

    assert replay((info.observation_loc, info.observation_scale)) == pytest.approx(ret, rel=1e-9)
    assert replay(None) != pytest.approx(ret, rel=1e-6)


def test_paper_preset_composes_to_the_papers_numbers():
    cfg = _compose("experiment=paper", return_hydra_config=True)
    assert cfg.train.steps == 1_000_000
    assert (cfg.eval.interval, cfg.eval.episodes) == (5000, 10)
    assert cfg.hydra.sweeper.params.seed == "0,1,2,3,4"
    # logged steps (multiples of 5000, counted from 1) carry an actor update (policy delay 2)
    assert cfg.train.log_interval % cfg.td3bc.policy_delay == 0
    hp = cfg.td3bc
    assert (hp.alpha, hp.policy_noise, hp.noise_clip, hp.policy_delay) == (2.5, 0.2, 0.5, 2)
    assert (hp.tau, hp.lr, hp.discount, list(hp.hidden)) == (0.005, 3e-4, 0.99, [256, 256])
    assert cfg.data.batch_size == 256
    assert cfg.data.normalize_observations is True and cfg.data.reward_transform == "identity"
    default = _compose()
    assert default.train.steps == 10_000 and default.td3bc.alpha == 2.5


@pytest.mark.parametrize("task", TASKS)
def test_task_files_select_the_iql_datasets(task):
    from omegaconf import OmegaConf

    dataset = OmegaConf.load(CONFIGS / "task" / f"{task}.yaml").dataset
    cfg = _compose(f"task={task}")
    assert cfg.task == task and cfg.dataset == dataset and cfg.td3bc.alpha == 2.5
    assert cfg.data.normalize_observations is True
    # TD3+BC has one setting for every task: no per-task files
    assert not (CONFIGS / "tasks" / "td3bc").exists()


def test_actor_is_a_tanh_mlp():
    from torchrl.modules import MLP

    from torchrl_sym.models import make_deterministic_actor

    torch.manual_seed(0)
    actor = make_deterministic_actor(11, 3, [32, 32])
    mlp = actor.module[0]
    assert isinstance(mlp, MLP) and [m.out_features for m in mlp if hasattr(m, "out_features")] == [
        32,
        32,
        3,
    ]
    obs = 100 * torch.randn(64, 11)
    action = actor(observation=obs)
    torch.testing.assert_close(action, torch.tanh(mlp(obs)))
    assert action.abs().max() <= 1.0
