"""What every recipe does with its config, so a recipe script holds only its algorithm.

A recipe calls :func:`setup_run` with its hydra config and gets a :class:`Run`: the run directory,
the offline replay buffer, the dataset info, a logger, and factories for the evaluator and the
loop. Every recipe therefore accepts the same overrides (``torchrl_sym/configs/common.yaml``)::

    dataset=<id or path>  seed=<int>  stack_seeds=<K>  device=cpu|cuda  precision=fp32|bf16
    compile=true|false  cudagraphs=true|false  train.steps=<main stage>  eval.interval=<steps>
    eval.episodes=<n>  logger.backend=tensorboard|csv|wandb|none  profile=smoke  experiment=paper
    resume=<run dir>

A recipe is a ``build(run) -> Built`` function (its networks, losses, optimizers and stages for
one seed) handed to :func:`run_recipe`, which prepares the run, calls ``build`` once per seed
(``stack_seeds=K`` trains seeds ``seed .. seed + K − 1`` in one process:
:mod:`torchrl_sym.train.stacking`) and runs the loop.

Run directory layout: ``config.yaml`` (the resolved config), ``checkpoints/ckpt_*.pt``,
``eval_returns.csv`` (every evaluation episode), ``summary.json`` and the logger's files
(``tensorboard/`` or ``csv/``). A stacked run's directory holds ``stack.yaml`` (its config),
``checkpoints/`` (all K seeds) and one such run directory per seed, ``seed_<s>/``. A run whose
directory already holds checkpoints continues from the latest one: pass ``resume=<run dir>``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
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
from torchrl_sym.train.rundir import RUN_CONFIG, STACK_CONFIG, run_config_path

__all__ = [
    "LOGGER_BACKENDS",
    "Built",
    "Run",
    "StackedBuffer",
    "make_logger",
    "prepare_run",
    "run_recipe",
    "setup_run",
]

log = logging.getLogger(__name__)

LOGGER_BACKENDS = ("tensorboard", "csv", "wandb", "none")


def info_dims(info) -> tuple[int, int]:
    """``(observation dim, action dim)`` of a dataset's info (flattened sizes)."""
    return (
        int(torch.Size(info.observation_shape).numel()),
        int(torch.Size(info.action_shape).numel()),
    )


def dataset_buffer(cfg, *, seed: int, device=None) -> OfflineReplayBuffer:
    """The offline replay buffer of a run's config: ``cfg.dataset`` with the run's ``data``
    settings (batch size, env, action clip, reward transform, observation normalization)."""
    data = cfg.data
    return make_offline_replay_buffer(
        cfg.dataset,
        int(data.batch_size),
        device=device,
        seed=seed,
        env=cfg.get("env", "auto"),
        action_clip=data.get("action_clip", "auto"),
        reward_transform=data.reward_transform,
        normalize_observations=bool(data.normalize_observations),
        generate_transitions=int(data.generate_transitions),
    )


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
        import importlib.util

        if importlib.util.find_spec("tensorboard") is None:  # the [recipes] extra
            from torchrl_sym.recipes import extra_message

            raise SystemExit(extra_message("tensorboard") + "; or run with logger.backend=csv")
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
class Built:
    """What a recipe's ``build(run)`` returns for one seed: its stages (with their objectives,
    optimizers and target updates), the modules a checkpoint holds, and the policy evaluated
    (None: no evaluation)."""

    stages: Sequence[Stage]
    modules: Mapping[str, nn.Module]
    policy: Any = None


