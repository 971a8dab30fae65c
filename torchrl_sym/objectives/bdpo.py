r"""BDPO: behavior-regularized diffusion policy optimization (``docs/specs/bdpo.md`` §2–§5, §9).

Reference: Gao, Wu, Cao, Xiao, Yu, Zhang, *Behavior-Regularized Diffusion Policy Optimization for
Offline Reinforcement Learning*, ICML 2025 (arXiv 2502.04778); official JAX code
``typoverflow/flow-rl`` (``flowrl/agent/offline/bdpo``).

The actor π and the behavior ν are both N-step DDPM reverse chains on the discrete VP schedule with
the kernel variance ``σ_n² = β_n``. Their pathwise KL is a sum of per-step Gaussian KLs, each in
closed form in the ε-networks (:func:`kl_penalty`), which lets BDPO regularize every diffusion step
with a two-time-scale (environment step / diffusion step) actor-critic.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torch import Tensor, nn
from torch.func import functional_call
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _vmap_func

from torchrl_sym.diffusion.actor import DiffusionBehaviorActor
from torchrl_sym.diffusion.schedules import DiscreteSchedule
from torchrl_sym.models import Mish, _CatSequential
from torchrl_sym.objectives._ensemble import ensemble_call

__all__ = [
    "BDPOLoss",
    "BDPOPolicy",
    "BDPOPrepareTraining",
    "BDPOTargetUpdate",
    "ensemble_lcb",
    "kl_penalty",
    "make_bdpo_qvalue",
]

_Q_TARGET_FORMS = ("eq13", "legacy")
_STEP_SAMPLING = ("stratified", "uniform")
_UPDATER_GROUPS = {
    "critic": ("qvalue", "value"),
    "qvalue": ("qvalue",),
    "value": ("value",),
    "actor": ("actor",),
    "behavior": ("behavior",),
}


def kl_penalty(eps_actor: Tensor, eps_behavior: Tensor, weight: Tensor | float) -> Tensor:
    r"""Per-step KL ``ℓ_n = w_n Σ_A (ε_π − ε_ν)²`` between two reverse kernels (``[..., A] -> [...]``).

    With the shared input ``a_n`` and the shared variance ``σ_n² = β_n`` the two kernels are
    ``N(μ_π, β_n I)`` and ``N(μ_ν, β_n I)`` with ``μ = (a_n − β_n/√(1−ᾱ_n) ε)/√α_n``, so

    .. math:: KL = \frac{\|μ_π − μ_ν\|^2}{2β_n}
                 = \frac{β_n}{2(1−β_n)(1−ᾱ_n)} \sum_A (ε_π − ε_ν)^2,

    ``w_n`` being ``schedule.kl_weight[n]`` (spec §2, Eq. 17). ``weight`` broadcasts to
    ``eps_actor.shape[:-1]``. The x̂_0 clipping of the sampler is ignored, as in the official code.
    """
    return weight * (eps_actor - eps_behavior).pow(2).sum(-1)


def ensemble_lcb(
    values: Tensor, rho: float, *, sample_reduction: Literal["mean", "max"] = "mean"
) -> Tensor:
    """``LCB = mean_E(v) − ρ · std_E(v)`` after reducing the sample dim: ``[E, *B, M, 1] -> [*B, 1]``.

    ``v = mean_M`` (or ``max_M`` for the AntMaze max-Q backup) of the ensemble outputs; the standard
    deviation over the E members is the population one (``correction=0``), so E = 1 gives the
    member itself and ρ = 0 the ensemble mean.
    """
    if sample_reduction == "mean":
        reduced = values.mean(-2)
    elif sample_reduction == "max":
        reduced = values.amax(-2)
    else:
        raise ValueError(f"sample_reduction must be 'mean' or 'max', got {sample_reduction!r}.")
    mean = reduced.mean(0)
    if rho == 0.0:
        return mean
    return mean - rho * reduced.std(0, correction=0)


def make_bdpo_qvalue(
    observation_dim: int,
    action_dim: int,
    hidden: tuple[int, ...] | list[int] = (256, 256, 256),
    *,
    layer_norm: bool = False,
    activation: type[nn.Module] = Mish,
) -> ValueOperator:
    """One BDPO Q member ``(observation, action) -> state_action_value`` (spec §5).

    MLP on ``[s, a]`` with ``hidden`` (BDPO [256]×3), Mish, LayerNorm after every hidden layer when
    ``layer_norm`` (AntMaze), orthogonal init of gain √2 on hidden layers, gain 1 on the head, zero
    biases. Build E of them and pass the list to :class:`BDPOLoss` (stacked there and evaluated
    as one batched matmul per layer, ``torchrl_sym/objectives/_ensemble.py``).
    """
    if layer_norm:
        layers: list[nn.Module] = []
        width = observation_dim + action_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.LayerNorm(h), activation()]
            width = h
        layers.append(nn.Linear(width, 1))
        net: nn.Module = _CatSequential(*layers)
    else:
        net = MLP(
            in_features=observation_dim + action_dim,
            out_features=1,
            num_cells=list(hidden),
            activation_class=activation,
        )
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, layer in enumerate(linears):
        nn.init.orthogonal_(layer.weight, math.sqrt(2.0) if i < len(linears) - 1 else 1.0)
        nn.init.zeros_(layer.bias)
    return ValueOperator(net, in_keys=["observation", "action"], out_keys=["state_action_value"])


class BDPOLoss(LossModule):
    r"""BDPO's behavior, critic (Q and diffusion-value V_n ensembles) and actor losses.

    Shapes: B batch, M = ``num_samples`` draws per state, E ensemble members, N diffusion steps,
    A actions. ``w_n = β_n/(2(1−β_n)(1−ᾱ_n))``, ``ℓ_n = w_n Σ_A (ε_π − ε_ν)²`` (:func:`kl_penalty`),
    ``LCB(v) = mean_E(mean_M v) − ρ std_E(mean_M v)`` (:func:`ensemble_lcb`). Bars are EMA
    targets; ν̄ is the EMA behavior, the only behavior used in penalties. All targets are computed
    without gradient.

    **Behavior** (pretraining): ``L_ν = mean ‖ε_ν(s, √ᾱ_n a + √(1−ᾱ_n) ε, n) − ε‖²``, n ~ U{1..N}.

    **Q** (Eq. 13): at s' the EMA actor runs the full chain ``a'^N → … → a'^0`` M times and

    .. math::

        P(s') &= \mathrm{mean}_M \sum_{n=1}^{N} w_n \sum_A (ε_{\bar π}(s', a'^n, n) − ε_{\bar ν}(s', a'^n, n))^2 \\
        y_Q &= r + γ(1 − d)\,(\mathrm{LCB}(\bar Q(s', a'^0)) − η P(s'))
            \qquad (\texttt{q\_target\_form="legacy"}:\ r + γ(1−d)\,\mathrm{LCB} − η P) \\
        L_Q &= \mathrm{mean}_{E,B} (Q_k(s, a) − y_Q)^2

    **V_n** (Eq. 15): n ~ U{1..N} and ``a^n = √ᾱ_n a + √(1−ᾱ_n) ε`` from the dataset action; M
    EMA-actor steps ``a^{n−1} = μ_{\bar π}(a^n) + 1[n>1] √β_n z``; no reward, no discount:

    .. math::

        y_V &= \mathrm{LCB}(\bar V(s, a^{n−1}, n−1)) − η ℓ_n^{\bar π, \bar ν}(s, a^n)
            \qquad (\bar Q(s, a^0) \text{ in place of } \bar V_0 \text{ when } n = 1) \\
        L_V &= \mathrm{mean}_{E,B} (V_k(s, a^n, n) − y_V)^2

    **Actor** (Eq. 16): the same kind of (s, n, a^n); one reparameterized step with the online
    ε_θ, ``a^{n−1} = μ_θ(a^n) + 1[n>1] √β_n z`` (M draws; gradients flow through ``μ_θ``):

    .. math::

        L_π = −\mathrm{mean}_B\big(\mathrm{LCB}(\bar V(s, a^{n−1}, n−1)\ \text{or}\ \bar Q(s, a^0))
              − η\, ℓ_n^{θ, \bar ν}(s, a^n)\big)

    **Diffusion steps n** (``step_sampling``). ``"uniform"`` (the official code) draws n ~ U{1..N}
    for each row, so both ``V̄`` and ``Q̄`` are evaluated on every row and one of them is discarded.
    ``"stratified"`` (default) shuffles the batch rows and gives each n to exactly ``⌊B/N⌋`` of them
    (the ``B mod N`` left-over rows get distinct n drawn at random): the n = 1 rows take ``Q̄`` and
    the others ``V̄``, each network evaluated only on its rows. Every data row still gets each n
    with probability exactly 1/N (it lands on a uniformly random position of the shuffled batch),
    so the expectation of ``L_V`` and ``L_π`` is unchanged and their variance is smaller; the
    bootstrap costs about half (tested: the split bootstrap equals the unsplit one row by row, and
    the row-step frequencies are uniform).

    ``loss_actor`` reaches only the actor (through ``a^{n−1}`` and ε_θ in ℓ_n), ``loss_qvalue``
    only Q, ``loss_value`` only V, ``loss_behavior`` only the online behavior; no EMA parameter gets
    a gradient. Terminal flags are ``("next", "terminated")`` (truncated transitions bootstrap).
    All sampling inside the loss goes through the actor's explicit helpers (``sample_chain``,
    ``add_noise``, ``reverse_kernel`` plus drawn noise), which are random whatever the exploration
    type; the loss never calls the actor's ``forward`` (zero-noise under DETERMINISTIC).

    **Cadence** (the official code; the recipe's stages): pretrain the behavior; then every step
    :meth:`qvalue_loss` and :meth:`value_loss` with the critic EMAs
    (``make_target_updater("critic")``), and after a warm-up every ``update_ratio`` steps
    :meth:`actor_loss` with the actor EMA (``make_target_updater("actor")``). TorchRL's
    ``SoftUpdate`` would move every target at once, hence :class:`BDPOTargetUpdate`. Call
    :meth:`prepare_training` between pretraining and training (actor and actor EMA ← behavior EMA,
    which makes every penalty exactly 0 at the start).

    Args:
        actor_network: the diffusion actor π_θ, a :class:`DiffusionBehaviorActor` on a discrete
            schedule with ``variance="beta"`` sampled on all its N steps (DDPM).
        qvalue_network: ``(observation, action) -> state_action_value`` (e.g.
            :func:`make_bdpo_qvalue`): a list of E modules (stacked) or one module whose
            parameters TorchRL expands and re-draws ``num_qvalue_nets`` times; vmapped.
        value_network: the V_n ensemble, ``(observation [*B, S], action [*B, A], n [*B]) ->
            [E', *B, 1]``, e.g. :class:`~torchrl_sym.diffusion.NoiseConditionedCritic` (its members
            are batched matmuls).
        behavior_network: ν, a :class:`DiffusionBehaviorActor` of the actor's architecture
            (``None``: a deep copy of the actor). Its EMA copy is ``target_behavior_network_params``.

    Keyword Args:
        eta: η ≥ 0, the KL weight (spec §6 per task).
        rho: ρ ≥ 0 of the LCB.
        gamma: discount γ.
        num_samples: M, draws per state in every target and in the actor loss.
        num_qvalue_nets: E for a single ``qvalue_network`` module (a list gives its length).
        q_target_form: ``"eq13"`` (default) or ``"legacy"`` (see above; spec §4).
        max_q_backup: ``max_M`` instead of ``mean_M`` of ``Q̄(s', a'^0)`` in the Q target (AntMaze);
            the penalty is still averaged.
        step_sampling: ``"stratified"`` (default) or ``"uniform"`` n per row (see above).
        bandit: every transition is terminal (the 2-D tasks): ``y_Q = r`` exactly under ``eq13``,
            and the chain at s' is not run. Not allowed with ``legacy``.
        action_clip: dataset actions are clipped to ±``action_clip`` before noising (default
            1 − 1e-5; ``None`` for unbounded actions such as the 2-D tasks).
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` over the batch.

    Returns (forward):
        a TensorDict (batch size ``[]``) of :meth:`behavior_loss`, :meth:`qvalue_loss`,
        :meth:`value_loss` and :meth:`actor_loss`: ``loss_behavior``, ``loss_qvalue``,
        ``loss_value``, ``loss_actor`` and the detached diagnostics ``q_penalty`` (mean P(s')),
        ``q_target``, ``lcb_std`` (mean ensemble std of the Q target), ``v_penalty`` (mean ℓ_n in
        y_V), ``v_target``, ``actor_penalty`` (mean ℓ_n of the actor), ``actor_value`` and
        ``eps_rms``.

    The per-term methods return ``(loss, metadata)`` as TorchRL's own losses do (``IQLLoss.
    qvalue_loss``, ``TD3BCLoss.actor_loss``): the loss tensor (a scalar, or ``[B]`` with
    ``reduction="none"``) and a dict of the detached diagnostics of that term, under the names
    ``forward`` gives them. The training loop needs a ``batch -> TensorDict`` callable per
    objective: ``recipes/bdpo.py`` wraps each method (``loss_terms``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_sym.diffusion import (DiffusionBehaviorActor, MLPNoisePredictor,
        ...     NoiseConditionedCritic, VPDiscreteSchedule)
        >>> from torchrl_sym.objectives.bdpo import BDPOLoss, make_bdpo_qvalue
        >>> _ = torch.manual_seed(0)
        >>> S, A, B, N, E = 3, 2, 8, 5, 4
        >>> def diffusion():
        ...     net = MLPNoisePredictor(S, A, hidden=(16, 16), time_hidden=(16,))
        ...     return DiffusionBehaviorActor(net, VPDiscreteSchedule(N, variance="beta"),
        ...                                   action_low=-1.0, action_high=1.0, clip_sample=True)
        >>> loss = BDPOLoss(
        ...     diffusion(), [make_bdpo_qvalue(S, A, (16, 16)) for _ in range(E)],
        ...     NoiseConditionedCritic(S, A, num_members=E, hidden=(16, 16), time_hidden=(16,)),
        ...     diffusion(), eta=0.2, rho=1.0, gamma=0.99, num_samples=3)
        >>> critic_ema, actor_ema = loss.make_target_updater("critic"), loss.make_target_updater("actor")
        >>> batch = TensorDict({
        ...     "observation": torch.randn(B, S), "action": torch.rand(B, A) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, S), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)}}, [B])
        >>> loss_behavior, _ = loss.behavior_loss(batch)
        >>> loss_behavior.backward()                                # pretraining steps ...
        >>> loss.prepare_training()                                 # ... then π = π̄ = ν̄
        >>> loss_q, q_info = loss.qvalue_loss(batch)
        >>> loss_v, v_info = loss.value_loss(batch)
        >>> float(q_info["q_penalty"]), float(v_info["v_penalty"])
        (0.0, 0.0)
        >>> (loss_q + loss_v).backward(); critic_ema.step()
        >>> loss_actor, actor_info = loss.actor_loss(batch)
        >>> loss_actor.backward(); actor_ema.step()
        >>> sorted(k for k in loss(batch).keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_behavior', 'loss_qvalue', 'loss_value']
    """

    @dataclass
    class _AcceptedKeys:
        """Keys read from the batch.

        Attributes:
            observation (NestedKey): the state (also read under ``"next"``). Defaults to
                ``"observation"``.
            action (NestedKey): the dataset action. Defaults to ``"action"``.
            state_action_value (NestedKey): the Q network's output. Defaults to
                ``"state_action_value"``.
            reward (NestedKey): reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): done flag, read under ``"next"`` (not used by the targets; kept
                for TorchRL's key contract). Defaults to ``"done"``.
            terminated (NestedKey): termination flag under ``"next"``; stops the bootstrap.
                Defaults to ``"terminated"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        state_action_value: NestedKey = "state_action_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    actor_network: DiffusionBehaviorActor
    actor_network_params: TensorDictParams
    target_actor_network_params: TensorDictParams
    behavior_network: DiffusionBehaviorActor
    behavior_network_params: TensorDictParams
    target_behavior_network_params: TensorDictParams
    qvalue_network: TensorDictModule
    qvalue_network_params: TensorDictParams
    target_qvalue_network_params: TensorDictParams
    value_network: nn.Module
    value_network_params: TensorDictParams
    target_value_network_params: TensorDictParams

    def __init__(
        self,
        actor_network: DiffusionBehaviorActor,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: nn.Module,
        behavior_network: DiffusionBehaviorActor | None = None,
        *,
        eta: float = 1.0,
        rho: float = 0.0,
        gamma: float = 0.99,
        num_samples: int = 10,
        num_qvalue_nets: int | None = None,
        q_target_form: Literal["eq13", "legacy"] = "eq13",
        max_q_backup: bool = False,
        step_sampling: Literal["stratified", "uniform"] = "stratified",
        bandit: bool = False,
        action_clip: float | None = 1.0 - 1e-5,
        reduction: Literal["mean", "sum", "none"] = "mean",
    ) -> None:
        self._in_keys = None
        self._out_keys = None
        super().__init__()
        if not isinstance(actor_network, DiffusionBehaviorActor):
            raise TypeError(
                f"actor_network must be a DiffusionBehaviorActor, got {type(actor_network).__name__}."
            )
        schedule = actor_network.schedule
        if not isinstance(schedule, DiscreteSchedule) or schedule.variance != "beta":
            raise ValueError(
                "actor_network needs a discrete schedule with variance='beta' (σ_n² = β_n), e.g. "
                "VPDiscreteSchedule(5, variance='beta'); the exact posterior variance makes the "
                "n = 1 KL weight infinite."
            )
        if actor_network.num_steps != schedule.num_steps or actor_network.sampler != "ddpm":
            raise ValueError(
                "actor_network must sample with DDPM on all N steps of its schedule "
                f"(num_steps={schedule.num_steps}, sampler='ddpm'); got "
                f"num_steps={actor_network.num_steps}, sampler={actor_network.sampler!r}."
            )
        if behavior_network is None:
            behavior_network = copy.deepcopy(actor_network)
        if not isinstance(behavior_network, DiffusionBehaviorActor):
            raise TypeError(
                "behavior_network must be a DiffusionBehaviorActor (or None), got "
                f"{type(behavior_network).__name__}."
            )
        if behavior_network.schedule.num_steps != schedule.num_steps or not torch.equal(
            behavior_network.schedule.betas, schedule.betas
        ):
            raise ValueError(
                "behavior_network must use the actor's schedule (same N and β_n): the per-step KL "
                "compares kernels on the same a_n and n."
            )
        actor_ids = {id(p) for p in actor_network.parameters()}
        if any(id(p) in actor_ids for p in behavior_network.parameters()):
            raise ValueError(
                "behavior_network shares parameters with actor_network; pass a separate model "
                "(or None for a copy of the actor)."
            )
        a_shapes = {k: p.shape for k, p in actor_network.named_parameters()}
        b_shapes = {k: p.shape for k, p in behavior_network.named_parameters()}
        if a_shapes != b_shapes:
            raise ValueError(
                "behavior_network must have the actor's architecture (prepare_training copies the "
                "behavior EMA into the actor); their parameter names or shapes differ."
            )
        self.eta = _non_negative(eta, "eta")
        self.rho = _non_negative(rho, "rho")
        gamma = float(gamma)
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must lie in [0, 1], got {gamma!r}.")
        self.gamma = gamma
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"num_samples (M) must be an int >= 1, got {num_samples!r}.")
        self.num_samples = num_samples
        if q_target_form not in _Q_TARGET_FORMS:
            raise ValueError(
                f"q_target_form must be one of {_Q_TARGET_FORMS}, got {q_target_form!r}."
            )
        if bandit and q_target_form == "legacy":
            raise ValueError(
                "bandit=True skips the chain at s', which the legacy Q target still needs (it "
                "subtracts η P(s') from terminal transitions too); use q_target_form='eq13'."
            )
        self.q_target_form = q_target_form
        if step_sampling not in _STEP_SAMPLING:
            raise ValueError(
                f"step_sampling must be one of {_STEP_SAMPLING}, got {step_sampling!r}."
            )
        self.step_sampling = step_sampling
        self.max_q_backup = bool(max_q_backup)
        self.bandit = bool(bandit)
        if action_clip is not None and not action_clip > 0:
            raise ValueError(f"action_clip must be positive or None, got {action_clip!r}.")
        self.action_clip = action_clip
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}.")
        self.reduction = reduction

        self.convert_to_functional(actor_network, "actor_network", create_target_params=True)
        self.convert_to_functional(behavior_network, "behavior_network", create_target_params=True)
        self.convert_to_functional(value_network, "value_network", create_target_params=True)
        if isinstance(qvalue_network, (list, tuple)):
            if num_qvalue_nets is not None and num_qvalue_nets != len(qvalue_network):
                raise ValueError(
                    f"num_qvalue_nets={num_qvalue_nets} but {len(qvalue_network)} Q modules were given."
                )
            num_qvalue_nets = len(qvalue_network)
        elif num_qvalue_nets is None:
            raise ValueError(
                "Pass num_qvalue_nets (E) with a single qvalue_network, or a list of E modules."
            )
        if num_qvalue_nets < 1:
            raise ValueError(f"num_qvalue_nets must be >= 1, got {num_qvalue_nets}.")
        self.num_qvalue_nets = num_qvalue_nets
        if num_qvalue_nets == 1 and isinstance(qvalue_network, (list, tuple)):
            qvalue_network = [qvalue_network[0]]
        self.convert_to_functional(
            qvalue_network, "qvalue_network", num_qvalue_nets, create_target_params=True
        )
        # an MLP ensemble runs as one batched matmul per layer (same numbers as vmap, faster
        # compiled; torchrl_sym/objectives/_ensemble.py); any other Q module is vmapped
        self._vmap_q = ensemble_call(self.qvalue_network) or _vmap_func(
            self.qvalue_network, (None, 0), randomness=self.vmap_randomness
        )
        self.register_buffer("kl_weight", schedule.kl_weight.clone(), persistent=False)
        # The forward process (add_noise) runs on the networks themselves, outside the functional
        # calls that swap the parameter copies in: their schedules are also children of this
        # module, so ``.to(device)`` moves the noise tables with everything else.
        self._actor_schedule = actor_network.schedule
        self._behavior_schedule = behavior_network.schedule

    # ------------------------------------------------------------------------------ plumbing
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._in_keys = None  # re-derived from the new keys

    @property
    def in_keys(self):
        if self._in_keys is None:
            k = self.tensor_keys
            self._in_keys = [
                k.observation,
                k.action,
                ("next", k.observation),
                ("next", k.reward),
                ("next", k.done),
                ("next", k.terminated),
            ]
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    @property
    def out_keys(self):
        if self._out_keys is None:
            self._out_keys = [
                "loss_behavior",
                "loss_qvalue",
                "loss_value",
                "loss_actor",
                "eps_rms",
                "q_penalty",
                "q_target",
                "lcb_std",
                "v_penalty",
                "v_target",
                "actor_penalty",
                "actor_value",
            ]
        return self._out_keys

    @out_keys.setter
    def out_keys(self, values):
        self._out_keys = values

    @property
    def num_steps(self) -> int:
        """N, the number of diffusion steps."""
        return self.actor_network.schedule.num_steps

    def _action(self, tensordict: TensorDictBase) -> Tensor:
        action = tensordict.get(self.tensor_keys.action)
        if self.action_clip is not None:
            action = action.clamp(-self.action_clip, self.action_clip)
        return action

    def _params(self, name: str, target: bool) -> TensorDictBase:
        """Online parameters, or the EMA copy as plain tensors (``to_module`` would otherwise turn
        the stored target buffers into trainable ``Parameter`` s)."""
        if target:
            return getattr(self, f"target_{name}_params").detach()
        return getattr(self, f"{name}_params")

    def _repeat(self, x: Tensor) -> Tensor:
        """``[*B, D] -> [*B, M, D]``."""
        return x.unsqueeze(-2).expand(*x.shape[:-1], self.num_samples, x.shape[-1])

    def _epsilon(self, name: str, target: bool, observation, action, time) -> Tensor:
        network = getattr(self, name)
        params = self._params(name, target)
        with params.to_module(network, preserve_module_state=False):
            return network.epsilon(observation, action, time)

    def q_values(self, observation: Tensor, action: Tensor, *, target: bool = False) -> Tensor:
        """The Q ensemble ``[E, *B, 1]`` at ``observation [*B, S]``, ``action [*B, A]`` (vmapped)."""
        batch = action.shape[:-1]
        td = TensorDict(
            {self.qvalue_network.in_keys[0]: observation.expand(*batch, observation.shape[-1])},
            batch_size=batch,
        )
        td.set(self.qvalue_network.in_keys[1], action)
        params = self._params("qvalue_network", target)
        return self._vmap_q(td, params).get(self.tensor_keys.state_action_value)

    def values(
        self, observation: Tensor, action: Tensor, n: Tensor, *, target: bool = False
    ) -> Tensor:
        """The V_n ensemble ``[E', *B, 1]`` at ``(s, a^n, n)``."""
        # functional_call, not to_module: to_module would wrap the EMA tensors into fresh leaf
        # Parameters, and the actor loss would then also compute their (discarded) gradients
        params = dict(self._params("value_network", target).flatten_keys(".").items())
        return functional_call(self.value_network, params, (observation, action, n))

    def _noisy_dataset_action(
        self, tensordict: TensorDictBase
    ) -> tuple[Tensor, Tensor, Tensor, int | None, Tensor | None]:
        """``(s, n, a^n, split, perm)``: a^n ~ q(· | a^0 = dataset action) with n per row as
        ``step_sampling`` says. ``split`` is the number of leading n = 1 rows of a stratified
        layout and ``perm`` the shuffle (row i is the batch's row ``perm[i]``; see
        :meth:`stratified_steps`), both None for uniform n."""
        observation = tensordict.get(self.tensor_keys.observation)
        action = self._action(tensordict)
        batch = action.shape[:-1]
        if self.step_sampling == "stratified" and len(batch) == 1:
            # a uniform random permutation of the rows; argsort of uniforms, not randperm, whose
            # `x[randperm(len(x))]` pattern inductor fails to compile in torch 2.13
            perm = torch.rand(batch[0], device=action.device).argsort()
            observation, action = observation[perm], action[perm]
            n = self.stratified_steps(batch[0], device=action.device)
            split = batch[0] // self.num_steps
        else:
            n = torch.randint(1, self.num_steps + 1, batch, device=action.device)
            split = perm = None
        noisy, _ = self.actor_network.add_noise(action, n)
        return observation, n, noisy, split, perm

    @staticmethod
    def _unshuffle(loss: Tensor, perm: Tensor | None) -> Tensor:
        """Per-row losses back in the batch's row order (for ``reduction="none"`` and loss
        masks); differentiable."""
        if perm is None:
            return loss
        return torch.zeros_like(loss).index_copy(0, perm, loss)

    def stratified_steps(self, batch_size: int, *, device=None) -> Tensor:
        """``[B]`` steps: ``k = ⌊B/N⌋`` rows of each n = 1..N in order, then the ``B − kN``
        left-over rows with distinct n drawn uniformly without replacement."""
        k = batch_size // self.num_steps
        steps = torch.arange(1, self.num_steps + 1, device=device)
        # the first B − kN entries of a uniform random permutation of 1..N (argsort of uniforms,
        # as for the rows above)
        order = torch.rand(self.num_steps, device=device).argsort()
        left = order[: batch_size - k * self.num_steps]
        return torch.cat([steps.repeat_interleave(k), steps[left]])

    def _one_step(self, observation, noisy, n, eps, mean_std_params) -> Tensor:
        """M draws ``a^{n−1} = μ(a^n) + 1[n > 1] √β_n z`` -> ``[*B, M, A]`` (reparameterized)."""
        with mean_std_params.to_module(self.actor_network, preserve_module_state=False):
            mean, std = self.actor_network.reverse_kernel(observation, noisy, n, eps=eps)
        std = std * (n > 1).unsqueeze(-1).to(std.dtype)
        z = torch.randn(
            (*noisy.shape[:-1], self.num_samples, noisy.shape[-1]),
            device=noisy.device,
            dtype=noisy.dtype,
        )
        return mean.unsqueeze(-2) + std.unsqueeze(-2) * z

    def _bootstrap(
        self, observation: Tensor, prev: Tensor, n: Tensor, split: int | None = None
    ) -> Tensor:
        """``LCB(V̄(s, a^{n−1}, n−1))``, or ``LCB(Q̄(s, a^0))`` on rows with n = 1: ``[*B, 1]``.

        With ``split`` (a stratified layout: rows ``[0, split)`` have n = 1, rows
        ``[split, N·split)`` n > 1) each network runs on its own rows only; the left-over rows
        after ``N·split`` take both and keep the one their n asks for."""
        if split is None:
            obs = self._repeat(observation)
            prev_n = (n - 1).unsqueeze(-1).expand(prev.shape[:-1])
            v = ensemble_lcb(self.values(obs, prev, prev_n, target=True), self.rho)
            q = ensemble_lcb(self.q_values(obs, prev, target=True), self.rho)
            return torch.where((n > 1).unsqueeze(-1), v, q)
        body = split * self.num_steps
        parts = []
        if split > 0:
            parts.append(
                ensemble_lcb(
                    self.q_values(self._repeat(observation[:split]), prev[:split], target=True),
                    self.rho,
                )
            )
        if body > split:
            rows = slice(split, body)
            prev_n = (n[rows] - 1).unsqueeze(-1).expand(prev[rows].shape[:-1])
            values = self.values(self._repeat(observation[rows]), prev[rows], prev_n, target=True)
            parts.append(ensemble_lcb(values, self.rho))
        if body < n.shape[0]:
            parts.append(self._bootstrap(observation[body:], prev[body:], n[body:]))
        return torch.cat(parts, 0)

    # ---------------------------------------------------------------------------------- losses
    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        out: dict[str, Tensor] = {}
        for key, term in (
            ("loss_behavior", self.behavior_loss),
            ("loss_qvalue", self.qvalue_loss),
            ("loss_value", self.value_loss),
            ("loss_actor", self.actor_loss),
        ):
            loss, metadata = term(tensordict)
            out[key] = loss
            out.update(metadata)
        return TensorDict(out, batch_size=[])

    def behavior_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss_behavior, {"eps_rms"})``: the ε-MSE of the online behavior (mean over A) and
        the RMS of its ε prediction."""
        observation = tensordict.get(self.tensor_keys.observation)
        action = self._action(tensordict)
        n = torch.randint(1, self.num_steps + 1, action.shape[:-1], device=action.device)
        noisy, noise = self.behavior_network.add_noise(action, n)
        eps = self._epsilon("behavior_network", False, observation, noisy, n)
        loss = (eps - noise).pow(2).mean(-1)
        return self._reduce_loss(loss, tensordict=tensordict), {
            "eps_rms": eps.detach().pow(2).mean().sqrt()
        }

    @torch.no_grad()
    def q_target(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``y_Q [*B, 1]`` (Eq. 13 or legacy) and the mean penalty / ensemble std at s'."""
        reward = tensordict.get(("next", self.tensor_keys.reward))
        batch = reward.shape[: len(tensordict.batch_size)]
        reward = reward.reshape(*batch, 1)
        if self.bandit:
            zero = torch.zeros((), device=reward.device, dtype=reward.dtype)
            return reward, {"q_penalty": zero, "lcb_std": zero}
        not_done = 1.0 - tensordict.get(("next", self.tensor_keys.terminated)).reshape(
            *batch, 1
        ).to(reward.dtype)
        obs = self._repeat(tensordict.get(("next", self.tensor_keys.observation)))
        with self._params("actor_network", True).to_module(
            self.actor_network, preserve_module_state=False
        ):
            chain = self.actor_network.sample_chain(obs)
        steps = chain.actions[:-1]  # a'^N .. a'^1, [N, *B, M, A]
        times = chain.times.view(-1, *([1] * (steps.dim() - 2)))
        eps_nu = self._epsilon("behavior_network", True, obs, steps, times)
        weight = self.kl_weight[chain.times.long()].view_as(times).to(steps.dtype)
        penalty = kl_penalty(chain.epsilons, eps_nu, weight).sum(0).mean(-1, keepdim=True)
        q = self.q_values(obs, chain.actions[-1], target=True)  # [E, *B, M, 1]
        reduced = q.amax(-2) if self.max_q_backup else q.mean(-2)
        lcb = ensemble_lcb(q, self.rho, sample_reduction="max" if self.max_q_backup else "mean")
        if self.q_target_form == "eq13":
            target = reward + self.gamma * not_done * (lcb - self.eta * penalty)
        else:
            target = reward + self.gamma * not_done * lcb - self.eta * penalty
        return target, {"q_penalty": penalty.mean(), "lcb_std": reduced.std(0, correction=0).mean()}

    def qvalue_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss_qvalue, {"q_target", "q_penalty", "lcb_std"})``: ``mean_{E,B}(Q_k(s, a) −
        y_Q)²`` and the Q-target diagnostics."""
        target, info = self.q_target(tensordict)
        q = self.q_values(
            tensordict.get(self.tensor_keys.observation), tensordict.get(self.tensor_keys.action)
        )
        loss = (q - target).pow(2).mean(0).squeeze(-1)
        return self._reduce_loss(loss, tensordict=tensordict), {
            "q_target": target.mean(),
            **info,
        }

    @torch.no_grad()
    def value_target(
        self, observation: Tensor, n: Tensor, noisy: Tensor, split: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(y_V [*B, 1], ℓ_n [*B])`` at ``(s, n, a^n)`` with the EMA actor and behavior
        (``split``: the stratified layout of :meth:`_noisy_dataset_action`, or None)."""
        eps_pi = self._epsilon("actor_network", True, observation, noisy, n)
        prev = self._one_step(observation, noisy, n, eps_pi, self._params("actor_network", True))
        eps_nu = self._epsilon("behavior_network", True, observation, noisy, n)
        ell = kl_penalty(eps_pi, eps_nu, self.kl_weight[n].to(noisy.dtype))
        return self._bootstrap(observation, prev, n, split) - self.eta * ell.unsqueeze(-1), ell

    def value_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss_value, {"v_penalty", "v_target"})``: ``mean_{E,B}(V_k(s, a^n, n) − y_V)²``
        (n and a^n drawn here)."""
        observation, n, noisy, split, perm = self._noisy_dataset_action(tensordict)
        target, ell = self.value_target(observation, n, noisy, split)
        v = self.values(observation, noisy, n)
        loss = self._unshuffle((v - target).pow(2).mean(0).squeeze(-1), perm)
        return self._reduce_loss(loss, tensordict=tensordict), {
            "v_penalty": ell.mean(),
            "v_target": target.mean(),
        }

    def actor_loss(self, tensordict: TensorDictBase) -> tuple[Tensor, dict[str, Tensor]]:
        """``(loss_actor, {"actor_penalty", "actor_value"})``: ``−mean_B(LCB(V̄ or Q̄ at
        a^{n−1}) − η ℓ_n)`` through one reverse step."""
        observation, n, noisy, split, perm = self._noisy_dataset_action(tensordict)
        eps = self._epsilon("actor_network", False, observation, noisy, n)
        prev = self._one_step(observation, noisy, n, eps, self.actor_network_params)
        with torch.no_grad():
            eps_nu = self._epsilon("behavior_network", True, observation, noisy, n)
        ell = kl_penalty(eps, eps_nu, self.kl_weight[n].to(noisy.dtype))
        value = self._bootstrap(observation, prev, n, split).squeeze(-1)
        loss = self._unshuffle(-(value - self.eta * ell), perm)
        return self._reduce_loss(loss, tensordict=tensordict), {
            "actor_penalty": ell.detach().mean(),
            "actor_value": value.detach().mean(),
        }

    # ---------------------------------------------------------------------------- bookkeeping
    @torch.no_grad()
    def prepare_training(self) -> None:
        """Actor and actor EMA ← behavior EMA (the official ``prepare_training``)."""
        source = self.target_behavior_network_params
        for dest in (self.actor_network_params, self.target_actor_network_params):
            dest.data.update_(source.data)

    def make_target_updater(
        self,
        networks: Literal["critic", "qvalue", "value", "actor", "behavior"],
        *,
        tau: float = 0.005,
    ) -> BDPOTargetUpdate:
        """An EMA updater of one group: ``"critic"`` (Q and V), ``"actor"``, ``"behavior"`` ..."""
        if networks not in _UPDATER_GROUPS:
            raise ValueError(
                f"networks must be one of {sorted(_UPDATER_GROUPS)}, got {networks!r}."
            )
        return BDPOTargetUpdate(self, _UPDATER_GROUPS[networks], tau=tau)


class BDPOTargetUpdate:
    """Polyak/EMA update ``θ̄ ← (1 − τ) θ̄ + τ θ`` of selected networks of a :class:`BDPOLoss`.

    TorchRL's ``SoftUpdate`` moves every ``target_*`` parameter of a loss at once; BDPO moves the
    critic EMAs every step and the actor EMA only on actor steps, so each group has its updater.

    Args:
        loss: the :class:`BDPOLoss`.
        networks: names among ``"qvalue"``, ``"value"``, ``"actor"``, ``"behavior"``.
        tau: the rate τ (BDPO: 0.005 for every network).
    """

    def __init__(self, loss: BDPOLoss, networks, *, tau: float = 0.005):
        if not 0.0 < tau <= 1.0:
            raise ValueError(f"tau must lie in (0, 1], got {tau!r}.")
        unknown = set(networks) - {"qvalue", "value", "actor", "behavior"}
        if unknown or not networks:
            raise ValueError(
                f"networks must be a non-empty subset of qvalue/value/actor/behavior, got {networks!r}."
            )
        self.loss = loss
        self.networks = tuple(networks)
        self.tau = float(tau)
        for name in self.networks:  # TorchRL warns about targets no updater is associated with
            loss._has_update_associated[f"{name}_network"] = True

    @torch.no_grad()
    def step(self) -> None:
        for name in self.networks:
            source = getattr(self.loss, f"{name}_network_params")
            target = getattr(self.loss, f"target_{name}_network_params")
            src = list(source.values(True, True))
            dst = list(target.values(True, True))
            torch._foreach_lerp_([d.data for d in dst], [s.data for s in src], self.tau)


class BDPOPrepareTraining:
    """``step()`` calls :meth:`BDPOLoss.prepare_training` (a one-off "target update" for the loop)."""

    def __init__(self, loss: BDPOLoss):
        self.loss = loss

    def step(self) -> None:
        self.loss.prepare_training()


class BDPOPolicy(TensorDictModuleBase):
    """BDPO's action selection: M samples of the EMA actor (full DDPM), argmax of the mean Q.

    ``selection="argmax_q"`` (the official ``temperature = 0``): the sample of largest
    ``mean_E Q̄(s, a)``, ranked by the EMA (target) Q ensemble as the official
    ``jit_sample_and_select`` does with ``q0_target`` (``critic="online"``: the online ensemble);
    ``"first"`` (``temperature = None``: antmaze-umaze-diverse and the 2-D tasks): the first sample.
    Sampling is random whatever the exploration type (as the official evaluation); reads
    ``observation``, writes ``action``.
    """

    def __init__(
        self,
        loss: BDPOLoss,
        *,
        num_samples: int = 10,
        selection: Literal["argmax_q", "first"] = "argmax_q",
        critic: Literal["ema", "online"] = "ema",
    ):
        super().__init__()
        if selection not in ("argmax_q", "first"):
            raise ValueError(f"selection must be 'argmax_q' or 'first', got {selection!r}.")
        if critic not in ("ema", "online"):
            raise ValueError(
                f"critic must be 'ema' (the official code's target Q) or 'online', got {critic!r}."
            )
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples!r}.")
        self.__dict__["loss"] = loss  # not a submodule: the loss owns (and checkpoints) it
        self.num_samples = int(num_samples) if selection == "argmax_q" else 1
        self.selection = selection
        self.critic = critic
        self.in_keys = [loss.tensor_keys.observation]
        self.out_keys = [loss.tensor_keys.action]

    def _mean_q(self, observation: Tensor, action: Tensor) -> Tensor:
        return self.loss.q_values(observation, action, target=self.critic == "ema").mean(0)

    @torch.no_grad()
    @dispatch(auto_batch_size=False)
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        loss = self.loss
        observation = tensordict.get(self.in_keys[0])
        with loss._params("actor_network", True).to_module(
            loss.actor_network, preserve_module_state=False
        ):
            action = loss.actor_network.sample(
                observation, num_samples=self.num_samples, critic=self._mean_q
            )
        tensordict.set(self.out_keys[0], action)
        return tensordict


def _non_negative(value: float, what: str) -> float:
    value = float(value)
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a finite float >= 0, got {value!r}.")
    return value
