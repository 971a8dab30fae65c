"""XQL: extreme Q-learning (Garg et al., ICLR 2023) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torch import Tensor

from torchrl_sym.objectives.in_sample import InSampleActorCriticLoss

__all__ = ["XQLLoss"]

_Q_LOSSES = ("huber", "l2")


class XQLLoss(InSampleActorCriticLoss):
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

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = [
                "loss_actor",
                "loss_qvalue",
                "loss_value",
                "entropy",
                "weight_mean",
                "clip_fraction",
                "value_scale",
                "value",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self._out_keys = values

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
        self._out_keys = None
        super().__init__(
            actor_network,
            qvalue_network,
            value_network,
            num_qvalue_nets=num_qvalue_nets,
            actor_weight_max=actor_weight_max,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
        )
        self.beta_loss = float(beta_loss)
        self.max_clip = None if max_clip is None else float(max_clip)
        self.rescale = rescale
        self.q_loss = q_loss
        self.huber_delta = float(huber_delta)
        self.actor_temperature = float(actor_temperature)

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

    def _actor_weight(self, advantage: Tensor) -> Tensor:
        """``min(e^{T u}, w_max)``."""
        # clamp the exponent, not the exponential: exp never overflows
        exponent = (self.actor_temperature * advantage).clamp(max=math.log(self.actor_weight_max))
        return torch.exp(exponent).clamp(max=self.actor_weight_max)

    def _q_distance(self, pred: Tensor, target: Tensor) -> Tensor:
        """Huber with threshold ``δ`` (``q_loss="huber"``) or ``(Q_i − y)²`` (``"l2"``)."""
        if self.q_loss == "huber":
            return F.huber_loss(pred, target, reduction="none", delta=self.huber_delta)
        return (pred - target).pow(2)
