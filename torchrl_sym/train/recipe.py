"""What every recipe does with its config, so a recipe script holds only its algorithm.

A recipe calls :func:`setup_run` with its hydra config and gets a :class:`Run`: the run directory,
the offline replay buffer, the dataset info, a logger, and factories for the evaluator and the
loop. Every recipe therefore accepts the same overrides (``torchrl_sym/configs/common.yaml``)::

    dataset=<id or path>  seed=<int>  device=cpu|cuda  compile=true|false  cudagraphs=true|false
    train.steps=<main stage>  eval.interval=<steps>  eval.episodes=<n>
    logger.backend=tensorboard|csv|wandb|none  profile=smoke  experiment=paper  resume=<run dir>

Run directory layout: ``config.yaml`` (the resolved config), ``checkpoints/ckpt_*.pt``,
``eval_returns.csv`` (every evaluation episode), and the logger's files (``tensorboard/`` or
``csv/``). A run whose directory already holds checkpoints continues from the latest one: pass
``resume=<run dir>`` (or point ``hydra.run.dir`` at it).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrl_sym.data import (
    OfflineDatasetInfo,
    OfflineReplayBuffer,
    make_offline_replay_buffer,
    normalized_score,
)
from torchrl_sym.tasks import task_name
from torchrl_sym.train.evaluate import Evaluator, exploration_type_of
from torchrl_sym.train.loop import OfflineLoop, Stage

__all__ = ["LOGGER_BACKENDS", "Run", "make_logger", "prepare_run", "setup_run"]

log = logging.getLogger(__name__)

LOGGER_BACKENDS = ("tensorboard", "csv", "wandb", "none")


def make_dataset_env(info, *, seed: int | None = None, device=None, num_envs: int | None = None):
    """The env a dataset names (``info``: a replay buffer's ``OfflineDatasetInfo``), normalized as the
    buffer normalizes its observations; ``num_envs=N``: one vectorized env of ``N`` sub-envs (see
    :func:`torchrl_sym.envs.make_env`). Raises ``ValueError`` if the dataset names no env."""
    from torchrl_sym.envs import make_env

    if info.env_id is None:
        raise ValueError(
            f"Dataset '{info.dataset_id}' names no environment to evaluate in; set env=<gymnasium id>."
        )
    norm = (info.observation_loc, info.observation_scale) if info.normalize_observations else None
    return make_env(info.env_id, seed=seed, device=device, observation_norm=norm, num_envs=num_envs)


def stage_steps(cfg, steps: int) -> int:
    """A stage's step budget under the profile's cap (``train.max_steps_per_stage``)."""
    cap = cfg.train.get("max_steps_per_stage")
    return int(steps) if cap is None else min(int(steps), int(cap))


def make_logger(
    backend: str,
    run_dir: Path,
    *,
    project: str = "torchrl_sym",
    run_name: str = "run",
    config: Any = None,
    wandb_kwargs: Mapping | None = None,
):
    """A TorchRL logger writing under ``run_dir`` (``None`` for ``backend="none"``).

    ``run_name`` names the run (recipes pass ``<algo>-<task>-s<seed>``, e.g.
    ``iql-hopper-medium-s0``): TensorBoard writes to ``run_dir/tensorboard/<run_name>/`` (so
    ``tensorboard --logdir outputs`` lists runs by algorithm, dataset and seed; a run directory
    whose ``tensorboard/`` already holds events files directly, from before runs were named,
    goes on writing there), wandb names the run with it, CSV writes to ``run_dir/csv/``.

    With ``config`` (a hydra/OmegaConf config or a dict: the run's resolved configuration), the
    configuration is logged once, here: TensorBoard gets it as the text ``config`` (the run name
    and the YAML, at step 0) and as hyper-parameters (the flattened keys, in the same events
    file, for TensorBoard's HPARAMS tab with ``eval/return`` and ``eval/normalized_score`` as
    metrics); CSV writes the same text to ``csv/texts/config0.txt``; wandb gets the nested dict as
    its run ``config`` (``wandb_kwargs["config"]``, if given, wins).
    """
    if backend not in LOGGER_BACKENDS:
        raise ValueError(
            f"logger.backend={backend!r} is not one of {LOGGER_BACKENDS}; pick one of them."
        )
    if backend == "none":
        return None
    from torchrl.record.loggers import CSVLogger, TensorboardLogger

    container = _config_container(config)
    if backend == "tensorboard":
        root = Path(run_dir) / "tensorboard"
        # a run started before runs were named keeps its events in tensorboard/ itself
        legacy = any(root.glob("events.out.tfevents.*"))
        name = "." if legacy else _directory_name(run_name)
        logger = TensorboardLogger(exp_name=name, log_dir=str(root))
    elif backend == "csv":
        logger = CSVLogger(exp_name="csv", log_dir=str(run_dir))
    else:
        try:
            from torchrl.record.loggers.wandb import WandbLogger
        except ImportError as err:  # pragma: no cover - depends on the user's environment
            raise ImportError(
                "logger.backend=wandb needs the wandb package: pip install wandb"
            ) from err
        kwargs = dict(wandb_kwargs or {})
        if container is not None:
            kwargs.setdefault("config", container)
        return WandbLogger(exp_name=run_name, project=project, save_dir=str(run_dir), **kwargs)
    if container is not None:
        _log_config(logger, run_name, container)
    return logger


def _config_container(config) -> dict | None:
    """``config`` as a plain nested dict with interpolations resolved, or None."""
    if config is None:
        return None
    from omegaconf import OmegaConf

    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)
    return dict(config)


def _directory_name(run_name: str) -> str:
    """``run_name`` as one path component (path separators and odd characters become ``-``)."""
    import re

    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", str(run_name)).strip("-.") or "run"


def _log_config(logger, run_name: str, config: dict) -> None:
    """The text ``config`` (run name and YAML) and, in TensorBoard, the flattened config as
    hyper-parameters written into the run's own events file (``SummaryWriter.add_hparams`` would
    start a second run directory)."""
    from omegaconf import OmegaConf

    yaml = OmegaConf.to_yaml(OmegaConf.create(config))
    text = f"run: `{run_name}`\n\n```yaml\n{yaml}```\n"
    logger.experiment.add_text("config", text, global_step=0)
    writer = getattr(logger.experiment, "file_writer", None)
    if writer is None:  # not a TensorBoard SummaryWriter
        return
    from torch.utils.tensorboard.summary import hparams

    flat = {}

    def flatten(prefix: str, value) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                flatten(f"{prefix}.{key}" if prefix else str(key), item)
        elif isinstance(value, (bool, int, float, str)):
            flat[prefix] = value
        else:  # None, lists
            flat[prefix] = str(value)

    flatten("", config)
    metrics = {"eval/return": 0.0, "eval/normalized_score": 0.0}  # names only: the run logs them
    for summary in hparams(flat, metrics):
        writer.add_summary(summary)
    logger.experiment.flush()


@dataclass
class Run:
    """The pieces a recipe's config resolves to (see :func:`setup_run`)."""

    cfg: Any
    run_dir: Path
    device: torch.device
    buffer: OfflineReplayBuffer
    logger: Any
    lock: Any = None  # the run directory's RunDirLock, released when execute() ends
    resume_record: Any = None  # this launch's resume overrides (prepare_run), or None

    @property
    def info(self) -> OfflineDatasetInfo:
        return self.buffer.info

    @property
    def obs_dim(self) -> int:
        return int(torch.Size(self.info.observation_shape).numel())

    @property
    def action_dim(self) -> int:
        return int(torch.Size(self.info.action_shape).numel())

    def make_eval_env(self, num_envs: int | None = None):
        """The dataset's env (float32 observations, return tracking, the buffer's normalization);
        ``num_envs=N``: one vectorized env of ``N`` sub-envs (see :func:`torchrl_sym.envs.make_env`)."""
        return make_dataset_env(
            self.info, seed=int(self.cfg.seed) + 100, device=self.device, num_envs=num_envs
        )

    def make_evaluator(self, policy) -> Evaluator | None:
        """Evaluation of ``policy`` in the dataset's env; ``None`` if the dataset names no env.

        ``eval.mode`` picks the protocol: ``deterministic`` (the policy's mode/mean action, the
        default) or ``sample`` (actions sampled from the policy, the Sf-AC authors' protocol).
        Episode ``i`` of every evaluation is seeded with ``seed + 100 + i`` (env and action noise).
        With ``eval.vectorized`` (the default) all episodes run together in one vectorized env,
        one policy call per step for all of them (the same returns for a deterministic policy).
        ``eval.episodes`` episodes of at most ``eval.max_steps`` steps; ``eval.last_k`` evaluations
        in the last-k mean; every episode is appended to ``<run dir>/eval_returns.csv``.
        """
        # a run started before eval.mode existed has no such key in its config.yaml
        mode = str(self.cfg.eval.get("mode", "deterministic"))
        exploration_type_of(mode)  # a bad eval.mode fails here, before the env is built
        if self.info.env_id is None:
            return None
        info = self.info

        def score(returns):
            return normalized_score(info, returns)

        vectorized = bool(self.cfg.eval.get("vectorized", False))
        episodes = int(self.cfg.eval.episodes)
        return Evaluator(
            self.make_eval_env(num_envs=episodes if vectorized else None),
            policy,
            num_episodes=int(self.cfg.eval.episodes),
            max_steps=int(self.cfg.eval.max_steps),
            seed=int(self.cfg.seed) + 100,
            mode=mode,
            score_fn=score,
            last_k=int(self.cfg.eval.last_k),
            csv_path=self.run_dir / "eval_returns.csv",
        )

    def make_loop(
        self, stages: Sequence[Stage], modules: Mapping[str, nn.Module], policy=None
    ) -> OfflineLoop:
        cfg = self.cfg
        return OfflineLoop(
            stages,
            self.buffer,
            modules=modules,
            evaluator=self.make_evaluator(policy) if policy is not None else None,
            eval_interval=int(cfg.eval.interval),
            logger=self.logger,
            log_interval=int(cfg.train.log_interval),
            checkpoint_dir=self.run_dir / "checkpoints",
            checkpoint_interval=int(cfg.checkpoint.interval),
            keep_checkpoints=int(cfg.checkpoint.keep),
            compile=_compile_arg(cfg.compile),
            cudagraphs=bool(cfg.get("cudagraphs", False)),
            progress=bool(cfg.train.progress),
        )

    def execute(self, loop: OfflineLoop) -> dict[str, float]:
        """Resume from the run directory's latest loadable checkpoint (if any), run to the end,
        write ``summary.json``; release the directory's lock.

        A resumed launch that finds no loadable checkpoint (killed before the first one, or every
        one corrupt) restarts from step 0: it says so, and truncates ``eval_returns.csv`` to its
        header so that no step is written twice.
        """
        try:
            return self._execute(loop)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self, loop: OfflineLoop) -> dict[str, float]:
        import json

        from torchrl_sym.train.rundir import resume_history

        resumed = loop.resume(map_location=self.device)
        if resumed:
            log.info("Resuming %s at global step %d", self.run_dir, loop.global_step)
        elif self.resume_record is not None:
            log.warning(
                "resume=%s: no loadable checkpoint in %s; the run restarts from step 0 "
                "(evaluation rows of the earlier attempt are dropped from eval_returns.csv).",
                self.run_dir,
                self.run_dir / "checkpoints",
            )
        if not resumed and hasattr(loop.evaluator, "reset"):
            loop.evaluator.reset()
        if self.resume_record is not None:
            from torchrl_sym.train.recipe import write_resume_record

            # where this launch continues: the checkpoint's global step, 0 if it restarted
            at_step = loop.global_step if resumed else 0
            write_resume_record(self.run_dir, self.cfg, {**self.resume_record, "at_step": at_step})
        start = time.perf_counter()
        metrics = loop.run()
        summary = {
            "global_step": loop.global_step,
            "seconds": time.perf_counter() - start,
            "total_seconds": loop.elapsed_seconds,
            "resumed": resumed,
            "resumes": resume_history(self.run_dir),
            "dataset": {
                "id": self.info.dataset_id,
                "transitions": self.info.num_transitions,
                "episodes": self.info.num_episodes,
                # generated datasets: the sha256 of their arrays (provenance.json)
                "sha256": self.info.metadata.get("sha256"),
            },
            **metrics,
        }
        tmp = self.run_dir / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2, default=float))
        os.replace(tmp, self.run_dir / "summary.json")
        log.info("Finished: %s", summary)
        return metrics


