"""The offline training loop every recipe shares.

A run is a sequence of named :class:`Stage` s (for example ``behavior`` pretraining, a ``critic``
warm-up, then ``train``), each with its own step budget. A stage holds :class:`Objective` s (a loss
callable, the optimizers it steps, its LR schedulers and its cadence) and :class:`TargetUpdate` s
(``SoftUpdate`` / ``HardUpdate`` or anything with ``step()``, with their own cadence). One step of a
stage is::

    batch  = buffer.sample()                              # static shape [B], on the buffer's device
    for each objective active at this step (k | step and step >= start):
        td   = objective.loss(batch)                      # TensorDict of loss_* terms + diagnostics
        L    = Σ td["loss_*"];  zero_grad; L.backward(); clip; optimizer.step(); scheduler.step()
    for each target update active at this step: updater.step()

The update (all active objectives and target updates) can be ``torch.compile`` d: the set of active
objectives is passed as a tuple of Python booleans, so each cadence pattern compiles once and the
batch shape never changes. The first call of each pattern (and any call in which torch.compile
compiled a new graph) is timed as compilation (``time/compile_seconds``), the others as updates
(``time/update_seconds``). Loss values stay on the device and are read (one host sync) only every
``log_interval`` steps.

Time is owned here: evaluation every ``eval_interval`` steps of the stages that evaluate, logging,
periodic atomic checkpoints (models with their target/EMA parameters, optimizers, schedulers, RNG
states, sampler state, evaluator history, stage and step) and exact resumption from the latest one.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn

from torchrl_sym.train.checkpoint import CheckpointManager, rng_state, set_rng_state

__all__ = ["Objective", "OfflineLoop", "Stage", "TargetUpdate"]

logger = logging.getLogger(__name__)


def _active(every: int, start: int, step: int) -> bool:
    """Whether something with cadence ``every`` and warm-up ``start`` runs at 0-based ``step``."""
    return step >= start and (step - start) % every == 0


@dataclass
class Objective:
    """One optimized term of a stage.

    Args:
        name: used in log tags and checkpoint keys; unique within the stage.
        loss: ``batch -> TensorDict``; every entry whose name starts with ``loss_`` is summed and
            minimized, the other scalar entries are logged as diagnostics.
        optimizers: the optimizers stepped after this term's backward pass.
        schedulers: LR schedulers stepped once per update of this term.
        every: update on every ``every``-th step of the stage ...
        start: ... from stage step ``start`` on (warm-up).
        max_grad_norm: clip the gradient norm of the optimizers' parameters when set.
        optimizer_names: the network each optimizer trains, in ``optimizers`` order, for the
            learning-rate tags ``<stage>/lr_<name>_<network>`` of an objective with several
            optimizers (a single optimizer's tag is ``<stage>/lr_<name>``). ``None`` infers
            them: an optimizer whose parameters are those of a TorchRL loss's
            ``<network>_network_params`` (the loss of this objective or a module of the loop) is
            named ``<network>``, so ``network_optimizers(loss, lr, ("value", "actor"))`` gives
            ``lr_<name>_value`` and ``lr_<name>_actor``; an optimizer that matches no network is
            named by its position.
    """

    name: str
    loss: Callable[[TensorDictBase], TensorDictBase]
    optimizers: Sequence[torch.optim.Optimizer]
    schedulers: Sequence[Any] = ()
    every: int = 1
    start: int = 0
    max_grad_norm: float | None = None
    optimizer_names: Sequence[str] | None = None

    def __post_init__(self):
        if isinstance(self.optimizers, torch.optim.Optimizer):
            self.optimizers = [self.optimizers]
        _check_cadence(f"objective '{self.name}'", self.every, self.start)
        if self.optimizer_names is not None:
            names = list(self.optimizer_names)
            if (
                len(names) != len(self.optimizers)
                or len(set(names)) != len(names)
                or not all(isinstance(n, str) and n for n in names)
            ):
                raise ValueError(
                    f"objective '{self.name}': optimizer_names must be one distinct non-empty "
                    f"name per optimizer ({len(self.optimizers)}), got {names!r}; or None to "
                    "infer them from the loss's networks."
                )
            self.optimizer_names = names
        self._params = [p for opt in self.optimizers for g in opt.param_groups for p in g["params"]]

    def active(self, step: int) -> bool:
        return _active(self.every, self.start, step)


@dataclass
class TargetUpdate:
    """A target/EMA updater (anything with ``step()``) and its cadence within the stage."""

    updater: Any
    every: int = 1
    start: int = 0

    def __post_init__(self):
        if not callable(getattr(self.updater, "step", None)):
            raise TypeError(
                f"TargetUpdate needs an object with a step() method, got {type(self.updater).__name__}."
            )
        _check_cadence("target update", self.every, self.start)

    def active(self, step: int) -> bool:
        return _active(self.every, self.start, step)


@dataclass
class Stage:
    """A named phase of training with its own step budget, objectives and target updates."""

    name: str
    steps: int
    objectives: Sequence[Objective]
    targets: Sequence[TargetUpdate] = ()
    evaluate: bool = False
    buffer: Any = None  # a stage may sample from its own buffer; default: the loop's buffer
    _compiled: dict = field(default_factory=dict, repr=False)
    # cadence patterns its compiled update has been called with: their first call compiles
    _compiled_patterns: set = field(default_factory=set, repr=False)

    def __post_init__(self):
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(
                f"Stage '{self.name}': steps must be a non-negative int, got {self.steps!r}."
            )
        names = [o.name for o in self.objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage '{self.name}': objective names must be unique, got {names}.")


def _check_shapes(name: str, current: Mapping[str, Any], saved: Mapping[str, Any]) -> None:
    """One short error for a checkpoint whose networks differ from this run's (instead of a dump
    of every mismatching tensor)."""
    for key, value in current.items():
        other = saved.get(key)
        if isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor):
            if value.shape != other.shape:
                raise ValueError(
                    f"Checkpoint module '{name}': {key} has shape {tuple(other.shape)} in the "
                    f"checkpoint and {tuple(value.shape)} in this run; the networks were built "
                    "with other sizes. Resume with the configuration the run was started with."
                )
    extra = sorted(set(saved) - set(current))
    missing = sorted(set(current) - set(saved))
    if extra or missing:
        raise ValueError(
            f"Checkpoint module '{name}' does not match this run's networks (missing "
            f"{missing[:3]}{'...' if len(missing) > 3 else ''}, unexpected "
            f"{extra[:3]}{'...' if len(extra) > 3 else ''}). Resume with the configuration the run "
            "was started with."
        )


def _lr_tags(objective: Objective, modules: Mapping[str, Any]) -> list[str]:
    """The learning-rate tag of each optimizer of ``objective`` (without the stage prefix).

    One optimizer: ``lr_<objective>``. Several: ``lr_<objective>_<network>``, with the networks
    of ``objective.optimizer_names`` or, when it is None, those :func:`_network_name` infers; an
    optimizer without a name, or names that collide, fall back to positions
    (``lr_<objective>_0``, ``_1``, ...).
    """
    count = len(objective.optimizers)
    if count == 1:
        return [f"lr_{objective.name}"]
    names = objective.optimizer_names
    if names is None:
        networks = _named_networks(objective, modules)
        names = [_network_name(opt, networks) for opt in objective.optimizers]
    names = [str(i) if name is None else name for i, name in enumerate(names)]
    if len(set(names)) != count:
        names = [str(i) for i in range(count)]
    return [f"lr_{objective.name}_{name}" for name in names]


def _named_networks(objective: Objective, modules: Mapping[str, Any]) -> list[tuple[str, set]]:
    """``(network, ids of its parameters)`` for every ``<network>_network_params`` (targets
    excluded) of the TorchRL losses reachable from ``objective.loss`` (itself, or the module of a
    bound method) and from ``modules``, the objective's own loss first."""
    from torchrl.objectives import LossModule

    roots = [objective.loss, getattr(objective.loss, "__self__", None), *modules.values()]
    losses: dict[int, LossModule] = {}
    for root in roots:
        if isinstance(root, nn.Module):
            for module in root.modules():
                if isinstance(module, LossModule):
                    losses.setdefault(id(module), module)
    suffix = "_network_params"
    networks = []
    for loss in losses.values():
        for name, child in loss.named_children():
            if name.endswith(suffix) and not name.startswith("target_"):
                params = child.values(include_nested=True, leaves_only=True)
                networks.append((name[: -len(suffix)], {id(p) for p in params}))
    return networks


