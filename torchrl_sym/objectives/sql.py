"""SQL: sparse Q-learning (Xu et al., ICLR 2023) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

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

__all__ = ["SQLLoss"]

_FORMS = ("code", "paper")
_DISTANCES = ("l2", "l1", "smooth_l1")


class SQLLoss(LossModule):
    r"""SQL: an in-sample value fitted by the χ²-regularized (sparse) objective, IQL-style Q and actor.

    With critics ``Q_i``, their Polyak targets ``Q̄_i``, a state value ``V`` and a stochastic
    actor ``π``, on a batch of ``B`` transitions ``(s, a, r, s', d)`` and ``u = min_i Q̄_i(s, a) − V(s)``:

    .. math::

        \text{code form:}\quad z &= u/α + ½, \qquad
            L_V = \operatorname{mean}_B\big[\mathbb 1(z > 0)\, z^2 + V(s)/α\big] \\
        \text{paper form:}\quad z &= 1 + u/(2α), \qquad
            L_V = \operatorname{mean}_B\big[\mathbb 1(z > 0)\, z^2 + V(s)/α\big] \\
        y &= r + γ (1 − d)\, V(s') \\
        L_Q &= \textstyle\sum_i \operatorname{mean}_B\, ℓ(Q_i(s, a), y) \\
        L_π &= −\operatorname{mean}_B\big[\operatorname{clip}(\max(u, 0), 0, w_{max})\,
            \log π(a|s)\big]

    ``ℓ`` is ``loss_function`` (``"l2"``: ``(Q − y)²``) and ``d`` is ``("next", "terminated")``.
    The minimizer ``v`` of ``L_V`` solves ``mean_B (1 + (Q̄ − v)/(2α))₊ = 1`` (paper) or
    ``mean_B ((Q̄ − v)/α + ½)₊ = ½`` (code): the two coincide when ``α_code = 4 α_paper``. Rows
    with ``z ≤ 0`` get no weight in the implied policy ``π* ∝ π_D · (1 + (Q − V)/(2α))₊``; their
    fraction is the ``sparsity`` diagnostic.

    Each term reaches only its own network: ``L_V`` only ``V`` (``Q̄`` are target buffers),
    ``L_Q`` only the critics (``V(s')`` uses detached parameters), ``L_π`` only the actor
    (``Q̄`` and ``V`` without gradient). There is no target ``V``: ``SoftUpdate`` moves the critics'
    targets only. Dataset actions are used as given; the loss never modifies the batch
    (``forward`` only writes the priority entry). Clip them to ``±(1 − 1e-5)`` in the data layer
    when the actor's distribution is bounded (``make_offline_replay_buffer`` does).

    Reference: Xu, Jiang, Li, Yang, Wang, Chan, Zhan, *Offline RL with No OOD Actions: In-Sample
    Learning via Implicit Value Regularization*, ICLR 2023 (arXiv 2303.15810); code ``ryanxhr/IVR``
    (JAX ``critic.py``, ``actor.py``, ``learner.py``, ``run_mujoco.sh``: the ``"code"`` form and
    its per-dataset ``α``: 2 for medium and medium-replay, 5 for medium-expert, 0.5 for AntMaze;
    ``algos/SQL.py``: the ``"paper"`` form).

    TorchRL mapping: :class:`~torchrl.objectives.IQLLoss` with its expectile value loss replaced by
    the sparse one and the actor weight ``min(e^{βu}, 100)`` replaced by ``clip(u₊, 0, 100)``;
    same keys, same vmapped critic ensemble with target parameters, same
    ``make_value_estimator`` for ``y``.

    Args:
        actor_network: a stochastic actor with ``get_dist`` (e.g.
            :func:`torchrl_sym.models.make_gaussian_actor`).
        qvalue_network: ``Q(s, a)``; one module (copied ``num_qvalue_nets`` times, each copy
            freshly initialized, as in TorchRL) or a list of modules.
        value_network: ``V(s)``.

    Keyword Args:
        num_qvalue_nets: number of critics (default 2).
        alpha: ``α > 0`` of the chosen form (default 2.0, the code's value for medium datasets).
        form: ``"code"`` (default, the released JAX code) or ``"paper"``.
        loss_function: ``"l2"`` (default), ``"l1"`` or ``"smooth_l1"`` for ``ℓ``.
        actor_weight_max: the clip of the actor weight (default 100).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critics instead of ``torch.vmap``.

    Returns (forward):
        TensorDict with ``loss_actor``, ``loss_qvalue``, ``loss_value`` and detached diagnostics:
        ``entropy`` (``−mean_B log π(a|s)`` on the dataset actions, TorchRL's IQL name),
        ``sparsity`` (fraction of rows with ``z ≤ 0``), ``weight_mean`` (mean actor weight) and
        ``value`` (``mean_B V(s)``). Writes ``td_error`` (``max_i (Q_i − y)²``) into the input for
        prioritized replay.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
        >>> from torchrl_sym.objectives import SQLLoss
        >>> _ = torch.manual_seed(0)
        >>> loss = SQLLoss(
        ...     make_gaussian_actor(3, 2, hidden=[16]),
        ...     make_qvalue(3, 2, hidden=[16]),
        ...     make_value(3, hidden=[16]),
        ...     alpha=2.0,
        ...     form="code",
        ... )
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
        ['entropy', 'loss_actor', 'loss_qvalue', 'loss_value', 'sparsity', 'value', 'weight_mean']
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> optim.step(); optim.zero_grad(); updater.step()
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from (and written to) the batch.

        Attributes:
            value (NestedKey): the value network's output. Defaults to ``"state_value"``.
            action (NestedKey): the dataset action. Defaults to ``"action"``.
            state_action_value (NestedKey): the critics' output. Defaults to
                ``"state_action_value"``.
            priority (NestedKey): where ``forward`` writes the TD error. Defaults to
                ``"td_error"``.
            reward (NestedKey): under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): under ``"next"``. Defaults to ``"done"``.
            terminated (NestedKey): under ``"next"``; the bootstrap mask. Defaults to
                ``"terminated"``.
        """

        value: NestedKey = "state_value"
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
        "loss_value",
        "entropy",
        "sparsity",
        "weight_mean",
        "value",
    ]

    actor_network: ProbabilisticTensorDictSequential
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule,
        *,
        num_qvalue_nets: int = 2,
        alpha: float = 2.0,
        form: Literal["code", "paper"] = "code",
        loss_function: str = "l2",
        actor_weight_max: float = 100.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0 (SQL code: 2 for medium datasets), got {alpha}.")
        if form not in _FORMS:
            raise ValueError(f"form must be one of {_FORMS}, got {form!r}.")
        if loss_function not in _DISTANCES:
            raise ValueError(f"loss_function must be one of {_DISTANCES}, got {loss_function!r}.")
        if not (actor_weight_max > 0 and math.isfinite(actor_weight_max)):
            raise ValueError(f"actor_weight_max must be finite and > 0, got {actor_weight_max}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self._in_keys = None
        super().__init__()
        self.alpha = float(alpha)
        self.form = form
        self.loss_function = loss_function
        self.actor_weight_max = float(actor_weight_max)
        self.num_qvalue_nets = num_qvalue_nets
        self.reduction = reduction
        self.deactivate_vmap = deactivate_vmap

        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)
        self.convert_to_functional(value_network, "value_network", create_target_params=False)
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=True
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
        keys = [
            self.tensor_keys.action,
            ("next", self.tensor_keys.reward),
            ("next", self.tensor_keys.done),
            ("next", self.tensor_keys.terminated),
            *self.actor_network.in_keys,
            *self.qvalue_network.in_keys,
            *self.value_network.in_keys,
            *[("next", key) for key in self.value_network.in_keys],
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

    def _target_min_q(self, tensordict: TensorDictBase) -> Tensor:
        """``min_i Q̄_i(s, a)`` with the target critics (buffers: no gradient), batch shape."""
        td_q = tensordict.select(*self.qvalue_network.in_keys, strict=False)
        td_q = self._vmap_qvalue_networkN0(td_q, self.target_qvalue_network_params)
        return td_q.get(self.tensor_keys.state_action_value).squeeze(-1).min(0).values

    def _value(self, tensordict: TensorDictBase, params: TensorDictBase) -> Tensor:
        td = tensordict.select(*self.value_network.in_keys, strict=False)
        with params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td)
        return td.get(self.tensor_keys.value).squeeze(-1)

    def _z(self, advantage: Tensor) -> Tensor:
        if self.form == "code":
            return advantage / self.alpha + 0.5
        return 1.0 + advantage / (2.0 * self.alpha)

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_V`` and the ``sparsity`` / ``value`` diagnostics; gradients reach ``V`` only."""
        min_q = self._target_min_q(tensordict)
        value = self._value(tensordict, self.value_network_params)
        z = self._z(min_q - value)
        # select, never multiply by the indicator: z² of a huge z must not meet a 0·inf
        loss = torch.where(z > 0, z.pow(2), torch.zeros_like(z)) + value / self.alpha
        loss = self._reduce_loss(loss)
        metadata = {
            "sparsity": (z <= 0).to(z.dtype).mean().detach(),
            "value": value.detach().mean(),
        }
        return loss, metadata

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_π`` and the ``entropy`` / ``weight_mean`` diagnostics; gradients reach ``π`` only."""
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            dist = self.actor_network.get_dist(
                tensordict.select(*self.actor_network.in_keys, strict=False)
            )
        log_prob = dist.log_prob(tensordict.get(self.tensor_keys.action))
        with torch.no_grad():
            min_q = self._target_min_q(tensordict)
            value = self._value(tensordict, self.value_network_params.detach())
            weight = (min_q - value).clamp(min=0.0, max=self.actor_weight_max)
        if log_prob.shape != weight.shape:
            raise RuntimeError(
                f"log π(a|s) has shape {tuple(log_prob.shape)} but the critics give "
                f"{tuple(weight.shape)}: the actor's distribution must reduce the action dims."
            )
        loss = self._reduce_loss(-(weight * log_prob))
        return loss, {"entropy": -log_prob.detach().mean(), "weight_mean": weight.mean()}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_Q`` and ``td_error = (Q_i − y)²`` per critic; gradients reach the critics only."""
        with torch.no_grad():
            reward = tensordict.get(("next", self.tensor_keys.reward))
            next_value = self._value(tensordict.get("next"), self.value_network_params.detach())
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
        """All three losses from the same parameters (as TorchRL's ``IQLLoss``)."""
        loss_actor, metadata = self.actor_loss(tensordict)
        loss_qvalue, metadata_q = self.qvalue_loss(tensordict)
        loss_value, metadata_v = self.value_loss(tensordict)
        metadata.update(metadata_v)
        tensordict.set(self.tensor_keys.priority, metadata_q["td_error"].max(0).values)
        out = {"loss_actor": loss_actor, "loss_qvalue": loss_qvalue, "loss_value": loss_value}
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
                "value": self.tensor_keys.value,
                "reward": self.tensor_keys.reward,
                "done": self.tensor_keys.done,
                "terminated": self.tensor_keys.terminated,
            },
            **hyperparams,
        )
        return self
