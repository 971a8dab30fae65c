"""recipes/bdpo.py: the three stages run end to end, the official code's choices (continued
behavior training, EMA-critic action selection, π = ν̄ without pretraining), the smoke profile's
small model, the paper budget and the per-task settings."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"
# named like a task; task=walker2d-medium applies torchrl_sym/configs/tasks/bdpo/walker2d-medium.yaml
# (and dataset= still wins over the task's dataset)
DATASET = "test/walker2d/medium-v0"
# profile=smoke sizes the model (torchrl_sym/configs/profile/bdpo/smoke.yaml); these only shorten the evaluation
SHORT = ["eval.episodes=1", "eval.max_steps=30", "logger.backend=tensorboard", "checkpoint.keep=10"]
# torchrl_sym/configs/profile/bdpo/smoke.yaml
SMOKE_CAPS = {"ensemble_size": 2, "num_samples": 2, "eval_samples": 2, "hidden": 64}
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


def _recipe():
    return importlib.import_module("torchrl_sym.recipes.bdpo")


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("bdpo", overrides=list(overrides))


def _group(model: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries of a checkpointed BDPOLoss under ``<prefix>.`` (e.g. ``actor_network_params``)."""
    return {k[len(prefix) + 1 :]: v for k, v in model.items() if k.startswith(prefix + ".")}


def _tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_smoke_run_goes_through_the_three_stages(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    start = time.perf_counter()
    _run(
        "profile=smoke",
        "task=walker2d-medium",
        f"dataset={recipe_dataset}",
        *SHORT,
        f"hydra.run.dir={run_dir}",
    )
    # about 25 s on a loaded 2-core machine (it was > 500 s at the paper's sizes); a loose bound
    assert time.perf_counter() - start < 240
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
    assert "train/loss_behavior" in tags  # behavior_updates: ν keeps training (official code)
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
    # the smoke model: E = 2 members (walker2d-medium's task file says 10), widths 64
    q = _group(model, "qvalue_network_params")
    assert {v.shape[0] for v in q.values()} == {2}
    widths = sorted({v.shape[-2] for k, v in q.items() if k.endswith("weight")})
    assert widths == [1, 64]
    actor_widths = {v.shape[0] for k, v in behavior.items() if k.endswith("weight")}
    assert max(actor_widths) == 64
    value = _group(model, "value_network_params")
    assert {v.shape[0] for k, v in value.items() if k.endswith(("weight", "bias"))} == {2}
    # cosine learning rates over warm-up + train (critics reach 0, the actor is stepped 10 times)
    assert tags["train/lr_qvalue"][-1][1] == pytest.approx(0.0, abs=1e-9)
    actor_lr = tags["train/lr_actor"][-1][1]
    assert 0 < actor_lr < 1e-5


def test_without_pretraining_the_actor_starts_as_the_behavior_and_the_behavior_keeps_training(
    tmp_path, recipe_dataset
):
    """Both stage budgets 0: π = π̄ = ν̄ = ν when training starts (the official prepare_training
    copies the behavior EMA into the actor whatever the budgets); with ``behavior_updates`` on (the
    default) ν and ν̄ move on the actor's steps of the train stage (stage step 4 here)."""
    run_dir = tmp_path / "run"
    _run(
        "profile=smoke",
        f"dataset={recipe_dataset}",
        "bdpo.behavior_steps=0",
        "bdpo.warmup_steps=0",
        "train.steps=5",
        "checkpoint.interval=4",
        "checkpoint.keep=10",
        "eval.episodes=1",
        "eval.max_steps=10",
        "logger.backend=none",
        f"hydra.run.dir={run_dir}",
    )
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 5
    models = {
        step: torch.load(run_dir / "checkpoints" / f"ckpt_{step:09d}.pt", weights_only=False)[
            "modules"
        ]["loss"]
        for step in (4, 5)
    }
    # after 4 critic steps (no actor or behavior step yet): π = π̄ = ν̄ = ν, the behavior's init
    before = {
        name: _group(models[4], f"{name}_network_params")
        for name in ("actor", "target_actor", "behavior", "target_behavior")
    }
    assert before["behavior"]
    for name in ("actor", "target_actor", "target_behavior"):
        assert before[name].keys() == before["behavior"].keys()
        for key, value in before["behavior"].items():
            torch.testing.assert_close(before[name][key], value, rtol=0, atol=0)
    # step 5 runs the actor and the behavior: ν moved, ν̄ took one EMA step toward it
    behavior = _group(models[5], "behavior_network_params")
    target = _group(models[5], "target_behavior_network_params")
    moved = [k for k in behavior if not torch.equal(behavior[k], before["behavior"][k])]
    assert moved
    for key, value in target.items():
        expected = torch.lerp(before["target_behavior"][key], behavior[key], 0.005)
        torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-7)
    actor = _group(models[5], "actor_network_params")
    assert any(not torch.equal(actor[k], before["actor"][k]) for k in actor)