def _compile_arg(value):
    if isinstance(value, bool):
        return value
    if value in (None, "false", "False", 0):
        return False
    if value in ("true", "True", 1):
        return True
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if not isinstance(value, dict) else value


def _run_dir(cfg) -> Path:
    """A fresh run's directory: hydra's output directory, else ``cfg.run_dir`` or ``runs/<algo>-<time>``."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except Exception:
        path = Path(
            cfg.get("run_dir") or Path("runs") / f"{cfg.algo}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        path.mkdir(parents=True, exist_ok=True)
        return path


def _config_dir():
    """The running hydra app's primary config directory (a ``Path``, or an importlib.resources
    ``Traversable`` for a ``pkg://`` source), or None outside hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        sources = HydraConfig.get().runtime.config_sources
    except Exception:
        return None
    for source in sources:
        if source.provider != "main":
            continue
        if source.schema == "file":
            return Path(source.path)
        if source.schema == "pkg":
            from importlib.resources import files

            return files(source.path)
    return None


def unapplied_task(cfg, config_dir=None) -> str | None:
    """The task whose per-algorithm settings ``cfg`` runs without, or None.

    A task's settings reach a run only through hydra's defaults list: ``task=<name>`` selects
    ``torchrl_sym/configs/task/<name>.yaml`` (its dataset) and ``torchrl_sym/configs/tasks/<algo>/<name>.yaml`` (the
    algorithm's published settings for it), so the run, ``.hydra/config.yaml``, ``--cfg job``
    and ``--help`` all show the same configuration. A run that names the dataset of a task
    (``dataset=torchrl_sym/walker2d/medium-v1``) without ``task=`` gets the algorithm's defaults;
    this returns that task's name when the algorithm has settings for it (the recipe logs a
    warning naming ``task=<name>``), else None.
    """
    if cfg.get("task") is not None or "dataset" not in cfg or "algo" not in cfg:
        return None
    task = task_name(str(cfg.dataset))
    root = config_dir if config_dir is not None else _config_dir()
    if root is None:
        return None
    path = root / "tasks" / str(cfg.algo) / f"{task}.yaml"
    return task if path.is_file() else None


