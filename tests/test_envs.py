"""Tests for torchrl_sym.envs: id resolution and real Hopper-v5 rollouts."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule

from torchrl_sym.envs import ENV_IDS, make_env, resolve_env_id

HOPPER_OBS_DIM = 11
STEPS = 50


def _fixed_policy() -> TensorDictModule:
    """A deterministic closed-loop policy: a_i = 0.9 * tanh(obs_{i+2} + obs_{i+5})."""

    def act(observation: torch.Tensor) -> torch.Tensor:
        return 0.9 * torch.tanh(observation[..., 2:5] + observation[..., 5:8])

    return TensorDictModule(act, in_keys=["observation"], out_keys=["action"])


def _random_rollout(env, seed: int) -> TensorDictBase:
    """Rollout with actions drawn from the action spec under a fixed torch seed."""
    torch.manual_seed(seed)
    return env.rollout(STEPS, break_when_any_done=False)


def _assert_episode_reward_is_running_return(rollout: TensorDictBase) -> int:
    """Checks episode_reward against a float32 cumulative sum that restarts at every done.

    Returns the number of episode ends seen, so callers can check resets were exercised.
    """
    reward = rollout["next", "reward"].squeeze(-1)
    done = rollout["next", "done"].squeeze(-1)
    episode_reward = rollout["next", "episode_reward"].squeeze(-1)
    root_episode_reward = rollout["episode_reward"].squeeze(-1)
    running = torch.zeros((), dtype=torch.float32)
    for t in range(rollout.shape[0]):
        assert root_episode_reward[t].item() == pytest.approx(running.item(), abs=1e-5)
        running = running + reward[t]
        assert episode_reward[t].item() == pytest.approx(running.item(), abs=1e-5), t
        if done[t]:
            running = torch.zeros((), dtype=torch.float32)
    return int(done.sum())


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("hopper", "Hopper-v5"),
        ("Hopper", "Hopper-v5"),
        ("Hopper-v5", "Hopper-v5"),
        ("hopper-v5", "Hopper-v5"),
        ("Hopper-v4", "Hopper-v4"),
        ("hopper-medium-v2", "Hopper-v5"),
        ("hopper-medium-replay-v2", "Hopper-v5"),
        ("halfcheetah-medium-expert-v2", "HalfCheetah-v5"),
        ("walker2d-random-v2", "Walker2d-v5"),
        ("ant-expert-v2", "Ant-v5"),
        ("mujoco/hopper/medium-v0", "Hopper-v5"),
        ("mujoco/halfcheetah/simple-v0", "HalfCheetah-v5"),
        ("torchrl_sym/hopper/medium-v0", "Hopper-v5"),
        ("torchrl_sym/walker2d/medium-replay-v0", "Walker2d-v5"),
        ("Pendulum-v1", "Pendulum-v1"),
    ],
)
def test_resolve_env_id_spellings(name: str, expected: str) -> None:
    assert resolve_env_id(name) == expected


def test_env_ids_are_mujoco_v5() -> None:
    assert ENV_IDS == {
        "hopper": "Hopper-v5",
        "halfcheetah": "HalfCheetah-v5",
        "walker2d": "Walker2d-v5",
        "ant": "Ant-v5",
    }


@pytest.mark.parametrize(
    "name",
    [
        "antmaze-umaze-v2",
        "D4RL/antmaze/umaze-v1",
        "mujoco/pusher/expert-v0",
        "hoper-medium-v2",
        "Hopper-v99",
        "",
    ],
)
def test_resolve_env_id_rejects_unknown(name: str) -> None:
    with pytest.raises(ValueError) as info:
        resolve_env_id(name)
    message = str(info.value)
    assert repr(name) in message
    for family in ENV_IDS:
        assert family in message


def test_resolve_env_id_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="str"):
        resolve_env_id(3)  # type: ignore[arg-type]


@pytest.mark.parametrize("policy_kind", ["random", "fixed"])
def test_hopper_rollout_dtypes_bounds_and_episode_return(policy_kind: str) -> None:
    env = make_env("hopper", seed=0)
    assert env.observation_spec["observation"].dtype == torch.float32
    if policy_kind == "random":
        rollout = _random_rollout(env, seed=0)
    else:
        rollout = env.rollout(STEPS, _fixed_policy(), break_when_any_done=False)

    assert rollout.shape == (STEPS,)
    for key in ("observation", ("next", "observation")):
        assert rollout[key].dtype == torch.float32
        assert rollout[key].shape == (STEPS, HOPPER_OBS_DIM)
    low, high = env.action_spec.space.low, env.action_spec.space.high
    action = rollout["action"]
    assert action.shape == (STEPS, 3)
    assert ((action >= low) & (action <= high)).all()
    num_done = _assert_episode_reward_is_running_return(rollout)
    if policy_kind == "random":
        # Hopper falls within 50 random steps from this seed: the reset path is exercised.
        assert num_done >= 1


@pytest.mark.parametrize("policy_kind", ["random", "fixed"])
def test_same_seed_same_rollout_different_seed_different_start(policy_kind: str) -> None:
    def rollout(seed: int) -> TensorDictBase:
        env = make_env("Hopper-v5", seed=seed)
        if policy_kind == "random":
            return _random_rollout(env, seed=123)
        return env.rollout(STEPS, _fixed_policy(), break_when_any_done=False)

    first, second, other = rollout(1), rollout(1), rollout(2)
    assert first.shape == second.shape
    assert (first == second).all()
    assert not torch.equal(first["observation"][0], other["observation"][0])


def test_observation_norm_standardizes_raw_observation() -> None:
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(HOPPER_OBS_DIM, generator=generator)
    scale = torch.rand(HOPPER_OBS_DIM, generator=generator) + 0.5
    raw_env = make_env("hopper", seed=3)
    norm_env = make_env("hopper", seed=3, observation_norm=(loc, scale))
    assert norm_env.observation_spec["observation"].dtype == torch.float32

    raw = _random_rollout(raw_env, seed=7)
    normed = _random_rollout(norm_env, seed=7)
    assert torch.equal(raw["action"], normed["action"])
    for key in ("observation", ("next", "observation")):
        expected = (raw[key] - loc) / scale
        torch.testing.assert_close(normed[key], expected, rtol=1e-6, atol=1e-6)
        # Not the other affine convention, obs * scale + loc.
        assert not torch.allclose(normed[key], raw[key] * scale + loc, atol=1e-3)
    torch.testing.assert_close(normed["next", "reward"], raw["next", "reward"])


def test_max_episode_steps_truncates() -> None:
    env = make_env("hopper", seed=0, max_episode_steps=7)
    rollout = env.rollout(STEPS, _fixed_policy())
    assert rollout.shape == (7,)
    assert rollout["next", "step_count"].squeeze(-1).tolist() == list(range(1, 8))
    assert rollout["next", "truncated"][-1].item()
    assert not rollout["next", "truncated"][:-1].any()


@pytest.mark.parametrize(
    ("loc", "scale", "match"),
    [
        (torch.zeros(11), -torch.ones(11), "positive"),
        (torch.zeros(11), torch.zeros(11), "positive"),
        (torch.zeros(5), torch.ones(11), "loc has shape"),
        (torch.zeros(11), torch.ones(2, 11), "scale has shape"),
        (torch.full((11,), float("nan")), torch.ones(11), "non-finite"),
    ],
)
def test_observation_norm_rejects_bad_stats(loc, scale, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_env("hopper", observation_norm=(loc, scale))


def test_make_env_rejects_bad_max_episode_steps() -> None:
    with pytest.raises(ValueError, match="max_episode_steps"):
        make_env("hopper", max_episode_steps=0)