class StackedBuffer:
    """One ``[B]`` batch from each seed's own buffer, stacked to ``[K, B]`` (each seed keeps its
    own sampler and batch stream; a checkpoint holds every sampler's state)."""

    def __init__(self, buffers: Sequence[Any]):
        if not buffers:
            raise ValueError("StackedBuffer needs one buffer per seed")
        self.buffers = list(buffers)

    @property
    def info(self):
        return self.buffers[0].info

    def sample(self):
        packed = getattr(self.buffers[0], "_packed", None)
        if packed is not None and all(
            getattr(b, "_packed", None) is packed and not b._legacy for b in self.buffers
        ):
            # one gather of every seed's rows: [K, B] indices, one index_select
            index = torch.stack([b.next_indices() for b in self.buffers])
            return packed.rows(index, index.shape)
        return torch.stack([b.sample() for b in self.buffers])

    def state_dict(self) -> dict[str, Any]:
        return {"seeds": [b.state_dict() for b in self.buffers]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        states = state.get("seeds") if isinstance(state, Mapping) else None
        if states is None or len(states) != len(self.buffers):
            raise ValueError(
                "the checkpoint's sampler state is not that of "
                f"{len(self.buffers)} stacked seeds; resume with the configuration the run was "
                "started with"
            )
        for buffer, seed_state in zip(self.buffers, states):
            buffer.load_state_dict(seed_state)


@dataclass
class Run:
    """The pieces a recipe's config resolves to (see :func:`setup_run`).

    For ``stack_seeds=K > 1``, ``run_dir`` is the stacked run's directory and ``seed_dirs`` the K
    run directories of its seeds; :meth:`for_seed` is the view a recipe's ``build`` gets for
    seed ``k`` (its ``cfg.seed``, its buffer and its run directory)."""

    cfg: Any
    run_dir: Path
    device: torch.device
    buffer: OfflineReplayBuffer
    logger: Any
    lock: Any = None  # the run directory's RunDirLock, released when execute() ends
    resume_record: Any = None  # this launch's resume overrides (prepare_run), or None
    seed_dirs: list[Path] = field(default_factory=list)

    @property
    def info(self) -> OfflineDatasetInfo:
        return self.buffer.info

    @property
    def obs_dim(self) -> int:
        return info_dims(self.info)[0]

    @property
    def action_dim(self) -> int:
        return info_dims(self.info)[1]

    @property
    def seed(self) -> int:
        return int(self.cfg.seed)

    @property
    def num_seeds(self) -> int:
        return stack_seeds_of(self.cfg)

    @property
    def precision(self) -> str:
        return str(self.cfg.get("precision", "fp32"))

    def for_seed(self, k: int) -> Run:
        """Seed ``k`` of a stacked run: ``cfg.seed = seed + k``, a buffer over the same data with
        that seed's sampler (the batch stream a single-seed run of that seed samples), and its
        run directory."""
        from omegaconf import OmegaConf, open_dict

        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        with open_dict(cfg):
            cfg.seed = self.seed + k
        buffer = self.buffer.with_batch_size(int(self.cfg.data.batch_size), seed=self.seed + k)
        run_dir = self.seed_dirs[k] if self.seed_dirs else self.run_dir
        return replace(
            self, cfg=cfg, buffer=buffer, run_dir=run_dir, logger=None, lock=None, seed_dirs=[]
        )

    def _start_states(self) -> str:
        # a run started before the start-state protocol existed has no such key: it keeps seed+100+i
        return str(self.cfg.eval.get("start_states", "legacy"))

    def eval_seeds(self, seed: int | None = None) -> list[int]:
        """The evaluation episode seeds of training seed ``seed`` (default: this run's)."""
        from torchrl_sym.train.evaluate import evaluation_seeds

        return evaluation_seeds(
            self.seed if seed is None else seed, int(self.cfg.eval.episodes), self._start_states()
        )

    def make_eval_env(self, num_envs: int | None = None):
        """The dataset's env (float32 observations, return tracking, the buffer's normalization);
        ``num_envs=N``: one vectorized env of ``N`` sub-envs (see :func:`torchrl_sym.envs.make_env`)."""
        return make_dataset_env(
            self.info, seed=self.eval_seeds()[0], device=self.device, num_envs=num_envs
        )

    def make_evaluator(self, policy) -> Evaluator | None:
        """Evaluation of ``policy`` in the dataset's env; ``None`` if the dataset names no env.

        ``eval.mode`` picks the protocol: ``deterministic`` (the policy's mode/mean action, the
        default) or ``sample`` (actions sampled from the policy, the Sf-AC authors' protocol).
        Episode ``i`` of every evaluation starts from the seed
        :func:`~torchrl_sym.train.evaluate.evaluation_seeds` gives it (``eval.start_states``:
        ``disjoint``, ``1_000_000_000 + 100_000 · seed + i``, for every new run; runs started
        before it keep ``seed + 100 + i``), for the env and the action noise.
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
        vectorized = bool(self.cfg.eval.get("vectorized", False))
        episodes = int(self.cfg.eval.episodes)
        return self._seed_evaluator(
            self.make_eval_env(num_envs=episodes if vectorized else None),
            policy,
            self.seed,
            self.run_dir,
        )

    def _seed_evaluator(self, env, policy, seed: int, run_dir: Path) -> Evaluator:
        info = self.info

        def score(returns):
            return normalized_score(info, returns)

        return Evaluator(
            env,
            policy,
            num_episodes=int(self.cfg.eval.episodes),
            max_steps=int(self.cfg.eval.max_steps),
            seeds=self.eval_seeds(seed),
            mode=str(self.cfg.eval.get("mode", "deterministic")),
            score_fn=score,
            last_k=int(self.cfg.eval.last_k),
            csv_path=run_dir / "eval_returns.csv",
        )

    def make_stacked_evaluator(self, stack, policy):
        """The K seeds' evaluations in one vectorized env of ``K · eval.episodes`` sub-envs
        (:class:`~torchrl_sym.train.evaluate.StackedEvaluator`), or None without an env."""
        from torchrl_sym.train.evaluate import StackedEvaluator
        from torchrl_sym.train.stacking import StackedPolicy

        exploration_type_of(str(self.cfg.eval.get("mode", "deterministic")))
        if self.info.env_id is None:
            return None
        episodes = int(self.cfg.eval.episodes)
        env = self.make_eval_env(num_envs=episodes * stack.num_seeds)
        evaluators = [
            self._seed_evaluator(None, None, self.seed + k, self.seed_dirs[k])
            for k in range(stack.num_seeds)
        ]
        return StackedEvaluator(env, StackedPolicy(stack, policy), evaluators)

    def make_loop(
        self,
        stages: Sequence[Stage],
        modules: Mapping[str, nn.Module],
        policy=None,
        *,
        stack=None,
        buffer=None,
    ) -> OfflineLoop:
        cfg = self.cfg
        if stack is None:
            evaluator = self.make_evaluator(policy) if policy is not None else None
            logger = self.logger
        else:
            evaluator = self.make_stacked_evaluator(stack, policy) if policy is not None else None
            logger = self.logger
        return OfflineLoop(
            stages,
            self.buffer if buffer is None else buffer,
            modules=modules,
            evaluator=evaluator,
            eval_interval=int(cfg.eval.interval),
            logger=logger,
            log_interval=int(cfg.train.log_interval),
            checkpoint_dir=self.run_dir / "checkpoints",
            checkpoint_interval=int(cfg.checkpoint.interval),
            keep_checkpoints=int(cfg.checkpoint.keep),
            compile=_compile_arg(cfg.compile),
            cudagraphs=bool(cfg.get("cudagraphs", False)),
            progress=bool(cfg.train.progress),
            stack=stack,
            precision=self.precision,
            first_seed=self.seed,
        )

    def train(self, build: Callable[[Run], Built]):
        """Builds the recipe (``build`` once per seed, each right after seeding every global RNG
        with that seed), stacks the seeds when ``stack_seeds > 1``, and runs the loop
        (:meth:`execute`). Returns the last evaluation's metrics (a list, one per seed, for a
        stacked run)."""
        from torchrl_sym.train.precision import keep_outputs_fp32
        from torchrl_sym.train.rundir import seed_everything
        from torchrl_sym.train.stacking import SeedStack

        try:
            if self.num_seeds == 1:
                seed_everything(self.seed)
                built = build(self)
                if self.precision == "bf16":
                    keep_outputs_fp32(built.modules.values())
                loop = self.make_loop(built.stages, built.modules, built.policy)
                return self.execute(loop)
            views = [self.for_seed(k) for k in range(self.num_seeds)]
            builds = []
            for view in views:
                seed_everything(view.seed)
                builds.append(build(view))
            policies = [b.policy for b in builds]
            extra = [policies] if policies[0] is not None else []
            stack = SeedStack.stack([b.modules for b in builds], extra=extra)
            template = builds[0]
            if self.precision == "bf16":
                keep_outputs_fp32(template.modules.values())
            for i, stage in enumerate(template.stages):
                if stage.buffer is not None:
                    stage.buffer = StackedBuffer([b.stages[i].buffer for b in builds])
            buffer = StackedBuffer([view.buffer for view in views])
            del builds, views
            loop = self.make_loop(
                template.stages, template.modules, template.policy, stack=stack, buffer=buffer
            )
            return self.execute(loop)
        finally:
            if self.lock is not None:
                self.lock.release()

    def execute(self, loop: OfflineLoop) -> dict[str, float]:
        """Resume from the run directory's latest loadable checkpoint (if any), run to the end,
        write ``summary.json`` (one per seed for a stacked run); release the directory's lock.

        A resumed launch that finds no loadable checkpoint (killed before the first one, or every
        one corrupt) restarts from step 0: it says so, and truncates ``eval_returns.csv`` to its
        header so that no step is written twice.
        """
        try:
            return self._execute(loop)
        finally:
            if self.lock is not None:
                self.lock.release()

    def _execute(self, loop: OfflineLoop):

        from torchrl_sym.train.provenance import provenance
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
            # where this launch continues: the checkpoint's global step, 0 if it restarted
            at_step = loop.global_step if resumed else 0
            write_resume_record(self.run_dir, self.cfg, {**self.resume_record, "at_step": at_step})
        start = time.perf_counter()
        metrics = loop.run()
        base = {
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
            "provenance": provenance(device=str(self.device), precision=self.precision),
            # wall seconds of this launch by phase (sample, update, compile, eval, checkpoint)
            "timings": {phase: round(seconds, 3) for phase, seconds in loop.timings.items()},
        }
        if isinstance(metrics, list):
            for k, (seed_dir, seed_metrics) in enumerate(zip(self.seed_dirs, metrics)):
                summary = {
                    **base,
                    "stacked": {"seeds": self.num_seeds, "index": k, "seed": self.seed + k},
                    **seed_metrics,
                }
                _write_json(seed_dir / "summary.json", summary)
            log.info("Finished %d stacked seeds: %s", len(metrics), metrics)
        else:
            _write_json(self.run_dir / "summary.json", {**base, **metrics})
            log.info("Finished: %s", {**base, **metrics})
        return metrics


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    import json

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float))
    os.replace(tmp, path)


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

    from torchrl_sym.train.rundir import (
        ResumeError,
        RunDirLock,
        check_writable,
        overridden_keys,
        resume_config,
        seed_everything,
    )

    check_run_options(cfg)
    cfg = apply_hparams(cfg)
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
        check_run_options(cfg)
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
        if _holds_run(run_dir):
            raise ResumeError(
                f"{run_dir} already holds a run ({run_config_path(run_dir).name} and its "
                f"checkpoints or evaluations); continue it with resume={run_dir}, or start a new "
                "run in another directory."
            )
    seed_everything(int(cfg.seed))
    lock = RunDirLock(run_dir).acquire()
    try:
        check_writable(run_dir / "checkpoints")
        if record is None:
            if run_config_path(run_dir) is not None:
                log.info(
                    "%s holds the configuration of a launch that never trained (no checkpoint, no "
                    "evaluation): this run replaces it.",
                    run_dir,
                )
                for name in (RUN_CONFIG, STACK_CONFIG):
                    (run_dir / name).unlink(missing_ok=True)
            write_run_configs(run_dir, cfg)
    except BaseException:
        lock.release()
        raise
    return cfg, run_dir, lock, record


HPARAMS = ("published", "tuned")


def apply_hparams(cfg):
    """``cfg`` with its task's tuned settings applied when ``hparams=tuned``.

    A task file (``torchrl_sym/configs/tasks/<algo>/<task>.yaml``) holds the published settings
    and, where the tuning protocol (results/cpu/TUNING.md) chose other values, a ``tuned:``
    block of them with a comment naming the sweep. ``hparams=published`` (the default) runs the
    published settings; ``hparams=tuned`` merges the ``tuned:`` block over them (the command
    line's own overrides of the same keys still win). Raises ``ValueError`` naming the task when
    there is no ``tuned:`` block."""
    from omegaconf import OmegaConf, open_dict

    choice = cfg.get("hparams", "published")
    if choice not in HPARAMS:
        raise ValueError(f"hparams={choice!r} is not one of {HPARAMS}.")
    if choice == "published" or cfg.get("resume"):
        return cfg
    tuned = cfg.get("tuned")
    if not tuned:
        raise ValueError(
            f"hparams=tuned: {cfg.get('algo')} has no tuned settings for task={cfg.get('task')} "
            f"(torchrl_sym/configs/tasks/{cfg.get('algo')}/{cfg.get('task')}.yaml has no tuned: "
            "block); run the tuning protocol (results/cpu/TUNING.md, scripts/tune.py) or use "
            "hparams=published."
        )
    merged = OmegaConf.merge(cfg, tuned)
    command_line = _hydra_context()
    if command_line is not None:  # an explicit override on the command line beats the block
        for override in command_line[1]:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if value and OmegaConf.select(tuned, key, default=None) is not None:
                with open_dict(merged):
                    OmegaConf.update(merged, key, OmegaConf.select(cfg, key), force_add=True)
    return merged


def seed_dirs_of(run_dir: Path, cfg) -> list[Path]:
    """The run directories of a stacked run's seeds (``run_dir/seed_<s>``); ``[]`` for one seed."""
    count = stack_seeds_of(cfg)
    if count == 1:
        return []
    return [Path(run_dir) / f"seed_{int(cfg.seed) + k}" for k in range(count)]


def write_run_configs(run_dir: Path, cfg) -> None:
    """``config.yaml`` of a one-seed run; ``stack.yaml`` and each seed's ``seed_<s>/config.yaml``
    (with ``seed=<s>``) of a stacked run."""
    from omegaconf import OmegaConf, open_dict

    seed_dirs = seed_dirs_of(run_dir, cfg)
    if not seed_dirs:
        OmegaConf.save(cfg, run_dir / RUN_CONFIG, resolve=True)
        return
    for k, seed_dir in enumerate(seed_dirs):
        seed_dir.mkdir(parents=True, exist_ok=True)
        seed_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        with open_dict(seed_cfg):
            seed_cfg.seed = int(cfg.seed) + k
        OmegaConf.save(seed_cfg, seed_dir / RUN_CONFIG)
    OmegaConf.save(cfg, run_dir / STACK_CONFIG, resolve=True)


def _holds_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run that trained: a configuration and a checkpoint or an
    evaluation (its own or a seed's). A configuration alone, left by a launch that failed before
    training (a bad dataset path, say), does not hold the directory."""
    if run_config_path(run_dir) is None:
        return False
    if any((run_dir / "checkpoints").glob("ckpt_*")):
        return True
    return any(run_dir.glob("eval_returns.csv")) or any(run_dir.glob("seed_*/eval_returns.csv"))


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


def apply_flush_denormal(cfg) -> bool:
    """``flush_denormal`` (default true): subnormal floats (``|x| < 1.2e-38`` in float32) are
    read and written as zero on the CPU (:func:`torch.set_flush_denormal`). x86 computes with them
    about 100x slower, and some runs drift into them: AWAC on hopper-medium fell below 7
    updates/s between its 2k and 4k steps, against a steady 13.7 with the flush (one core shared
    by both runs), and 3 stacked AWAC seeds on walker2d-medium slowed from 7.7 to 3.2 updates/s
    between 4k and 8k steps; the values they carry are below anything the losses resolve. Returns
    torch's answer: whether this CPU supports the setting."""
    value = cfg.get("flush_denormal", True)
    if not isinstance(value, bool):
        raise ValueError(
            f"flush_denormal={value!r} is not a boolean; pass flush_denormal=true or false."
        )
    return torch.set_flush_denormal(value)


def setup_run(cfg) -> Run:
    """Prepare the run directory and configuration (:func:`prepare_run`: task file, resume,
    seeding, writer lock), pick the device, load the data, make the logger. Recipes read their
    settings from the returned ``run.cfg``."""
    device = torch.device(cfg.device)
    apply_flush_denormal(cfg)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available; use device=cpu.")
    if bool(cfg.get("cudagraphs", False)) and device.type != "cuda":
        raise ValueError(
            f"cudagraphs=true captures the update in CUDA graphs and needs device=cuda, got "
            f"device={cfg.device}; set device=cuda (on a machine with a GPU) or drop cudagraphs=true."
        )
    cfg, run_dir, lock, record = prepare_run(cfg, recipe_algo=str(cfg.algo))
    from torchrl_sym.train.precision import emulated_bf16_warning

    slow = emulated_bf16_warning(str(cfg.get("precision", "fp32")), device)
    if slow is not None:
        log.warning(slow)
    try:
        buffer = dataset_buffer(cfg, seed=int(cfg.seed), device=device)
        seed_dirs = seed_dirs_of(run_dir, cfg)
        if seed_dirs:
            logger = [
                make_logger(
                    cfg.logger.backend,
                    seed_dir,
                    project=cfg.logger.project,
                    run_name=f"{cfg.algo}-{task_name(cfg.dataset)}-s{int(cfg.seed) + k}",
                    config=_with_seed(cfg, int(cfg.seed) + k),
                )
                for k, seed_dir in enumerate(seed_dirs)
            ]
        else:
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
        seed_dirs=seed_dirs,
    )


def _with_seed(cfg, seed: int):
    from omegaconf import OmegaConf, open_dict

    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(out):
        out.seed = seed
    return out


def _int_option(cfg, key: str, *, minimum: int | None = None) -> int:
    value = cfg.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool) or float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{key}={value!r} is not an integer; pass {key}=<int>"
                + (f" (>= {minimum})" if minimum is not None else "")
                + "."
            ) from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{key}={value} must be >= {minimum}.")
    return value