@pytest.mark.filterwarnings("ignore:No target network updater")
def test_loss_terms_give_the_loop_a_tensordict_of_each_term():
    """BDPOLoss's per-term methods return ``(loss, metadata)`` (TorchRL's convention); the
    recipe's ``loss_terms`` adapters give the loop the TensorDict it sums and logs: the
    ``loss_<term>`` entry and the term's diagnostics, the same numbers under the same draws."""
    from tensordict import TensorDict

    from tests.test_bdpo import _batch, _make_loss

    loss, td = _make_loss(), _batch()
    for term in ("behavior", "qvalue", "value", "actor"):
        torch.manual_seed(0)
        out = _recipe().loss_terms(loss, term)(td)
        torch.manual_seed(0)
        value, info = getattr(loss, f"{term}_loss")(td)
        assert isinstance(out, TensorDict) and out.batch_size == torch.Size([])
        assert list(out.keys()) == [f"loss_{term}", *info]
        torch.testing.assert_close(out[f"loss_{term}"], value, rtol=0, atol=0)
        for key, metric in info.items():
            torch.testing.assert_close(out[key], metric, rtol=0, atol=0)


def test_smoke_profile_composes_a_small_model_for_bdpo_only():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    recipe_module = _recipe()
    smoke = _compose("profile=smoke")
    assert dict(smoke.bdpo.size_caps) == SMOKE_CAPS
    assert smoke.train.max_steps_per_stage == 50  # the shared smoke profile still applies
    assert _compose().bdpo.size_caps is None and _compose("experiment=paper").bdpo.size_caps is None
    cpu = _compose("experiment=cpu")
    assert dict(cpu.bdpo.size_caps) == {"ensemble_size": 4, "num_samples": 4}
    assert (cpu.bdpo.behavior_steps, cpu.bdpo.warmup_steps, cpu.train.steps) == (
        100_000,
        5000,
        20_000,
    )
    assert cpu.compile is True and cpu.eval.interval == 5000
    # smoke's caps win over the CPU budget's
    assert dict(_compose("experiment=cpu", "profile=smoke").bdpo.size_caps) == SMOKE_CAPS
    # the caps are applied after the task file: hopper-medium's 20 members become 2
    task = _compose("profile=smoke", "task=hopper-medium")
    assert task.bdpo.ensemble_size == 20
    hp = recipe_module.capped_sizes(task.bdpo)
    assert (hp.ensemble_size, hp.num_samples, hp.eval_samples, hp.num_steps) == (2, 2, 2, 5)
    assert list(hp.actor_hidden) == [64] * 4 and list(hp.critic_hidden) == [64] * 3
    assert (hp.eta, hp.rho) == (0.2, 2.0)  # everything else is the task's
    # without caps the recipe trains the configured sizes
    default = _compose()
    assert recipe_module.capped_sizes(default.bdpo) is default.bdpo
    # caps never enlarge, and a partial set caps only its sizes
    partial = OmegaConf.merge(default.bdpo, {"size_caps": {"hidden": 512, "num_samples": 3}})
    hp = recipe_module.capped_sizes(partial)
    assert (hp.ensemble_size, hp.num_samples, list(hp.actor_hidden)) == (10, 3, [256] * 4)
    with pytest.raises(ValueError, match=r"bdpo.size_caps.width is not a size cap"):
        recipe_module.capped_sizes(OmegaConf.merge(default.bdpo, {"size_caps": {"width": 8}}))
    with pytest.raises(ValueError, match=r"bdpo.size_caps.hidden must be a positive int"):
        recipe_module.capped_sizes(OmegaConf.merge(default.bdpo, {"size_caps": {"hidden": 0}}))
    # other recipes' smoke profile is unchanged: no bdpo keys, the same shared caps
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for algo in ("iql", "sfac", "srpo", "td3bc"):
            cfg = compose(algo, overrides=["profile=smoke"])
            assert "bdpo" not in cfg and cfg.train.max_steps_per_stage == 50, algo


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
        # the official code: ν keeps training, the EMA critics rank the evaluation samples
        assert hp["behavior_updates"] is True and hp["eval_critic"] == "ema"
        assert hp["size_caps"] is None


