"""Recipe runs end to end: smoke profile, shared overrides, tensorboard tags, kill and resume, multirun."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from torchrl_sym.tasks import task_name

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"


def _run(recipe, *overrides, timeout=300, check=True):
    cmd = [sys.executable, str(ROOT / "recipes" / f"{recipe}.py"), *overrides]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def _tags(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _texts(run_dir: Path) -> dict[str, list[str]]:
    """The text summaries (``add_text``) of a run's single TensorBoard events directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir), size_guidance={"tensors": 0})
    acc.Reload()
    return {
        tag.removesuffix("/text_summary"): [
            e.tensor_proto.string_val[0].decode() for e in acc.Tensors(tag)
        ]
        for tag in acc.Tags()["tensors"]
        if tag.endswith("/text_summary")
    }


def _eval_rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "eval_returns.csv") as f:
        return list(csv.DictReader(f))


def test_iql_smoke_profile(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    _run("iql", "profile=smoke", f"dataset={recipe_dataset}", f"hydra.run.dir={run_dir}")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["global_step"] == 50 and summary["resumed"] is False
    assert (run_dir / "checkpoints" / "ckpt_000000050.pt").is_file()
    cfg = (run_dir / "config.yaml").read_text()
    assert (
        "expectile: 0.7" in cfg
        and "max_steps_per_stage: 50" in cfg
        and "reward_transform: return_range" in cfg
        and "flush_denormal: true" in cfg
    )
    rows = _eval_rows(run_dir)
    assert [(r["step"], r["episode"]) for r in rows] == [("50", "0")]
    ret = float(rows[0]["return"])
    # hopper's D4RL reference scores (no ref scores recorded in this dataset)
    assert float(rows[0]["normalized_score"]) == pytest.approx(
        100 * (ret + 20.272305) / (3234.3 + 20.272305), rel=1e-5
    )
    tags = _tags(run_dir)
    for tag in (
        "train/loss_actor",
        "train/loss_qvalue",
        "train/loss_value",
        "train/lr_iql_value",
        "train/lr_iql_actor",
        "train/lr_iql_qvalue",
        "eval/return",
        "eval/normalized_score",
        "eval/normalized_score_best",
        "eval/normalized_score_last_k",
        "time/steps_per_second",
        "time/update_seconds",
    ):
        assert tag in tags, (tag, sorted(tags))
    assert tags["eval/return"] == [(50, pytest.approx(ret, rel=1e-5))]
    assert [s for s, _ in tags["train/loss_qvalue"]] == [25, 50]
    # the actor learning rate follows a cosine over the 50 steps of the stage: 0 at the end
    assert tags["train/lr_iql_actor"][-1][1] == pytest.approx(0.0, abs=1e-9)
    assert tags["train/lr_iql_qvalue"][-1][1] == pytest.approx(3e-4)  # no schedule on Q


def test_shared_overrides(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    _run(
        "iql",
        f"dataset={recipe_dataset}",
        "seed=3",
        "device=cpu",
        "compile=false",
        "train.steps=30",
        "eval.interval=10",
        "eval.episodes=2",
        "eval.max_steps=40",
        "logger.backend=csv",
        "train.log_interval=10",
        f"hydra.run.dir={run_dir}",
    )
    rows = _eval_rows(run_dir)
    assert [int(r["step"]) for r in rows] == [10, 10, 20, 20, 30, 30]
    loss_rows = (run_dir / "csv" / "scalars" / "train" / "loss_actor.csv").read_text().split()
    assert [int(row.split(",")[0]) for row in loss_rows] == [10, 20, 30]
    assert not list(run_dir.rglob("events.out.tfevents.*"))
    assert "seed: 3" in (run_dir / "config.yaml").read_text()
    assert "without bf16 matmul hardware" not in (run_dir / "iql.log").read_text()  # fp32


def test_bf16_on_a_cpu_without_bf16_matmuls_is_warned_at_the_start(tmp_path, recipe_dataset):
    """A run with precision=bf16 logs the emulated-bf16 warning exactly where this machine's
    cpuinfo lacks bf16 matmul hardware (the warning's text: tests/test_stacking.py)."""
    from torchrl_sym.train.precision import emulated_bf16_warning

    expected = emulated_bf16_warning("bf16", "cpu")
    run_dir = tmp_path / "run"
    proc = _run("iql", f"dataset={recipe_dataset}", "precision=bf16", "compile=false",
                "train.steps=4", "eval.interval=4", "eval.episodes=1", "eval.max_steps=5",
                "logger.backend=none", f"hydra.run.dir={run_dir}")  # fmt: skip
    text = proc.stdout + proc.stderr + (run_dir / "iql.log").read_text()
    if expected is None:  # a CPU with AMX or AVX512-BF16 (or no cpuinfo): nothing to warn of
        assert "without bf16 matmul hardware" not in text
    else:
        assert expected in text


def test_bad_override_is_reported(tmp_path, recipe_dataset):
    proc = _run(
        "iql",
        f"dataset={recipe_dataset}",
        "logger.backend=mlflow-ish",
        "profile=smoke",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0
    assert (
        "logger.backend='mlflow-ish'" in proc.stderr or "logger.backend='mlflow-ish'" in proc.stdout
    )
    proc = _run(
        "iql",
        "dataset=nope/hopper/none-v0",
        "profile=smoke",
        f"hydra.run.dir={tmp_path}",
        check=False,
    )
    assert proc.returncode != 0 and "nope/hopper/none-v0" in proc.stderr


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, recipe_dataset):
    run_dir = tmp_path / "run"
    overrides = [
        f"dataset={recipe_dataset}",
        "train.steps=400",
        "checkpoint.interval=50",
        "eval.interval=100",
        "eval.episodes=1",
        "eval.max_steps=30",
        "logger.backend=none",
        "train.progress=false",
        "data.batch_size=64",
    ]
    cmd = [sys.executable, str(ROOT / "recipes" / "iql.py"), *overrides, f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    ckpts = run_dir / "checkpoints"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if ckpts.is_dir() and any(p.name >= "ckpt_000000150.pt" for p in ckpts.glob("ckpt_*.pt")):
            break
        if proc.poll() is not None:
            pytest.fail("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.stem.split("_")[1]) for p in ckpts.glob("ckpt_*.pt"))
    assert 150 <= killed_at < 400
    _run("iql", f"resume={run_dir}")  # the run's own configuration, continued in its directory
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["resumed"] is True and summary["global_step"] == 400
    assert [r["at_step"] for r in summary["resumes"]] == [killed_at]  # where it continued
    steps = [int(r["step"]) for r in _eval_rows(run_dir)]
    assert steps == [100, 200, 300, 400]  # no duplicated or lost evaluation around the kill
    state = torch.load(ckpts / "ckpt_000000400.pt", weights_only=False)
    assert state["global_step"] == 400 and state["stage_index"] == 1


def test_multirun_over_seeds_with_joblib(tmp_path, recipe_dataset):
    sweep = tmp_path / "sweep"
    _run(
        "iql",
        "-m",
        "profile=smoke",
        f"dataset={recipe_dataset}",
        "seed=0,1",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        timeout=400,
    )
    summaries = sorted(sweep.glob("*/summary.json"))
    assert [p.parent.name for p in summaries] == ["0_seed0", "1_seed1"]
    returns = [float(_eval_rows(p.parent)[0]["return"]) for p in summaries]
    assert all(json.loads(p.read_text())["global_step"] == 50 for p in summaries)
    assert returns[0] != returns[1]


def test_experiment_and_profile_presets_compose():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        paper = compose("iql", overrides=["experiment=paper"])
        assert (
            paper.train.steps == 1_000_000
            and paper.eval.interval == 5000
            and paper.eval.episodes == 10
        )
        assert paper.train.max_steps_per_stage is None
        smoke_paper = compose("iql", overrides=["experiment=paper", "profile=smoke"])
        assert smoke_paper.train.max_steps_per_stage == 50 and smoke_paper.eval.episodes == 1
        default = compose("iql")
        assert default.train.steps == 10_000 and default.dataset == "torchrl_sym/hopper/medium-v1"
        assert default.data.generate_transitions == 1_000_000
        assert (
            default.iql.expectile == 0.7
            and default.iql.temperature == 3.0
            and default.data.batch_size == 256
        )


@pytest.mark.parametrize("algo", ["iql", "sfac", "awac", "sql", "xql", "td3bc", "srpo"])
def test_cpu_preset_is_the_documented_budget_and_compiles(algo):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cpu = compose(algo, overrides=["experiment=cpu"], return_hydra_config=True)
        paper = compose(algo, overrides=["experiment=paper"])
        default = compose(algo)
    assert cpu.experiment_name == "cpu"
    assert (cpu.train.steps, cpu.eval.interval, cpu.eval.episodes, cpu.eval.last_k) == (
        100_000,
        10_000,
        10,
        3,
    )
    assert cpu.eval.vectorized is True and cpu.checkpoint.interval == 10_000
    assert cpu.hydra.sweeper.params.seed == "0,1,2"
    # the long presets compile the update step; the short default run does not
    assert cpu.compile is True and paper.compile is True and default.compile is False
    # a preset changes the budget only: the algorithm's hyperparameters are the default run's
    assert cpu[algo] == default[algo]


@pytest.mark.parametrize(
    ("dataset", "task"),
    [
        ("torchrl_sym/hopper/medium-replay-v0", "hopper-medium-replay"),
        ("mujoco/walker2d/medium-v0", "walker2d-medium"),
        ("/data/halfcheetah-medium-expert-v2.hdf5", "halfcheetah-medium-expert"),
        ("toy2d/moons", "toy2d-moons"),
    ],
)
def test_task_name(dataset, task):
    from torchrl_sym.train.recipe import task_name

    assert task_name(dataset) == task


@pytest.mark.parametrize(
    ("dataset", "kind"),
    [
        ("torchrl_sym/hopper/medium-replay-v1", "medium-replay"),
        ("mujoco/walker2d/medium-v0", "medium"),
        ("/data/halfcheetah-medium-expert-v2.hdf5", "medium-expert"),
        ("torchrl_sym/hopper/expert-v1", "expert"),
        ("D4RL/antmaze/umaze-v1", None),
        ("toy2d/moons", None),
    ],
)
def test_dataset_kind(dataset, kind):
    from torchrl_sym.tasks import dataset_kind

    assert dataset_kind(dataset) == kind


TASKS = [
    f"{env}-{kind}"
    for env in ("halfcheetah", "hopper", "walker2d")
    for kind in ("medium", "medium-replay", "medium-expert")
]


@pytest.mark.parametrize("algo", ["iql", "sfac", "awac", "sql", "xql", "td3bc", "srpo", "bdpo"])
def test_every_algorithm_takes_every_task_through_the_defaults_list(algo):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        default = compose(algo)
        assert default.task is None
        for task in TASKS:
            cfg = compose(algo, overrides=[f"task={task}"])
            dataset = OmegaConf.load(CONFIGS / "task" / f"{task}.yaml").dataset
            assert (cfg.task, cfg.dataset) == (task, dataset)
            assert task_name(dataset) == task
            settings = CONFIGS / "tasks" / algo / f"{task}.yaml"
            if settings.is_file():  # the algorithm's own settings for the task are merged
                for key, value in _leaves(OmegaConf.load(settings)):
                    assert OmegaConf.select(cfg, key) == value, (algo, task, key)


def _leaves(cfg, prefix=""):
    from omegaconf import DictConfig

    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_the_command_line_beats_the_task_file_and_an_unknown_task_is_refused():
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("xql", overrides=["task=hopper-medium", "data.batch_size=64"])
        assert (cfg.xql.beta_loss, cfg.data.batch_size) == (5.0, 64)
        other = compose("xql", overrides=["task=hopper-medium", "dataset=mujoco/hopper/medium-v0"])
        assert other.dataset == "mujoco/hopper/medium-v0" and other.xql.beta_loss == 5.0
        with pytest.raises(MissingConfigException, match="hopper-medum"):
            compose("xql", overrides=["task=hopper-medum"])


def test_a_tasks_dataset_without_the_task_is_named_in_a_warning(tmp_path):
    from omegaconf import OmegaConf

    from torchrl_sym.train.recipe import unapplied_task

    cfg = OmegaConf.create(
        {"algo": "xql", "task": None, "dataset": "torchrl_sym/walker2d/medium-v1"}
    )
    assert unapplied_task(cfg, CONFIGS) == "walker2d-medium"
    assert unapplied_task(OmegaConf.merge(cfg, {"task": "walker2d-medium"}), CONFIGS) is None
    # no per-task settings for IQL, none for a toy dataset: nothing to warn about
    assert unapplied_task(OmegaConf.merge(cfg, {"algo": "iql"}), CONFIGS) is None
    assert unapplied_task(OmegaConf.merge(cfg, {"dataset": "toy2d/moons"}), CONFIGS) is None


def test_shipped_task_files_hold_the_published_settings():
    from omegaconf import OmegaConf

    xql = OmegaConf.load(CONFIGS / "tasks" / "xql" / "walker2d-medium.yaml")
    assert (xql.xql.beta_loss, xql.xql.max_clip, xql.data.batch_size) == (10.0, 7.0, 1024)
    assert OmegaConf.load(CONFIGS / "tasks" / "sql" / "hopper-medium-expert.yaml").sql.alpha == 5.0
    for algo in ("sql", "xql", "srpo", "bdpo"):  # the others use one setting for every task
        assert len(list((CONFIGS / "tasks" / algo).glob("*.yaml"))) == 9
    assert sorted(p.stem for p in (CONFIGS / "task").glob("*.yaml")) == sorted([*TASKS, "none"])


@pytest.mark.parametrize(
    ("algo", "tags"),
    [
        (
            "sfac",
            [
                "train/loss_behavior",
                "train/csym",
                "train/w2_nonzero_frac",
                "train/r_clamped_frac",
                "train/lr_sfac_behavior",
            ],
        ),
        ("awac", ["train/loss_qvalue", "train/weight_ess"]),
        ("sql", ["train/loss_value", "train/sparsity"]),
        ("xql", ["train/loss_value", "train/clip_fraction", "train/value_scale"]),
    ],
)
def test_sfac_and_baseline_recipes_smoke(tmp_path, recipe_dataset, algo, tags):
    run_dir = tmp_path / "run"
    _run(algo, "profile=smoke", f"dataset={recipe_dataset}", f"hydra.run.dir={run_dir}")
    assert json.loads((run_dir / "summary.json").read_text())["global_step"] == 50
    found = _tags(run_dir)
    for tag in ("train/loss_actor", "eval/normalized_score", *tags):
        assert tag in found, (tag, sorted(found))
    for tag in tags:
        assert all(np.isfinite(v) for _, v in found[tag])
    if algo == "sfac":
        # warm-up is 10% of the stage: the symmetry term is on at the last log step
        assert found["train/symmetry_active"][-1][1] == 1.0


def test_paper_presets_of_the_sfac_comparison():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for algo in ("sfac", "awac", "sql", "xql"):
            cfg = compose(algo, overrides=["experiment=paper"], return_hydra_config=True)
            assert cfg.train.steps == 1_000_000 and cfg.eval.interval == 10_000, algo
            assert cfg.hydra.sweeper.params.seed == "0,1,2,3,4"
        sfac = compose("sfac")
        assert (sfac.sfac.divergence, sfac.sfac.n_loss, sfac.sfac.epsilon, sfac.sfac.kappa) == (
            "jeffreys",
            3,
            0.2,
            "balanced",
        )
        assert compose("awac").data.batch_size == 1024


def test_task_is_the_same_in_the_run_hydras_record_cfg_and_help(tmp_path, recipe_dataset):
    """``task=<name>`` is a hydra config group: the run's config.yaml, ``.hydra/config.yaml``,
    ``--cfg job`` and ``--help`` all show the task's settings."""
    import yaml
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    overrides = ["task=walker2d-medium", "profile=smoke", "logger.backend=none"]
    _run("xql", *overrides, f"dataset={recipe_dataset}", f"hydra.run.dir={run_dir}")
    ran = OmegaConf.load(run_dir / "config.yaml")
    recorded = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert ran.task == recorded.task == "walker2d-medium"
    assert ran.dataset == recorded.dataset == recipe_dataset  # the command line beats the task
    for cfg in (ran, recorded):
        assert (cfg.xql.beta_loss, cfg.data.batch_size) == (10.0, 1024)  # from the task file
    assert OmegaConf.to_container(recorded, resolve=True) == OmegaConf.to_container(ran)

    printed = yaml.safe_load(_run("xql", "task=hopper-medium-replay", "--cfg", "job").stdout)
    assert printed["task"] == "hopper-medium-replay"
    assert (
        printed["dataset"] == OmegaConf.load(CONFIGS / "task" / "hopper-medium-replay.yaml").dataset
    )
    tuned = OmegaConf.load(CONFIGS / "tasks" / "xql" / "hopper-medium-replay.yaml")
    assert printed["xql"]["beta_loss"] == tuned.xql.beta_loss

    help_text = _run("xql", "task=hopper-medium-replay", "--help").stdout
    assert "task: " in help_text and "hopper-medium-replay" in help_text
    assert f"beta_loss: {tuned.xql.beta_loss}" in help_text
    proc = _run("xql", "task=walker2d-medum", "profile=smoke", check=False)
    assert proc.returncode != 0 and "walker2d-medum" in proc.stderr


def test_sampled_evaluation_and_the_logged_run(tmp_path, recipe_dataset):
    """eval.mode=sample reaches the evaluator; the run's name, config and timings are logged."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    _run(
        "iql",
        "profile=smoke",
        f"dataset={recipe_dataset}",
        "seed=4",
        "eval.mode=sample",
        "eval.episodes=2",
        f"hydra.run.dir={run_dir}",
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval/mode"] == "sample"
    assert [r["episode"] for r in _eval_rows(run_dir)] == ["0", "1"]
    # the TensorBoard run is named by algorithm, dataset and seed
    (events_dir,) = {p.parent for p in run_dir.rglob("events.out.tfevents.*")}
    assert events_dir == run_dir / "tensorboard" / "iql-hopper-recipe-s4"
    # the resolved config, once, as text: the same as config.yaml
    (config_text,) = _texts(run_dir)["config"]
    assert "run: `iql-hopper-recipe-s4`" in config_text
    yaml = config_text.split("```yaml\n", 1)[1].rsplit("```", 1)[0]
    logged = OmegaConf.create(yaml)
    assert logged == OmegaConf.load(run_dir / "config.yaml")
    assert logged.eval.mode == "sample" and logged.seed == 4
    assert logged.dataset == recipe_dataset
    tags = _tags(run_dir)
    assert "time/update_seconds" in tags and "time/compile_seconds" not in tags  # compile=false


def test_bad_eval_mode_is_reported(tmp_path, recipe_dataset):
    proc = _run(
        "iql",
        f"dataset={recipe_dataset}",
        "eval.mode=stochastic",
        "profile=smoke",
        "logger.backend=none",
        f"hydra.run.dir={tmp_path / 'run'}",
        check=False,
    )
    assert proc.returncode != 0
    assert "eval.mode='stochastic'" in proc.stderr
    assert "('deterministic', 'sample')" in proc.stderr
    assert not list((tmp_path / "run" / "checkpoints").glob("ckpt_*.pt"))  # it never trained


def test_make_logger_logs_the_config_to_every_backend(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from torchrl_sym.train.recipe import make_logger

    cfg = OmegaConf.create(
        {"algo": "iql", "seed": 2, "lr": 3e-4, "eval": {"mode": "sample", "max": "${seed}"}}
    )
    # TensorBoard: the text and the hyper-parameters, in the run's one events file
    logger = make_logger(
        "tensorboard", tmp_path / "tb", run_name="iql/hopper medium-s2", config=cfg
    )
    logger.log_scalar("eval/return", 1.0, step=1)
    logger.experiment.flush()
    assert (
        Path(logger.experiment.log_dir) == tmp_path / "tb" / "tensorboard" / "iql-hopper-medium-s2"
    )
    (text,) = _texts(tmp_path / "tb")["config"]
    assert "mode: sample" in text and "max: 2" in text  # resolved
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_dir,) = {p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}
    acc = EventAccumulator(str(events_dir), size_guidance={"tensors": 0})
    acc.Reload()
    hparams = acc.summary_metadata["_hparams_/session_start_info"].plugin_data
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(hparams.content).session_start_info
    assert start.hparams["eval.mode"].string_value == "sample"
    assert start.hparams["seed"].number_value == 2.0
    # a run directory from before runs were named keeps writing into tensorboard/ itself
    (tmp_path / "old" / "tensorboard").mkdir(parents=True)
    (tmp_path / "old" / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"")
    old = make_logger("tensorboard", tmp_path / "old", run_name="iql-hopper-s2")
    assert Path(old.experiment.log_dir).resolve() == (tmp_path / "old" / "tensorboard").resolve()
    # CSV: the same text in csv/texts/
    make_logger("csv", tmp_path / "csv", run_name="r", config=cfg)
    assert "mode: sample" in (tmp_path / "csv" / "csv" / "texts" / "config0.txt").read_text()

    # wandb (not installed here): the config is the run's wandb config, the run name its name
    import torchrl.record.loggers.wandb as wandb_module

    created = {}

    class FakeWandbLogger:
        def __init__(self, **kwargs):
            created.update(kwargs)

    monkeypatch.setattr(wandb_module, "WandbLogger", FakeWandbLogger)
    make_logger("wandb", tmp_path / "w", project="p", run_name="iql-hopper-s2", config=cfg)
    assert created["exp_name"] == "iql-hopper-s2" and created["project"] == "p"
    assert created["config"] == {
        "algo": "iql",
        "seed": 2,
        "lr": 3e-4,
        "eval": {"mode": "sample", "max": 2},
    }
    assert make_logger("none", tmp_path, config=cfg) is None


def test_make_dataset_env_normalizes_as_the_buffer_and_refuses_an_env_less_dataset():
    """Run.make_eval_env and SRPO's evaluate_behavior build their env here: the policy sees
    (obs - loc) / scale when the buffer normalized, the raw float32 observation otherwise."""
    import dataclasses

    from torchrl_sym.data.offline import OfflineDatasetInfo
    from torchrl_sym.envs import make_env
    from torchrl_sym.train.recipe import make_dataset_env

    loc, scale = torch.linspace(-1.0, 1.0, 11), torch.linspace(0.5, 2.0, 11)
    info = OfflineDatasetInfo(
        dataset_id="my/hopper-v0",
        source="tensordict",
        env_id="Hopper-v5",
        num_transitions=1,
        num_episodes=1,
        observation_shape=(11,),
        action_shape=(3,),
        observation_loc=loc,
        observation_scale=scale,
        episode_returns=torch.zeros(1),
        normalize_observations=True,
    )
    raw = make_env("Hopper-v5", seed=3).reset()["observation"]
    env = make_dataset_env(info, seed=3)
    torch.testing.assert_close(env.reset()["observation"], (raw - loc) / scale)
    plain = make_dataset_env(dataclasses.replace(info, normalize_observations=False), seed=3)
    torch.testing.assert_close(plain.reset()["observation"], raw)
    vec = make_dataset_env(info, seed=3, num_envs=2)
    torch.testing.assert_close(vec.reset()["observation"][0], (raw - loc) / scale)
    with pytest.raises(
        ValueError, match=r"'my/hopper-v0' names no environment.*env=<gymnasium id>"
    ):
        make_dataset_env(dataclasses.replace(info, env_id=None))


def test_flush_denormal_reads_subnormals_as_zero_and_can_be_turned_off():
    from omegaconf import OmegaConf

    from torchrl_sym.train.recipe import apply_flush_denormal

    tiny = torch.tensor([1e-39], dtype=torch.float32)  # a float32 subnormal
    try:
        if not apply_flush_denormal(OmegaConf.create({})):  # default: on
            pytest.skip("this CPU cannot flush subnormals (no SSE3)")
        assert (tiny * 1.0).item() == 0.0
        apply_flush_denormal(OmegaConf.create({"flush_denormal": False}))
        assert (tiny * 1.0).item() > 0.0
        with pytest.raises(ValueError, match="flush_denormal='yes' is not a boolean"):
            apply_flush_denormal(OmegaConf.create({"flush_denormal": "yes"}))
    finally:
        torch.set_flush_denormal(False)
