"""XQL: extreme Q-learning (Garg et al., ICLR 2023) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators, _vmap_func, dispatch_value_estimator
from torchrl.objectives.value import ValueEstimatorBase

__all__ = ["XQLLoss"]

_Q_LOSSES = ("huber", "l2")


class XQLLoss(LossModule):
    r"""XQL: a state value fitted by Gumbel regression (a soft maximum of ``Q̄``), IQL-style Q and actor.

    With critics ``Q_i``, their Polyak targets ``Q̄_i``, a state value ``V`` and a stochastic
    actor ``π``, on a batch of ``B`` transitions ``(s, a, r, s', d)``,
    ``z = (min_i Q̄_i(s, a) − V(s)) / β``:

    .. math::

        \text{rescale=False:}\quad L_V &= \operatorname{mean}_B\big[e^{z} − z − 1\big] \\
        \text{rescale=True:}\quad L_V &= \operatorname{mean}_B\big[e^{z − m} − z\,e^{−m}
            − e^{−m}\big], \quad m = \operatorname{sg}\big(\max(\max_B z, −1)\big) \\
        y &= r + γ (1 − d)\, V(s') \\
        L_Q &= \textstyle\sum_i \operatorname{mean}_B\, ℓ(Q_i(s, a) − y) \\
        L_π &= −\operatorname{mean}_B\big[\min\big(e^{T (\min_i \bar Q_i(s, a) − V(s))},
            w_{max}\big) \log π(a|s)\big]

    with ``z ← min(z, max_clip)`` first (both forms; ``max_clip=None`` disables it, and then
    ``rescale=False`` can overflow). ``ℓ`` is Huber with threshold ``δ``
    (``½x²`` for ``|x| ≤ δ``, ``δ(|x| − ½δ)`` beyond; ``q_loss="huber"``) or ``x²``
    (``q_loss="l2"``); ``d`` is ``("next", "terminated")``. Unclipped, ``L_V`` is minimized by
    the soft maximum ``V = β log mean exp(Q̄/β)``; the rescaled loss is ``e^{−m}`` times it, so it
    has the same minimizer and the per-sample gradient ``∂/∂V = −e^{−m}(e^z − 1)/β`` (an adaptive
    step size), and every exponential it evaluates is at most 1. The actor exponent is clamped at
    ``log w_max`` before ``exp``, so nothing overflows for any finite ``Q̄``, ``V``.

    Each term reaches only its own network: ``L_V`` only ``V`` (``Q̄`` are target buffers),
    ``L_Q`` only the critics (``V(s')`` uses detached parameters), ``L_π`` only the actor
    (``Q̄`` and ``V`` without gradient). There is no target ``V``: ``SoftUpdate`` moves the critics'
    targets only. Dataset actions are used as given; the loss never modifies the batch
    (``forward`` only writes the priority entry). Clip them to ``±(1 − 1e-5)`` in the data layer
    when the actor's distribution is bounded (``make_offline_replay_buffer`` does). The paper's V
    network has LayerNorm (:func:`torchrl_sym.models.make_value` with ``layer_norm=True``); the
    loss accepts any value network.

    Reference: Garg, Hejna, Geist, Ermon, *Extreme Q-Learning: MaxEnt RL without Entropy*,
    ICLR 2023 (arXiv 2301.02328); code ``Div99/XQL`` (``offline/critic.py``, ``learner.py``,
    ``actor.py``, ``train_offline.py``; per-dataset ``β`` and ``max_clip`` in
    ``offline/reproduce/mujoco/*.sh``; the "consistent" setting is ``β = 2``, ``max_clip = 7``).

    TorchRL mapping: :class:`~torchrl.objectives.IQLLoss` with its expectile value loss replaced by
    Gumbel regression and its Q regression by a Huber loss; same keys, same vmapped critic
    ensemble with target parameters, same actor form (``actor_temperature`` is IQL's
    ``temperature``), same ``make_value_estimator`` for ``y``.

    Args:
        actor_network: a stochastic actor with ``get_dist`` (e.g.
            :func:`torchrl_sym.models.make_gaussian_actor`).
        qvalue_network: ``Q(s, a)``; one module (copied ``num_qvalue_nets`` times, each copy
            freshly initialized, as in TorchRL) or a list of modules.
        value_network: ``V(s)``.

    Keyword Args:
        num_qvalue_nets: number of critics (default 2; XQL's ``--double=True``).
        beta_loss: the Gumbel temperature ``β > 0`` (``--temp``; default 2.0).
        max_clip: upper clip of ``z`` (default 7.0); ``None`` for none.
        rescale: use the rescaled loss of the released code (default ``True``).
        q_loss: ``"huber"`` (default) or ``"l2"``.
        huber_delta: ``δ`` of the Huber loss (default 20).
        actor_temperature: ``T`` of the actor weights (default 3.0).
        actor_weight_max: ``w_max`` of the actor weights (default 100).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critics instead of ``torch.vmap``.

    Returns (forward):
        TensorDict with ``loss_actor``, ``loss_qvalue``, ``loss_value`` and detached diagnostics:
        ``entropy`` (``−mean_B log π(a|s)`` on the dataset actions, TorchRL's IQL name),
        ``weight_mean`` (mean actor weight), ``clip_fraction`` (fraction of rows with
        ``z > max_clip``), ``value_scale`` (``e^{−m}``; 1 when ``rescale=False``) and ``value``
        (``mean_B V(s)``). Writes ``td_error`` (``max_i (Q_i − y)²``) into the input for
        prioritized replay.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
        >>> from torchrl_sym.objectives import XQLLoss
        >>> _ = torch.manual_seed(0)
        >>> loss = XQLLoss(
        ...     make_gaussian_actor(3, 2, hidden=[16]),
        ...     make_qvalue(3, 2, hidden=[16]),
        ...     make_value(3, hidden=[16], layer_norm=True),
        ...     beta_loss=2.0,
        ...     max_clip=7.0,
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
        >>> sorted(out.keys())  # doctest: +NORMALIZE_WHITESPACE
        ['clip_fraction', 'entropy', 'loss_actor', 'loss_qvalue', 'loss_value', 'value',
         'value_scale', 'weight_mean']
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
        "weight_mean",
        "clip_fraction",
        "value_scale",
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
        beta_loss: float = 2.0,
        max_clip: float | None = 7.0,
        rescale: bool = True,
        q_loss: Literal["huber", "l2"] = "huber",
        huber_delta: float = 20.0,
        actor_temperature: float = 3.0,
        actor_weight_max: float = 100.0,
        reduction: Literal["mean", "sum", "none"] = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        if not beta_loss > 0:
            raise ValueError(
                f"beta_loss must be > 0 (XQL --temp; 2 is consistent), got {beta_loss}."
            )
        if max_clip is not None and not math.isfinite(max_clip):
            raise ValueError(f"max_clip must be a finite number or None, got {max_clip}.")
        if q_loss not in _Q_LOSSES:
            raise ValueError(f"q_loss must be one of {_Q_LOSSES}, got {q_loss!r}.")
        if not huber_delta > 0:
            raise ValueError(f"huber_delta must be > 0 (XQL: 20), got {huber_delta}.")
        if not actor_temperature >= 0:
            raise ValueError(f"actor_temperature must be ≥ 0 (XQL: 3), got {actor_temperature}.")
        if not (actor_weight_max > 0 and math.isfinite(actor_weight_max)):
            raise ValueError(f"actor_weight_max must be finite and > 0, got {actor_weight_max}.")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self._in_keys = None
        super().__init__()
        self.beta_loss = float(beta_loss)
        self.max_clip = None if max_clip is None else float(max_clip)
        self.rescale = rescale
        self.q_loss = q_loss
        self.huber_delta = float(huber_delta)
        self.actor_temperature = float(actor_temperature)
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

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_V`` (Gumbel regression) and its diagnostics; gradients reach ``V`` only."""
        min_q = self._target_min_q(tensordict)
        value = self._value(tensordict, self.value_network_params)
        z = (min_q - value) / self.beta_loss
        if self.max_clip is not None:
            clipped = z > self.max_clip
            z = z.clamp(max=self.max_clip)
        else:
            clipped = torch.zeros_like(z, dtype=torch.bool)
        if self.rescale:
            # every exponent below is ≤ 0: exp(z − m) ≤ 1 and exp(−m) ≤ e
            m = z.detach().max().clamp(min=-1.0)
            scale = torch.exp(-m)
            loss = torch.exp(z - m) - z * scale - scale
        else:
            scale = torch.ones((), dtype=z.dtype, device=z.device)
            loss = torch.exp(z) - z - 1.0
        loss = self._reduce_loss(loss)
        metadata = {
            "clip_fraction": clipped.to(z.dtype).mean(),
            "value_scale": scale.detach(),
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
            # clamp the exponent, not the exponential: exp never overflows
            exponent = (self.actor_temperature * (min_q - value)).clamp(
                max=math.log(self.actor_weight_max)
            )
            weight = torch.exp(exponent).clamp(max=self.actor_weight_max)
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
        if self.q_loss == "huber":
            loss = F.huber_loss(pred, target, reduction="none", delta=self.huber_delta)
        else:
            loss = (pred - target).pow(2)
        loss = self._reduce_loss(loss.sum(0))
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