@pytest.mark.parametrize("env", sorted(PUBLISHED))
@pytest.mark.parametrize("kind", ["medium", "medium-replay", "medium-expert"])
def test_task_files_hold_the_published_settings(env, kind):
    from hydra import compose, initialize_config_dir

    from torchrl_sym.data.generate import dataset_id_for

    dataset = dataset_id_for(env, kind)  # the family's newest dataset version, as the task files
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("bdpo", overrides=[f"task={env}-{kind}"])
    rho, eta = PUBLISHED[env]
    assert (cfg.bdpo.rho, cfg.bdpo.eta) == (rho, eta)
    assert cfg.bdpo.ensemble_size == (20 if (env, kind) == ("hopper", "medium") else 10)
    assert cfg.dataset == dataset


def test_init_from_an_earlier_run_loads_its_behavior_model_and_skips_the_behavior_stage(
    tmp_path, recipe_dataset
):
    """``bdpo.init_from``: ν and ν̄ come from an earlier run whose behavior stage finished, π = π̄
    = ν̄ when training starts, the critics keep their own initialization, and the run has no
    behavior stage; a source that is unfinished, of another algorithm or of other widths is
    refused before any step, naming the option."""
    small = ["profile=smoke", f"dataset={recipe_dataset}", "logger.backend=none"]
    short = ["eval.episodes=1", "eval.max_steps=10", "checkpoint.keep=10"]
    first = tmp_path / "first"  # the behavior stage only (as scripts/tune.py's shared stage)
    _run(*small, *short, "bdpo.warmup_steps=0", "train.steps=0", "checkpoint.interval=20",
         f"hydra.run.dir={first}")  # fmt: skip
    source = torch.load(first / "checkpoints" / "ckpt_000000050.pt", weights_only=False)
    source = source["modules"]["loss"]

    second = tmp_path / "second"
    _run(*small, *short, f"bdpo.init_from={first}", "bdpo.eta=0.5", "bdpo.warmup_steps=0",
         "train.steps=5", "checkpoint.interval=4", f"hydra.run.dir={second}")  # fmt: skip
    assert json.loads((second / "summary.json").read_text())["global_step"] == 5  # no behavior
    model = torch.load(second / "checkpoints" / "ckpt_000000004.pt", weights_only=False)
    model = model["modules"]["loss"]
    # after 4 critic steps (no actor or behavior step yet): ν, ν̄ as the source left them ...
    for group in ("behavior_network_params", "target_behavior_network_params"):
        loaded, expected = _group(model, group), _group(source, group)
        assert loaded and loaded.keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(loaded[key], value, rtol=0, atol=0)
    # ... π = π̄ = ν̄ ...
    target_behavior = _group(source, "target_behavior_network_params")
    for group in ("actor_network_params", "target_actor_network_params"):
        for key, value in _group(model, group).items():
            torch.testing.assert_close(value, target_behavior[key], rtol=0, atol=0)
    # ... and the critics are this run's own (trained 4 steps from their init, not the source's)
    value_now, value_then = (_group(m, "value_network_params") for m in (model, source))
    assert any(not torch.equal(value_now[k], value_then[k]) for k in value_now)

    # refused, naming the option: a source stopped inside its behavior stage ...
    recipe = _recipe()
    hp = recipe.capped_sizes(_compose("profile=smoke").bdpo)

    def refusal(path, **sizes) -> str:
        loss = recipe.make_loss(17, 6, OmegaConf.merge(hp, sizes))  # walker2d's sizes
        with pytest.raises(ValueError, match=r"bdpo\.init_from=") as err:
            recipe.load_behavior(str(path), loss, "cpu")
        return str(err.value)

    assert "behavior stage is not finished" in refusal(first / "checkpoints" / "ckpt_000000020.pt")
    # ... a checkpoint of another algorithm ...
    other = tmp_path / "other.pt"
    torch.save({"modules": {"behavior": {}, "critic": {}}, "stage_index": 3}, other)
    message = refusal(other)
    assert "is not a bdpo checkpoint" in message and "'behavior', 'critic'" in message
    # ... and a behavior model of other widths
    message = refusal(first, actor_hidden=[32, 32, 32, 32])
    assert "does not match this configuration" in message and "bdpo.actor_hidden" in message
    with pytest.raises(FileNotFoundError, match=r"bdpo\.init_from=.* holds no checkpoint"):
        recipe.load_behavior(str(tmp_path), recipe.make_loss(17, 6, hp), "cpu")


