"""AWAC: advantage-weighted actor-critic (Nair et al., 2020) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    _vmap_func,
    dispatch_value_estimator,
    distance_loss,
)
from torchrl.objectives.value import ValueEstimatorBase

__all__ = ["AWACLoss"]

_WEIGHT_MODES = ("batch_softmax", "exp_clip")
_DISTANCES = ("l2", "l1", "smooth_l1")


class AWACLoss(LossModule):
    r"""AWAC: a SAC-style twin critic and an advantage-weighted behavior-cloning actor.

    With ``N = num_qvalue_nets`` critics ``Q_i``, their Polyak targets ``Q̄_i`` and a
    stochastic actor ``π``, on a batch of ``B`` transitions ``(s, a, r, s', d)``:

    .. math::

        y &= r + γ (1 − d) \big[\min_i \bar Q_i(s', a') − α \log π(a'|s')\big],
            \quad a' \sim π(·|s') \\
        L_Q &= \textstyle\sum_i \operatorname{mean}_B\, ℓ(Q_i(s, a), y) \\
        V_π(s) &= \min_i Q_i(s, \tilde a), \quad \tilde a \sim π(·|s)
            \quad \text{(one sample, online critics)} \\
        A &= \min_i Q_i(s, a) − V_π(s) \quad \text{(no gradient)} \\
        \text{batch\_softmax:}\ w &= \operatorname{softmax}_B(A/λ),\quad
            L_π = −\operatorname{mean}_B\big[B\, w \log π(a|s)\big] \\
        \text{exp\_clip:}\ w &= \min(\exp(A/λ), w_{max}),\quad
            L_π = −\operatorname{mean}_B\big[w \log π(a|s)\big]

    ``ℓ`` is ``loss_function`` (``"l2"``: ``(Q − y)²``, so ``L_Q = mse(Q₁, y) + mse(Q₂, y)``) and
    ``d`` is ``("next", "terminated")`` (truncated transitions still bootstrap). There is no value
    network: the baseline is the policy's own value ``V_π``, estimated with one sample. ``ã`` and
    ``a'`` are drawn inside the loss under ``ExplorationType.RANDOM`` (the actor's
    ``get_dist(...).sample()``), without gradient. In ``batch_softmax`` mode equal advantages give
    ``B·w = 1`` (plain behavior cloning), and so does ``λ → ∞`` in either mode. ``exp(A/λ)`` is
    computed as ``exp(min(A/λ, log w_max))``, so it never overflows.

    Each term reaches only its own network: ``L_π`` the actor (``A`` is detached), ``L_Q`` the
    online critics (``y`` is computed without gradient, with the target critics). Dataset actions
    are used as given: the loss never modifies the batch (``forward`` only writes the priority
    entry, as TorchRL's losses do). Clip them to ``±(1 − 1e-5)`` in the data layer when the actor's
    distribution is bounded (``make_offline_replay_buffer`` does).

    Reference: Nair, Gupta, Dalal, Levine, *AWAC: Accelerating Online Reinforcement Learning with
    Offline Datasets*, arXiv 2006.09359 (2020); code ``rail-berkeley/rlkit``
    (``rlkit/torch/sac/awac_trainer.py``, settings of ``examples/awac/mujoco/awac1.py``:
    ``α = 0``, ``awr_min_q=True``, ``normalize_over_batch=True``). ``weight_mode="exp_clip"`` is
    the widely used offline variant of ``tinkoff-ai/CORL`` (``algorithms/offline/awac.py``).

    TorchRL mapping: the critic side is :class:`~torchrl.objectives.SACLoss`'s (vmapped
    ``qvalue_network`` ensemble, target parameters ``target_qvalue_network_params`` advanced by
    :class:`~torchrl.objectives.SoftUpdate`, TD(0) target through ``make_value_estimator``); the
    actor side is :class:`~torchrl.objectives.IQLLoss`'s actor loss with ``V(s)`` replaced by
    ``Q(s, ã)`` (``exp_clip``) or by a batch-normalized weight (``batch_softmax``).

    Args:
        actor_network: a stochastic actor with ``get_dist`` (e.g.
            :func:`torchrl_sym.models.make_gaussian_actor`).
        qvalue_network: ``Q(s, a)``; one module (copied ``num_qvalue_nets`` times, each copy
            freshly initialized, as in TorchRL) or a list of modules.

    Keyword Args:
        num_qvalue_nets: number of critics ``N`` (default 2).
        lambda_: temperature ``λ > 0`` of the advantage weights (default 1.0, rlkit's trainer).
        weight_mode: ``"batch_softmax"`` (default, the paper's code) or ``"exp_clip"`` (CORL).
        w_max: the clip ``w_max`` of ``exp_clip`` (default 100).
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"`` for ``ℓ``.
        entropy_coef: ``α ≥ 0`` in the target (default 0, the paper's settings).
        delay_qvalue: keep Polyak target critics (default ``True``); ``False`` bootstraps from the
            online critics (detached).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critics instead of ``torch.vmap``.

    Returns (forward):
        TensorDict with ``loss_actor``, ``loss_qvalue`` and detached diagnostics: ``entropy``
        (``−mean_B log π(a|s)`` on the dataset actions, TorchRL's IQL name), ``advantage``
        (``mean_B A``), ``weight_mean``, ``weight_max`` (of the per-row multiplier of
        ``−log π(a|s)``: ``B·w`` or the clipped exponential) and ``weight_ess`` (effective sample
        size fraction ``(Σw)² / (B Σw²)`` ∈ (0, 1]). Writes ``td_error`` (``max_i (Q_i − y)²``)
        into the input for prioritized replay.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_sym.models import make_gaussian_actor, make_qvalue
        >>> from torchrl_sym.objectives import AWACLoss
        >>> _ = torch.manual_seed(0)
        >>> actor = make_gaussian_actor(3, 2, hidden=[16])
        >>> loss = AWACLoss(actor, make_qvalue(3, 2, hidden=[16]), lambda_=1.0)
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(8, 3),
        ...     "action": torch.rand(8, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(8, 3), "reward": torch.randn(8, 1),
        ...              "done": torch.zeros(8, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(8, 1, dtype=torch.bool)},
        ... }, [8])
        >>> out = loss(batch)
        >>> sorted(out.keys())
        ['advantage', 'entropy', 'loss_actor', 'loss_qvalue', 'weight_ess', 'weight_max', 'weight_mean']
        >>> (out["loss_actor"] + out["loss_qvalue"]).backward()
        >>> optim.step(); optim.zero_grad(); updater.step()
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from (and written to) the batch.

        Attributes:
            action (NestedKey): the dataset action, also the key under which sampled actions are
                fed to the critics. Defaults to ``"action"``.
            state_action_value (NestedKey): the critics' output. Defaults to
                ``"state_action_value"``.
            priority (NestedKey): where ``forward`` writes the TD error. Defaults to
                ``"td_error"``.
            reward (NestedKey): under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): under ``"next"``; the bootstrap mask. Defaults to
                ``"terminated"``.
        """

        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (
        ValueEstimators.TD0,
        ValueEstimators.TD1,
        ValueEstimators.TDLambda,
    )
    out_keys: ClassVar[list[str]] = [
        "loss_actor",
        "loss_qvalue",
        "entropy",
        "advantage",
        "weight_mean",
        "weight_max",
        "weight_ess",
    ]

    actor_network: ProbabilisticTensorDictSequential
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        num_qvalue_nets: int = 2,
        lambda_: float = 1.0,
        weight_mode: Literal["batch_softmax", "exp_clip"] = "batch_softmax",
        w_max: float = 100.0,
        loss_function: str = "l2",
        entropy_coef: float = 0.0,
        delay_qvalue: bool = True,
        reduction: Literal["mean", "sum", "none"] = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        if not lambda_ > 0:
            raise ValueError(f"lambda_ is a temperature > 0 (rlkit: 1.0), got {lambda_}.")
        if weight_mode not in _WEIGHT_MODES:
            raise ValueError(f"weight_mode must be one of {_WEIGHT_MODES}, got {weight_mode!r}.")
        if not (w_max > 0 and math.isfinite(w_max)):
            raise ValueError(f"w_max must be finite and > 0 (CORL: 100), got {w_max}.")
        if loss_function not in _DISTANCES:
            raise ValueError(f"loss_function must be one of {_DISTANCES}, got {loss_function!r}.")
        if not entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be ≥ 0 (the paper uses 0), got {entropy_coef}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self._in_keys = None
        super().__init__()
        self.lambda_ = float(lambda_)
        self.weight_mode = weight_mode
        self.w_max = float(w_max)
        self.loss_function = loss_function
        self.entropy_coef = float(entropy_coef)
        self.delay_qvalue = delay_qvalue
        self.num_qvalue_nets = num_qvalue_nets
        self.reduction = reduction
        self.deactivate_vmap = deactivate_vmap

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network,
            "qvalue_network",
            num_qvalue_nets,
            create_target_params=delay_qvalue,
        )
        self._make_vmap()

    def _make_vmap(self) -> None:
        self._vmap_qvalue_networkN0 = _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    def _set_in_keys(self) -> None:
        action = self.tensor_keys.action
        # sampled actions replace the critics' action input, so ("next", action) is not read
        q_keys = [key for key in self.qvalue_network.in_keys if key != action]
        keys = [
            action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *q_keys,
            *[("next", key) for key in q_keys],
        ]
        self._in_keys = list(dict.fromkeys(keys))

    @property
    def in_keys(self):
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    # -------------------------------------------------------------------------------------------

    def _min_q(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        """``min_i Q_i(s, a)`` over the ensemble, shape = batch shape."""
        td_q = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        q = self._vmap_qvalue_networkN0(td_q, params).get(self.tensor_keys.state_action_value)
        return q.squeeze(-1).min(0).values

    def _sample_policy(
        self, tensordict: TensorDictBase, with_log_prob: bool
    ) -> tuple[Tensor, Tensor | None]:
        """One action ``ã ~ π(·|s)`` per row (and ``log π(ã|s)``), without gradient."""
        td = tensordict.select(*self.actor_network.in_keys, strict=False)
        with (
            torch.no_grad(),
            set_exploration_type(ExplorationType.RANDOM),
            self.actor_network_params.to_module(self.actor_network, preserve_module_state=False),
        ):
            dist = self.actor_network.get_dist(td)
            action = dist.sample()
            log_prob = dist.log_prob(action) if with_log_prob else None
        return action, log_prob

    def _weights(self, advantage: Tensor) -> Tensor:
        """The per-row multiplier of ``−log π(a|s)``: ``B·softmax_B(A/λ)`` or ``min(e^{A/λ}, w_max)``."""
        scaled = advantage / self.lambda_
        if self.weight_mode == "batch_softmax":
            n = scaled.numel()
            return torch.softmax(scaled.reshape(-1), 0).reshape(scaled.shape) * n
        # clamp the exponent, not the exponential: exp never overflows, and the min is exact
        return torch.exp(scaled.clamp(max=math.log(self.w_max))).clamp(max=self.w_max)

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_π`` and its diagnostics; gradients reach the actor only."""
        action_key = self.tensor_keys.action
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            dist = self.actor_network.get_dist(
                tensordict.select(*self.actor_network.in_keys, strict=False)
            )
        log_prob = dist.log_prob(tensordict.get(action_key))

        with torch.no_grad():
            params = self.qvalue_network_params.detach()
            q_data = self._min_q(tensordict, params)
            policy_action, _ = self._sample_policy(tensordict, with_log_prob=False)
            td_pi = tensordict.select(*self.qvalue_network.in_keys, strict=False)
            td_pi.set(action_key, policy_action)
            advantage = q_data - self._min_q(td_pi, params)
            weight = self._weights(advantage)
        if log_prob.shape != weight.shape:
            raise RuntimeError(
                f"log π(a|s) has shape {tuple(log_prob.shape)} but the critics give "
                f"{tuple(weight.shape)}: the actor's distribution must reduce the action dims."
            )
        loss = self._reduce_loss(-(weight * log_prob))
        metadata = {
            "entropy": -log_prob.detach().mean(),
            "advantage": advantage.mean(),
            "weight_mean": weight.mean(),
            "weight_max": weight.max(),
            "weight_ess": weight.sum().pow(2) / (weight.numel() * weight.pow(2).sum()),
        }
        return loss, metadata

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_Q`` and ``td_error = (Q_i − y)²`` per critic; gradients reach the critics only."""
        action_key = self.tensor_keys.action
        with torch.no_grad():
            next_td = tensordict.get("next")
            next_action, next_log_prob = self._sample_policy(
                next_td, with_log_prob=self.entropy_coef != 0
            )
            next_q = next_td.select(*self.qvalue_network.in_keys, strict=False)
            next_q.set(action_key, next_action)
            next_value = self._min_q(next_q, self.target_qvalue_network_params)
            if next_log_prob is not None:
                next_value = next_value - self.entropy_coef * next_log_prob
            reward = tensordict.get(("next", self.tensor_keys.reward))
            target = self.value_estimator.value_estimate(
                tensordict.copy(), next_value=next_value.reshape(reward.shape)
            ).reshape(next_value.shape)

        td_q = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        pred = self._vmap_qvalue_networkN0(td_q, self.qvalue_network_params)
        pred = pred.get(self.tensor_keys.state_action_value).squeeze(-1)
        target = target.expand_as(pred)
        loss = distance_loss(pred, target, loss_function=self.loss_function).sum(0)
        loss = self._reduce_loss(loss)
        return loss, {"td_error": (pred.detach() - target).pow(2)}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Both losses on one batch: ``ã`` is drawn first, then ``a'``."""
        loss_actor, metadata = self.actor_loss(tensordict)
        loss_qvalue, metadata_q = self.qvalue_loss(tensordict)
        tensordict.set(self.tensor_keys.priority, metadata_q["td_error"].max(0).values)
        out = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue}
        out.update({key: value.detach() for key, value in metadata.items()})
        return TensorDict(out, batch_size=[])

    def make_value_estimator(self, value_type: ValueEstimators = None, **hyperparams):
        """The TD target ``y``; ``gamma`` (default 0.99) is set here: ``make_value_estimator(gamma=γ)``."""
        if value_type is None:
            value_type = self.default_value_estimator
        if isinstance(value_type, ValueEstimatorBase) or (
            isinstance(value_type, type) and issubclass(value_type, ValueEstimatorBase)
        ):
            return LossModule.make_value_estimator(self, value_type, **hyperparams)
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys={
                "value_target": "value_target",
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            value_network=None,  # the next-state value is computed here and passed in
            **hyperparams,
        )
        return self
