r"""SRPO: score-regularized policy optimization through a diffusion behavior (``docs/specs/srpo.md``)."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, dispatch
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch.func import functional_call
from torchrl.modules import Actor
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _reduce, _vmap_func

from torchrl_sym.diffusion.actor import DiffusionBehaviorActor
from torchrl_sym.objectives._ensemble import ensemble_call

__all__ = ["SRPO_WEIGHTS", "SRPOLoss", "make_srpo_actor", "srpo_time_weight"]

# ω(t) of the official code's weight strings (release default "VDS"; submission default "score").
SRPO_WEIGHTS = ("vds", "stable", "score", "hight")
_Q_REDUCE = ("mean", "min")


def srpo_time_weight(weight: str, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``ω(t)`` from ``(α_t, σ_t)``: ``vds`` σ², ``stable`` 1, ``score`` α/σ, ``hight`` σ⁴."""
    if weight == "vds":
        return sigma.pow(2)
    if weight == "stable":
        return torch.ones_like(sigma)
    if weight == "score":
        return alpha / sigma
    if weight == "hight":
        return sigma.pow(4)
    raise ValueError(f"weight must be one of {SRPO_WEIGHTS}, got {weight!r}.")


def make_srpo_actor(
    observation_dim: int,
    action_dim: int,
    hidden: Sequence[int] = (256, 256),
    *,
    in_keys: Sequence[NestedKey] = ("observation",),
    out_keys: Sequence[NestedKey] = ("action",),
) -> Actor:
    """SRPO's Dirac policy ``a = π_θ(s) = tanh(MLP(s))`` (ReLU, 2×256 locomotion, 4×256 AntMaze)
    as a TorchRL deterministic :class:`~torchrl.modules.Actor` (``observation -> action``).

    Examples:
        >>> actor = make_srpo_actor(11, 3, [32, 32])
        >>> actor(observation=torch.randn(5, 11)).shape
        torch.Size([5, 3])
    """
    from torchrl_sym.models import make_deterministic_actor

    return make_deterministic_actor(
        observation_dim, action_dim, hidden, in_keys=in_keys, out_keys=out_keys
    )


def _stacked_params(modules: Sequence[nn.Module]) -> TensorDictBase:
    if len(modules) == 1:
        return TensorDict.from_module(modules[0], as_module=True).unsqueeze(0)
    return TensorDict.from_modules(*modules, as_module=True, expand_identical=True)


