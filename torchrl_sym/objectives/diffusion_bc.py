"""ε-prediction behavior cloning of a diffusion behavior model (SRPO §4, BDPO §4 "Behavior")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import _reduce

from torchrl_sym.diffusion.actor import DiffusionBehaviorActor

__all__ = ["DiffusionBehaviorLoss"]


class DiffusionBehaviorLoss(LossModule):
    r"""Denoising (ε-prediction) loss that fits a :class:`DiffusionBehaviorActor` to dataset actions.

    .. math::

        L(\psi) = \mathbb{E}_{(s, a) \sim D,\ \tau,\ \varepsilon \sim N(0, I)}
            \big\| \varepsilon_\psi(s,\ \alpha_\tau a + \sigma_\tau \varepsilon,\ \tau)
            - \varepsilon \big\|^2

    with ``a`` first clipped to ``±action_clip``. Discrete time (BDPO, DDPM): ``τ = n ~ U{1..N}``,
    ``(α, σ) = (√ᾱ_n, √(1 − ᾱ_n))``. Continuous time (SRPO, VP-SDE): ``τ = t ~ U(t_min, t_max)``
    (SRPO: U(1e-3, 1)). The squared error is averaged (BDPO, TorchRL's ``DiffusionBCLoss``) or
    summed (SRPO) over the action dimensions, then reduced over the batch by ``reduction``.
    At the optimum ``ε_ψ(s, a_τ, τ) = −σ_τ ∇ log p_τ(a_τ | s)`` (Vincent, 2011), which is what
    SRPO's score regularizer and BDPO's pathwise KL consume.

    References: Ho et al., *Denoising Diffusion Probabilistic Models*, NeurIPS 2020;
    Chen et al., *Score Regularized Policy Optimization through Diffusion Behavior*, ICLR 2024;
    Gao et al., *Behavior-Regularized Diffusion Policy Optimization for Offline RL*, ICML 2025.

    Args:
        actor_network: the :class:`DiffusionBehaviorActor` to train. Its parameters become
            ``actor_network_params``; only the ε-network has trainable parameters.

    Keyword Args:
        time: ``"discrete"`` or ``"continuous"``; must match the actor's schedule (default: taken
            from it).
        t_min, t_max: range of the continuous time (default 1e-3 and the schedule's ``t_max``).
        ema: EMA decay δ of a target copy (``None``: no copy). The target is
            ``target_actor_network_params``; advance it with :meth:`make_ema_updater` (a TorchRL
            ``SoftUpdate`` with ``tau = 1 − δ``: ``θ̄ ← δ θ̄ + (1 − δ) θ``) once per optimizer step,
            and sample with it inside :meth:`ema_weights`. It receives no gradients.
        action_clip: clip dataset actions to ``±action_clip`` (default 1 − 1e-5); ``None`` for
            unbounded data such as the 2-D toys.
        action_reduction: ``"mean"`` or ``"sum"`` of the squared error over the action dims.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.

    Returns (forward):
        TensorDict with ``loss_diffusion`` and the detached diagnostic ``eps_rms``
        (root-mean-square of ``ε̂``; 1 for a perfect model of noise-dominated inputs). Called
        with keyword tensors named after ``in_keys`` instead (``loss(observation=s, action=a)``,
        TorchRL's ``dispatch``), it returns ``(loss_diffusion, eps_rms)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_sym.diffusion import DiffusionBehaviorActor, MLPNoisePredictor
        >>> from torchrl_sym.diffusion import VPDiscreteSchedule
        >>> actor = DiffusionBehaviorActor(
        ...     MLPNoisePredictor(4, 2, hidden=(32, 32)), VPDiscreteSchedule(5),
        ...     action_low=-1.0, action_high=1.0,
        ... )
        >>> loss = DiffusionBehaviorLoss(actor, ema=0.995)
        >>> updater = loss.make_ema_updater()
        >>> optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        >>> batch = TensorDict({"observation": torch.randn(16, 4),
        ...                     "action": torch.rand(16, 2) * 2 - 1}, [16])
        >>> out = loss(batch)
        >>> out["loss_diffusion"].backward()
        >>> optim.step(); optim.zero_grad(); updater.step()
        >>> with loss.ema_weights() as ema_actor:
        ...     ema_actor(batch.exclude("action"))["action"].shape
        torch.Size([16, 2])
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from the batch.

        Attributes:
            observation (NestedKey): the conditioning state. Defaults to ``"observation"``.
            action (NestedKey): the dataset (clean) action. Defaults to ``"action"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    actor_network: DiffusionBehaviorActor
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: DiffusionBehaviorActor,
        *,
        time: Literal["discrete", "continuous"] | None = None,
        t_min: float = 1e-3,
        t_max: float | None = None,
        ema: float | None = None,
        action_clip: float | None = 1.0 - 1e-5,
        action_reduction: Literal["mean", "sum"] = "mean",
        reduction: Literal["mean", "sum", "none"] = "mean",
    ):
        if not isinstance(actor_network, DiffusionBehaviorActor):
            raise TypeError(
                "DiffusionBehaviorLoss needs a DiffusionBehaviorActor, got "
                f"{type(actor_network).__name__}."
            )
        self._in_keys = None
        self._out_keys = None
        super().__init__()
        schedule = actor_network.schedule
        native = "discrete" if schedule.discrete else "continuous"
        if time is not None and time != native:
            raise ValueError(
                f"time={time!r} does not match the actor's {type(schedule).__name__} "
                f"({native} time); build the actor on a {time} schedule or pass time={native!r}."
            )
        self.time = native
        if not schedule.discrete:
            t_max = schedule.t_max if t_max is None else float(t_max)
            if not 0.0 < t_min < t_max <= 1.0:
                raise ValueError(f"Need 0 < t_min < t_max ≤ 1, got t_min={t_min}, t_max={t_max}.")
        self.t_min, self.t_max = float(t_min), t_max
        if ema is not None and not 0.0 < ema < 1.0:
            raise ValueError(f"ema is a decay in (0, 1) (e.g. 0.995), got {ema}.")
        self.ema = ema
        if action_clip is not None and action_clip <= 0:
            raise ValueError(f"action_clip must be positive or None, got {action_clip}.")
        self.action_clip = action_clip
        if action_reduction not in ("mean", "sum"):
            raise ValueError(f"action_reduction must be 'mean' or 'sum', got {action_reduction!r}.")
        self.action_reduction = action_reduction
        self.reduction = reduction
        self.convert_to_functional(
            actor_network, "actor_network", create_target_params=ema is not None
        )

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None  # re-derived from the new keys (keyword calls read in_keys)

    @property
    def in_keys(self):
        if self._in_keys is None:
            self._in_keys = [self.tensor_keys.observation, self.tensor_keys.action]
        return self._in_keys

    @in_keys.setter
    def in_keys(self, value):
        self._in_keys = value

    @property
    def out_keys(self):
        if self._out_keys is None:
            self._out_keys = ["loss_diffusion", "eps_rms"]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, value):
        self._out_keys = value

    def _draw_time(self, batch: torch.Size, like: torch.Tensor) -> torch.Tensor:
        schedule = self.actor_network.schedule
        if schedule.discrete:
            return torch.randint(1, schedule.num_steps + 1, batch, device=like.device)
        u = torch.rand(batch, device=like.device, dtype=like.dtype)
        return self.t_min + (self.t_max - self.t_min) * u

    @dispatch(auto_batch_size=False)  # a lone [B, S] keyword input would get batch size [B, S]
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """``loss_diffusion`` and ``eps_rms``; keyword tensors named after ``in_keys`` (nested keys
        joined by ``"_"``) give them as a tuple."""
        observation = tensordict.get(self.tensor_keys.observation)
        action = tensordict.get(self.tensor_keys.action)
        if self.action_clip is not None:
            action = action.clamp(-self.action_clip, self.action_clip)
        time = self._draw_time(action.shape[:-1], action)
        actor = self.actor_network
        with self.actor_network_params.to_module(actor, preserve_module_state=False):
            noisy, noise = actor.add_noise(action, time)
            eps = actor.epsilon(observation, noisy, time)
        error = (eps - noise).pow(2)
        error = error.mean(-1) if self.action_reduction == "mean" else error.sum(-1)
        loss = _reduce(error, self.reduction)
        eps_rms = eps.detach().pow(2).mean().sqrt()
        return TensorDict({"loss_diffusion": loss, "eps_rms": eps_rms}, batch_size=[])

    def make_ema_updater(self) -> SoftUpdate:
        """``SoftUpdate(self, tau=1 − ema)``: ``θ̄ ← ema · θ̄ + (1 − ema) · θ`` per ``step()``."""
        if self.ema is None:
            raise RuntimeError("This loss has no EMA target; build it with ema=<decay>.")
        return SoftUpdate(self, tau=1.0 - self.ema)

    @contextmanager
    def ema_weights(self) -> Iterator[DiffusionBehaviorActor]:
        """Within the block, the actor runs with the EMA target parameters (``ema`` required)."""
        if self.ema is None:
            raise RuntimeError("This loss has no EMA target; build it with ema=<decay>.")
        with self.target_actor_network_params.to_module(
            self.actor_network, preserve_module_state=False
        ):
            yield self.actor_network
