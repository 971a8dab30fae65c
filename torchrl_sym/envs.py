"""Gymnasium MuJoCo environments through TorchRL's ``GymEnv``, as evaluation envs.

Offline datasets name their environment in several spellings (a family name, a Gymnasium id,
a D4RL dataset name, a Minari dataset id). :func:`resolve_env_id` maps all of them to one
Gymnasium id and :func:`make_env` builds the TorchRL env a policy is evaluated in: float32
observations (optionally standardized with dataset statistics), episode-return tracking and an
optional step limit.
"""

from __future__ import annotations

import re

import gymnasium
import torch
from torch import Tensor
from torchrl.envs import (
    Compose,
    DoubleToFloat,
    GymEnv,
    GymWrapper,
    ObservationNorm,
    RewardSum,
    StepCounter,
    TransformedEnv,
)

__all__ = ["ENV_IDS", "make_env", "resolve_env_id"]

ENV_IDS: dict[str, str] = {
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "ant": "Ant-v5",
}
"""Short family names (as used by D4RL and Minari) -> Gymnasium MuJoCo v5 ids."""

# D4RL: "<family>-<dataset>-v<k>", e.g. "hopper-medium-replay-v2". The family is the whole
# first dash-separated token, so "antmaze-umaze-v2" has family "antmaze", not "ant".
_D4RL_NAME = re.compile(r"^(?P<family>[A-Za-z0-9]+)-(?P<dataset>[A-Za-z][\w-]*)-v\d+$")
# Minari: "<namespace>/<family>/<dataset>-v<k>", e.g. "mujoco/hopper/medium-v0".
_MINARI_ID = re.compile(
    r"^(?P<namespace>[\w.-]+)/(?P<family>[A-Za-z0-9]+)/(?P<dataset>[\w-]+)-v\d+$"
)


def resolve_env_id(name: str) -> str:
    """Returns the Gymnasium id of the environment that ``name`` refers to.

    Accepted spellings, tried in this order:

    1. a family name of :data:`ENV_IDS`, any case: ``"hopper"`` -> ``"Hopper-v5"``;
    2. a registered Gymnasium id, returned as is: ``"Hopper-v5"``, ``"Hopper-v4"``,
       ``"Pendulum-v1"`` (a MuJoCo v5 id is also matched case-insensitively: ``"hopper-v5"``);
    3. a D4RL dataset name ``<family>-<dataset>-v<k>``: ``"hopper-medium-v2"`` -> ``"Hopper-v5"``;
    4. a Minari dataset id ``<namespace>/<family>/<dataset>-v<k>``:
       ``"mujoco/hopper/medium-v0"`` and ``"torchrl_sym/hopper/medium-v0"`` -> ``"Hopper-v5"``.

    D4RL and Minari names resolve to the v5 env, the version Minari's MuJoCo datasets were
    collected in; D4RL's v2 datasets were collected in the older mujoco-py envs, so their
    returns are comparable but not identical.

    Raises:
        ValueError: if ``name`` matches none of these (for example ``"antmaze-umaze-v2"``,
            whose family ``antmaze`` is not ``ant``).

    Examples:
        >>> resolve_env_id("hopper-medium-replay-v2")
        'Hopper-v5'
        >>> resolve_env_id("mujoco/walker2d/expert-v0")
        'Walker2d-v5'
        >>> resolve_env_id("Pendulum-v1")
        'Pendulum-v1'
    """
    if not isinstance(name, str):
        raise TypeError(f"resolve_env_id expects a str, got {name!r} of type {type(name).__name__}")
    lowered = name.lower()
    if lowered in ENV_IDS:
        return ENV_IDS[lowered]
    if name in gymnasium.registry:
        return name
    for env_id in ENV_IDS.values():
        if lowered == env_id.lower():
            return env_id
    for pattern in (_D4RL_NAME, _MINARI_ID):
        match = pattern.match(name)
        if match is not None and match["family"].lower() in ENV_IDS:
            return ENV_IDS[match["family"].lower()]
    families = ", ".join(ENV_IDS)
    raise ValueError(
        f"Unknown environment {name!r}. Expected a family name ({families}), a registered "
        f"Gymnasium id such as 'Hopper-v5' or 'Pendulum-v1', a D4RL name such as "
        f"'hopper-medium-v2', or a Minari id such as 'mujoco/hopper/medium-v0'. "
        f"Register other environments with gymnasium.register before using them."
    )


