"""AWAC: advantage-weighted actor-critic (Nair et al., 2020) as a TorchRL ``LossModule``."""

from __future__ import annotations

import math
from typing import Literal

import torch
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_sym.objectives.in_sample import WeightedActorCriticLoss, check_loss_function

__all__ = ["AWACLoss"]

_WEIGHT_MODES = ("batch_softmax", "exp_clip")


class AWACLoss(WeightedActorCriticLoss):
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

    @property
    def out_keys(self) -> list[str]:
        """The entries of ``forward``'s output (a list per instance, as the other losses')."""
        keys = self.__dict__.get("_out_keys")
        if keys is None:
            keys = self.__dict__["_out_keys"] = [
                "loss_actor",
                "loss_qvalue",
                "entropy",
                "advantage",
                "weight_mean",
                "weight_max",
                "weight_ess",
            ]
        return keys

    @out_keys.setter
    def out_keys(self, values) -> None:
        self.__dict__["_out_keys"] = list(values)

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
        check_loss_function(loss_function)
        if not entropy_coef >= 0:
            raise ValueError(f"entropy_coef must be ≥ 0 (the paper uses 0), got {entropy_coef}.")
        super().__init__(
            actor_network,
            qvalue_network,
            num_qvalue_nets=num_qvalue_nets,
            delay_qvalue=delay_qvalue,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
        )
        self.lambda_ = float(lambda_)
        self.weight_mode = weight_mode
        self.w_max = float(w_max)
        self.loss_function = loss_function
        self.entropy_coef = float(entropy_coef)
        self.delay_qvalue = delay_qvalue

    def _network_in_keys(self) -> list[NestedKey]:
        action = self.tensor_keys.action
        # sampled actions replace the critics' action input, so ("next", action) is not read
        q_keys = [key for key in self.qvalue_network.in_keys if key != action]
        return [
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *q_keys,
            *[("next", key) for key in q_keys],
        ]

    # -------------------------------------------------------------------------------------------

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
        log_prob = self._dataset_log_prob(tensordict)
        with torch.no_grad():
            params = self.qvalue_network_params.detach()
            q_data = self._min_q(tensordict, params)
            policy_action, _ = self._sample_policy(tensordict, with_log_prob=False)
            td_pi = tensordict.select(*self.qvalue_network.in_keys, strict=False)
            td_pi.set(self.tensor_keys.action, policy_action)
            advantage = q_data - self._min_q(td_pi, params)
            weight = self._weights(advantage)
        loss = self._weighted_regression(log_prob, weight)
        metadata = {
            "entropy": -log_prob.detach().mean(),
            "advantage": advantage.mean(),
            "weight_mean": weight.mean(),
            "weight_max": weight.max(),
            "weight_ess": weight.sum().pow(2) / (weight.numel() * weight.pow(2).sum()),
        }
        return loss, metadata

    def _next_state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``min_i Q̄_i(s', a') − α log π(a'|s')`` with one ``a' ~ π(·|s')`` per row."""
        next_td = tensordict.get("next")
        next_action, next_log_prob = self._sample_policy(
            next_td, with_log_prob=self.entropy_coef != 0
        )
        next_q = next_td.select(*self.qvalue_network.in_keys, strict=False)
        next_q.set(self.tensor_keys.action, next_action)
        next_value = self._min_q(next_q, self.target_qvalue_network_params)
        if next_log_prob is not None:
            next_value = next_value - self.entropy_coef * next_log_prob
        return next_value
