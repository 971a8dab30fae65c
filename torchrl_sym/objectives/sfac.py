r"""Sf-AC: symmetric f-divergence actor-critic (``docs/specs/sfac.md`` §4–6, §9)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import ProbabilisticTensorDictSequential, TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.objectives.utils import ValueEstimators

from torchrl_sym.divergences import FDivergence, get_divergence, n2_policy_weight
from torchrl_sym.objectives.in_sample import WeightedActorCriticLoss, check_loss_function

__all__ = ["SfACLoss", "conditional_symmetry_term"]

_PRESETS = {
    "iql_compatible": {"kl_weight": "exp", "value_loss": "expectile"},
    "chi2_consistent": {"kl_weight": "sparse", "value_loss": "sparse"},
}
_KL_WEIGHTS = ("exp", "sparse")
_VALUE_LOSSES = ("expectile", "sparse", "policy")


class SfACLoss(WeightedActorCriticLoss):
    r"""Sf-AC loss: an advantage-weighted regression plus a Taylor-expanded symmetry term.

    Reference: Zhu, Shah, Chen, Nagai, White, *Symmetric Behavior Regularized Policy
    Optimization*, arXiv 2508.04225. The paper's exact estimator is not public; this is the
    library's documented reconstruction (``docs/specs/sfac.md``, tagged [L] there), and every choice
    in it is a constructor argument. Per-sample quantities have shape ``[B]``; ``Q̄`` are the
    Polyak target critics; ``A_v``, the weights and ``π̂_β`` are detached.

    **Actor** (the regularized policy ``π* = π_D · w`` is estimated as ``π̂_β · w``):

    .. math::

        A_v &= \min_i \bar Q_i(s, a) - V(s) \\
        w_2 &= [1 + A_v/\tau_2]_+, \qquad \tau_2 = 2 c_2 \tau \ \text{(unless given)} \\
        w_{kl} &= \min(\exp(A_v/\tau), W_{max})
            \quad (\texttt{kl\_weight="sparse"}: \min(w_2, W_{max})) \\
        \log r &= \log\pi_\theta(a|s) - \log\hat\pi_\beta(a|s) - \log w_2
            \quad \text{(rows with } w_2 > 0\text{; other rows contribute exactly 0)} \\
        r_c &= \exp\big(\mathrm{clamp}(\log r,\ \log(1-\epsilon)\ [-\infty \text{ if } \epsilon \ge 1],
            \ \log(1+\epsilon))\big) \\
        L_{asym} &= -\mathrm{mean}_B\big(w_{kl} \log\pi_\theta(a|s)\big) \\
        L_{csym} &= \mathrm{mean}_B\Big(w_2 \sum_{n=n_0}^{N_{loss}} h_n (r_c - 1)^n\Big),
            \qquad h_n = c_n + \kappa (-1)^{n+1}/n \\
        L_{actor} &= L_{asym} + L_{csym}/\kappa

    with ``n_0 = 2`` (``1`` with ``keep_linear_term``), ``c_n`` the Taylor coefficients of the
    divergence generator and ``κ`` from ``kappa`` (``balanced``: ``f''(1)/2``). This follows from
    ``D_f(π_θ‖π*) = κ KL(π*‖π_θ) + E_{π*}[f(r) + κ ln r]``, ``r = π_θ/π*``, evaluated in-sample
    with weights ``π*/π_D``. ``n_loss ∈ {0, 1}`` switches the symmetry term off, which leaves
    the IQL/AWR actor exactly. With ``policy_order=3`` the weight ``w_2`` is replaced everywhere
    by the N = 3 weight ``[1 + x]_+``, ``2c₂x + 3c₃x² = A_v/τ`` (root continuous with N = 2);
    where that equation has no real root (``A_v/τ > c₂²/(−3c₃)``), ``A_v/τ`` is capped at the
    bound, i.e. ``x`` at its vertex ``−c₂/(3c₃)`` (the truncated objective is unbounded there;
    the cap keeps the weight continuous and increasing in ``A_v``).

    **Critic, value, behavior** (twin Q, min over heads, targets ``y`` never differentiated):

    .. math::

        L_Q &= \sum_i \mathrm{mean}_B\, \ell(Q_i(s,a), y)  \qquad (\ell = (\cdot)^2 \text{ for "l2"}) \\
        \texttt{expectile}:\ L_V &= \mathrm{mean}_B |\tau_e - 1(u<0)|\, u^2,
            \quad u = \min\bar Q(s,a) - V(s),\quad y = r + \gamma(1-d) V(s') \\
        \texttt{sparse}:\ L_V &= \mathrm{mean}_B\big[1(z>0) z^2 + V(s)/\alpha\big],
            \quad z = 1 + u/(2\alpha),\ \alpha = \tau_2/2,\quad y = r + \gamma(1-d) V(s') \\
        \texttt{policy}:\ L_V &= \tfrac12 \mathrm{mean}_B (V(s) - \min\bar Q(s, a'))^2,
            \quad a' \sim \pi_\theta(s),\quad y = r + \gamma(1-d)\min\bar Q(s', a''),\
            a'' \sim \pi_\theta(s') \\
        L_\beta &= -\mathrm{mean}_B \log\hat\pi_\beta(a|s)

    The critic plumbing (the vmapped heads and their Polyak targets, the TD target ``y`` through
    ``make_value_estimator``, ``L_Q``, the input keys) is
    :class:`~torchrl_sym.objectives.in_sample.WeightedActorCriticLoss`'s, shared with AWAC, SQL
    and XQL; ``V'(s')`` of ``y`` is ``V(s')`` or, with ``value_loss="policy"``, ``min Q̄(s', a'')``.
    ``d`` is ``("next", "terminated")``: truncated transitions bootstrap. ``V(s')`` in ``y`` is
    evaluated with detached value parameters; ``a'``, ``a''`` are drawn under
    ``ExplorationType.RANDOM`` with detached actor parameters. Each ``loss_*`` reaches only its
    own network (``loss_actor`` the actor, ``loss_qvalue`` the online critics, ``loss_value``
    V, ``loss_behavior`` π̂_β); target critics are buffers and get no gradient. Sum the
    ``loss_*`` entries and step one optimizer per network, as with TorchRL's ``IQLLoss``.

    **Behavior warm-up** (off by default: ``behavior_warmup=0``). With ``behavior_warmup=K > 0``
    the symmetry term enters ``loss_actor`` only once the buffer ``step_count`` is ``>= K``, so
    that π̂_β has had K steps of maximum likelihood before the ratio ``π_θ/π̂_β`` is trusted.
    What counts as a step: one call of ``forward`` (``loss(batch)``) in training mode
    (``loss.train()``, the default), which increments ``step_count`` by one after computing the
    losses, so calls 0 .. K−1 have no symmetry term and call K has it. Nothing else counts: a
    call in ``eval()`` mode (as ``BatchNorm``'s ``num_batches_tracked``), and the per-term
    methods (:meth:`actor_loss`, :meth:`qvalue_loss`, :meth:`value_loss`,
    :meth:`behavior_loss`), which read ``step_count`` without advancing it. A loop that calls the
    per-term methods, or runs several forwards per optimizer step, sets the count itself:
    ``loss.step_count.fill_(step)``. ``step_count`` is an int64 scalar in ``state_dict``, so it
    survives checkpoint/resume. ``recipes/sfac.py`` passes ``behavior_warmup =
    sfac.behavior_warmup_fraction × train.steps`` (10 %, the paper's 100k of 1M) and calls
    ``forward`` once per training step; the ``symmetry_active`` diagnostic says whether the
    term is on.

    **Actions.** Dataset actions are clipped to ``±action_clip`` (default ``1 − 1e-5``, the
    data layer's clip at load time, so the clip is a no-op on library data) before every
    ``log_prob``: TanhNormal gives about −276 at exactly ±1. The clip is applied to a local
    tensor; the loss never writes into the input batch (no priority or log-prob entries).

    Args:
        actor_network: π_θ, a ``ProbabilisticActor`` (``observation -> action`` with
            ``get_dist``), e.g. :func:`torchrl_sym.models.make_tanh_gaussian_actor` or
            :func:`~torchrl_sym.models.make_gaussian_actor`.
        qvalue_network: ``Q(s, a)`` (``state_action_value``): one module (its parameters are
            copied and re-drawn for ``num_qvalue_nets`` heads, as in TorchRL) or a list of
            ``num_qvalue_nets`` modules; the heads are vmapped. Targets are created here.
        value_network: ``V(s)`` (``state_value``).
        behavior_network: π̂_β, a probabilistic actor of the same kind as the actor. ``None``
            (default): a deep copy of ``actor_network`` whose submodules that define
            ``reset_parameters`` (the linear layers) are re-initialized, so π̂_β starts
            independent of π_θ (free parameters outside such submodules, e.g. the Gaussian
            actor's state-independent log σ, are copied as they are). It must not share
            parameters with the actor.

    Keyword Args:
        divergence: generator name (``jeffreys``, ``js``, ``gan``, ``forward_kl``,
            ``reverse_kl``, ``pearson_chi2``) or an :class:`FDivergence`.
        kappa: κ mode (``balanced`` f''(1)/2, ``unit`` 1, ``curvature`` f''(1)) or a float > 0.
        n_loss: N_loss, the last order of the symmetry series; 0 or 1 switches it off.
        policy_order: N of the regularized policy, 2 or 3 (see above).
        epsilon: ratio clip ε > 0; for ε ≥ 1 there is no lower clip.
        tau: temperature τ of the exp weight and of the N = 3 weight.
        tau2: τ₂ of the N = 2 weight; ``None``: ``2 c₂ τ``.
        w_max: cap W_max of the regression weight ``w_kl`` (either kind).
        kl_weight: ``"exp"`` or ``"sparse"`` (see above); default from ``preset``.
        value_loss: ``"expectile"``, ``"sparse"`` or ``"policy"``; default from ``preset``.
        expectile: τ_e of the expectile value loss.
        preset: ``"iql_compatible"`` (exp / expectile, also the default when ``None``) or
            ``"chi2_consistent"`` (sparse / sparse, every weight follows the N = 2 policy).
            An explicit ``kl_weight``/``value_loss`` that contradicts the preset is an error.
        keep_linear_term: include ``h_1 (r_c − 1)`` in the series (zero-mean only when π_θ has
            no mass outside the support of π*).
        behavior_warmup: training-mode ``forward`` calls before the symmetry term is switched
            on (see "Behavior warm-up" above); 0 (default): on from the first call and in the
            per-term methods of a new loss.
        num_qvalue_nets: number of Q heads.
        loss_function: critic distance (``"l2"``, ``"l1"``, ``"smooth_l1"``).
        action_clip: clip for dataset actions before ``log_prob``; ``None`` disables it.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch (``"none"``: per-row
            ``loss_*``, ``asym`` and ``csym``; the other diagnostics stay scalars).
        deactivate_vmap: loop over the Q heads instead of vmapping them.

    Returns (forward):
        TensorDict (batch size ``[]``) with ``loss_actor``, ``loss_qvalue``, ``loss_value``,
        ``loss_behavior`` and the detached diagnostics ``asym`` (L_asym), ``csym`` (L_csym as it
        enters the loss: 0 while the symmetry term is off, so ``loss_actor = asym + csym/κ``),
        ``w_kl_mean``, ``w2_nonzero_frac`` (fraction of rows with ``w_2 > 0``),
        ``r_clamped_frac`` (fraction of rows whose ratio was clamped) and ``symmetry_active``
        (1.0 once the warm-up is over and ``n_loss ≥ 2``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.objectives import SoftUpdate
        >>> from torchrl_sym.models import make_qvalue, make_tanh_gaussian_actor, make_value
        >>> from torchrl_sym.objectives import SfACLoss
        >>> _ = torch.manual_seed(0)
        >>> n_obs, n_act, B = 3, 2, 8
        >>> loss = SfACLoss(
        ...     make_tanh_gaussian_actor(n_obs, n_act, [16], log_std_bounds=(-5.0, 2.0)),
        ...     make_qvalue(n_obs, n_act, [16]),
        ...     make_value(n_obs, [16]),
        ...     divergence="jeffreys", n_loss=3, behavior_warmup=0,
        ... )
        >>> _ = loss.make_value_estimator(gamma=0.99)
        >>> updater = SoftUpdate(loss, tau=0.005)
        >>> optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        >>> batch = TensorDict({
        ...     "observation": torch.randn(B, n_obs),
        ...     "action": torch.rand(B, n_act) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, n_obs), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, [B])
        >>> out = loss(batch)
        >>> sum(v for k, v in out.items() if k.startswith("loss_")).backward()
        >>> optim.step(); optim.zero_grad(); updater.step()
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_behavior', 'loss_qvalue', 'loss_value']
        >>> int(loss.step_count)
        1
    """

    @dataclass
    class _AcceptedKeys(WeightedActorCriticLoss._AcceptedKeys):
        """Keys read from the batch and written by the networks.

        Those of :class:`~torchrl_sym.objectives.in_sample.WeightedActorCriticLoss` (``action``:
        the dataset action and the key the actor writes its sample to; ``state_action_value``:
        the Q network's output; ``reward``, ``done`` and ``terminated`` under ``"next"``, only
        terminated transitions stopping the bootstrap; ``priority``, which this loss never
        writes), and:

        Attributes:
            value (NestedKey): the value network's output. Defaults to ``"state_value"``.
        """

        value: NestedKey = "state_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0,)

    value_network: TensorDictModule
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams
    behavior_network: TensorDictModule
    behavior_network_params: TensorDictParams
    target_behavior_network_params: TensorDictParams
    step_count: Tensor

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule,
        behavior_network: ProbabilisticTensorDictSequential | None = None,
        *,
        divergence: str | FDivergence = "jeffreys",
        kappa: Literal["balanced", "unit", "curvature"] | float = "balanced",
        n_loss: int = 3,
        policy_order: int = 2,
        epsilon: float = 0.2,
        tau: float = 1.0 / 3.0,
        tau2: float | None = None,
        w_max: float = 100.0,
        kl_weight: Literal["exp", "sparse"] | None = None,
        value_loss: Literal["expectile", "sparse", "policy"] | None = None,
        expectile: float = 0.7,
        preset: Literal["iql_compatible", "chi2_consistent"] | None = None,
        keep_linear_term: bool = False,
        behavior_warmup: int = 0,
        num_qvalue_nets: int = 2,
        loss_function: str = "l2",
        action_clip: float | None = 1.0 - 1e-5,
        reduction: Literal["mean", "sum", "none"] = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        self._out_keys = None
        check_loss_function(loss_function)

        # ---- the divergence and its coefficients
        self.divergence = (
            divergence if isinstance(divergence, FDivergence) else get_divergence(divergence)
        )
        self.kappa = self.divergence.kappa(kappa)
        if isinstance(n_loss, bool) or not isinstance(n_loss, int) or n_loss < 0:
            raise ValueError(
                f"n_loss must be an int >= 0 (0 or 1: no symmetry term), got {n_loss!r}."
            )
        self.n_loss = n_loss
        self.keep_linear_term = bool(keep_linear_term)
        first = 1 if self.keep_linear_term else 2
        h = self.divergence.symmetry_coefficients(self.kappa, n_loss)
        # (n, h_n) for the orders in the series; empty when the symmetry term is off
        self._series = tuple((n, h[n - 1]) for n in range(first, n_loss + 1)) if n_loss >= 2 else ()
        if policy_order not in (2, 3):
            raise ValueError(
                f"policy_order must be 2 or 3 (closed-form N = 2 or N = 3 policy), got {policy_order!r}."
            )
        self.policy_order = policy_order
        self._c2 = self.divergence.taylor_coefficient(2)
        self._c3 = self.divergence.taylor_coefficient(3)

        # ---- scalar knobs
        self.epsilon = _positive(epsilon, "epsilon")
        self._log_r_low = math.log1p(-self.epsilon) if self.epsilon < 1 else None
        self._log_r_high = math.log1p(self.epsilon)
        self.tau = _positive(tau, "tau")
        self.tau2 = _positive(
            self.divergence.n2_tau(self.tau) if tau2 is None else tau2,
            "tau2 (2 c_2 tau when not given)",
        )
        self.w_max = _positive(w_max, "w_max", allow_inf=True)
        if not 0.0 < expectile < 1.0:
            raise ValueError(f"expectile must lie in (0, 1), got {expectile!r}.")
        self.expectile = float(expectile)
        if (
            isinstance(behavior_warmup, bool)
            or not isinstance(behavior_warmup, int)
            or behavior_warmup < 0
        ):
            raise ValueError(f"behavior_warmup must be an int >= 0, got {behavior_warmup!r}.")
        self.behavior_warmup = behavior_warmup
        if action_clip is not None and not 0.0 < action_clip:
            raise ValueError(f"action_clip must be positive or None, got {action_clip!r}.")
        self.action_clip = action_clip
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self.reduction = reduction
        self.loss_function = loss_function
        self.deactivate_vmap = deactivate_vmap

        # ---- preset and the [L] switches it sets
        if preset is not None and preset not in _PRESETS:
            raise ValueError(
                f"Unknown preset {preset!r}; expected one of {sorted(_PRESETS)} or None."
            )
        chosen = _PRESETS[preset or "iql_compatible"]
        for name, value in (("kl_weight", kl_weight), ("value_loss", value_loss)):
            if preset is not None and value is not None and value != chosen[name]:
                raise ValueError(
                    f"{name}={value!r} contradicts preset={preset!r} ({name}={chosen[name]!r}); "
                    f"pass one or the other."
                )
        self.kl_weight = kl_weight if kl_weight is not None else chosen["kl_weight"]
        self.value_loss_type = value_loss if value_loss is not None else chosen["value_loss"]
        if self.kl_weight not in _KL_WEIGHTS:
            raise ValueError(f"kl_weight must be one of {_KL_WEIGHTS}, got {self.kl_weight!r}.")
        if self.value_loss_type not in _VALUE_LOSSES:
            raise ValueError(
                f"value_loss must be one of {_VALUE_LOSSES}, got {self.value_loss_type!r}."
            )

        # ---- networks: actor, value and the critic ensemble through the shared base
        if behavior_network is None:
            behavior_network = copy.deepcopy(actor_network)
            for module in behavior_network.modules():
                reset = getattr(module, "reset_parameters", None)
                if callable(reset):
                    reset()
        actor_param_ids = {id(p) for p in actor_network.parameters()}
        if any(id(p) in actor_param_ids for p in behavior_network.parameters()):
            raise ValueError(
                "behavior_network shares parameters with actor_network; pass a separate model "
                "(or None for a freshly initialized copy of the actor's architecture)."
            )
        super().__init__(
            actor_network,
            qvalue_network,
            value_network,
            num_qvalue_nets=num_qvalue_nets,
            reduction=reduction,
            deactivate_vmap=deactivate_vmap,
        )
        self.loss_function = loss_function
        self.convert_to_functional(behavior_network, "behavior_network", create_target_params=False)
        # counts forward calls in training mode; saved with the module, and checkpoints of every
        # version hold it (see "Behavior warm-up" in the class docstring)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # SfACLoss before the shared base stored a single critic without the ensemble dim: give
        # such checkpoints (num_qvalue_nets=1) the leading dim of 1 they have now
        if self.num_qvalue_nets == 1:
            for name in ("qvalue_network_params", "target_qvalue_network_params"):
                current = getattr(self, name).flatten_keys(".")
                for key, value in list(state_dict.items()):
                    if not key.startswith(f"{prefix}{name}."):
                        continue
                    expected = current.get(key[len(prefix) + len(name) + 1 :], None)
                    if expected is not None and value.dim() == expected.dim() - 1:
                        state_dict[key] = value.unsqueeze(0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------ plumbing
    def _network_in_keys(self) -> list[NestedKey]:
        return [
            *self.actor_network.in_keys,
            *[("next", key) for key in self.actor_network.in_keys],
            *self.behavior_network.in_keys,
            *self.qvalue_network.in_keys,
            *self.value_network.in_keys,
            *[("next", key) for key in self.value_network.in_keys],
        ]

    @property
    def out_keys(self):
        if self._out_keys is None:
            self._out_keys = [
                "loss_actor",
                "loss_qvalue",
                "loss_value",
                "loss_behavior",
                "asym",
                "csym",
                "w_kl_mean",
                "w2_nonzero_frac",
                "r_clamped_frac",
                "symmetry_active",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    def _value_estimator_kwargs(self) -> dict[str, Any]:
        """The base's keys and ``value`` (``V'(s')`` is always passed in)."""
        tensor_keys = super()._value_estimator_kwargs()["tensor_keys"]
        return {"tensor_keys": {**tensor_keys, "value": self.tensor_keys.value}}

    def _next_state_value(self, tensordict: TensorDictBase) -> Tensor:
        """``V'(s')`` of ``y``: ``V(s')`` with detached parameters, or ``min Q̄(s', a'')``,
        ``a'' ~ π_θ(s')``, for ``value_loss="policy"``; called without gradient."""
        if self.value_loss_type == "policy":
            return self._min_target_q(self._sample_policy(tensordict.get("next")))
        return self._state_value(tensordict.get("next"), self.value_network_params.detach())

    @property
    def symmetry_enabled(self) -> bool:
        """Whether the configuration has a symmetry term at all (``n_loss ≥ 2``)."""
        return bool(self._series)

    def symmetry_active(self) -> Tensor:
        """Bool scalar: the symmetry term enters ``loss_actor`` at the current ``step_count``."""
        if not self._series:
            return torch.zeros((), dtype=torch.bool, device=self.step_count.device)
        return self.step_count >= self.behavior_warmup

    def _action(self, tensordict: TensorDictBase) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
        if self.action_clip is not None:
            action = action.clamp(-self.action_clip, self.action_clip)  # a copy: batch untouched
        return action

    def _log_prob(self, name: str, tensordict: TensorDictBase, action: Tensor) -> Tensor:
        network = getattr(self, name)
        obs = tensordict.select(*network.in_keys, strict=False)
        with getattr(self, name + "_params").to_module(network, preserve_module_state=False):
            dist = network.get_dist(obs)
        return dist.log_prob(action)

    def _min_target_q(self, tensordict: TensorDictBase) -> Tensor:
        """``min_i Q̄_i`` on the (observation, action) entries of ``tensordict``, shape ``[B]``."""
        return self._min_q(tensordict, self.target_qvalue_network_params)

    def _state_value(
        self, tensordict: TensorDictBase, params: TensorDictBase | None = None
    ) -> Tensor:
        """``V(s)`` with ``params`` (default: the value network's, with gradient), shape ``[B]``."""
        params = self.value_network_params if params is None else params
        td_v = tensordict.select(*self.value_network.in_keys, strict=False)
        with params.to_module(self.value_network, preserve_module_state=False):
            self.value_network(td_v)
        return td_v.get(self.tensor_keys.value).squeeze(-1)

    @torch.no_grad()
    def _sample_policy(self, observation: TensorDictBase) -> TensorDictBase:
        """``observation`` keys plus an action drawn from π_θ (RANDOM, detached parameters)."""
        td = observation.select(*self.actor_network.in_keys, strict=False).copy()
        with (
            set_exploration_type(ExplorationType.RANDOM),
            self.actor_network_params.to_module(self.actor_network, preserve_module_state=False),
        ):
            self.actor_network(td)
        return td

    def policy_weight(self, advantage: Tensor) -> Tensor:
        """``π*/π_D`` at the advantage: ``w_2 = [1 + A/τ₂]₊`` (N = 2) or the N = 3 weight."""
        if self.policy_order == 2:
            return n2_policy_weight(advantage, self.tau2)
        c2, c3 = self._c2, self._c3
        y = advantage / self.tau
        no_root = torch.zeros_like(y, dtype=torch.bool)
        if c3 < 0:
            y = y.clamp(max=c2 * c2 / (-3.0 * c3))
        elif c3 > 0:
            no_root = y < c2 * c2 / (-3.0 * c3)
        disc = (4 * c2 * c2 + 12 * c3 * y).clamp(min=0)  # ≥ 0 up to rounding at the cap
        x = 2 * y / (2 * c2 + disc.sqrt())
        return torch.where(no_root, torch.zeros_like(x), (1 + x).clamp(min=0))

    # ---------------------------------------------------------------------------------- losses
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        # Every network runs once per update: log π_θ, log π̂_β (its gradient trains π̂_β, its
        # detached value enters the ratio), min Q̄ and V(s) (advantage and value loss) are shared
        # by the terms instead of being recomputed by each ``*_loss`` method.
        action = self._action(tensordict)
        log_pi = self._log_prob("actor_network", tensordict, action)
        log_beta = self._log_prob("behavior_network", tensordict, action)
        value = self._state_value(tensordict)
        with torch.no_grad():
            min_q = self._min_target_q(tensordict)
        loss_actor, metadata = self._actor_terms(
            tensordict, log_pi, log_beta.detach(), min_q - value.detach()
        )
        loss_value = self._value_terms(tensordict, value, min_q)
        loss_qvalue, _ = self.qvalue_loss(tensordict)
        loss_behavior = self._reduce_loss(-log_beta, tensordict=tensordict)
        if self.training:
            self.step_count.add_(1)
        out = TensorDict(
            {
                "loss_actor": loss_actor,
                "loss_qvalue": loss_qvalue,
                "loss_value": loss_value,
                "loss_behavior": loss_behavior,
                **metadata,
            },
            batch_size=[],
        )
        self._clear_weakrefs(
            tensordict,
            out,
            "actor_network_params",
            "behavior_network_params",
            "qvalue_network_params",
            "value_network_params",
            "target_qvalue_network_params",
        )
        return out

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``L_asym + L_csym/κ`` and its diagnostics (see the class docstring)."""
        action = self._action(tensordict)
        log_pi = self._log_prob("actor_network", tensordict, action)
        with torch.no_grad():
            advantage = self._min_target_q(tensordict) - self._state_value(tensordict)
            log_beta = (
                self._log_prob("behavior_network", tensordict, action) if self._series else None
            )
        return self._actor_terms(tensordict, log_pi, log_beta, advantage)

    def _actor_terms(
        self,
        tensordict: TensorDictBase,
        log_pi: Tensor,
        log_beta: Tensor | None,
        advantage: Tensor,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The actor loss from ``log π_θ(a|s)``, the detached ``log π̂_β(a|s)`` and ``A_v``."""
        if log_pi.shape != advantage.shape:
            raise RuntimeError(
                f"log π(a|s) has shape {tuple(log_pi.shape)} but the advantage "
                f"{tuple(advantage.shape)}; the actor's log_prob must sum over action dims."
            )
        with torch.no_grad():
            w_star = self.policy_weight(advantage)
            if self.kl_weight == "exp":
                w_kl = torch.exp(advantage / self.tau)
            else:
                w_kl = w_star
            w_kl = w_kl.clamp(max=self.w_max)
            support = w_star > 0
        asym = -(w_kl * log_pi)

        if self._series:
            csym, clamped = conditional_symmetry_term(
                log_pi,
                log_beta,
                w_star,
                self._series,
                log_r_low=self._log_r_low,
                log_r_high=self._log_r_high,
            )
            csym = torch.where(self.symmetry_active(), csym, torch.zeros_like(csym))
        else:
            clamped = torch.zeros_like(support)
            csym = torch.zeros_like(asym)

        loss = asym + csym / self.kappa
        loss = self._reduce_loss(loss, tensordict=tensordict)
        metadata = {
            "asym": self._reduce_loss(asym, tensordict=tensordict).detach(),
            "csym": self._reduce_loss(csym, tensordict=tensordict).detach(),
            "w_kl_mean": w_kl.mean(),
            "w2_nonzero_frac": support.to(w_kl.dtype).mean(),
            "r_clamped_frac": clamped.to(w_kl.dtype).mean(),
            "symmetry_active": self.symmetry_active().to(w_kl.dtype),
        }
        return loss, metadata

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """``L_V`` of the configured ``value_loss`` (only V receives gradients)."""
        value = self._state_value(tensordict)
        if self.value_loss_type == "policy":
            min_q = None
        else:
            with torch.no_grad():
                min_q = self._min_target_q(tensordict)
        return self._value_terms(tensordict, value, min_q), {}

    def _value_terms(
        self, tensordict: TensorDictBase, value: Tensor, min_q: Tensor | None
    ) -> Tensor:
        """``L_V`` from ``V(s)`` and the detached ``min Q̄(s, a)`` of the dataset action."""
        if self.value_loss_type == "policy":
            with torch.no_grad():
                target = self._min_target_q(self._sample_policy(tensordict))
            loss = 0.5 * (value - target).pow(2)
        else:
            u = min_q - value
            if self.value_loss_type == "expectile":
                weight = torch.where(
                    u < 0,
                    torch.full_like(u, 1.0 - self.expectile),
                    torch.full_like(u, self.expectile),
                )
                loss = weight * u.pow(2)
            else:  # sparse: z = 1 + u/(2α) = 1 + u/τ₂, α = τ₂/2
                alpha = self.tau2 / 2
                z = 1 + u / (2 * alpha)
                loss = z.clamp(min=0).pow(2) + value / alpha
        return self._reduce_loss(loss, tensordict=tensordict)

    def behavior_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict]:
        """``L_β = −mean_B log π̂_β(a|s)`` (maximum likelihood of the dataset actions)."""
        log_beta = self._log_prob("behavior_network", tensordict, self._action(tensordict))
        return self._reduce_loss(-log_beta, tensordict=tensordict), {}


def conditional_symmetry_term(
    log_pi: Tensor,
    log_beta: Tensor,
    w_star: Tensor,
    series,
    *,
    log_r_low: float | None,
    log_r_high: float,
) -> tuple[Tensor, Tensor]:
    r"""Per-row ``w* Σ_n h_n (r_c − 1)ⁿ`` and the rows whose ratio was clamped (both ``[B]``).

    ``r = π_θ(a|s) / (π̂_β(a|s) w*)`` is formed in log space from ``log_pi`` (differentiated),
    ``log_beta`` and ``w* = π*/π_D`` (both treated as constants), clamped to
    ``[log_r_low, log_r_high]`` (``None``: no lower bound) and exponentiated. ``series`` is a
    sequence of ``(n, h_n)``. Rows with ``w* = 0`` (outside ``supp π*``) are exactly 0 and are
    selected away, never multiplied by 0, so no ``inf``/``NaN`` leaks into the gradient. This is
    :class:`SfACLoss`'s symmetry term before the batch mean; the Sf-AC toy
    (:mod:`torchrl_sym.toys.sfac`) calls it with exact densities.
    """
    support = w_star > 0
    log_w = torch.where(support, w_star, torch.ones_like(w_star)).log()
    log_r = torch.where(support, log_pi - log_beta.detach() - log_w, torch.zeros_like(log_pi))
    outside = (
        log_r > log_r_high if log_r_low is None else (log_r > log_r_high) | (log_r < log_r_low)
    )
    r_c = log_r.clamp(min=log_r_low, max=log_r_high).exp()
    d = r_c - 1
    total = torch.zeros_like(d)
    for n, h_n in series:
        total = total + h_n * d**n
    csym = torch.where(support, w_star.detach() * total, torch.zeros_like(r_c))
    return csym, support & outside


def _positive(value: float, what: str, *, allow_inf: bool = False) -> float:
    value = float(value)
    if not (value > 0 and (allow_inf or math.isfinite(value))):
        raise ValueError(
            f"{what} must be a {'' if allow_inf else 'finite '}positive float, got {value!r}."
        )
    return value