def stack_seeds_of(cfg) -> int:
    """``stack_seeds`` (seeds trained together in one process; 1 when absent)."""
    if cfg.get("stack_seeds") is None:
        return 1
    return _int_option(cfg, "stack_seeds", minimum=1)


def check_run_options(cfg, *, stackable: bool = True, recipe: str | None = None) -> None:
    """The options every recipe shares, checked before anything is written: ``seed`` an
    integer, ``stack_seeds`` an integer >= 1 (and 1 for a recipe that cannot stack),
    ``precision`` fp32 or bf16, ``eval.start_states`` a protocol. Each error is one line naming
    the option."""
    from torchrl_sym.train.evaluate import START_STATES
    from torchrl_sym.train.precision import check_precision

    _int_option(cfg, "seed")
    count = stack_seeds_of(cfg)
    if count > 1 and not stackable:
        raise ValueError(
            f"stack_seeds={count}: recipes/{recipe or cfg.get('algo')}.py cannot stack seeds; run "
            "one seed per process (seed=<s>, or -m seed=0,1,2)."
        )
    check_precision(cfg.get("precision", "fp32"))
    eval_cfg = cfg.get("eval")
    start_states = None if eval_cfg is None else eval_cfg.get("start_states")
    if start_states is not None and start_states not in START_STATES:
        raise ValueError(
            f"eval.start_states={start_states!r} is not a start-state protocol; choose one of "
            f"{START_STATES}."
        )