def test_eval_behavior_scores_the_ema_behavior_and_diagnoses_the_policy(
    tmp_path, recipe_dataset, capsys
):
    """scripts/eval_behavior.py on a BDPO run: the EMA behavior model ν̄ of the newest checkpoint,
    rebuilt from config.yaml at the trained (capped) sizes, evaluated with the run's evaluation
    seeds and N-step chain (the same returns as evaluating it directly), and the policy
    diagnostics recomputed here from the checkpoint's networks; bad inputs refused by name."""
    from torchrl.envs.utils import ExplorationType

    from torchrl_sym.data.offline import make_offline_replay_buffer
    from torchrl_sym.data.scores import normalized_score
    from torchrl_sym.envs import make_env
    from torchrl_sym.objectives.bdpo import BDPOPolicy
    from torchrl_sym.train.evaluate import evaluate_policy, evaluation_seeds

    spec = importlib.util.spec_from_file_location(
        "eval_behavior", ROOT / "scripts" / "eval_behavior.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    run = tmp_path / "run"
    _run("profile=smoke", "task=walker2d-medium", f"dataset={recipe_dataset}", *SHORT,
         f"hydra.run.dir={run}")  # fmt: skip
    before = {p.name for p in run.iterdir()}
    assert script.main([str(run), "--episodes", "2", "--num-states", "300"]) == 0
    out = capsys.readouterr().out
    assert "behavior model" in out and "actor samples" in out
    result = json.loads((run / "behavior_eval.json").read_text())
    assert {p.name for p in run.iterdir()} == before | {"behavior_eval.json"}
    assert result["checkpoint"] == "ckpt_000000150.pt" and result["global_step"] == 150
    assert result["episodes"] == 2 and result["sampling_steps"] == 5  # N = bdpo.num_steps
    # independently: ν̄ from the checkpoint's target_behavior entries, at the smoke sizes
    cfg = OmegaConf.load(run / "config.yaml")
    hp = _recipe().capped_sizes(cfg.bdpo)
    assert hp.actor_hidden != cfg.bdpo.actor_hidden  # config.yaml keeps the uncapped widths
    model = torch.load(run / "checkpoints" / "ckpt_000000150.pt", weights_only=False)["modules"][
        "loss"
    ]
    behavior = _recipe().make_diffusion(17, 6, hp)
    ema = _group(model, "target_behavior_network_params")
    behavior.load_state_dict({k: ema[k] for k in behavior.state_dict()})
    behavior.eval()
    env = make_env("Walker2d-v5", num_envs=2)
    seeds = evaluation_seeds(int(cfg.seed), 2, cfg.eval.get("start_states", "legacy"))
    for name, mode in (
        ("sample", ExplorationType.RANDOM),
        ("deterministic", ExplorationType.DETERMINISTIC),
    ):
        returns = evaluate_policy(env, behavior, num_episodes=2, max_steps=30, seeds=seeds,
                                  exploration_type=mode)  # fmt: skip
        assert result[name]["return"] == pytest.approx(float(returns.mean()), rel=1e-9)
        assert result[name]["normalized_score"] == pytest.approx(
            float(normalized_score("Walker2d-v5", returns.mean().item())), rel=1e-9
        )
    env.close()
    # the diagnostics: the same states, the run's loss rebuilt and loaded, the same draws
    diag = result["policy_diagnostics"]
    assert diag["num_states"] == 300 and diag["sampling_steps"] == 5 and diag["seed"] == 0
    assert diag["q_reduce"] == "mean of the 2 EMA Q heads"
    loss = _recipe().make_loss(17, 6, hp)
    loss.load_state_dict(model)
    loss.eval()
    batch = make_offline_replay_buffer(recipe_dataset, 300, seed=0, env="auto").sample()
    obs, a_data = batch["observation"], batch["action"].clamp(-loss.action_clip, loss.action_clip)
    td = TensorDict({"observation": obs}, [len(obs)])
    torch.manual_seed(0)
    with torch.no_grad():
        expect = {
            "data": a_data,
            "policy": BDPOPolicy(loss, num_samples=2)(td.clone())["action"],
            "actor": BDPOPolicy(loss, selection="first")(td.clone())["action"],
            "behavior": behavior.sample(obs),
            "zeros": torch.zeros_like(a_data),
        }
        acts = diag["actions"]
        assert set(acts) == set(expect)
        for name, action in expect.items():
            q = loss.q_values(obs, action, target=True).mean()
            assert acts[name]["q"] == pytest.approx(float(q), rel=1e-5, abs=1e-6), name
            dist = float((action - a_data).norm(dim=-1).mean())
            assert acts[name]["distance_to_data"] == pytest.approx(dist, rel=1e-5, abs=1e-7)
            share = float((action.abs() > 0.99).float().mean())
            assert acts[name]["saturated_fraction"] == pytest.approx(share)
    assert acts["data"]["distance_to_data"] == 0.0 and acts["zeros"]["saturated_fraction"] == 0.0
    # refused, each by name: --sampling-steps on a BDPO run, another algorithm, a behavior stage
    # that has not finished; a run in its warm-up is scored but its policy is not diagnosed
    capsys.readouterr()
    assert script.main([str(run), "--force", "--sampling-steps", "3"]) == 1
    assert "drop --sampling-steps" in capsys.readouterr().err
    other = tmp_path / "iql"
    other.mkdir()
    (other / "config.yaml").write_text(
        (run / "config.yaml").read_text().replace("algo: bdpo", "algo: iql")
    )
    state = torch.load(run / "checkpoints" / "ckpt_000000050.pt", weights_only=False)
    early, middle = tmp_path / "early", tmp_path / "middle"
    for folder, (index, name, step) in (
        (early, (0, "behavior", 20)),
        (middle, (1, "critic_warmup", 10)),
    ):
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "config.yaml").write_text((run / "config.yaml").read_text())
        state.update(
            stage_index=index, stage_name=name, stage_step=step, global_step=50, completed=False
        )
        torch.save(state, folder / "checkpoints" / "ckpt_000000050.pt")
    assert script.main([str(other), str(early)]) == 1
    err = capsys.readouterr().err
    assert "holds a run of algo='iql'; this reads SRPO and BDPO runs" in err
    assert "not trained yet" in err and not (early / "behavior_eval.json").exists()
    assert script.main([str(middle), "--episodes", "1"]) == 0
    assert "policy_diagnostics" not in json.loads((middle / "behavior_eval.json").read_text())
    with pytest.raises(ValueError, match="train stage has not begun"):
        _recipe().policy_diagnostics(middle)