def _hydra_context():
    """``(config_name, command-line overrides, is_multirun)`` of the running hydra app, or None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
    except Exception:
        return None
    return hc.job.config_name, list(hc.overrides.task), hc.mode == RunMode.MULTIRUN


def _defaults_config(config_name: str):
    """The recipe's configuration composed without any command-line override."""
    from hydra import compose

    return compose(config_name=config_name, overrides=[])


def prepare_run(cfg, *, recipe_algo: str | None = None):
    """The run directory and configuration of a launch, validated before anything is written.

    A fresh run runs in hydra's output directory (a dataset run without its task's settings is
    warned about: :func:`unapplied_task`). A
    launch with ``resume=DIR`` continues the run DIR holds: its configuration is ``DIR/config.yaml``
    with only this command line's overrides on top (:func:`torchrl_sym.train.rundir.resume_config`;
    keys that decide what the checkpoints hold are refused), ``DIR/config.yaml`` is left as it is,
    and the launch's command line and effective configuration are recorded under
    ``DIR/resumes/<time>/`` once the checkpoint has loaded.

    Then it seeds every global RNG, takes the directory's writer lock, and checks that the
    checkpoint directory is writable.

    Returns:
        ``(cfg, run_dir, lock, resume_record)``; ``resume_record`` is None for a fresh run.
    """
    from omegaconf import OmegaConf

    from torchrl_sym.train.rundir import (
        ResumeError,
        RunDirLock,
        check_writable,
        overridden_keys,
        resume_config,
        seed_everything,
    )

    hydra_ctx = _hydra_context()
    record = None
    if cfg.get("resume"):
        run_dir = Path(str(cfg.resume)).expanduser()
        if hydra_ctx is not None and hydra_ctx[2]:
            raise ResumeError(
                f"resume={str(cfg.resume)!r} in a multirun (-m): every job would continue the same "
                "run. Resume one run at a time, without -m."
            )
        if hydra_ctx is not None:
            from hydra.core.hydra_config import HydraConfig

            hydra_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
            if hydra_dir != run_dir.resolve():
                raise ResumeError(
                    f"resume={str(cfg.resume)!r} and hydra.run.dir={str(hydra_dir)!r} name two "
                    "directories; a resumed run writes its own directory: drop hydra.run.dir."
                )
            config_name, command_line, _ = hydra_ctx
            keys = overridden_keys(cfg, _defaults_config(config_name), command_line)
        else:  # called without hydra (a composed or hand-made config): every key is an override
            command_line = []
            keys = [k for k in _leaf_keys(cfg) if k != "resume"]
        cfg, changes = resume_config(run_dir, cfg, keys, recipe_algo=recipe_algo)
        record = {"command_line": command_line, "changes": changes}
    else:
        run_dir = _run_dir(cfg)
        task = unapplied_task(cfg)
        if task is not None:
            log.warning(
                "dataset=%s is the dataset of the task %s, whose %s settings are not applied: "
                "pass task=%s to run with them (this run uses %s's defaults).",
                cfg.dataset,
                task,
                cfg.algo,
                task,
                cfg.algo,
            )
        if (run_dir / "config.yaml").exists():
            raise ResumeError(
                f"{run_dir} already holds a run (config.yaml); continue it with resume={run_dir}, "
                "or start a new run in another directory."
            )
    seed_everything(int(cfg.seed))
    lock = RunDirLock(run_dir).acquire()
    try:
        check_writable(run_dir / "checkpoints")
        if record is None:
            OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    except BaseException:
        lock.release()
        raise
    return cfg, run_dir, lock, record


