"""recipes/srpo.py end to end: three checkpointed stages, exact resume across stages, reuse of an
earlier run's behavior model and critic, the paper preset and the per-task β of docs/specs/srpo.md §6."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"
DATASET = "test/hopper/srpo-recipe-v0"
# small networks and batches: the stages' logic, not their size, is under test
TINY = [
    "srpo.behavior.hidden_dim=32",
    "srpo.behavior.num_blocks=1",
    "srpo.behavior.batch_size=64",
    "srpo.critic.hidden=[32,32]",
    "srpo.policy.hidden=[32,32]",
    "data.batch_size=64",
    "logger.backend=none",
    "train.progress=false",
    "eval.episodes=1",
    "eval.max_steps=20",
]
# spec §6, utils.temperature_coefficients
BETAS = {
    "halfcheetah-medium": 0.2,
    "halfcheetah-medium-replay": 0.2,
    "halfcheetah-medium-expert": 0.01,
    "hopper-medium": 0.05,
    "hopper-medium-replay": 0.2,
    "hopper-medium-expert": 0.01,
    "walker2d-medium": 0.05,
    "walker2d-medium-replay": 0.5,
    "walker2d-medium-expert": 0.1,
}


@pytest.fixture(scope="module")
def dataset():
    import minari

    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    if DATASET not in minari.list_local_datasets():
        episodes = rollout_episodes("Hopper-v5", None, 1500, seed=0, progress=False)
        write_minari_dataset(DATASET, episodes, env_id="Hopper-v5")
    return DATASET


def _run(*overrides, check=True, timeout=300):
    cmd = [sys.executable, str(ROOT / "recipes" / "srpo.py"), *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _ckpt(run_dir: Path, step: int) -> dict:
    return torch.load(run_dir / "checkpoints" / f"ckpt_{step:09d}.pt", weights_only=False)


def _load_recipe():
    return importlib.import_module("torchrl_sym.recipes.srpo")


def test_smoke_runs_the_three_stages_with_the_default_networks(tmp_path, dataset):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    _run("profile=smoke", f"dataset={dataset}", f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 150  # 50 steps of each stage
    state = _ckpt(run_dir, 150)
    assert state["stage_index"] == 3 and set(state["modules"]) == {"behavior", "critic", "policy"}
    # the checkpoints at the end of stages 1 and 2 exist too (keep=2 keeps the last two)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("ckpt_*.pt")) == [
        "ckpt_000000125.pt",
        "ckpt_000000150.pt",
    ]
    (events,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events))
    acc.Reload()
    tags = {t: [e.step for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}
    assert tags["behavior/loss_diffusion"] == [25, 50]
    assert tags["critic/loss_qvalue"] == [75, 100] and tags["critic/loss_value"] == [75, 100]
    for tag in (
        "policy/loss_actor",
        "policy/q_mean",
        "policy/score_term_norm",
        "policy/q_term_norm",
    ):
        assert tags[tag] == [125, 150], tag
    assert tags["eval/normalized_score"] == [150]  # only the policy stage evaluates
    # the actor's lr follows a cosine to 0 over its stage
    assert acc.Scalars("policy/lr_srpo")[-1].value == pytest.approx(0.0, abs=1e-9)
    cfg = (run_dir / "config.yaml").read_text()
    assert "beta: 0.05" in cfg and "weight: vds" in cfg and "reward_transform: return_range" in cfg
    # the policy stage read the critic stage's target heads and the behavior stage's ε-network
    policy = state["modules"]["policy"]
    for key, value in state["modules"]["critic"].items():
        if key.startswith("target_qvalue_network_params"):
            assert torch.equal(policy[key], value)
    for key, value in state["modules"]["behavior"].items():
        if key.startswith("actor_network_params"):
            assert torch.equal(policy["behavior_" + key.removeprefix("actor_")], value)


def test_resume_inside_the_critic_stage_is_exact(tmp_path, dataset):
    common = [
        f"dataset={dataset}",
        *TINY,
        "srpo.behavior.steps=20",
        "srpo.critic.steps=20",
        "train.steps=20",
        "checkpoint.interval=10",
        "checkpoint.keep=10",
        "eval.interval=10",
    ]
    straight = tmp_path / "straight"
    _run(*common, f"hydra.run.dir={straight}")
    cut = tmp_path / "cut"
    shutil.copytree(straight, cut)
    # as if killed after step 30 (stage 'critic', step 10): later checkpoints never happened
    for p in (cut / "checkpoints").glob("ckpt_*.pt"):
        if int(p.stem.split("_")[1]) > 30:
            p.unlink()
    assert _ckpt(cut, 30)["stage_name"] == "critic"
    _run(*common, f"resume={cut}")  # a resumed run writes its own directory
    assert json.loads((cut / "summary.json").read_text())["resumed"] is True
    a, b = _ckpt(straight, 60), _ckpt(cut, 60)
    for name in ("behavior", "critic", "policy"):
        for key, value in a["modules"][name].items():
            assert torch.equal(value, b["modules"][name][key]), (name, key)
    with open(straight / "eval_returns.csv") as f1, open(cut / "eval_returns.csv") as f2:
        assert list(csv.DictReader(f1)) == list(csv.DictReader(f2))


def test_init_from_an_earlier_run_skips_stages_one_and_two(tmp_path, dataset):
    common = [f"dataset={dataset}", *TINY, "eval.interval=10"]
    first = tmp_path / "first"
    _run(*common, "srpo.behavior.steps=10", "srpo.critic.steps=10", "train.steps=10",
         f"hydra.run.dir={first}")  # fmt: skip
    second = tmp_path / "second"
    _run(*common, f"srpo.init_from={first}", "train.steps=15", "srpo.beta=0.2",
         f"hydra.run.dir={second}")  # fmt: skip
    summary = json.loads((second / "summary.json").read_text())
    assert summary["global_step"] == 15  # only the policy stage ran
    old, new = _ckpt(first, 30), _ckpt(second, 15)
    for name in ("behavior", "critic"):
        for key, value in old["modules"][name].items():
            assert torch.equal(value, new["modules"][name][key]), (name, key)
    # the new policy is trained from scratch on them (its actor differs from the first run's)
    actor_keys = [k for k in old["modules"]["policy"] if k.startswith("actor_network_params")]
    assert any(
        not torch.equal(old["modules"]["policy"][k], new["modules"]["policy"][k])
        for k in actor_keys
    )
    # errors: no checkpoint there, or a run whose critic stage is unfinished
    recipe = _load_recipe()
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        recipe.load_earlier_stages(str(tmp_path / "nothing"), None, None, "cpu")
    ckpt = tmp_path / "unfinished.pt"
    state = _ckpt(first, 30)
    state.update(stage_index=1, stage_name="critic", stage_step=5, global_step=15)
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="not finished"):
        recipe.load_earlier_stages(str(ckpt), None, None, "cpu")
    state["modules"].pop("critic")
    torch.save(state, ckpt)
    with pytest.raises(ValueError, match="not an srpo checkpoint"):
        recipe.load_earlier_stages(str(ckpt), None, None, "cpu")


def test_paper_preset_and_default_budgets():
    from hydra import compose, initialize_config_dir

    recipe = _load_recipe()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        paper = compose("srpo", overrides=["experiment=paper"])
        assert recipe.budgets(paper) == {
            "behavior": 2_000_000,
            "critic": 1_500_000,
            "policy": 1_000_000,
            "behavior_batch_size": 2048,
        }
        assert (paper.eval.interval, paper.eval.episodes, paper.data.batch_size) == (
            20_000,
            20,
            256,
        )
        cpu = compose("srpo", overrides=["experiment=cpu"])
        assert recipe.budgets(cpu) == {
            "behavior": 100_000,
            "critic": 100_000,
            "policy": 100_000,
            "behavior_batch_size": 256,
        }
        assert (cpu.eval.interval, cpu.eval.episodes, cpu.compile) == (10_000, 10, True)
        smoke = compose("srpo", overrides=["experiment=paper", "profile=smoke"])
        assert recipe.budgets(smoke)["behavior"] == 50 and recipe.budgets(smoke)["policy"] == 50
        default = compose("srpo")
        assert recipe.budgets(default) == {
            "behavior": 2000,
            "critic": 3000,
            "policy": 3000,
            "behavior_batch_size": 256,
        }
        assert default.dataset == "torchrl_sym/hopper/medium-v1"
        hp = default.srpo
        assert (hp.weight, hp.t_min, hp.t_max, hp.eps_baseline, hp.q_reduce) == (
            "vds",
            0.02,
            0.98,
            False,
            "mean",
        )
        assert (hp.critic.expectile, hp.critic.tau, hp.critic.discount) == (0.7, 0.005, 0.99)
        assert (hp.behavior.weight_decay, hp.behavior.t_min, hp.behavior.dropout) == (
            0.01,
            1e-3,
            0.1,
        )


def test_task_files_hold_the_per_task_beta():
    from hydra import compose, initialize_config_dir

    assert sorted(p.stem for p in (CONFIGS / "tasks" / "srpo").glob("*.yaml")) == sorted(BETAS)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for task, beta in BETAS.items():
            merged = compose("srpo", overrides=[f"task={task}"])
            assert merged.srpo.beta == beta and merged.task == task


def test_eval_behavior_scores_the_behavior_model_alone(tmp_path, dataset, capsys):
    """scripts/eval_behavior.py: the stage-1 model of a finished run, rebuilt from the run's
    config and checkpoint, evaluated as a policy with the run's seeds (the same returns as
    evaluating the module directly), written to behavior_eval.json; bad runs are refused."""
    from torchrl.envs.utils import ExplorationType

    from torchrl_sym.data.scores import normalized_score
    from torchrl_sym.envs import make_env
    from torchrl_sym.train.evaluate import evaluate_policy

    spec = importlib.util.spec_from_file_location(
        "eval_behavior", ROOT / "scripts" / "eval_behavior.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tmp_path / "run"
    _run(f"dataset={dataset}", *TINY, "srpo.behavior.steps=20", "srpo.critic.steps=5",
         "train.steps=5", "eval.interval=5", f"hydra.run.dir={run}")  # fmt: skip
    before = {p.name for p in run.iterdir()}
    assert script.main([str(run), "--episodes", "2", "--sampling-steps", "3"]) == 0
    result = json.loads((run / "behavior_eval.json").read_text())
    assert {p.name for p in run.iterdir()} == before | {"behavior_eval.json"}
    assert result["checkpoint"] == "ckpt_000000030.pt" and result["global_step"] == 30
    assert result["episodes"] == 2 and result["sampling_steps"] == 3
    # independently: the behavior module loaded from the checkpoint, evaluated the same way
    recipe = _load_recipe()
    from omegaconf import OmegaConf

    from torchrl_sym.train.evaluate import evaluation_seeds

    cfg = OmegaConf.load(run / "config.yaml")
    loss = recipe.make_behavior_loss(cfg.srpo.behavior, 11, 3)
    loss.load_state_dict(_ckpt(run, 30)["modules"]["behavior"])
    behavior = loss.actor_network.eval()
    behavior.num_steps = 3
    env = make_env("Hopper-v5", num_envs=2)
    for name, mode in (
        ("sample", ExplorationType.RANDOM),
        ("deterministic", ExplorationType.DETERMINISTIC),
    ):
        seeds = evaluation_seeds(int(cfg.seed), 2, cfg.eval.get("start_states", "legacy"))
        returns = evaluate_policy(env, behavior, num_episodes=2, max_steps=20,
                                  seeds=seeds, exploration_type=mode)  # fmt: skip
        assert result[name]["return"] == pytest.approx(float(returns.mean()), rel=1e-9)
        assert result[name]["normalized_score"] == pytest.approx(
            float(normalized_score("Hopper-v5", returns.mean().item())), rel=1e-9
        )
    # the policy diagnostics, recomputed here from the checkpoint's modules and the dataset
    diag = result.pop("policy_diagnostics")
    # 4096 states asked (the default), the whole 1500-transition dataset taken
    assert diag["checkpoint"] == "ckpt_000000030.pt" and diag["num_states"] == 1500
    assert diag["sampling_steps"] == 3 and diag["q_reduce"] == cfg.srpo.q_reduce == "mean"
    from torchrl_sym.data.offline import make_offline_replay_buffer

    batch = make_offline_replay_buffer(dataset, 1500, seed=0, env="auto").sample()
    obs, a_data = batch["observation"], batch["action"]
    state = _ckpt(run, 30)["modules"]
    actor = recipe.make_srpo_actor(11, 3, [32, 32])
    prefix = "actor_network_params."
    actor.load_state_dict(
        {k[len(prefix) :]: v for k, v in state["policy"].items() if k.startswith(prefix)}
    )
    prefix = "target_qvalue_network_params."  # the twin heads, stacked on dim 0
    stacked = {k[len(prefix) :]: v for k, v in state["critic"].items() if k.startswith(prefix)}
    heads = []
    for i in range(2):
        head = recipe.make_qvalue(11, 3, [32, 32])
        head.load_state_dict({k: v[i] for k, v in stacked.items()})
        heads.append(head)

    def q_bar(action):
        with torch.no_grad():
            td = TensorDict({"observation": obs, "action": action}, [len(obs)])
            return torch.stack([h(td.clone())["state_action_value"] for h in heads]).mean(0)

    with torch.no_grad():
        a_pi = actor(TensorDict({"observation": obs}, [len(obs)]))["action"]
    acts = diag["actions"]
    expect = {"data": a_data, "policy": a_pi, "zeros": torch.zeros_like(a_data)}
    for name, action in expect.items():
        assert acts[name]["q"] == pytest.approx(float(q_bar(action).mean()), rel=1e-5)
        dist = float((action - a_data).norm(dim=-1).mean())
        assert acts[name]["distance_to_data"] == pytest.approx(dist, rel=1e-5, abs=1e-7)
    assert acts["data"]["distance_to_data"] == 0.0
    for name, action in expect.items():
        share = float((action.abs() > 0.99).float().mean())
        assert acts[name]["saturated_fraction"] == pytest.approx(share)
    assert 0 < acts["behavior"]["distance_to_data"] < 2 * 3**0.5  # within the action box
    # an existing result is kept; --force evaluates again (the same seeds: the same numbers)
    result["policy_diagnostics"] = diag
    capsys.readouterr()
    assert script.main([str(run)]) == 0 and "exists" in capsys.readouterr().out
    assert script.main([str(run), "--episodes", "2", "--sampling-steps", "3", "--force"]) == 0
    assert json.loads((run / "behavior_eval.json").read_text()) == result
    # refused: not a run, another algorithm, a behavior stage that has not finished
    other = tmp_path / "iql"
    other.mkdir()
    (other / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("algo: srpo", "algo: iql")
    )
    early = tmp_path / "early"
    (early / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", early / "config.yaml")
    state = _ckpt(run, 30)
    state.update(
        stage_index=0, stage_name="behavior", stage_step=10, global_step=10, completed=False
    )
    torch.save(state, early / "checkpoints" / "ckpt_000000010.pt")
    capsys.readouterr()
    assert script.main([str(tmp_path / "nothing"), str(other), str(early)]) == 1
    err = capsys.readouterr().err
    assert "no config.yaml, not a run directory" in err
    assert "holds a run of algo='iql'" in err
    assert "not trained yet" in err
    assert not (early / "behavior_eval.json").exists()
    # a run in its critic stage: the behavior model is scored, the policy is not diagnosed
    middle = tmp_path / "middle"
    (middle / "checkpoints").mkdir(parents=True)
    shutil.copy(run / "config.yaml", middle / "config.yaml")
    state = _ckpt(run, 30)
    state.update(stage_index=1, stage_name="critic", stage_step=2, global_step=22, completed=False)
    torch.save(state, middle / "checkpoints" / "ckpt_000000022.pt")
    assert script.main([str(middle), "--episodes", "1", "--sampling-steps", "2"]) == 0
    assert "policy_diagnostics" not in json.loads((middle / "behavior_eval.json").read_text())
    with pytest.raises(ValueError, match="policy stage has not begun"):
        recipe.policy_diagnostics(middle)
    with pytest.raises(ValueError, match="holds a run of algo='iql'"):
        recipe.policy_diagnostics(other)
    for bad in (["--episodes", "0"], ["--num-states", "0"]):
        with pytest.raises(SystemExit):
            script.main([str(run), *bad])