def test_eval_behavior_reads_one_seed_of_a_stacked_run(tmp_path, recipe_dataset):
    """scripts/results_cpu.sh evaluates `<stacked run>/seed_<s>/`: the loader takes that seed's
    slice of the stacked checkpoint (every tensor of the loss, and seed s's config), and the script
    writes the seed's behavior_eval.json from it."""
    from torchrl_sym.train.recipe import load_run_checkpoint

    run = tmp_path / "stacked"
    _run("profile=smoke", "task=walker2d-medium", f"dataset={recipe_dataset}", *SHORT,
         "seed=5", "stack_seeds=2", f"hydra.run.dir={run}")  # fmt: skip
    (stacked,) = (run / "checkpoints").glob("ckpt_000000150.pt")
    whole = torch.load(stacked, weights_only=False)["modules"]["loss"]
    cfg, path, state, _ = load_run_checkpoint(run / "seed_6", algo="bdpo", reads="BDPO runs")
    assert int(cfg.seed) == 6 and path == stacked
    own = state["modules"]["loss"]
    assert own.keys() == whole.keys()
    for key, value in whole.items():
        torch.testing.assert_close(own[key], value[1], rtol=0, atol=0, msg=key)
    spec = importlib.util.spec_from_file_location(
        "eval_behavior", ROOT / "scripts" / "eval_behavior.py"
    )
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(run / "seed_6"), "--episodes", "1", "--num-states", "64"]) == 0
    result = json.loads((run / "seed_6" / "behavior_eval.json").read_text())
    assert result["checkpoint"] == "ckpt_000000150.pt"
    assert result["policy_diagnostics"]["num_states"] == 64
    assert not (run / "seed_5" / "behavior_eval.json").exists()