def _network_name(optimizer: torch.optim.Optimizer, networks: list[tuple[str, set]]) -> str | None:
    """The network whose parameters ``optimizer`` steps: the one network holding all of them
    (ties broken by an exact match), or None."""
    ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not ids:
        return None
    holding = {name for name, params in networks if ids <= params}
    if len(holding) == 1:
        return holding.pop()
    exact = {name for name, params in networks if ids == params}
    return exact.pop() if len(exact) == 1 else None


def _compiled_graphs() -> int:
    """Graphs torch.compile has compiled in this process (dynamo's counter; 0 if unavailable)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # pragma: no cover - every supported torch has it
        return 0
    return int(counters["stats"]["unique_graphs"])


_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _on_cuda(batch) -> bool:
    return batch.device is not None and batch.device.type == "cuda"


# dynamo's per-frame limit of compiled variants while the loop compiles: a stacked update calls
# one frame (SeedStack.call, clip_grad_norm_per_seed, an optimizer's step) with every
# objective's loss, parameters and optimizer, each a variant of that frame. At torch's default
# of 8 a stacked BDPO run (behavior, Q, V and actor objectives over three stages, and the
# evaluation's calls) ran out during its train stage, after which the frame ran eagerly: its
# steps slowed from 0.23 to 0.68 s.
RECOMPILE_LIMIT = 64


def raise_recompile_limit(limit: int = RECOMPILE_LIMIT) -> None:
    """Raise ``torch._dynamo.config.recompile_limit`` to at least ``limit`` (process-wide; never
    lowered), so each objective of a compiled update keeps its own compiled variant of the
    frames they share instead of running eagerly after the eighth."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(int(config.recompile_limit), limit)
    config.accumulated_recompile_limit = max(int(config.accumulated_recompile_limit), 4 * limit)