def make_env(
    env_id: str,
    *,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    observation_norm: tuple[Tensor, Tensor] | None = None,
    max_episode_steps: int | None = None,
    num_envs: int | None = None,
) -> TransformedEnv:
    """Builds the TorchRL env for ``env_id`` (any spelling :func:`resolve_env_id` accepts).

    The env is ``GymEnv(resolve_env_id(env_id), device=device)`` or, with ``num_envs=N``, one
    vectorized env of batch size ``[N]``: ``GymWrapper`` around Gymnasium's
    ``make_vec(..., vectorization_mode="sync")`` with ``AutoresetMode.SAME_STEP`` (a sub-env that
    ends is reset inside the step that ended it; :func:`torchrl_sym.train.evaluate.evaluate_policy`
    counts each sub-env's rewards up to its first done). Seeding a vectorized env with ``s``
    seeds sub-env ``i`` with ``s + i``, so sub-env ``i`` starts exactly as an unbatched env seeded
    with ``s + i`` does. Either env gets, in order:

    - ``DoubleToFloat()``: MuJoCo's float64 observations (data and spec) become float32;
    - ``ObservationNorm(loc, scale, standard_normal=True)`` if ``observation_norm=(loc, scale)``:
      the policy sees ``(obs - loc) / scale`` (elementwise, ``loc`` and ``scale`` broadcast
      against the observation shape, e.g. ``[11]`` for Hopper), computed in float32;
    - ``RewardSum()``: ``"episode_reward"`` holds the return of the current episode so far,
      ``sum_{t' <= t} r_{t'}``, reset to 0 at every reset;
    - ``StepCounter(max_episode_steps)`` if given: ``"step_count"`` counts steps since reset and
      the episode is truncated after ``max_episode_steps`` steps. Gymnasium's own time limit
      (1000 steps for the MuJoCo envs) still applies, so this can only shorten episodes.

    Args:
        env_id: environment name, see :func:`resolve_env_id`.
        seed: if not None, ``env.set_seed(seed)`` seeds the Gymnasium env (its next reset draws
            its initial state from this seed).
        device: device of the tensors the env returns.
        observation_norm: ``(loc, scale)`` for observation standardization, usually the
            dataset's per-dimension mean and std; ``scale`` must be positive.
        max_episode_steps: optional step limit per episode (>= 1).
        num_envs: None for one unbatched env; ``N >= 1`` for ``N`` sub-envs stepped together
            in this process (one policy call per step for all of them).

    Returns:
        The :class:`~torchrl.envs.TransformedEnv`.

    Examples:
        >>> import torch
        >>> env = make_env("hopper-medium-v2", seed=0,
        ...                observation_norm=(torch.zeros(11), torch.full((11,), 2.0)))
        >>> rollout = env.rollout(5)
        >>> rollout["observation"].shape, rollout["observation"].dtype
        (torch.Size([5, 11]), torch.float32)
        >>> bool((rollout["next", "episode_reward"][-1] - rollout["next", "reward"].sum()).abs() < 1e-5)
        True
    """
    if max_episode_steps is not None and max_episode_steps < 1:
        raise ValueError(
            f"max_episode_steps must be a positive integer or None, got {max_episode_steps!r}"
        )
    if num_envs is not None and (
        isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1
    ):
        raise ValueError(f"num_envs must be a positive integer or None, got {num_envs!r}")
    resolved = resolve_env_id(env_id)
    if num_envs is None:
        base_env = GymEnv(resolved, device=device)
    else:
        vector_env = gymnasium.make_vec(
            resolved,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": gymnasium.vector.AutoresetMode.SAME_STEP},
        )
        base_env = GymWrapper(vector_env, device=device)
    transforms = [DoubleToFloat()]
    if observation_norm is not None:
        loc, scale = _check_observation_norm(
            observation_norm, base_env.observation_spec["observation"].shape, device
        )
        transforms.append(
            ObservationNorm(loc=loc, scale=scale, in_keys=["observation"], standard_normal=True)
        )
    transforms.append(RewardSum())
    if max_episode_steps is not None:
        transforms.append(StepCounter(max_steps=max_episode_steps))
    if isinstance(base_env, TransformedEnv):
        # GymWrapper wraps a vector env in its own transform (final observations): extend it
        env = base_env
        for transform in transforms:
            env.append_transform(transform)
    else:
        env = TransformedEnv(base_env, Compose(*transforms))
    observation_dtype = env.observation_spec["observation"].dtype
    if observation_dtype != torch.float32:
        raise RuntimeError(
            f"make_env({env_id!r}) produced observation spec dtype {observation_dtype}, expected "
            f"torch.float32; DoubleToFloat did not convert the observation of {resolved!r}."
        )
    if seed is not None:
        env.set_seed(seed)
    return env


def _check_observation_norm(
    observation_norm: tuple[Tensor, Tensor], observation_shape: torch.Size, device
) -> tuple[Tensor, Tensor]:
    """Returns ``(loc, scale)`` as float32 tensors on ``device`` after validating them."""
    try:
        loc, scale = observation_norm
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"observation_norm must be a pair (loc, scale) of tensors, got {observation_norm!r}"
        ) from err
    loc = torch.as_tensor(loc, dtype=torch.float32, device=device)
    scale = torch.as_tensor(scale, dtype=torch.float32, device=device)
    for label, value in (("loc", loc), ("scale", scale)):
        try:
            shape = torch.broadcast_shapes(value.shape, observation_shape)
        except RuntimeError as err:
            raise ValueError(
                f"observation_norm {label} has shape {tuple(value.shape)}, which does not "
                f"broadcast to the observation shape {tuple(observation_shape)}"
            ) from err
        if shape != observation_shape:
            raise ValueError(
                f"observation_norm {label} has shape {tuple(value.shape)}, which would change "
                f"the observation shape {tuple(observation_shape)} to {tuple(shape)}"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"observation_norm {label} has non-finite entries: {value}")
    if not (scale > 0).all():
        raise ValueError(
            f"observation_norm scale must be positive, got {scale}; clamp the dataset std, "
            f"e.g. std.clamp_min(1e-3)"
        )
    return loc, scale
