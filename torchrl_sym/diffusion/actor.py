"""The diffusion behavior actor: an ε-prediction diffusion model with TorchRL's actor contract.

:class:`DiffusionBehaviorActor` joins three separate pieces (as CleanDiffuser does): a noise
schedule (:mod:`torchrl_sym.diffusion.schedules`), an ε-network ``(s, a_t, τ) -> ε̂``
(:mod:`torchrl_sym.diffusion.networks`) and the samplers. The sampler kind and its step count are
call-time choices, so a model trained on one schedule is sampled with DDPM or DDIM on any grid.

Math (VP process ``a_t = α_t a_0 + σ_t ε``, see the schedules module):

* ``epsilon(s, a_t, τ) = ε̂``;  ``score(s, a_t, τ) = ∇ log p_t(a_t | s) ≈ −ε̂ / σ_t``.
* ``x̂_0 = (a_k − σ_k ε̂)/α_k``, clipped to the action bounds when ``clip_sample``.
* DDPM step k → k − 1: ``a_{k−1} = c0_k x̂_0 + ct_k a_k + s_k z`` (posterior mean, kernel std
  ``s_k``; no noise on the last step, as in DDPM and BDPO).
* DDIM step (η): ``a_{k−1} = α_{k−1} x̂_0 + √(σ_{k−1}² − c²) ε̂' + c z`` with
  ``c = η √posterior_var_k`` and ``ε̂' = (a_k − α_k x̂_0)/σ_k``; η = 0 is the deterministic
  probability-flow sampler, η = 1 with the exact posterior variance equals DDPM.

Randomness. :meth:`forward` (the TorchRL contract, ``observation -> action``) reads
:func:`tensordict.nn.probabilistic.interaction_type`: ``RANDOM`` or unset (``None``, as in
TorchRL's ``DiffusionActor``) draws ``a_K ~ N(0, I)`` and the step noise; ``DETERMINISTIC`` (and
``MODE`` / ``MEAN`` / ``MEDIAN``) starts from ``a_K = 0`` and adds no noise, a repeatable action.
The explicit helpers (:meth:`sample`, :meth:`sample_chain`, :meth:`reverse_step`) ignore the
interaction type: they are random unless called with ``deterministic=True`` and take explicit
``noise`` or a ``generator``, so a loss (which TorchRL runs under DETERMINISTIC) can sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal, NamedTuple

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.nn.probabilistic import InteractionType, interaction_type
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import add_random_module

from torchrl_sym.diffusion.schedules import NoiseSchedule, SamplingGrid

__all__ = ["DiffusionBehaviorActor", "DiffusionChain"]

Sampler = Literal["ddpm", "ddim"]
_SAMPLERS = ("ddpm", "ddim")
_NOT_RANDOM = (
    InteractionType.DETERMINISTIC,
    InteractionType.MODE,
    InteractionType.MEAN,
    InteractionType.MEDIAN,
)
# Native discrete grid field -> schedule buffer (exact float64-derived tables, on the device).
_NATIVE_TABLES = {
    "alphas": "sqrt_alphas_cumprod",
    "sigmas": "sqrt_one_minus_alphas_cumprod",
    "coef_x0": "posterior_mean_coef_x0",
    "coef_xt": "posterior_mean_coef_xt",
    "kernel_var": "kernel_variance",
}


class DiffusionChain(NamedTuple):
    """A full reverse chain with K steps (leading dims ``*B`` of the observation, A actions).

    Attributes:
        actions: ``[K + 1, *B, A]``, ``a_K, a_{K−1}, …, a_0`` (``a_0`` is the returned action).
        epsilons: ``[K, *B, A]``, ``ε̂`` evaluated at ``(actions[i], times[i])``, i = 0..K−1.
        times: ``[K]``, the model times ``τ_K, …, τ_1`` of those evaluations (n for discrete
            schedules).
    """

    actions: torch.Tensor
    epsilons: torch.Tensor
    times: torch.Tensor


def _spec_bounds(spec) -> tuple[torch.Tensor, torch.Tensor]:
    from torchrl.data import Composite

    if isinstance(spec, Composite):
        spec = spec["action"]
    low = getattr(spec, "low", None)
    high = getattr(spec, "high", None)
    if low is None or high is None:
        space = getattr(spec, "space", None)
        low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        raise ValueError(
            f"spec {type(spec).__name__} has no bounds; pass a Bounded spec or action_low/high."
        )
    return torch.as_tensor(low), torch.as_tensor(high)


class DiffusionBehaviorActor(TensorDictModuleBase):
    """A conditional diffusion model of the behavior policy, ``observation -> action``.

    Args:
        network: ε-network, ``network(observation [*B, S], a_t [*B, A], time [*B]) -> [*B, A]``.
        schedule: a :class:`~torchrl_sym.diffusion.schedules.NoiseSchedule`; a discrete one takes
            the step ``n ∈ 1..N`` as time (BDPO), a continuous one ``t ∈ (0, 1]`` (SRPO).

    Keyword Args:
        action_dim: A; read from ``network.action_dim`` when omitted.
        action_low, action_high: action bounds (floats or ``[A]`` tensors) ...
        spec: ... or a TorchRL ``Bounded`` spec (or a ``Composite`` with an ``"action"`` entry).
            With bounds, the returned action is always clamped to them.
        sampler: default sampler, ``"ddpm"`` or ``"ddim"``.
        num_steps: default number of sampling steps (``None``: the schedule's, N for a discrete
            schedule, 50 for a continuous one). Any count ≤ N works for a discrete schedule.
        ddim_eta: DDIM's η (0: deterministic given ``a_K``).
        clip_sample: clamp ``x̂_0`` to the bounds at every step (BDPO on D4RL: ``True`` with
            [−1, 1]; the 2-D toys: ``False``). Needs bounds.
        num_samples: actions drawn per state by :meth:`forward`; with more than one, ``critic``
            picks the argmax-Q sample.
        critic: ``critic(observation [*B, M, S], action [*B, M, A]) -> Q [*B, M(, 1)]`` or a
            TensorDictModule reading the actor's keys. It is *not* a submodule: its parameters
            are not the actor's (they stay out of the actor's optimizer, state dict and EMA).
        deterministic_mode: what a non-random interaction type does in :meth:`forward`:
            ``"zero_noise"`` (default; ``a_K = 0``, no step noise) or ``"sample"`` (ignored: always
            sample, e.g. BDPO's evaluation rule "10 samples, argmax Q").
        in_keys, out_keys: ``["observation"]`` and ``["action"]`` by default.

    Examples:
        >>> from tensordict import TensorDict
        >>> from torchrl_sym.diffusion import MLPNoisePredictor, VPDiscreteSchedule
        >>> net = MLPNoisePredictor(4, 2, hidden=(32, 32))
        >>> actor = DiffusionBehaviorActor(net, VPDiscreteSchedule(5), action_low=-1.0, action_high=1.0)
        >>> actor(TensorDict({"observation": torch.randn(8, 4)}, [8]))["action"].shape
        torch.Size([8, 2])
        >>> chain = actor.sample_chain(torch.randn(8, 4))
        >>> chain.actions.shape, chain.epsilons.shape
        (torch.Size([6, 8, 2]), torch.Size([5, 8, 2]))
    """

    def __init__(
        self,
        network: nn.Module,
        schedule: NoiseSchedule,
        *,
        action_dim: int | None = None,
        action_low: float | torch.Tensor | None = None,
        action_high: float | torch.Tensor | None = None,
        spec=None,
        sampler: Sampler = "ddpm",
        num_steps: int | None = None,
        ddim_eta: float = 0.0,
        clip_sample: bool = False,
        num_samples: int = 1,
        critic: Callable | None = None,
        deterministic_mode: Literal["zero_noise", "sample"] = "zero_noise",
        in_keys: Sequence[NestedKey] = ("observation",),
        out_keys: Sequence[NestedKey] = ("action",),
    ):
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}.")
        self.network = network
        self.schedule = schedule
        self.in_keys = list(in_keys)
        self.out_keys = list(out_keys)
        if action_dim is None:
            action_dim = getattr(network, "action_dim", None)
            if action_dim is None:
                raise ValueError("Pass action_dim: the network has no action_dim attribute.")
        self.action_dim = int(action_dim)
        if spec is not None:
            if action_low is not None or action_high is not None:
                raise ValueError("Pass either spec or action_low/action_high, not both.")
            action_low, action_high = _spec_bounds(spec)
        if (action_low is None) != (action_high is None):
            raise ValueError("action_low and action_high must be given together.")
        if action_low is not None:
            low = torch.as_tensor(action_low, dtype=torch.float32).expand(self.action_dim)
            high = torch.as_tensor(action_high, dtype=torch.float32).expand(self.action_dim)
            if not bool((low < high).all()):
                raise ValueError(f"action_low must be below action_high, got {low} and {high}.")
            self.register_buffer("action_low", low.clone(), persistent=False)
            self.register_buffer("action_high", high.clone(), persistent=False)
        else:
            self.action_low = self.action_high = None
        if clip_sample and self.action_low is None:
            raise ValueError("clip_sample=True needs action bounds (action_low/high or spec).")
        self.sampler = self._check_sampler(sampler)
        self.num_steps = schedule.default_steps if num_steps is None else int(num_steps)
        schedule.grid(self.num_steps)  # validate (and cache) the default grid now
        self.ddim_eta = float(ddim_eta)
        self.clip_sample = bool(clip_sample)
        if num_samples < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {num_samples}.")
        self.num_samples = int(num_samples)
        self.critic = critic
        if deterministic_mode not in ("zero_noise", "sample"):
            raise ValueError(
                f"deterministic_mode must be 'zero_noise' or 'sample', got {deterministic_mode!r}."
            )
        self.deterministic_mode = deterministic_mode

    def __setattr__(self, name, value):
        if name == "critic":
            # Kept out of nn.Module's registry so its parameters never count as the actor's.
            self.__dict__["critic"] = value
            return
        super().__setattr__(name, value)

    @staticmethod
    def _check_sampler(sampler: str) -> str:
        if sampler not in _SAMPLERS:
            raise ValueError(f"sampler must be one of {_SAMPLERS}, got {sampler!r}.")
        return sampler

    def extra_repr(self) -> str:
        return (
            f"action_dim={self.action_dim}, sampler={self.sampler!r}, num_steps={self.num_steps}, "
            f"clip_sample={self.clip_sample}, num_samples={self.num_samples}"
        )

    # ----------------------------------------------------------------------------- model access
    def grid(self, steps: int | None = None) -> SamplingGrid:
        """The schedule's sampling grid with ``steps`` steps (default :attr:`num_steps`)."""
        return self.schedule.grid(self.num_steps if steps is None else steps)

    def epsilon(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor | float
    ) -> torch.Tensor:
        """``ε̂(s, a_t, τ)``; ``observation`` broadcasts to ``action.shape[:-1]``, so does ``time``."""
        batch = action.shape[:-1]
        observation = observation.expand(*batch, observation.shape[-1])
        time = torch.as_tensor(time, device=action.device).to(action.dtype).expand(batch)
        return self.network(observation, action, time)

    def _marginal(
        self, time: torch.Tensor | float, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        time = torch.as_tensor(time, device=like.device)
        alpha, sigma = self.schedule.marginal(time)
        return alpha.to(like.dtype).unsqueeze(-1), sigma.to(like.dtype).unsqueeze(-1)

    def score(
        self, observation: torch.Tensor, action: torch.Tensor, time: torch.Tensor | float
    ) -> torch.Tensor:
        """``∇_{a_t} log p_t(a_t | s) ≈ −ε̂(s, a_t, τ) / σ_τ``."""
        _, sigma = self._marginal(time, action)
        return -self.epsilon(observation, action, time) / sigma

    def add_noise(
        self,
        action: torch.Tensor,
        time: torch.Tensor | float,
        noise: torch.Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward process ``a_t = α_τ a_0 + σ_τ ε``; returns ``(a_t, ε)``.

        ``time`` is ``n`` (int) for a discrete schedule or ``t`` for a continuous one, a scalar or
        a tensor broadcastable to ``action.shape[:-1]``; ``noise`` defaults to a fresh N(0, I).
        """
        if noise is None:
            noise = torch.randn(
                action.shape, generator=generator, device=action.device, dtype=action.dtype
            )
        alpha, sigma = self._marginal(time, action)
        return alpha * action + sigma * noise, noise

    # -------------------------------------------------------------------------- reverse kernel
    def _x0(self, x, eps, alpha, sigma, clip: bool) -> torch.Tensor:
        x0 = (x - sigma * eps) / alpha
        if clip:
            x0 = torch.clamp(x0, self.action_low, self.action_high)
        return x0

    def _step_tables(self, n, steps: int | None, like: torch.Tensor) -> dict:
        """Grid coefficients of the steps ``n`` (int, or tensor ``[*B]`` -> ``[*B, 1]``)."""
        grid = self.grid(steps)
        names = ("times", *_NATIVE_TABLES)
        if not isinstance(n, torch.Tensor):
            n = int(n)
            if not 1 <= n <= grid.num_steps:
                raise ValueError(f"step n must lie in 1..{grid.num_steps}, got {n}.")
            return {name: getattr(grid, name)[n] for name in names}
        n = n.to(device=like.device, dtype=torch.long)
        native = self.schedule.discrete and grid.num_steps == self.schedule.num_steps
        out = {}
        for name in names:
            if name == "times" and native:
                out[name] = n.to(like.dtype)
                continue
            if native:
                table = getattr(self.schedule, _NATIVE_TABLES[name]).to(like.dtype)
            else:
                table = grid.table(name, like)
            out[name] = table[n] if name == "times" else table[n].unsqueeze(-1)
        return out

    def reverse_kernel(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        n: int | torch.Tensor,
        *,
        steps: int | None = None,
        eps: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The DDPM reverse kernel ``p(a_{n−1} | a_n, s) = N(mean, std²)`` of the grid.

        ``mean = c0_n x̂_0 + ct_n a_n`` (the posterior mean with ``x̂_0`` from ``ε̂``, clipped when
        ``clip_sample``) and ``std = √kernel_var_n`` (exact posterior or ``√β_n`` per the schedule's
        ``variance``), both ``[*B, A]``. ``n`` indexes the grid of ``steps`` steps (default
        :attr:`num_steps`; for a discrete schedule sampled on all N steps it is the diffusion step
        n); an int or a tensor ``[*B]``. ``eps`` reuses an ``ε̂`` already computed at ``(a_n, n)``.
        Note: the sampler adds no noise on the last step (n = 1) whatever ``std`` says.
        """
        c = self._step_tables(n, steps, action)
        if eps is None:
            eps = self.epsilon(observation, action, c["times"])
        x0 = self._x0(action, eps, c["alphas"], c["sigmas"], self.clip_sample)
        mean = c["coef_x0"] * x0 + c["coef_xt"] * action
        std = torch.as_tensor(c["kernel_var"], dtype=action.dtype, device=action.device).sqrt()
        return mean, std.expand_as(mean)

    def reverse_step(
        self,
        observation: torch.Tensor,
        action: torch.Tensor,
        n: int | torch.Tensor,
        *,
        steps: int | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One DDPM step ``a_{n−1} = mean + 1[n > 1] · std · z``; returns ``(a_{n−1}, ε̂)``.

        Differentiable in the network's parameters through ``ε̂`` (the reparameterized one-step
        draw BDPO's actor loss needs). ``noise`` is ``z`` ``[*B, A]`` (default: fresh N(0, I)).
        """
        c = self._step_tables(n, steps, action)
        eps = self.epsilon(observation, action, c["times"])
        mean, std = self.reverse_kernel(observation, action, n, steps=steps, eps=eps)
        if deterministic:
            return mean, eps
        if noise is None:
            noise = torch.randn(
                action.shape, generator=generator, device=action.device, dtype=action.dtype
            )
        if isinstance(n, torch.Tensor):
            std = std * (n > 1).unsqueeze(-1).to(std.dtype)
        elif n <= 1:
            return mean, eps
        return mean + std * noise, eps

    # --------------------------------------------------------------------------------- samplers
    def _run_chain(
        self,
        observation: torch.Tensor,
        *,
        steps: int | None,
        sampler: str | None,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
        deterministic: bool,
        eta: float | None,
        keep_chain: bool,
    ):
        sampler = self._check_sampler(self.sampler if sampler is None else sampler)
        eta = self.ddim_eta if eta is None else float(eta)
        grid = self.grid(steps)
        num = grid.num_steps
        shape = (*observation.shape[:-1], self.action_dim)
        if noise is not None and noise.shape != (num + 1, *shape):
            raise ValueError(
                f"noise must have shape [K + 1, *B, A] = {[num + 1, *shape]} (a_K, then one draw "
                f"per step), got {list(noise.shape)}."
            )
        device, dtype = observation.device, observation.dtype

        def draw(i: int) -> torch.Tensor:
            if noise is not None:
                return noise[i]
            return torch.randn(shape, generator=generator, device=device, dtype=dtype)

        x = torch.zeros(shape, device=device, dtype=dtype) if deterministic else draw(0)
        actions, epsilons = [x], []
        clip = self.clip_sample
        for k in range(num, 0, -1):
            i = num - k + 1  # index of this step's noise draw
            alpha, sigma = grid.alphas[k], grid.sigmas[k]
            eps = self.epsilon(observation, x, grid.times[k])
            x0 = self._x0(x, eps, alpha, sigma, clip)
            if sampler == "ddpm":
                x_prev = grid.coef_x0[k] * x0 + grid.coef_xt[k] * x
                std = math.sqrt(grid.kernel_var[k]) if k > 1 and not deterministic else 0.0
                if std > 0.0:
                    x_prev = x_prev + std * draw(i)
            else:
                direction = (x - alpha * x0) / sigma if clip else eps
                c = eta * math.sqrt(grid.posterior_var[k]) if k > 1 and not deterministic else 0.0
                x_prev = grid.alphas[k - 1] * x0
                if k > 1:
                    x_prev = (
                        x_prev + math.sqrt(max(grid.sigmas[k - 1] ** 2 - c**2, 0.0)) * direction
                    )
                if c > 0.0:
                    x_prev = x_prev + c * draw(i)
            x = x_prev
            if keep_chain:
                actions.append(x)
                epsilons.append(eps)
        if self.action_low is not None:
            x = torch.clamp(x, self.action_low, self.action_high)
        if not keep_chain:
            return x
        actions[-1] = x
        times = torch.tensor(grid.times[num:0:-1], device=device, dtype=dtype)
        return DiffusionChain(torch.stack(actions), torch.stack(epsilons), times)

    def sample_chain(
        self,
        observation: torch.Tensor,
        *,
        steps: int | None = None,
        sampler: Sampler | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        eta: float | None = None,
    ) -> DiffusionChain:
        """Run the reverse chain and keep every ``a_k`` and ``ε̂_k`` (see :class:`DiffusionChain`).

        Args:
            observation: ``[*B, S]``.
            steps: grid size K (default :attr:`num_steps`).
            sampler: ``"ddpm"`` / ``"ddim"`` (default :attr:`sampler`).
            noise: ``[K + 1, *B, A]``: ``noise[0]`` is ``a_K``, ``noise[i]`` the draw of the i-th
                step (``a_{K−i+1} -> a_{K−i}``); draws a step does not use are ignored.
            generator: used for the draws when ``noise`` is not given.
            deterministic: ``a_K = 0`` and no step noise.
            eta: DDIM's η (default :attr:`ddim_eta`).

        The final action ``actions[-1]`` is clamped to the bounds when the actor has bounds.
        """
        return self._run_chain(
            observation,
            steps=steps,
            sampler=sampler,
            noise=noise,
            generator=generator,
            deterministic=deterministic,
            eta=eta,
            keep_chain=True,
        )

    def sample(
        self,
        observation: torch.Tensor,
        *,
        num_samples: int = 1,
        critic: Callable | None = None,
        steps: int | None = None,
        sampler: Sampler | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        deterministic: bool = False,
        eta: float | None = None,
    ) -> torch.Tensor:
        """Draw actions for ``observation [*B, S]``.

        Returns ``[*B, A]`` for ``num_samples = 1``; ``[*B, M, A]`` for ``num_samples = M > 1``
        without a critic; ``[*B, A]`` (the argmax over the M samples of ``critic(s, a)``) with
        one. ``noise`` (``[K + 1, *B(, M), A]``), ``steps``, ``sampler``, ``generator``,
        ``deterministic`` and ``eta`` are as in :meth:`sample_chain`.
        """
        if num_samples > 1:
            observation = observation.unsqueeze(-2).expand(
                *observation.shape[:-1], num_samples, observation.shape[-1]
            )
        actions = self._run_chain(
            observation,
            steps=steps,
            sampler=sampler,
            noise=noise,
            generator=generator,
            deterministic=deterministic,
            eta=eta,
            keep_chain=False,
        )
        if num_samples == 1 or critic is None:
            return actions
        return self._select(observation, actions, critic)

    def _select(self, observation, actions, critic) -> torch.Tensor:
        """The sample of maximal ``critic(s, a)`` along the sample dim (−2)."""
        if isinstance(critic, TensorDictModuleBase):
            td = TensorDict(
                {self.in_keys[0]: observation, self.out_keys[0]: actions},
                batch_size=actions.shape[:-1],
            )
            q = critic(td).get(critic.out_keys[0])
        else:
            q = critic(observation, actions)
        lead = actions.shape[:-1]
        if q.shape != lead and q.shape != (*lead, 1):
            raise ValueError(
                f"critic must return Q of shape {list(lead)} or {[*lead, 1]} for actions "
                f"{list(actions.shape)}, got {list(q.shape)}; reduce an ensemble dim first."
            )
        index = q.reshape(lead).argmax(dim=-1, keepdim=True)  # [*B, 1]
        index = index.unsqueeze(-1).expand(*index.shape, actions.shape[-1])
        return actions.gather(-2, index).squeeze(-2)

    def _deterministic(self) -> bool:
        return self.deterministic_mode == "zero_noise" and interaction_type() in _NOT_RANDOM

    @dispatch(auto_batch_size=False)
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Write ``action [*B, A]`` sampled for ``observation [*B, S]`` (see the class doc)."""
        observation = tensordict.get(self.in_keys[0])
        if self.num_samples > 1 and self.critic is None:
            raise ValueError(
                f"num_samples={self.num_samples} needs a critic to select one action per state; "
                "set actor.critic, or call actor.sample(obs, num_samples=M) to get all M samples."
            )
        action = self.sample(
            observation,
            num_samples=self.num_samples,
            critic=self.critic,
            deterministic=self._deterministic(),
        )
        tensordict.set(self.out_keys[0], action)
        return tensordict


# vmap over stacked actor parameters must use randomness="different" (the samplers draw noise).
add_random_module(DiffusionBehaviorActor)
