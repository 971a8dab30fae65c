r"""What AWAC, SQL, XQL and Sf-AC share: a weighted-regression actor and a TD-regressed critic ensemble.

With critics ``Q_i`` (``i = 1…N``), their Polyak targets ``Q̄_i``, a stochastic actor ``π`` and a
next-state value ``V'(s')`` that each loss defines, on a batch of ``B`` transitions
``(s, a, r, s', d)`` (``d`` is ``("next", "terminated")``: truncated transitions still bootstrap):

.. math::

    y &= r + γ (1 − d)\, V'(s') \quad \text{(no gradient)} \\
    L_Q &= \textstyle\sum_i \operatorname{mean}_B\, ℓ(Q_i(s, a), y),
        \qquad \text{td\_error} = \max_i (Q_i(s, a) − y)^2 \\
    L_π &= −\operatorname{mean}_B\big[w(s, a) \log π(a|s)\big] \quad (w \text{ without gradient})

:class:`WeightedActorCriticLoss` holds this part: the actor and the vmapped critic ensemble (with
target parameters, advanced by :class:`~torchrl.objectives.SoftUpdate`), ``y`` through
``make_value_estimator``, ``L_Q`` (``ℓ`` per loss, ``distance_loss(loss_function)`` by default),
the weighted log-likelihood ``L_π`` (``w`` per loss), the priority entry and the keys. AWAC builds
on it directly, with ``V'(s') = min_i Q̄_i(s', a') − α log π(a'|s')``, ``a' ~ π(·|s')``, and so does
:class:`~torchrl_sym.objectives.SfACLoss` (its own value losses and actor; ``V'(s') = V(s')``).

:class:`InSampleActorCriticLoss` adds a state value ``V`` trained in-sample (on dataset actions
only) against the target critics, IQL-style; SQL and XQL build on it:

.. math::

    V'(s') &= V(s') \quad \text{(detached parameters; there is no target } V\text{)} \\
    u &= \min_i \bar Q_i(s, a) − V(s), \qquad w = f(u) \quad \text{(no gradient)} \\
    L_V &= \operatorname{mean}_B\, g(u)

with the weight ``f`` and the value loss ``g`` per algorithm (IQL: ``f(u) = min(e^{βu}, 100)``,
``g(u) = |τ − 1(u < 0)| u²``). Each term reaches only its own network: ``L_V`` only ``V``, ``L_Q``
only the critics, ``L_π`` only the actor. The losses never modify the batch: ``forward`` only
writes the priority entry.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule
from torchrl.objectives.utils import (
    ValueEstimators,
    _vmap_func,
    dispatch_value_estimator,
    distance_loss,
)
from torchrl.objectives.value import ValueEstimatorBase

from torchrl_sym.objectives._ensemble import ensemble_call

__all__ = ["InSampleActorCriticLoss", "WeightedActorCriticLoss"]

_DISTANCES = ("l2", "l1", "smooth_l1")
_REDUCTIONS = ("mean", "sum", "none")


def check_loss_function(loss_function: str) -> None:
    """Raise unless ``loss_function`` is a ``distance_loss`` name (``"l2"``, ``"l1"``, ``"smooth_l1"``)."""
    if loss_function not in _DISTANCES:
        raise ValueError(f"loss_function must be one of {_DISTANCES}, got {loss_function!r}.")


class WeightedActorCriticLoss(LossModule):
    r"""Base of the weighted-regression actor-critic losses (see the module docstring).

    Subclasses define :meth:`_network_in_keys`, :meth:`_next_state_value` (``V'(s')``, computed
    without gradient), :meth:`actor_loss` (with :meth:`_dataset_log_prob` and
    :meth:`_weighted_regression`) and, when ``ℓ`` is not ``distance_loss(self.loss_function)``,
    :meth:`_q_distance`.

    Args:
        actor_network: a stochastic actor with ``get_dist``.
        qvalue_network: ``Q(s, a)``; one module (copied ``num_qvalue_nets`` times) or a list.
        value_network: ``V(s)``, or ``None`` when the loss has none.

    Keyword Args:
        num_qvalue_nets: number of critics.
        delay_qvalue: keep Polyak target critics; ``False`` bootstraps from the online critics.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critics instead of ``torch.vmap``.
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
        value_network: TensorDictModule | None = None,
        *,
        num_qvalue_nets: int,
        delay_qvalue: bool = True,
        reduction: Literal["mean", "sum", "none"],
        deactivate_vmap: bool,
    ) -> None:
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self._in_keys = None
        super().__init__()
        self.num_qvalue_nets = num_qvalue_nets
        self.reduction = reduction
        self.deactivate_vmap = deactivate_vmap

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        if value_network is not None:
            self.convert_to_functional(value_network, "value_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=delay_qvalue
        )
        self._make_vmap()

    def _make_vmap(self) -> None:
        # an MLP critic runs as batched matmuls over the stacked heads (same numbers as vmap,
        # faster compiled; torchrl_sym/objectives/_ensemble.py); any other module is vmapped
        fast = None if self.deactivate_vmap else ensemble_call(self.qvalue_network)
        self._vmap_qvalue_networkN0 = fast or _vmap_func(
            self.qvalue_network,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    # --- keys --------------------------------------------------------------------------------

    @abc.abstractmethod
    def _network_in_keys(self) -> list[NestedKey]:
        """The batch entries the networks read, besides the action and ``("next", r/done/term)``."""

    def _set_in_keys(self) -> None:
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self._network_in_keys(),
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

    # --- critics -----------------------------------------------------------------------------

    def _q_ensemble(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        """``Q_i(s, a)`` of every critic with ``params``, shape ``[N, *batch]``."""
        td_q = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        q = self._vmap_qvalue_networkN0(td_q, params).get(self.tensor_keys.state_action_value)
        return q.squeeze(-1)

    def _min_q(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        """``min_i Q_i(s, a)`` over the ensemble, shape = batch shape."""
        return self._q_ensemble(tensordict, params).min(0).values

    @abc.abstractmethod
    def _next_state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``V'(s')`` of the TD target, batch shape; called without gradient."""

    def _q_distance(self, pred: Tensor, target: Tensor) -> Tensor:
        """``ℓ(Q_i, y)`` elementwise, shape ``[N, *batch]``."""
        return distance_loss(pred, target, loss_function=self.loss_function)

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_Q`` and ``td_error = (Q_i − y)²`` per critic; gradients reach the critics only."""
        with torch.no_grad():
            next_value = self._next_state_value(tensordict)
            reward = tensordict.get(("next", self.tensor_keys.reward))
            target = self.value_estimator.value_estimate(
                tensordict.copy(), next_value=next_value.reshape(reward.shape)
            ).reshape(next_value.shape)
        pred = self._q_ensemble(tensordict, self.qvalue_network_params)
        target = target.expand_as(pred)
        loss = self._reduce_loss(self._q_distance(pred, target).sum(0))
        return loss, {"td_error": (pred.detach() - target).pow(2)}

    # --- actor -------------------------------------------------------------------------------

    def _dataset_log_prob(self, tensordict: TensorDictBase) -> Tensor:
        """``log π(a|s)`` of the dataset actions, with gradient to the actor."""
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            dist = self.actor_network.get_dist(
                tensordict.select(*self.actor_network.in_keys, strict=False)
            )
        return dist.log_prob(tensordict.get(self.tensor_keys.action))

    def _weighted_regression(self, log_prob: Tensor, weight: Tensor) -> Tensor:
        """``L_π = −reduce_B[w log π(a|s)]``; ``w`` must have the batch shape of ``log π``."""
        if log_prob.shape != weight.shape:
            raise RuntimeError(
                f"log π(a|s) has shape {tuple(log_prob.shape)} but the critics give "
                f"{tuple(weight.shape)}: the actor's distribution must reduce the action dims."
            )
        return self._reduce_loss(-(weight * log_prob))

    @abc.abstractmethod
    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_π`` and its diagnostics; gradients reach the actor only."""

    # --- forward -----------------------------------------------------------------------------

    def _losses(
        self, tensordict: TensorDictBase
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        """The ``loss_*`` entries, the diagnostics and the per-critic TD errors, in call order."""
        loss_actor, metadata = self.actor_loss(tensordict)
        loss_qvalue, metadata_q = self.qvalue_loss(tensordict)
        losses = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue}
        return losses, metadata, metadata_q["td_error"]

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """All losses on one batch, from the same parameters: the actor's first, then the critics'
        (then the value's); a loss that samples actions draws them in that order."""
        out, metadata, td_error = self._losses(tensordict)
        tensordict.set(self.tensor_keys.priority, td_error.max(0).values)
        out.update({key: value.detach() for key, value in metadata.items()})
        return TensorDict(out, batch_size=[])

    def _value_estimator_kwargs(self) -> dict[str, Any]:
        """``dispatch_value_estimator``'s keys; ``V'(s')`` is always passed in, no value network."""
        return {
            "tensor_keys": {
                "value_target": "value_target",
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            "value_network": None,
        }

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
            **self._value_estimator_kwargs(),
            **hyperparams,
        )
        return self


class InSampleActorCriticLoss(WeightedActorCriticLoss):
    r"""Base of the IQL-style losses: an in-sample state value ``V`` (see the module docstring).

    Subclasses define :meth:`value_loss` (``L_V``, with :meth:`_target_min_q` and :meth:`_value`)
    and :meth:`_actor_weight` (``w = f(u)``), and may override :meth:`_q_distance`.

    Args:
        actor_network: a stochastic actor with ``get_dist``.
        qvalue_network: ``Q(s, a)``; one module (copied ``num_qvalue_nets`` times) or a list.
        value_network: ``V(s)``.

    Keyword Args:
        num_qvalue_nets: number of critics.
        actor_weight_max: ``w_max``, the largest actor weight (finite, > 0).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critics instead of ``torch.vmap``.
    """

    @dataclass
    class _AcceptedKeys(WeightedActorCriticLoss._AcceptedKeys):
        """Keys read from (and written to) the batch.

        Those of :class:`WeightedActorCriticLoss` (``action``: the dataset action, the only action
        the critics are fed here; ``state_action_value``: the critics' output; ``priority``: where
        ``forward`` writes the TD error; ``reward``, ``done`` and ``terminated``, the bootstrap
        mask, under ``"next"``), and:

        Attributes:
            value (NestedKey): the value network's output. Defaults to ``"state_value"``.
        """

        value: NestedKey = "state_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule,
        *,
        num_qvalue_nets: int,
        actor_weight_max: float,
        reduction: Literal["mean", "sum", "none"],
        deactivate_vmap: bool,
    ) -> None:
        if not (actor_weight_max > 0 and math.isfinite(actor_weight_max)):
            raise ValueError(f"actor_weight_max must be finite and > 0, got {actor_weight_max}.")
        super().__init__(
            actor_network,
            qvalue_network,
            value_network,
            num_qvalue_nets=num_qvalue_nets,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
        )
        self.actor_weight_max = float(actor_weight_max)

    def _network_in_keys(self) -> list[NestedKey]:
        return [
            *self.actor_network.in_keys,
            *self.qvalue_network.in_keys,
            *self.value_network.in_keys,
            *[("next", key) for key in self.value_network.in_keys],
        ]

    def _target_min_q(self, tensordict: TensorDictBase) -> Tensor:
        """``min_i Q̄_i(s, a)`` with the target critics (buffers: no gradient), batch shape."""
        return self._min_q(tensordict, self.target_qvalue_network_params)

    def _value(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        td = tensordict.select(*self.value_network.in_keys, strict=False)
        with params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td)
        return td.get(self.tensor_keys.value).squeeze(-1)

    def _next_state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``V(s')`` with detached parameters: ``L_Q`` does not reach ``V``."""
        return self._value(tensordict.get("next"), self.value_network_params.detach())

    @abc.abstractmethod
    def _actor_weight(self, advantage: Tensor) -> Tensor:
        """``w = f(u)`` from ``u = min_i Q̄_i(s, a) − V(s)``, in ``[0, w_max]``."""

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_π`` and the ``entropy`` / ``weight_mean`` diagnostics; gradients reach ``π`` only."""
        log_prob = self._dataset_log_prob(tensordict)
        with torch.no_grad():
            min_q = self._target_min_q(tensordict)
            value = self._value(tensordict, self.value_network_params.detach())
            weight = self._actor_weight(min_q - value)
        loss = self._weighted_regression(log_prob, weight)
        return loss, {"entropy": -log_prob.detach().mean(), "weight_mean": weight.mean()}

    @abc.abstractmethod
    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_V`` and its diagnostics; gradients reach ``V`` only."""

    def _losses(
        self, tensordict: TensorDictBase
    ) -> tuple[dict[str, Tensor], dict[str, Tensor], Tensor]:
        losses, metadata, td_error = super()._losses(tensordict)
        losses["loss_value"], metadata_v = self.value_loss(tensordict)
        metadata.update(metadata_v)
        return losses, metadata, td_error

    def _value_estimator_kwargs(self) -> dict[str, Any]:
        """The base's keys and ``value``; the estimator keeps ``V`` as its value network, as
        TorchRL's :class:`~torchrl.objectives.IQLLoss` (``V(s')`` is still passed in)."""
        tensor_keys = super()._value_estimator_kwargs()["tensor_keys"]
        return {"tensor_keys": {**tensor_keys, "value": self.tensor_keys.value}}