class SRPOLoss(LossModule):
    r"""SRPO's actor loss: a Dirac policy ascends ``Q`` while a frozen diffusion behavior model's
    ε-network pulls its diffused action toward the behavior (score distillation).

    Reference: Chen, Lu, Wang, Su, Zhu, *Score Regularized Policy Optimization through Diffusion
    Behavior*, ICLR 2024 (arXiv 2310.07297); official code ``thu-ml/SRPO``.

    Objective (``μ`` the behavior, ``β`` the inverse temperature: larger β, weaker regularization):

    .. math::

        \max_\theta\ \mathbb{E}_s\big[Q(s, \pi_\theta(s))
            - \tfrac1\beta\, \mathbb{E}_t\, \omega(t)\tfrac{\sigma_t}{\alpha_t}
            \mathrm{KL}\big(\mathcal N(\alpha_t \pi_\theta(s), \sigma_t^2 I)\,\|\,\mu_t(\cdot|s)\big)\big]

    whose gradient, with ``∇ log μ_t ≈ −ε_ψ/σ_t`` (``σ_t/α_t`` cancels), is
    ``E_{s,t,z}[(1/β) ω(t) (ε_ψ(α_t a + σ_t z, t, s) − z) − ∇_a Q(s, a)]_{a=π_θ(s)} ∂π_θ/∂θ``.
    Per sample this loss computes, exactly as the official ``update_SRPO_policy``
    (shapes: ``a, z, ε̂, g`` ``[*B, A]``, ``t`` ``[*B]``):

    .. math::

        a &= \pi_\theta(s),\quad t \sim U(t_{min}, t_{max}),\quad z \sim N(0, I),
            \quad a_t = \alpha_t a + \sigma_t z \\
        \hat\varepsilon &= \mathrm{sg}\big[\varepsilon_\psi(a_t, t, s)\big]
            \ \ (- z \text{ with } \texttt{eps\_baseline}) \\
        g &= \mathrm{sg}\big[\nabla_a \bar Q(s, a)\big], \quad
            \bar Q = \tfrac12(\bar Q_1 + \bar Q_2)\ (\texttt{q\_reduce="min"}: \min_i \bar Q_i)
            \quad (\texttt{normalize\_q\_grad}: g / \sqrt{\mathrm{mean}_A g^2}) \\
        \ell &= \omega(t) \langle \hat\varepsilon, a\rangle - \beta \langle g, a\rangle,
            \qquad \partial \ell / \partial a = \omega(t)\hat\varepsilon - \beta g

    i.e. ``β`` times the paper's gradient (``β`` is the code's per-task temperature coefficient).
    ``ω(t)``: ``"vds"`` σ_t² (default), ``"stable"`` 1, ``"score"`` α_t/σ_t, ``"hight"`` σ_t⁴.
    ``beta=math.inf`` switches the regularizer off (``ℓ = −⟨g, a⟩``: plain deterministic
    Q-ascent). The value of ``ℓ`` is linear in ``a`` and is not a metric; watch ``q_mean``.

    Frozen networks. The behavior ε-network runs in ``eval()`` mode (dropout off; its mode is
    restored afterwards) with detached parameters and under ``no_grad``; ``∇_a Q̄`` is taken by
    ``torch.autograd.grad`` on a detached copy of ``a`` (``create_graph=False``) with the frozen
    critic parameters. Only the actor receives gradients; no diffusion sampling is ever run.

    Args:
        actor_network: ``π_θ``, a deterministic ``observation -> action`` module, e.g.
            :func:`make_srpo_actor` (tanh output).
        behavior_network: the pretrained :class:`~torchrl_sym.diffusion.DiffusionBehaviorActor`
            on a continuous schedule (SRPO: ``VPSDESchedule``). Its parameters are shared, not
            copied (``behavior_network_params`` wraps the module's own tensors), so a
            :class:`~torchrl_sym.objectives.DiffusionBehaviorLoss` training the same module in an
            earlier stage is seen here.
        qvalue_network: ``Q(s, a)`` (``state_action_value``): a list of modules (SRPO's twin
            critics, vmapped, each keeping its weights) or one module (one head).

    Keyword Args:
        beta: the Q-gradient coefficient ``β > 0`` (per task, ``docs/specs/srpo.md`` §6); ``math.inf``
            removes the regularizer.
        weight: ``ω(t)``, one of :data:`SRPO_WEIGHTS`.
        t_min, t_max: range of the diffusion time, ``0 < t_min ≤ t_max ≤ 1`` (``t_min = t_max``
            fixes ``t``, the submission code's ``WT="0.02"`` switch).
        eps_baseline: subtract ``z`` from ``ε̂`` (the zero-mean "ε-baseline"; off in the code).
        q_reduce: ``"mean"`` (the code) or ``"min"`` of the critic heads.
        normalize_q_grad: unit RMS of ``g`` over the action dims per sample (AntMaze, ``regq``).
        qvalue_params: critic parameters stacked ``[E, ...]`` to *share* instead of copying the
            modules' weights, e.g. ``iql_loss.target_qvalue_network_params``: the loss then reads
            the critic as another loss trains and Polyak-updates it. Default: a frozen copy of the
            weights of ``qvalue_network`` taken here. Either way it is
            ``target_qvalue_network_params`` (buffers, never trainable).
        behavior_params: behavior parameters to share instead of the module's own, e.g. the EMA
            copy ``bc_loss.target_actor_network_params`` of a DiffusionBehaviorLoss.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.
        deactivate_vmap: loop over the critic heads instead of vmapping them.

    Returns (forward):
        TensorDict with ``loss_actor`` and the detached diagnostics ``q_mean`` (``E Q̄(s, π(s))``
        with ``q_reduce``), ``score_term_norm`` (``E‖ω ε̂‖``), ``q_term_norm`` (``E‖β g‖``;
        ``E‖g‖`` when β = ∞, where the behavior is not evaluated and ``score_term_norm`` is 0) and
        ``action_abs_mean`` (``E|a|``; near 1 when the tanh saturates). Called with keyword
        tensors named after ``in_keys`` instead (``loss(observation=obs)``, TorchRL's
        ``dispatch``), it returns these entries as a tuple in ``out_keys`` order.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_sym.diffusion import (
        ...     DiffusionBehaviorActor, ResidualMLPNoisePredictor, VPSDESchedule)
        >>> from torchrl_sym.models import make_qvalue
        >>> from torchrl_sym.objectives import SRPOLoss
        >>> from torchrl_sym.objectives.srpo import make_srpo_actor
        >>> n_obs, n_act = 3, 2
        >>> behavior = DiffusionBehaviorActor(
        ...     ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1),
        ...     VPSDESchedule(), action_low=-1.0, action_high=1.0)
        >>> loss = SRPOLoss(
        ...     make_srpo_actor(n_obs, n_act, [16]), behavior,
        ...     [make_qvalue(n_obs, n_act, [16]) for _ in range(2)], beta=0.05)
        >>> optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)
        >>> out = loss(TensorDict({"observation": torch.randn(8, n_obs)}, [8]))
        >>> out["loss_actor"].backward(); optim.step(); optim.zero_grad()
        >>> sorted(out.keys())
        ['action_abs_mean', 'loss_actor', 'q_mean', 'q_term_norm', 'score_term_norm']
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from the batch and written by the networks.

        Attributes:
            observation (NestedKey): the state. Defaults to ``"observation"``.
            action (NestedKey): where the actor writes ``π_θ(s)`` and the critic reads the
                action. Defaults to ``"action"``.
            state_action_value (NestedKey): the critic's output. Defaults to
                ``"state_action_value"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys

    actor_network: TensorDictModule
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    behavior_network: DiffusionBehaviorActor
    behavior_network_params: TensorDictParams
    target_behavior_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: TensorDictModule,
        behavior_network: DiffusionBehaviorActor,
        qvalue_network: TensorDictModule | Sequence[TensorDictModule],
        *,
        beta: float,
        weight: str = "vds",
        t_min: float = 0.02,
        t_max: float = 0.98,
        eps_baseline: bool = False,
        q_reduce: Literal["mean", "min"] = "mean",
        normalize_q_grad: bool = False,
        qvalue_params: TensorDictBase | None = None,
        behavior_params: TensorDictBase | None = None,
        reduction: Literal["mean", "sum", "none"] = "mean",
        deactivate_vmap: bool = False,
    ) -> None:
        self._in_keys = None
        self._out_keys = None
        super().__init__()
        # ---- scalar knobs
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(
                f"beta must be a number > 0 (the Q-gradient coefficient; math.inf removes the "
                f"regularizer), got {beta!r}."
            )
        self.beta = float(beta)
        if weight not in SRPO_WEIGHTS:
            raise ValueError(
                f"weight must be one of {SRPO_WEIGHTS} (ω(t) = σ², 1, α/σ, σ⁴), got {weight!r}."
            )
        self.weight = weight
        if not (
            isinstance(t_min, (int, float))
            and isinstance(t_max, (int, float))
            and 0.0 < t_min <= t_max <= 1.0
        ):
            raise ValueError(
                f"Need 0 < t_min <= t_max <= 1 (SRPO: 0.02 and 0.98), got t_min={t_min!r}, "
                f"t_max={t_max!r}."
            )
        self.t_min, self.t_max = float(t_min), float(t_max)
        self.eps_baseline = bool(eps_baseline)
        if q_reduce not in _Q_REDUCE:
            raise ValueError(f"q_reduce must be one of {_Q_REDUCE}, got {q_reduce!r}.")
        self.q_reduce = q_reduce
        self.normalize_q_grad = bool(normalize_q_grad)
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self.reduction = reduction
        self.deactivate_vmap = deactivate_vmap

        # ---- the actor: the only trainable network
        self.convert_to_functional(actor_network, "actor_network", create_target_params=False)

        # ---- the frozen behavior model
        if not isinstance(behavior_network, DiffusionBehaviorActor):
            raise TypeError(
                "behavior_network must be a DiffusionBehaviorActor (SRPO's ε-prediction behavior "
                f"model), got {type(behavior_network).__name__}."
            )
        if behavior_network.schedule.discrete:
            raise ValueError(
                "behavior_network must use a continuous-time schedule (SRPO: VPSDESchedule()); "
                f"got {type(behavior_network.schedule).__name__}, which is discrete."
            )
        own = TensorDict.from_module(behavior_network, as_module=True)
        if behavior_params is None:
            behavior_params = own
        else:
            _check_structure(behavior_params, own, "behavior_params", "behavior_network")
        if not isinstance(behavior_params, TensorDictParams):
            behavior_params = TensorDictParams(behavior_params, no_convert=True)
        self.__dict__["behavior_network"] = behavior_network
        # the same structure, always in eval mode: the loss runs it with behavior_params
        self.__dict__["_behavior_eval"] = _EpsilonOf(copy.deepcopy(behavior_network)).eval()
        self.behavior_network_params = behavior_params
        self._has_update_associated["behavior_network"] = True

        # ---- the frozen critic (target parameters only)
        modules = list(qvalue_network) if isinstance(qvalue_network, (list, tuple)) else None
        if modules is not None and not modules:
            raise ValueError("qvalue_network is an empty list; pass one module or a list of them.")
        reference = modules[0] if modules is not None else qvalue_network
        if qvalue_params is None:
            stacked = _stacked_params(modules if modules is not None else [qvalue_network])
            qvalue_params = TensorDictParams(stacked.detach().clone(), no_convert=True)
        else:
            if qvalue_params.batch_dims < 1:
                raise ValueError(
                    "qvalue_params must be stacked over the critic heads (batch dims [E, ...]), "
                    f"got batch size {list(qvalue_params.batch_size)}."
                )
            _check_structure(
                qvalue_params[0],
                TensorDict.from_module(reference),
                "qvalue_params",
                "qvalue_network",
            )
            if not isinstance(qvalue_params, TensorDictParams):
                qvalue_params = TensorDictParams(qvalue_params, no_convert=True)
        self.__dict__["qvalue_network"] = reference
        self.target_qvalue_network_params = qvalue_params
        self._has_update_associated["qvalue_network"] = True
        self.num_qvalue_nets = int(qvalue_params.batch_size[0])
        # an MLP critic runs as batched matmuls over the stacked heads (same numbers as vmap,
        # faster compiled; torchrl_sym/objectives/_ensemble.py); any other module is vmapped
        fast = None if self.deactivate_vmap else ensemble_call(reference)
        self._vmap_qvalue = fast or _vmap_func(
            reference,
            (None, 0),
            randomness=self.vmap_randomness,
            pseudo_vmap=self.deactivate_vmap,
        )

    # ------------------------------------------------------------------------------ plumbing
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None  # re-derived from the new keys (keyword calls read in_keys)

    @property
    def in_keys(self):
        if self._in_keys is None:
            keys = [self.tensor_keys.observation, *self.actor_network.in_keys]
            self._in_keys = list(dict.fromkeys(keys))
        return self._in_keys

    @in_keys.setter
    def in_keys(self, value):
        self._in_keys = value

    @property
    def out_keys(self):
        if self._out_keys is None:
            self._out_keys = [
                "loss_actor",
                "q_mean",
                "score_term_norm",
                "q_term_norm",
                "action_abs_mean",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, value):
        self._out_keys = value

    def _behavior_epsilon(self, observation: Tensor, noisy: Tensor, time: Tensor) -> Tensor:
        """``ε_ψ(a_t, t, s)`` of the frozen behavior: an eval-mode copy of its structure
        (no dropout) called with the behavior's detached parameters through
        ``torch.func.functional_call``, so no ``training`` flag is flipped and no parameter is
        swapped at run time (either breaks a ``torch.compile`` graph)."""
        params = {
            f"inner.{key}": value
            for key, value in self.behavior_network_params.detach().flatten_keys(".").items()
        }
        return functional_call(self._behavior_eval, params, (observation, noisy, time))

    # ------------------------------------------------------------------------------ math
    def q_gradient(self, observation: Tensor, action: Tensor) -> tuple[Tensor, Tensor]:
        """``(Q̄(s, a), g = ∇_a Q̄(s, a))`` with the frozen critic heads reduced by ``q_reduce``;
        ``Q̄`` is ``[*B]``, ``g`` is ``[*B, A]``, both detached (before ``normalize_q_grad``).
        ``g`` is ``torch.func.grad`` of ``Σ_b Q̄(s_b, a_b)`` (rows are independent), which
        ``torch.compile`` traces into the update's graph."""
        observation = observation.detach()
        params = self.target_qvalue_network_params.detach()

        def total_q(a: Tensor) -> tuple[Tensor, Tensor]:
            td = TensorDict(
                {self.tensor_keys.observation: observation, self.tensor_keys.action: a},
                batch_size=a.shape[:-1],
            )
            q = self._vmap_qvalue(td, params).get(self.tensor_keys.state_action_value)
            if q.shape[-1] == 1 and q.ndim == a.ndim + 1:  # [E, *B, 1]
                q = q.squeeze(-1)
            q = q.mean(0) if self.q_reduce == "mean" else q.min(0).values
            return q.sum(), q

        g, q = torch.func.grad(total_q, has_aux=True)(action.detach())
        return q.detach(), g.detach()

    def actor_loss(
        self,
        tensordict: TensorDictBase,
        *,
        time: Tensor | None = None,
        noise: Tensor | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample ``ℓ`` (reduced by ``reduction``) and the detached diagnostics.

        ``time`` ``[*B]`` and ``noise`` ``[*B, A]`` replace the draws ``t ~ U(t_min, t_max)`` and
        ``z ~ N(0, I)`` (for exact checks and variance-reduction experiments).
        """
        observation = tensordict.get(self.tensor_keys.observation)
        td = tensordict.select(*self.actor_network.in_keys, strict=False).copy()
        with self.actor_network_params.to_module(self.actor_network, preserve_module_state=False):
            action = self.actor_network(td).get(self.tensor_keys.action)
        batch = action.shape[:-1]
        if time is None:
            u = torch.rand(batch, device=action.device, dtype=action.dtype)
            time = self.t_min + (self.t_max - self.t_min) * u
        elif time.shape != batch:
            raise ValueError(f"time must have shape {list(batch)}, got {list(time.shape)}.")
        if noise is None:
            noise = torch.randn_like(action)
        elif noise.shape != action.shape:
            raise ValueError(
                f"noise must have the action's shape {list(action.shape)}, got {list(noise.shape)}."
            )
        schedule = self.behavior_network.schedule
        alpha, sigma = schedule.marginal(time.to(action.dtype))
        alpha, sigma = alpha.to(action.dtype), sigma.to(action.dtype)
        omega = srpo_time_weight(self.weight, alpha, sigma)  # [*B]
        obs_b = observation.expand(*batch, observation.shape[-1])

        regularized = not math.isinf(self.beta)
        if regularized:
            with torch.no_grad():
                noisy = alpha.unsqueeze(-1) * action.detach() + sigma.unsqueeze(-1) * noise
                eps = self._behavior_epsilon(obs_b, noisy, time.to(action.dtype))
                if self.eps_baseline:
                    eps = eps - noise
            score_term = omega.unsqueeze(-1) * eps  # [*B, A]
        else:  # β = ∞: the behavior is not evaluated
            score_term = torch.zeros_like(action).detach()

        q, g = self.q_gradient(obs_b, action)
        if self.normalize_q_grad:
            rms = g.pow(2).mean(-1, keepdim=True).sqrt()
            g = g / rms.clamp_min(torch.finfo(g.dtype).tiny)

        if not regularized:
            q_term = g
            per_sample = -(g * action).sum(-1)
        else:
            q_term = self.beta * g
            per_sample = (score_term * action).sum(-1) - (q_term * action).sum(-1)
        loss = _reduce(per_sample, self.reduction)
        metadata = {
            "q_mean": q.mean(),
            "score_term_norm": score_term.norm(dim=-1).mean(),
            "q_term_norm": q_term.norm(dim=-1).mean(),
            "action_abs_mean": action.detach().abs().mean(),
        }
        return loss, metadata

    @dispatch(auto_batch_size=False)  # a lone [B, S] keyword input would get batch size [B, S]
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """``loss_actor`` and the diagnostics of :meth:`actor_loss`; keyword tensors named after
        ``in_keys`` (nested keys joined by ``"_"``) give the ``out_keys`` entries as a tuple."""
        loss, metadata = self.actor_loss(tensordict)
        return TensorDict({"loss_actor": loss, **metadata}, batch_size=[])


class _EpsilonOf(nn.Module):
    """``forward = inner.epsilon``: lets ``functional_call`` run a diffusion actor's ε-network."""

    def __init__(self, inner: DiffusionBehaviorActor):
        super().__init__()
        self.inner = inner

    def forward(self, observation: Tensor, noisy: Tensor, time: Tensor) -> Tensor:
        return self.inner.epsilon(observation, noisy, time)


def _check_structure(given: TensorDictBase, expected: TensorDictBase, name: str, owner: str):
    keys_given = set(given.keys(True, True))
    keys_expected = set(expected.keys(True, True))
    if keys_given != keys_expected:
        raise ValueError(
            f"{name} does not match the parameters of {owner}: missing "
            f"{sorted(map(str, keys_expected - keys_given))}, unexpected "
            f"{sorted(map(str, keys_given - keys_expected))}. Pass the parameters of the same "
            "architecture."
        )
    for key in keys_expected:
        if given.get(key).shape != expected.get(key).shape:
            raise ValueError(
                f"{name}[{key}] has shape {list(given.get(key).shape)}, but {owner} has "
                f"{list(expected.get(key).shape)}."
            )