def run_recipe(cfg, build: Callable[[Run], Built], *, stackable: bool = True):
    """What a recipe's ``main`` does: check the shared options (:func:`check_run_options`;
    ``stackable=False`` refuses ``stack_seeds > 1``), :func:`setup_run`, then :meth:`Run.train`
    with ``build``. Returns the last evaluation's metrics (one dict per seed when stacked)."""
    check_run_options(cfg, stackable=stackable)
    return setup_run(cfg).train(build)


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


def one_stage(run: Run, loss, optimizers, *, policy, tau: float, name: str, schedulers=()) -> Built:
    """The actor-critic recipes' shape: one ``train`` stage of ``train.steps`` updates of ``loss``
    (all its ``loss_*`` terms, one optimizer per network), a Polyak target update every step,
    evaluation of ``policy``."""
    from torchrl.objectives import SoftUpdate

    from torchrl_sym.train.loop import Objective, TargetUpdate

    stage = Stage(
        "train",
        stage_steps(run.cfg, run.cfg.train.steps),
        objectives=[Objective(name, loss, list(optimizers), schedulers=list(schedulers))],
        targets=[TargetUpdate(SoftUpdate(loss, tau=tau))],
        evaluate=True,
    )
    return Built([stage], {"loss": loss}, policy)


def in_sample(run: Run, loss, *, policy, hp, name: str) -> Built:
    """IQL, SQL and XQL: TD(0) targets with ``hp.discount``, one Adam of ``hp.lr`` per network
    (value, actor, critics), the actor's lr cosine-decayed when ``hp.actor_cosine_schedule``, and
    :func:`one_stage` with Polyak ``hp.tau``."""
    loss.make_value_estimator(gamma=hp.discount)
    v_opt, actor_opt, q_opt = network_optimizers(loss, hp.lr, ("value", "actor", "qvalue"))
    schedulers = [cosine_schedule(actor_opt, run)] if hp.actor_cosine_schedule else []
    return one_stage(
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


def _stacked_source(path: Path, seed: int | None, option: str) -> tuple[Path, int] | None:
    """``(stacked run directory, index of seed)`` when ``path`` is a stacked run (its directory:
    the slice of ``seed``; or one of its ``seed_<s>/`` directories), else None."""
    from omegaconf import OmegaConf

    if (path / STACK_CONFIG).is_file():
        root, wanted = path, seed
    elif (path.parent / STACK_CONFIG).is_file() and path.name.startswith("seed_"):
        root, wanted = path.parent, int(path.name[len("seed_") :])
    else:
        return None
    cfg = OmegaConf.load(root / STACK_CONFIG)
    first, count = int(cfg.seed), int(cfg.get("stack_seeds", 1))
    if wanted is None or not first <= wanted < first + count:
        raise ValueError(
            f"{option}={str(path)!r} is a stacked run of seeds {first}..{first + count - 1}; "
            f"it holds no seed {wanted}. Pass one of its seed_<s> directories, or run the seeds it "
            "holds."
        )
    return root, wanted - first


def load_earlier_run(path, device, *, seed: int | None, option: str, algo: str) -> dict[str, Any]:
    """The latest checkpoint of an earlier run that ``option`` (``<algo>.init_from``) names: a run
    directory, its ``checkpoints/`` folder, one ``ckpt_*.pt`` file, or a stacked run (its
    directory: the slice of ``seed``; or one of its ``seed_<s>/`` directories: that seed's slice,
    modules only). Raises ``FileNotFoundError`` naming ``option`` when there is none."""
    from torchrl_sym.train.checkpoint import CheckpointManager
    from torchrl_sym.train.stacking import seed_checkpoint

    path = Path(path).expanduser()
    stacked = None if path.is_file() else _stacked_source(path, seed, option)
    if stacked is not None:
        root, index = stacked
        state = CheckpointManager(root / "checkpoints").load_latest(map_location=device)
        if state is None:
            raise FileNotFoundError(
                f"{option}={str(path)!r}: the stacked run {root} holds no checkpoint."
            )
        return seed_checkpoint(state, index)
    if path.is_file():
        return torch.load(path, map_location=device, weights_only=False)
    directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    state = (
        CheckpointManager(directory).load_latest(map_location=device)
        if directory.is_dir()
        else None
    )
    if state is None:
        raise FileNotFoundError(
            f"{option}={str(path)!r} holds no checkpoint; pass the directory of an earlier "
            f"{algo} run (or one of its checkpoints/ckpt_*.pt files)."
        )
    return state


def load_run_checkpoint(run_dir, *, algo: str, reads: str):
    """``(cfg, checkpoint path, checkpoint state, buffer)`` of a finished or running ``algo`` run
    directory (``reads`` says what the caller reads of it, for the error): its ``config.yaml``, its
    newest loadable checkpoint (a seed of a stacked run, ``<stacked run>/seed_<s>/``: that seed's
    slice of the stacked checkpoint) and the run's dataset (sampler seed 0, the run's data
    settings). Raises ``FileNotFoundError`` (no config or no checkpoint) or ``ValueError``
    (another algorithm's run), naming the directory."""
    from omegaconf import OmegaConf

    from torchrl_sym.train.checkpoint import CheckpointManager
    from torchrl_sym.train.stacking import seed_checkpoint

    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise FileNotFoundError(f"{run_dir}: no {RUN_CONFIG}, not a run directory")
    cfg = OmegaConf.load(run_dir / RUN_CONFIG)
    if cfg.get("algo") != algo:
        raise ValueError(f"{run_dir} holds a run of algo={cfg.get('algo')!r}; this reads {reads}")
    stacked = _stacked_source(run_dir, None, str(run_dir))  # a seed of a stacked run: its slice
    folder = (stacked[0] if stacked else run_dir) / "checkpoints"
    path = CheckpointManager(folder).latest()
    if path is None:
        raise FileNotFoundError(f"{folder}: no loadable checkpoint")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if stacked:
        state = seed_checkpoint(state, stacked[1])
    return cfg, path, state, dataset_buffer(cfg, seed=0)


def stage_reached(state: Mapping[str, Any], stage: int) -> bool:
    """Whether a checkpoint ``state`` has reached stage number ``stage`` (0-based) or finished."""
    return bool(state.get("completed")) or int(state["stage_index"]) >= stage


def score_behavior_model(cfg, path: Path, state: Mapping[str, Any], info, behavior, episodes):
    """A diffusion behavior model of a run (loaded by :func:`load_run_checkpoint`) evaluated alone
    as a policy: ``episodes`` episodes (default: the run's ``eval.episodes``) in the dataset's env
    from the run's evaluation start states, sampled (a random exploration type) and zero-noise
    (a deterministic one). Returns ``{"checkpoint", "global_step", "sampling_steps", "episodes",
    "sample": {"return", "normalized_score"}, "deterministic": {...}}`` (means over episodes)."""
    from torchrl.envs.utils import ExplorationType

    from torchrl_sym.train.evaluate import evaluate_policy, evaluation_seeds

    episodes = int(cfg.eval.episodes if episodes is None else episodes)
    seeds = evaluation_seeds(int(cfg.seed), episodes, str(cfg.eval.get("start_states", "legacy")))
    env = make_dataset_env(info, num_envs=episodes)
    result = {
        "checkpoint": path.name,
        "global_step": int(state["global_step"]),
        "sampling_steps": int(behavior.num_steps),
        "episodes": episodes,
    }
    try:
        for name, mode in (
            ("sample", ExplorationType.RANDOM),
            ("deterministic", ExplorationType.DETERMINISTIC),
        ):
            returns = evaluate_policy(
                env,
                behavior,
                num_episodes=episodes,
                max_steps=int(cfg.eval.max_steps),
                seeds=seeds,
                exploration_type=mode,
            )
            mean = float(returns.mean())
            result[name] = {"return": mean, "normalized_score": float(normalized_score(info, mean))}
    finally:
        env.close()
    return result