def prepare_optimizers(
    optimizers: Sequence[torch.optim.Optimizer], *, graphs: bool, compiled: bool = False
) -> None:
    """Make ``optimizers`` safe to step inside a CUDA graph (``graphs=True``), or undo it.

    For a parameter group on a CUDA device and ``graphs=True``: ``capturable=True`` (the step
    counter lives on the device and is read there, no host sync), the learning rate becomes a
    0-d float32 tensor on that device (an LR scheduler fills it in place, so a captured graph sees
    every new value; a Python float would be frozen into the graph) and the per-parameter
    ``step`` states move to the device. Otherwise (CPU parameters, or ``graphs=False``): the
    PyTorch defaults back, a float learning rate, ``capturable=False`` and ``step`` on the CPU;
    so a checkpoint of either kind resumes in the other. Values (learning rate, moments, step
    count) are unchanged either way.

    ``compiled=True`` (the update runs under ``torch.compile``, no CUDA graphs): the learning
    rate becomes a 0-d float64 CPU tensor (where the group does not ask for ``foreach``, which
    refuses a tensor rate without ``capturable``). Why: dynamo guards on a float rate's value, so
    an LR schedule that changes it every step recompiled the optimizer's step at every update
    until ``recompile_limit`` (8), after which that optimizer stepped eagerly for the rest of the
    run; a tensor rate is guarded on its type and shape only, and the scheduler fills it in
    place. A float64 rate gives the same eager steps, bit for bit, as the float.
    """
    for opt in optimizers:
        for group in opt.param_groups:
            if not group["params"]:
                continue
            device = group["params"][0].device
            capturable = graphs and device.type == "cuda"
            if "capturable" in group:
                group["capturable"] = capturable
            lr = group["lr"]
            if capturable:
                if not (isinstance(lr, torch.Tensor) and lr.device == device):
                    group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
            elif compiled and not group.get("foreach"):
                if not (isinstance(lr, torch.Tensor) and lr.dtype == torch.float64):
                    group["lr"] = torch.tensor(float(lr), dtype=torch.float64)
            elif isinstance(lr, torch.Tensor):
                group["lr"] = float(lr)
            step_device = device if capturable or group.get("fused") else torch.device("cpu")
            for p in group["params"]:
                state = opt.state.get(p)
                if state and isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(step_device)


def _portable(state: dict) -> dict:
    """An optimizer state dict as a plain (non-graph) optimizer holds it: float learning rates,
    ``capturable=False``; :func:`prepare_optimizers` makes it graph-safe again after loading."""
    groups = []
    for group in state["param_groups"]:
        group = dict(group)
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
        if group.get("capturable"):
            group["capturable"] = False
        groups.append(group)
    return {**state, "param_groups": groups}


