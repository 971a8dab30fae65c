"""SQL: sparse Q-learning (Xu et al., ICLR 2023) as a TorchRL ``LossModule``."""

from __future__ import annotations

from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from torch import Tensor

from torchrl_sym.objectives.in_sample import InSampleActorCriticLoss, check_loss_function

__all__ = ["SQLLoss"]

_FORMS = ("code", "paper")


class SQLLoss(InSampleActorCriticLoss):
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

    @property
    def out_keys(self) -> list[str]:
        if self._out_keys is None:
            self._out_keys = [
                "loss_actor",
                "loss_qvalue",
                "loss_value",
                "entropy",
                "sparsity",
                "weight_mean",
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
        check_loss_function(loss_function)
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
        self.alpha = float(alpha)
        self.form = form
        self.loss_function = loss_function

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

    def _actor_weight(self, advantage: Tensor) -> Tensor:
        """``clip(u₊, 0, w_max)``."""
        return advantage.clamp(min=0.0, max=self.actor_weight_max)