def _leaf_keys(cfg) -> list[str]:
    from torchrl_sym.train.rundir import _flatten

    return list(_flatten(cfg))


def write_resume_record(run_dir: Path, cfg, record: Mapping[str, Any]) -> Path:
    """Writes a resumed segment's command line, changed keys, the global step it continued from
    (``resumed_at_step``: its checkpoint's step, 0 when no checkpoint could be loaded and it
    restarted) and its effective configuration to ``run_dir/resumes/<time>/``
    (``overrides.yaml``, ``config.yaml``)."""
    from omegaconf import OmegaConf

    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    folder = run_dir / "resumes" / stamp
    n = 1
    while folder.exists():
        n += 1
        folder = run_dir / "resumes" / f"{stamp}_{n}"
    folder.mkdir(parents=True)
    OmegaConf.save(
        OmegaConf.create(
            {
                "command_line": list(record["command_line"]),
                "resumed_at_step": record.get("at_step"),
                "changed": {
                    k: {"run": old, "now": new} for k, (old, new) in record["changes"].items()
                },
            }
        ),
        folder / "overrides.yaml",
    )
    OmegaConf.save(cfg, folder / "config.yaml", resolve=True)
    return folder


def setup_run(cfg) -> Run:
    """Prepare the run directory and configuration (:func:`prepare_run`: task file, resume,
    seeding, writer lock), pick the device, load the data, make the logger. Recipes read their
    settings from the returned ``run.cfg``."""
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available; use device=cpu.")
    if bool(cfg.get("cudagraphs", False)) and device.type != "cuda":
        raise ValueError(
            f"cudagraphs=true captures the update in CUDA graphs and needs device=cuda, got "
            f"device={cfg.device}; set device=cuda (on a machine with a GPU) or drop cudagraphs=true."
        )
    cfg, run_dir, lock, record = prepare_run(cfg, recipe_algo=str(cfg.algo))
    try:
        data = cfg.data
        buffer = make_offline_replay_buffer(
            cfg.dataset,
            int(data.batch_size),
            device=device,
            seed=int(cfg.seed),
            env=cfg.get("env", "auto"),
            action_clip=data.get("action_clip", "auto"),
            reward_transform=data.reward_transform,
            normalize_observations=bool(data.normalize_observations),
            generate_transitions=int(data.generate_transitions),
        )
        logger = make_logger(
            cfg.logger.backend,
            run_dir,
            project=cfg.logger.project,
            run_name=f"{cfg.algo}-{task_name(cfg.dataset)}-s{cfg.seed}",
            config=cfg,
        )
    except BaseException:
        lock.release()
        raise
    log.info(
        "Run directory: %s; dataset %s (%d transitions)",
        run_dir,
        buffer.info.dataset_id,
        buffer.info.num_transitions,
    )
    return Run(
        cfg=cfg,
        run_dir=run_dir,
        device=device,
        buffer=buffer,
        logger=logger,
        lock=lock,
        resume_record=record,
    )