class _GraphPerPattern:
    """One :class:`tensordict.nn.CudaGraphModule` per cadence pattern of an update.

    A captured graph replays fixed kernels, so the Python-level choice of which objectives run at
    a step (``active``, ``targets``) must be fixed per graph: each pattern gets its own capture.
    """

    def __init__(self, update, warmup: int):
        self.update = update
        self.warmup = warmup
        self.graphs: dict[tuple, Any] = {}

    def __call__(self, batch, active: tuple[bool, ...], targets: tuple[bool, ...]):
        from tensordict.nn import CudaGraphModule

        key = (active, targets)
        graph = self.graphs.get(key)
        if graph is None:
            if not _on_cuda(batch):
                raise ValueError(
                    f"cudagraphs=True needs the batch on a CUDA device, got {batch.device}; "
                    "build the replay buffer with device=cuda."
                )
            update = self.update

            def fixed(batch, active=active, targets=targets):
                return update(batch, active, targets)

            graph = self.graphs[key] = CudaGraphModule(
                fixed, warmup=self.warmup, device=batch.device
            )
        return graph(batch)


def _check_cadence(what: str, every: int, start: int) -> None:
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"{what}: every must be a positive int, got {every!r}.")
    if not isinstance(start, int) or start < 0:
        raise ValueError(f"{what}: start must be a non-negative int, got {start!r}.")


