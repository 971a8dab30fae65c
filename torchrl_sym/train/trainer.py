"""The same losses driven by TorchRL's own :class:`~torchrl.trainers.Trainer`.

This is the alternative to :mod:`torchrl_sym.train.loop` for users who already build on TorchRL's
trainer and its hooks (``LogValidationReward``, ``LRSchedulerHook``, ``EarlyStopping``, ...).
:func:`make_offline_trainer` returns a plain :class:`~torchrl.trainers.Trainer` in which **one
Trainer iteration is exactly one gradient step on one batch sampled from the offline buffer**.

How offline training maps onto the Trainer
------------------------------------------

The Trainer is built around a collector: it iterates over collected batches, counts their frames,
and runs ``optim_steps_per_batch`` optimization steps per batch. Offline RL collects nothing, so the
collector is an :class:`OfflineTicker` that yields an *empty* TensorDict of shape
``[frames_per_batch]`` (``frames_per_batch = 1`` here) ``total_steps`` times: the Trainer's frame
counter is then the gradient-step counter, and every ``*_interval`` is in gradient steps. Per
iteration ``k = 1 .. total_steps``::

    collector        OfflineTicker                     yields an empty TensorDict [1]; frames k
    batch_process    (nothing)                         the dummy batch is never written anywhere
    process_optim_batch  ReplayBufferTrainer.sample    B ~ D, a [batch_size] TED TensorDict
    optimization_stepper (DefaultOptimizationStepper)  L = Σ_{key starts with "loss"} L_key(B)
                                                       g = ∇_θ L;  g ← g · min(1, c / ‖g‖)
                                                       θ ← optimizer.step(θ, g)
    post_optim       TargetNetUpdaterHook(updater)      θ̄ ← (1 − τ) θ̄ + τ θ   (SoftUpdate)
    post_optim_complete_log  (Trainer, built in)       loss_*, diagnostics, grad_norm,
                                                       optim_steps → logger, every log_interval
    save_trainer     torchrl.checkpoint.Checkpoint      every save_interval steps, on a requested
                                                       stop, and at the end

``ReplayBufferTrainer`` is used only for sampling: its ``extend`` (the ``batch_process`` stage,
which would write collected data into the buffer) is deliberately not registered, because the
offline buffer is immutable. Diagnostics the loss returns without the ``loss`` prefix are logged,
never differentiated. The optimizer's gradients are cleared before each backward pass, so a step
uses the gradient of its own batch only.

To log statistics of the sampled batches, register a ``LogScalar`` on ``"post_optim_log"`` (it
receives the sampled batch; the ``"pre_steps_log"`` stage only sees the ticker's empty batch)::

    trainer.register_op("post_optim_log", LogScalar(("next", "reward"), "batch_reward"))

When to prefer our own loop
---------------------------

Use :mod:`torchrl_sym.train.loop` for

* **multi-stage** algorithms (SRPO and BDPO pretrain a behavior model, then train the
  actor-critic): a Trainer runs one loss with one stepper for its whole life;
* **per-network cadence**: several optimizers stepped at different rates (delayed actor updates,
  EMA every n steps, evaluation every n steps) — the Trainer steps one optimizer per iteration
  unless you write your own :class:`~torchrl.trainers.OptimizationStepper`;
* **exact resume**: our checkpoints also hold the global RNG states (torch, CUDA, numpy, python)
  and EMA copies, so a resumed run reproduces the uninterrupted one even for losses that sample
  actions; the Trainer's checkpoint restores models, targets, optimizer, sampler position and
  counters, but not the global RNG states;
* a ``torch.compile``'d (CUDA-graphed) update step.

Checkpoints here use :class:`torchrl.checkpoint.Checkpoint` (a directory, published atomically).
Of the replay buffer they keep where sampling is, never the data (:class:`SamplingState`): the
sampler's position and the buffer's generator, so a checkpoint's size does not depend on the
dataset's, except for a without-replacement sampler's list of the indices left in the current
epoch (8 bytes per transition, against ``4 (2 d_obs + d_act + 1)`` bytes or more of data). That
holds for any TorchRL replay buffer (a ``TensorDictReplayBuffer`` over a ``LazyTensorStorage``
filled by the user, say), not only for :func:`~torchrl_sym.data.make_offline_replay_buffer`'s.
Resume with :meth:`~torchrl.trainers.Trainer.load_from_file` on a trainer built the same way, over
the same data (with ``total_steps`` at least the saved step): it continues from the saved step, and
for a loss that draws no random numbers (IQL, for one) reproduces the uninterrupted run exactly.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.checkpoint import Checkpoint, StateDictCheckpointAdapter
from torchrl.objectives import LossModule
from torchrl.objectives.utils import TargetNetUpdater
from torchrl.record.loggers import Logger
from torchrl.trainers import (
    DefaultOptimizationStepper,
    ReplayBufferTrainer,
    TargetNetUpdaterHook,
    Trainer,
)

__all__ = ["OfflineTicker", "SamplingState", "make_offline_trainer"]

_FRAMES_PER_STEP = 1


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}.")
    return value


class OfflineTicker:
    """A collector that collects nothing: it only tells a TorchRL Trainer when to take a step.

    Iterating yields ``num_iterations`` empty TensorDicts of batch size ``[frames_per_batch]``, so
    ``batch.numel() == frames_per_batch`` and the Trainer's frame counter advances by
    ``frames_per_batch`` per iteration (``total_frames = num_iterations * frames_per_batch``).
    It implements what :class:`~torchrl.trainers.Trainer` calls on a collector: iteration,
    ``init_random_frames`` (0: no warm-up), ``set_seed``, ``update_policy_weights_`` (a no-op: the
    loss's networks are the policy, there is no copy to sync), ``shutdown``, ``state_dict`` and
    ``load_state_dict`` (the number of batches already yielded, so a resumed Trainer continues
    where it stopped).

    Args:
        num_iterations: batches to yield in total (one gradient step each).
        frames_per_batch: ``numel()`` of every yielded batch. Default: 1, so frames = steps.

    Example:
        >>> ticker = OfflineTicker(3, frames_per_batch=2)
        >>> [batch.numel() for batch in ticker], ticker.iteration, ticker.total_frames
        ([2, 2, 2], 3, 6)
        >>> list(ticker)  # exhausted: a finished run stays finished
        []
    """

    init_random_frames = 0

    def __init__(self, num_iterations: int, *, frames_per_batch: int = 1) -> None:
        self.num_iterations = _check_positive_int("num_iterations", num_iterations)
        self.frames_per_batch = _check_positive_int("frames_per_batch", frames_per_batch)
        self.iteration = 0

    @property
    def total_frames(self) -> int:
        """Frames counted by a Trainer over the whole run."""
        return self.num_iterations * self.frames_per_batch

    def __iter__(self) -> Iterator[TensorDictBase]:
        while self.iteration < self.num_iterations:
            # Counted before the yield: a checkpoint taken while the Trainer processes batch k
            # records k batches consumed, matching the Trainer's frame counter.
            self.iteration += 1
            yield TensorDict(batch_size=[self.frames_per_batch])

    def set_seed(self, seed: int, static_seed: bool = False) -> int:
        """Returns ``seed`` unchanged (nothing here is random); the Trainer seeds torch with it."""
        return seed

    def update_policy_weights_(self, *args, **kwargs) -> None:
        """No-op: no policy copy lives in the ticker."""

    def shutdown(self, *args, **kwargs) -> None:
        """No-op: there are no workers to stop."""

    def state_dict(self) -> dict[str, int]:
        return {
            "iteration": self.iteration,
            "num_iterations": self.num_iterations,
            "frames_per_batch": self.frames_per_batch,
        }

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        iteration = int(state_dict["iteration"])
        frames = int(state_dict.get("frames_per_batch", self.frames_per_batch))
        if frames != self.frames_per_batch:
            raise ValueError(
                f"OfflineTicker state was saved with frames_per_batch={frames}, but this ticker "
                f"has frames_per_batch={self.frames_per_batch}; resume with the same value."
            )
        if iteration > self.num_iterations:
            raise ValueError(
                f"OfflineTicker state is at iteration {iteration}, past this ticker's "
                f"num_iterations={self.num_iterations}; build it (or the trainer, total_steps) "
                f"with at least {iteration} iterations to resume this run."
            )
        self.iteration = iteration

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(iteration={self.iteration}, "
            f"num_iterations={self.num_iterations}, frames_per_batch={self.frames_per_batch})"
        )


class SamplingState:
    """What a checkpoint keeps of a replay buffer: where sampling is, never the data.

    ``state_dict()`` is ``buffer.state_dict()`` without the entry ``"_storage"`` (in a TorchRL
    ``ReplayBuffer``'s state it holds every stored transition), plus ``"_num_transitions"`` =
    ``len(buffer)``; what remains is the sampler's state (position, the indices left in the epoch
    of a without-replacement sampler), the writer's cursor, the transforms' state, the batch size
    and the buffer's generator. A state without ``"_storage"`` (that of an
    :class:`~torchrl_sym.data.OfflineReplayBuffer`, which holds no data) is kept as it is, and
    ``{}`` stands for a buffer without ``state_dict``.

    ``load_state_dict(state)`` checks that the buffer holds as many transitions as the saved one
    (the sampler's indices refer to them), then loads ``state`` with the buffer's current storage
    in place of the dropped one, so the data stay as they are.

    Args:
        buffer: the replay buffer the trainer samples from.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
        >>> rb = TensorDictReplayBuffer(storage=LazyTensorStorage(1000), batch_size=8)
        >>> _ = rb.extend(TensorDict({"x": torch.randn(1000, 3)}, [1000]))
        >>> state = SamplingState(rb).state_dict()
        >>> "_storage" in rb.state_dict(), "_storage" in state, state["_num_transitions"]
        (True, False, 1000)
    """

    _STORAGE_KEY = "_storage"
    _LENGTH_KEY = "_num_transitions"

    def __init__(self, buffer) -> None:
        self.buffer = buffer

    def state_dict(self) -> dict[str, Any]:
        state_dict = getattr(self.buffer, "state_dict", None)
        if not callable(state_dict):
            return {}
        state = state_dict()
        if not isinstance(state, dict) or self._STORAGE_KEY not in state:
            return state
        state = {k: v for k, v in state.items() if k != self._STORAGE_KEY}
        state[self._LENGTH_KEY] = len(self.buffer)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._LENGTH_KEY not in state_dict:
            self.buffer.load_state_dict(state_dict)
            return
        saved = int(state_dict[self._LENGTH_KEY])
        if saved != len(self.buffer):
            raise ValueError(
                f"The checkpoint's replay-buffer state was saved over {saved} transitions, but "
                f"this buffer holds {len(self.buffer)}; resume with the data the run was "
                "started with (checkpoints keep the sampler's position, not the data)."
            )
        state = {k: v for k, v in state_dict.items() if k != self._LENGTH_KEY}
        state[self._STORAGE_KEY] = self.buffer._storage.state_dict()
        self.buffer.load_state_dict(state)


class _OfflineSampler(ReplayBufferTrainer):
    """``ReplayBufferTrainer`` for sampling only, whose state is the :class:`SamplingState` of its
    buffer (TorchRL's would be the whole buffer, data included)."""

    def __init__(self, replay_buffer) -> None:
        super().__init__(replay_buffer)
        self.sampling_state = SamplingState(replay_buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"replay_buffer": self.sampling_state.state_dict()}

    def load_state_dict(self, state_dict) -> None:
        self.sampling_state.load_state_dict(state_dict["replay_buffer"])


class _OfflineOptimizationStepper(DefaultOptimizationStepper):
    """TorchRL's default stepper, with gradients cleared before the backward pass and detached
    outputs (the Trainer averages and logs what a stepper returns)."""

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        trainer.optimizer.zero_grad(set_to_none=True)
        return super().step(trainer, sub_batch).detach()


def make_offline_trainer(
    loss_module: LossModule,
    optimizer: torch.optim.Optimizer,
    replay_buffer,
    *,
    total_steps: int,
    target_updater: TargetNetUpdater | None = None,
    logger: Logger | None = None,
    log_interval: int = 1000,
    clip_grad_norm: float | None = None,
    loss_components: Sequence[str] | None = None,
    progress_bar: bool = False,
    save_trainer_file: str | os.PathLike | None = None,
    save_interval: int = 10_000,
    seed: int | None = None,
) -> Trainer:
    r"""Builds a :class:`~torchrl.trainers.Trainer` taking ``total_steps`` offline gradient steps.

    Step ``k = 1 .. total_steps`` (see the module docstring for the hook each line comes from):

    .. math::

        B_k \sim \mathcal{D}, \qquad
        L_k = \sum_{i} L_i(B_k), \qquad
        \theta_k = \mathrm{opt}\big(\theta_{k-1}, \mathrm{clip}_c(\nabla_\theta L_k)\big), \qquad
        \bar\theta_k = (1 - \tau)\,\bar\theta_{k-1} + \tau\,\theta_k

    where the sum runs over the entries of ``loss_module(B_k)`` whose key starts with ``"loss"``
    (or over ``loss_components``), ``clip_c`` rescales the gradient to global norm at most ``c``
    when ``clip_grad_norm=c`` is given, and the target update is ``target_updater.step()``
    (a :class:`~torchrl.objectives.SoftUpdate` gives the Polyak average above). The Trainer's
    frame counter equals ``k``, so the logger's step axis is the gradient step.

    Args:
        loss_module: a TorchRL ``LossModule`` returning a TensorDict of ``loss_*`` terms.
        optimizer: one optimizer over the parameters to train (use parameter groups for
            per-network learning rates).
        replay_buffer: where batches come from, e.g. from
            :func:`~torchrl_sym.data.make_offline_replay_buffer` or a TorchRL replay buffer the
            user filled; ``sample()`` is called, nothing is written to it, and checkpoints keep
            its sampling state without the data (:class:`SamplingState`).
        total_steps: number of gradient steps (and Trainer iterations), >= 1.
        target_updater: stepped after every optimizer step; must have been built on
            ``loss_module``. ``None`` leaves target parameters (if any) frozen.
        logger: a TorchRL logger; receives every loss term, diagnostic, ``grad_norm`` and
            ``optim_steps`` every ``log_interval`` steps (at steps ``log_interval``,
            ``2 log_interval``, ...).
        log_interval: logging period in gradient steps, >= 1.
        clip_grad_norm: clip the global gradient norm to this value; ``None`` does not clip (the
            norm is still logged).
        loss_components: the keys summed into the objective; default every key starting with
            ``"loss"``.
        progress_bar: show a tqdm bar over the steps.
        save_trainer_file: directory of a :class:`torchrl.checkpoint.Checkpoint` written every
            ``save_interval`` steps, when a stop is requested, and at the end; ``None`` saves
            nothing. Resume with ``trainer.load_from_file(save_trainer_file)`` on a trainer
            built the same way (``total_steps`` at least the saved step).
        save_interval: checkpoint period in gradient steps, >= 1.
        seed: passed to the Trainer, which calls ``torch.manual_seed`` and ``np.random.seed``
            with it (the replay buffer's sampler has its own seeded generator).

    Returns:
        A :class:`~torchrl.trainers.Trainer`; call ``trainer.train()``.

    Example:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torch import nn
        >>> from torchrl.modules import MLP, NormalParamExtractor, ProbabilisticActor, TanhNormal
        >>> from torchrl.modules import ValueOperator
        >>> from torchrl.objectives import IQLLoss, SoftUpdate
        >>> from torchrl_sym.data import make_offline_replay_buffer
        >>> from torchrl_sym.train.trainer import make_offline_trainer
        >>> _ = torch.manual_seed(0)
        >>> n = 256
        >>> data = TensorDict({
        ...     "observation": torch.randn(n, 3), "action": torch.rand(n, 2) * 2 - 1,
        ...     ("next", "observation"): torch.randn(n, 3), ("next", "reward"): torch.randn(n, 1),
        ...     ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        ...     ("next", "truncated"): torch.zeros(n, 1, dtype=torch.bool),
        ... }, batch_size=[n])
        >>> rb = make_offline_replay_buffer(data, 32, seed=0)
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[32]),
        ...                       NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal)
        >>> qvalue = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[32]),
        ...                        in_keys=["observation", "action"])
        >>> value = ValueOperator(MLP(in_features=3, out_features=1, num_cells=[32]),
        ...                       in_keys=["observation"])
        >>> loss = IQLLoss(actor, qvalue, value, expectile=0.7, temperature=3.0)
        >>> optimizer = torch.optim.Adam(loss.parameters(), lr=3e-4)
        >>> trainer = make_offline_trainer(
        ...     loss, optimizer, rb, total_steps=10, target_updater=SoftUpdate(loss, tau=0.005))
        >>> trainer.train()
        >>> trainer._optim_count, trainer.collected_frames
        (10, 10)
    """
    total_steps = _check_positive_int("total_steps", total_steps)
    log_interval = _check_positive_int("log_interval", log_interval)
    save_interval = _check_positive_int("save_interval", save_interval)
    if not callable(loss_module):
        raise TypeError(
            f"loss_module must be a LossModule (a callable TensorDict -> TensorDict of loss_* "
            f"terms), got {type(loss_module).__name__}."
        )
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}; "
            "for several networks use one optimizer with parameter groups."
        )
    if not callable(getattr(replay_buffer, "sample", None)):
        raise TypeError(
            f"replay_buffer must have a sample() method (a TorchRL replay buffer, e.g. from "
            f"make_offline_replay_buffer), got {type(replay_buffer).__name__}."
        )
    if clip_grad_norm is not None and not (
        isinstance(clip_grad_norm, (int, float))
        and not isinstance(clip_grad_norm, bool)
        and math.isfinite(clip_grad_norm)
        and clip_grad_norm > 0
    ):
        raise ValueError(
            f"clip_grad_norm must be a positive finite number or None, got {clip_grad_norm!r}."
        )
    if target_updater is not None:
        if not isinstance(target_updater, TargetNetUpdater):
            raise TypeError(
                "target_updater must be a torchrl.objectives TargetNetUpdater (SoftUpdate, "
                f"HardUpdate), got {type(target_updater).__name__}."
            )
        if target_updater.loss_module is not loss_module:
            raise ValueError(
                "target_updater was built on a different loss module than loss_module, so it "
                "would update targets the loss never reads; build it as "
                "SoftUpdate(loss_module, tau=...)."
            )
    elif isinstance(loss_module, LossModule) and any(
        name.startswith("target_") for name, _ in loss_module.named_children()
    ):
        warnings.warn(
            f"{type(loss_module).__name__} has target parameters but target_updater is None: "
            "they stay at their initial values. Pass target_updater=SoftUpdate(loss, tau=...).",
            UserWarning,
            stacklevel=2,
        )

    if (
        isinstance(loss_module, LossModule)
        and loss_module.default_value_estimator is not None
        and loss_module._value_estimator is None
    ):
        # TorchRL builds the default value estimator (and its gamma buffer) lazily, on the first
        # forward. Build it now, as that forward would, so that a fresh trainer's state_dict has
        # the same keys as a checkpoint taken mid-run and load_from_file can restore it.
        loss_module._default_value_estimator()

    # Always set, so that load_from_file works on a trainer that does not save. A TorchRL replay
    # buffer has dump/load, which a Checkpoint prefers, and its state_dict holds the storage:
    # either would copy the whole dataset into every checkpoint. SamplingState drops the data.
    sampler_hook = _OfflineSampler(replay_buffer)
    checkpoint = Checkpoint()
    checkpoint.register(
        "replay_buffer", sampler_hook.sampling_state, adapter=StateDictCheckpointAdapter()
    )

    ticker = OfflineTicker(total_steps, frames_per_batch=_FRAMES_PER_STEP)
    trainer = Trainer(
        collector=ticker,
        total_frames=ticker.total_frames,
        frame_skip=1,
        optim_steps_per_batch=1,
        num_epochs=1,
        loss_module=loss_module,
        optimizer=optimizer,
        optimization_stepper=_OfflineOptimizationStepper(loss_components),
        target_net_updater=target_updater,
        logger=logger,
        # The Trainer logs/saves when (frames - last) > interval, i.e. every interval + 1 frames.
        log_interval=(log_interval - 1) * _FRAMES_PER_STEP,
        save_trainer_interval=(save_interval - 1) * _FRAMES_PER_STEP,
        save_trainer_file=None if save_trainer_file is None else os.fspath(save_trainer_file),
        checkpoint=checkpoint,
        clip_grad_norm=True,
        clip_norm=None if clip_grad_norm is None else float(clip_grad_norm),
        progress_bar=progress_bar,
        seed=seed,
    )
    # Sampling only: registering the hook's `register` would also put `extend` on batch_process
    # and write the ticker's empty batches into the (immutable) offline buffer.
    trainer.register_op("process_optim_batch", sampler_hook.sample)
    trainer.register_module("replay_buffer", sampler_hook)
    if target_updater is not None:
        trainer.register_op("post_optim", TargetNetUpdaterHook(target_updater))
    return trainer