def network_optimizers(
    loss, lr: float, networks, *, weight_decay: Mapping[str, float] | None = None
) -> list:
    """One Adam per network of a TorchRL loss (``<name>_network_params``), in ``networks`` order."""
    weight_decay = dict(weight_decay or {})
    opts = []
    for name in networks:
        params = getattr(loss, f"{name}_network_params", None)
        if params is None:
            raise AttributeError(f"{type(loss).__name__} has no {name}_network_params")
        opts.append(
            torch.optim.Adam(
                params.values(True, True), lr=lr, weight_decay=weight_decay.get(name, 0.0)
            )
        )
    return opts


def train_one_stage(
    run: Run, loss, optimizers, *, policy, tau: float, name: str, schedulers=()
) -> dict[str, float]:
    """The actor-critic recipes' shape: one ``train`` stage of ``train.steps`` updates of ``loss``
    (all its ``loss_*`` terms, one optimizer per network), a Polyak target update every step,
    evaluation of ``policy``; resumes from the run directory's latest checkpoint."""
    from torchrl.objectives import SoftUpdate

    from torchrl_sym.train.loop import Objective, TargetUpdate

    stage = Stage(
        "train",
        stage_steps(run.cfg, run.cfg.train.steps),
        objectives=[Objective(name, loss, list(optimizers), schedulers=list(schedulers))],
        targets=[TargetUpdate(SoftUpdate(loss, tau=tau))],
        evaluate=True,
    )
    return run.execute(run.make_loop([stage], modules={"loss": loss}, policy=policy))


def train_in_sample(run: Run, loss, *, policy, hp, name: str) -> dict[str, float]:
    """IQL, SQL and XQL: TD(0) targets with ``hp.discount``, one Adam of ``hp.lr`` per network
    (value, actor, critics), the actor's lr cosine-decayed when ``hp.actor_cosine_schedule``, and
    :func:`train_one_stage` with Polyak ``hp.tau``."""
    loss.make_value_estimator(gamma=hp.discount)
    v_opt, actor_opt, q_opt = network_optimizers(loss, hp.lr, ("value", "actor", "qvalue"))
    schedulers = [cosine_schedule(actor_opt, run)] if hp.actor_cosine_schedule else []
    return train_one_stage(
        run,
        loss,
        [v_opt, actor_opt, q_opt],
        policy=policy,
        tau=hp.tau,
        name=name,
        schedulers=schedulers,
    )


def cosine_schedule(optimizer, run: Run):
    """Cosine decay of ``optimizer``'s learning rate to 0 over the main stage (IQL's actor)."""
    steps = stage_steps(run.cfg, run.cfg.train.steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