class OfflineLoop:
    """Runs stages in order: sample, update, target update, evaluate, log, checkpoint.

    Args:
        stages: run in order; a stage with ``steps=0`` is skipped.
        buffer: default source of batches (``sample()``, ``state_dict()``, ``load_state_dict()``).
        modules: everything whose state a checkpoint must hold (loss modules carry their networks
            and target/EMA parameters); keys are checkpoint names.
        evaluator: called as ``evaluator(step) -> dict of metrics`` (see
            :class:`torchrl_sym.train.evaluate.Evaluator`); ``None`` disables evaluation.
        eval_interval: evaluate every this many steps of an evaluating stage, and at its end.
        logger: a TorchRL logger (``log_scalar(name, value, step)``) or ``None``.
        log_interval: log loss terms and timings every this many steps.
        checkpoint_dir: where ``ckpt_*.pt`` go; ``None`` disables checkpoints.
        checkpoint_interval: save every this many global steps, and at the end of each stage.
        compile: ``torch.compile`` the update step (``True`` or a dict of ``torch.compile`` kwargs;
            ``dynamic=False`` unless the dict says otherwise: every batch shape of a stage is
            static, and a later stage with another batch size, or a second loop in the same
            process, gets a graph of its own static shapes instead of a dynamic-shape recompile).
        cudagraphs: capture the update step (compiled or not) in CUDA graphs with
            :class:`tensordict.nn.CudaGraphModule`, one graph per cadence pattern, after
            ``cudagraph_warmup`` eager calls of that pattern. Needs the networks and the batch on a
            CUDA device. The optimizers are made graph-safe before the first step
            (:func:`prepare_optimizers`: ``capturable=True`` and the learning rate a device tensor
            that LR schedulers fill in place), also for ``compile={"mode": "reduce-overhead"}``
            (inductor's own CUDA graphs).
        cudagraph_warmup: eager calls of each cadence pattern before its graph is captured.
        progress: show a tqdm bar with steps/s and the last evaluation.
        stack: a :class:`~torchrl_sym.train.stacking.SeedStack` when the modules hold K stacked
            seeds: every loss is evaluated for all seeds in one vmapped call on a ``[K, B]``
            batch (each stage's buffer samples one ``[B]`` batch per seed), the sum over seeds
            of each seed's loss is minimized (seed ``k``'s parameters get ``∇ L_k``),
            ``max_grad_norm`` clips each seed by its own norm, ``logger`` is a list of K loggers
            (seed ``k``'s loss terms go to logger ``k``) and the evaluator returns one metrics
            dict per seed (``last_metrics`` is then their list).
        precision: ``"fp32"``, or ``"bf16"``: the loss forward runs under
            ``torch.autocast(dtype=torch.bfloat16)`` on the batch's device (matmuls in bf16;
            parameters, gradients and optimizer states stay fp32; the networks' outputs are cast
            back to fp32 by :func:`torchrl_sym.train.precision.keep_outputs_fp32`, which the
            recipes install, so targets, log-probabilities and reductions are fp32).
        first_seed: the seed of a stacked run's first seed: its log lines name seed
            ``first_seed + k`` for stack index ``k`` (``seed=3 stack_seeds=2`` logs seeds 3, 4).

    Steps are counted globally across stages (the step axis of every log) and per stage (cadence).
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        buffer,
        *,
        modules: Mapping[str, nn.Module],
        evaluator: Callable[[int], dict[str, float]] | None = None,
        eval_interval: int = 5000,
        logger=None,
        log_interval: int = 1000,
        checkpoint_dir: str | Path | None = None,
        checkpoint_interval: int = 50_000,
        keep_checkpoints: int = 2,
        compile: bool | dict = False,
        cudagraphs: bool = False,
        cudagraph_warmup: int = 5,
        progress: bool = True,
        stack=None,
        precision: str = "fp32",
        first_seed: int = 0,
    ):
        if not stages:
            raise ValueError("OfflineLoop needs at least one stage.")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Stage names must be unique, got {names}.")
        for what, value in (
            ("eval_interval", eval_interval),
            ("log_interval", log_interval),
            ("checkpoint_interval", checkpoint_interval),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive int, got {value!r}.")
        self.stages = list(stages)
        self.buffer = buffer
        self.modules = dict(modules)
        self.evaluator = evaluator
        self.eval_interval = eval_interval
        self.logger = logger
        self.log_interval = log_interval
        self.checkpoints = (
            CheckpointManager(checkpoint_dir, keep=keep_checkpoints) if checkpoint_dir else None
        )
        self.checkpoint_interval = checkpoint_interval
        if cudagraphs and not _cuda_available():
            raise ValueError(
                "cudagraphs=True captures CUDA graphs but CUDA is not available on this machine; "
                "drop cudagraphs (or run with device=cuda on a machine with a GPU)."
            )
        if not isinstance(cudagraph_warmup, int) or cudagraph_warmup < 1:
            raise ValueError(f"cudagraph_warmup must be a positive int, got {cudagraph_warmup!r}.")
        from torchrl_sym.train.precision import check_precision

        self.precision = check_precision(precision)
        self.stack = stack
        self.first_seed = int(first_seed)  # a stacked run logs seed first_seed + k
        if stack is not None and logger is not None and not isinstance(logger, (list, tuple)):
            raise ValueError("a stacked loop logs each seed to its own logger: pass a list")
        self.compile = compile
        self.cudagraphs = bool(cudagraphs)
        self.cudagraph_warmup = cudagraph_warmup
        self._lr_tag_cache: dict[tuple[str, str], list[str]] = {}
        self.progress = progress
        # position: the next step to run is `stage_step` of `stages[stage_index]`
        self.stage_index = 0
        self.stage_step = 0
        self.global_step = 0
        self.last_metrics: dict[str, float] | list[dict[str, float]] = {}
        self.timings: dict[str, float] = {}
        self._completed: dict[str, int] = {}  # steps each finished stage ran
        self._elapsed_before = 0.0  # wall seconds of earlier segments of this run (checkpointed)
        self._segment_start: float | None = None

    # ------------------------------------------------------------------------------ state

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    @property
    def elapsed_seconds(self) -> float:
        """Wall seconds this run has trained, over every segment (resumed launches included)."""
        running = 0.0 if self._segment_start is None else time.perf_counter() - self._segment_start
        return self._elapsed_before + running

    def state_dict(self) -> dict[str, Any]:
        return {
            "version": 1,
            "stage_index": self.stage_index,
            "stage_name": self.stages[min(self.stage_index, len(self.stages) - 1)].name,
            "stage_step": self.stage_step,
            "global_step": self.global_step,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            "optimizers": {
                f"{s.name}/{o.name}/{i}": _portable(opt.state_dict())
                for s in self.stages
                for o in s.objectives
                for i, opt in enumerate(o.optimizers)
            },
            "schedulers": {
                f"{s.name}/{o.name}/{i}": sch.state_dict()
                for s in self.stages
                for o in s.objectives
                for i, sch in enumerate(o.schedulers)
            },
            "buffers": {s.name: s.buffer.state_dict() for s in self.stages if s.buffer is not None},
            "buffer": self.buffer.state_dict() if hasattr(self.buffer, "state_dict") else None,
            "evaluator": self.evaluator.state_dict()
            if hasattr(self.evaluator, "state_dict")
            else None,
            "rng": rng_state(),
            # so that a launch resuming from the final checkpoint still reports the last metrics
            "last_metrics": _copy_metrics(self.last_metrics),
            "completed": dict(self._completed),
            "elapsed_seconds": self.elapsed_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        names = [s.name for s in self.stages]
        if (
            state["stage_index"] < len(self.stages)
            and state["stage_name"] != names[state["stage_index"]]
        ):
            raise ValueError(
                f"Checkpoint was taken in stage '{state['stage_name']}' but this run's stages are {names}; "
                "resume with the configuration the run was started with."
            )
        missing = set(self.modules) - set(state["modules"])
        if missing:
            raise KeyError(
                f"Checkpoint lacks the modules {sorted(missing)}; it holds {sorted(state['modules'])}."
            )
        for k, m in self.modules.items():
            _check_shapes(k, m.state_dict(), state["modules"][k])
            m.load_state_dict(state["modules"][k])
        for s in self.stages:
            for o in s.objectives:
                for i, opt in enumerate(o.optimizers):
                    opt.load_state_dict(state["optimizers"][f"{s.name}/{o.name}/{i}"])
                for i, sch in enumerate(o.schedulers):
                    sch.load_state_dict(state["schedulers"][f"{s.name}/{o.name}/{i}"])
            if s.buffer is not None:
                s.buffer.load_state_dict(state["buffers"][s.name])
        if state.get("buffer") is not None:
            self.buffer.load_state_dict(state["buffer"])
        if state.get("evaluator") is not None and self.evaluator is not None:
            self.evaluator.load_state_dict(state["evaluator"])
        set_rng_state(state["rng"])
        self.stage_index = int(state["stage_index"])
        self.stage_step = int(state["stage_step"])
        self.global_step = int(state["global_step"])
        self.last_metrics = _copy_metrics(state.get("last_metrics", {}))
        self._completed = {k: int(v) for k, v in state.get("completed", {}).items()}
        last = self.stages[-1]
        done = self._completed.get(last.name)
        if self.stage_index >= len(self.stages) and done is not None and last.steps > done:
            # a finished run resumed with a larger budget for its last stage continues that stage
            logger.info(
                "Stage '%s' ran %d steps and now has %d: continuing it.",
                last.name,
                done,
                last.steps,
            )
            self.stage_index, self.stage_step = len(self.stages) - 1, done
            del self._completed[last.name]
        for stage in self.stages[: self.stage_index]:
            ran = self._completed.get(stage.name)
            if ran is not None and stage.steps > ran:
                logger.warning(
                    "Stage '%s' finished after %d steps; its new budget of %d is not used (the "
                    "run has moved on to later stages).",
                    stage.name,
                    ran,
                    stage.steps,
                )
        self._elapsed_before = float(state.get("elapsed_seconds", 0.0))
        if self._segment_start is not None:
            self._segment_start = time.perf_counter()

    def save_checkpoint(self) -> Path | None:
        if self.checkpoints is None:
            return None
        t0 = time.perf_counter()
        path = self.checkpoints.save(self.global_step, self.state_dict())
        self._add_time("checkpoint", time.perf_counter() - t0)
        return path

    def resume(self, map_location=None) -> bool:
        """Load the latest checkpoint in ``checkpoint_dir`` if there is one; return whether it did."""
        if self.checkpoints is None:
            return False
        state = self.checkpoints.load_latest(map_location=map_location)
        if state is None:
            return False
        self.load_state_dict(state)
        logger.info(
            "Resumed at stage %d step %d (global %d).",
            self.stage_index,
            self.stage_step,
            self.global_step,
        )
        return True

    # ------------------------------------------------------------------------------ update

    def _update_fn(self, stage: Stage):
        stack = self.stack
        bf16 = self.precision == "bf16"

        def update(batch: TensorDictBase, active: tuple[bool, ...], targets: tuple[bool, ...]):
            outputs = []
            for objective, on in zip(stage.objectives, active):
                if not on:
                    continue
                with torch.autocast(batch.device.type, dtype=torch.bfloat16, enabled=bf16):
                    td = (
                        objective.loss(batch)
                        if stack is None
                        else stack.call(objective.loss, batch)
                    )
                total = sum(
                    v.float() for k, v in td.items() if isinstance(k, str) and k.startswith("loss_")
                )
                if stack is not None:
                    total = total.sum()  # Σ_k L_k: seed k's parameters get ∇ L_k
                for opt in objective.optimizers:
                    opt.zero_grad(set_to_none=True)
                total.backward()
                if objective.max_grad_norm is not None and stack is not None:
                    from torchrl_sym.train.stacking import clip_grad_norm_per_seed

                    clip_grad_norm_per_seed(
                        objective._params, objective.max_grad_norm, stack.num_seeds
                    )
                elif objective.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(objective._params, objective.max_grad_norm)
                for opt in objective.optimizers:
                    opt.step()
                outputs.append(td.detach())
            for target, on in zip(stage.targets, targets):
                if on:
                    target.updater.step()
            return outputs

        if self.compile:
            kwargs = {"dynamic": False, **(self.compile if isinstance(self.compile, dict) else {})}
            raise_recompile_limit()
            update = torch.compile(update, **kwargs)
        if self.cudagraphs:
            update = _GraphPerPattern(update, warmup=self.cudagraph_warmup)
        return update

    @property
    def uses_cuda_graphs(self) -> bool:
        """Whether the update runs in CUDA graphs (``cudagraphs`` or a compile mode that captures
        them: ``reduce-overhead``, ``max-autotune``) where its parameters are on a CUDA device."""
        mode = self.compile.get("mode") if isinstance(self.compile, dict) else None
        return self.cudagraphs or mode in _GRAPH_MODES

    def _step(
        self, stage: Stage, update, batch
    ) -> tuple[list[tuple[Objective, TensorDictBase]], bool]:
        """One update; returns the outputs of the objectives that ran and whether the call
        compiled (the first of its cadence pattern, or one in which dynamo built a graph)."""
        active = tuple(o.active(self.stage_step) for o in stage.objectives)
        targets = tuple(t.active(self.stage_step) for t in stage.targets)
        if self.compile:
            graphs = _compiled_graphs()
        outputs = update(batch, active, targets)
        compiled = False
        if self.compile:
            pattern = (active, targets)
            compiled = pattern not in stage._compiled_patterns or _compiled_graphs() > graphs
            stage._compiled_patterns.add(pattern)
        ran = [o for o, on in zip(stage.objectives, active) if on]
        for o in ran:
            for sch in o.schedulers:
                sch.step()
        return list(zip(ran, outputs)), compiled

    # ------------------------------------------------------------------------------ run

    def run(self) -> dict[str, float]:
        """Run (or continue) every stage to its end; return the last evaluation's metrics."""
        from tqdm.auto import tqdm

        self._segment_start = time.perf_counter()
        bar = tqdm(
            total=self.total_steps,
            initial=self.global_step,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            while self.stage_index < len(self.stages):
                stage = self.stages[self.stage_index]
                self._run_stage(stage, bar)
                self._completed[stage.name] = max(self.stage_step, stage.steps)
                self.stage_index += 1
                self.stage_step = 0
                self.save_checkpoint()
        finally:
            self._elapsed_before = self.elapsed_seconds
            self._segment_start = None
            bar.close()
            loggers = self.logger if isinstance(self.logger, (list, tuple)) else [self.logger]
            for log in loggers:
                if log is not None and hasattr(log, "experiment"):
                    flush = getattr(log.experiment, "flush", None)
                    if callable(flush):
                        flush()
        return _copy_metrics(self.last_metrics)

    def _run_stage(self, stage: Stage, bar) -> None:
        if self.stage_step >= stage.steps:
            return
        bar.set_description(stage.name)
        buffer = stage.buffer if stage.buffer is not None else self.buffer
        # after any resume (a checkpoint holds portable optimizer states: float lr, not capturable)
        prepare_optimizers(
            [opt for o in stage.objectives for opt in o.optimizers],
            graphs=self.uses_cuda_graphs,
            compiled=bool(self.compile),
        )
        update = stage._compiled.get(bool(self.compile))
        if update is None:
            update = stage._compiled[bool(self.compile)] = self._update_fn(stage)
        window_start, window_steps = time.perf_counter(), 0
        last: list[tuple[Objective, TensorDictBase]] = []
        while self.stage_step < stage.steps:
            t0 = time.perf_counter()
            batch = buffer.sample()
            t1 = time.perf_counter()
            out, compiled = self._step(stage, update, batch)
            t2 = time.perf_counter()
            self._add_time("sample", t1 - t0)
            self._add_time("compile" if compiled else "update", t2 - t1)
            if out:
                last = out
            self.stage_step += 1
            self.global_step += 1
            window_steps += 1
            bar.update(1)
            end_of_stage = self.stage_step == stage.steps
            if self.stage_step % self.log_interval == 0 or end_of_stage:
                rate = window_steps / max(time.perf_counter() - window_start, 1e-9)
                t_log = time.perf_counter()
                self._log_train(stage, last, rate)
                self._add_time("log", time.perf_counter() - t_log)
                window_start, window_steps = time.perf_counter(), 0
                bar.set_postfix(self._postfix(rate), refresh=False)
            if (
                stage.evaluate
                and self.evaluator is not None
                and (self.stage_step % self.eval_interval == 0 or end_of_stage)
            ):
                self._evaluate(stage)
                bar.set_postfix(self._postfix(None), refresh=False)
            if self.global_step % self.checkpoint_interval == 0 and not end_of_stage:
                self.save_checkpoint()

    def _evaluate(self, stage: Stage) -> None:
        t0 = time.perf_counter()
        metrics = self.evaluator(self.global_step)
        self._add_time("eval", time.perf_counter() - t0)
        self.last_metrics = _copy_metrics(metrics)
        if isinstance(metrics, list):
            for k, seed_metrics in enumerate(metrics):
                self._log(seed_metrics, seed=k)
                logger.info(
                    "step %d (%s), seed %d: %s",
                    self.global_step,
                    stage.name,
                    self.first_seed + k,
                    _fmt(seed_metrics),
                )
        else:
            self._log(metrics)
            logger.info("step %d (%s): %s", self.global_step, stage.name, _fmt(metrics))

    def _log_train(self, stage: Stage, outputs, rate: float) -> None:
        if self.stack is not None:
            for k in range(self.stack.num_seeds):
                self._log_train_seed(stage, [(o, td[k]) for o, td in outputs], rate, seed=k)
        else:
            self._log_train_seed(stage, outputs, rate, seed=None)

    def _log_train_seed(self, stage: Stage, outputs, rate: float, seed: int | None) -> None:
        scalars: dict[str, float] = {}
        for objective, td in outputs:
            for key, value in td.items(include_nested=True, leaves_only=True):
                if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                    continue
                name = key if isinstance(key, str) else "/".join(key)
                tag = f"{stage.name}/{name}"
                if tag in scalars:
                    tag = f"{stage.name}/{objective.name}/{name}"
                scalars[tag] = float(value.float().mean())  # the one host sync per log interval
            tags = self._lr_tag_cache.get((stage.name, objective.name))
            if tags is None:
                tags = _lr_tags(objective, self.modules)
                self._lr_tag_cache[(stage.name, objective.name)] = tags
            for opt, tag in zip(objective.optimizers, tags):
                scalars[f"{stage.name}/{tag}"] = float(opt.param_groups[0]["lr"])
        scalars["time/steps_per_second"] = rate
        total = sum(self.timings.values()) or 1.0
        for phase, seconds in self.timings.items():
            scalars[f"time/{phase}_seconds"] = seconds
            scalars[f"time/{phase}_fraction"] = seconds / total
        scalars["progress/stage_index"] = float(self.stage_index)
        if seed is None or seed == 0:
            self.last_train = scalars
        self._log(scalars, seed=seed)

    def _log(self, scalars: Mapping[str, float], seed: int | None = None) -> None:
        target = self.logger
        if isinstance(target, (list, tuple)):
            target = target[seed or 0]
        if target is None:
            return
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                target.log_scalar(tag, value, step=self.global_step)

    def _add_time(self, phase: str, seconds: float) -> None:
        self.timings[phase] = self.timings.get(phase, 0.0) + seconds

    def _postfix(self, rate: float | None) -> dict[str, str]:
        post = {}
        if rate is not None:
            self._last_rate = rate
        if getattr(self, "_last_rate", None) is not None:
            post["it/s"] = f"{self._last_rate:.0f}"
        metrics = self.last_metrics
        seeds = metrics if isinstance(metrics, list) else [metrics]
        for key in ("eval/normalized_score", "eval/return"):
            values = [m[key] for m in seeds if key in m]
            if values:
                post[key.split("/")[1]] = " ".join(f"{v:.1f}" for v in values)
                break
        return post


def _copy_metrics(metrics):
    """A copy of a metrics dict, or of a stacked run's list of them."""
    if isinstance(metrics, list):
        return [dict(m) for m in metrics]
    return dict(metrics)


def _fmt(metrics: Mapping[str, float]) -> str:
    return ", ".join(f"{k}={v:.3f}" for k, v in metrics.items() if isinstance(v, float))
