"""Tests for torchrl_sym.train.evaluate: episode returns, metrics arithmetic, CSV and resume."""

from __future__ import annotations

import copy
import csv
import math
import random
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import GymEnv, SerialEnv
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.modules import ProbabilisticActor, TanhNormal

from torchrl_sym.envs import make_env
from torchrl_sym.train import CSV_COLUMNS, Evaluator, evaluate_policy
from torchrl_sym.train.checkpoint import load_checkpoint, rng_state, save_checkpoint
from torchrl_sym.train.evaluate import EVAL_MODES, exploration_type_of

TORQUE = 0.5


def constant_policy(torque: float = TORQUE) -> TensorDictModule:
    return TensorDictModule(
        lambda obs: torch.full((*obs.shape[:-1], 1), torque),
        in_keys=["observation"],
        out_keys=["action"],
    )


def gymnasium_return(seed: int, steps: int, torque: float = TORQUE) -> float:
    """Return of a Pendulum-v1 episode with a constant torque, run directly in gymnasium.

    TorchRL's ``set_seed(seed)`` resets the gymnasium env with ``seed`` and ``rollout`` then
    resets it again, so the episode starts from the second reset after seeding.
    """
    env = gymnasium.make("Pendulum-v1")
    env.reset(seed=seed)
    env.reset()
    total = 0.0
    for _ in range(steps):
        _, reward, terminated, truncated, _ = env.step([torque])
        total += float(reward)
        if terminated or truncated:
            break
    env.close()
    return total


def linear_score(returns: torch.Tensor) -> torch.Tensor:
    """Normalized score with random return -1000 and expert return 0."""
    return 100.0 * (returns + 1000.0) / 1000.0


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as file:
        return list(csv.reader(file))


# evaluate_policy ---------------------------------------------------------------------------


def test_returns_match_a_gymnasium_rollout_with_same_seed_and_actions() -> None:
    env = GymEnv("Pendulum-v1")
    returns = evaluate_policy(env, constant_policy(), num_episodes=3, max_steps=40, seed=10)
    assert returns.dtype == torch.float64
    assert returns.device == torch.device("cpu")
    assert returns.shape == (3,)
    expected = torch.tensor([gymnasium_return(10 + i, 40) for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(returns, expected, rtol=0, atol=1e-4)
    # Different seeds start from different states, so the returns differ.
    assert len(set(returns.tolist())) == 3
    again = evaluate_policy(env, constant_policy(), num_episodes=3, max_steps=40, seed=10)
    assert torch.equal(returns, again)


def test_episode_stops_at_done_before_max_steps() -> None:
    # Pendulum-v1 is truncated after 200 steps by gymnasium, StepCounter truncates earlier.
    returns = evaluate_policy(GymEnv("Pendulum-v1"), constant_policy(), num_episodes=1, seed=4)
    assert returns.item() == pytest.approx(gymnasium_return(4, 200), abs=1e-4)
    env = make_env("Pendulum-v1", max_episode_steps=15)
    returns = evaluate_policy(env, constant_policy(), num_episodes=2, max_steps=1000, seed=4)
    expected = [gymnasium_return(4, 15), gymnasium_return(5, 15)]
    assert returns.tolist() == pytest.approx(expected, abs=1e-4)


class _RecordingPolicy(nn.Module):
    """Constant torque; records the exploration type and train mode seen at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[ExplorationType, bool, bool]] = []

    def forward(self, observation: torch.Tensor) -> torch.Tensor:
        self.seen.append((exploration_type(), self.training, torch.is_grad_enabled()))
        return torch.full((*observation.shape[:-1], 1), TORQUE)


def test_episodes_are_deterministic_no_grad_and_in_eval_mode() -> None:
    recorder = _RecordingPolicy()
    policy = TensorDictModule(recorder, in_keys=["observation"], out_keys=["action"])
    policy.train()
    evaluate_policy(GymEnv("Pendulum-v1"), policy, num_episodes=2, max_steps=5, seed=0)
    assert len(recorder.seen) == 10
    assert set(recorder.seen) == {(ExplorationType.DETERMINISTIC, False, False)}
    assert policy.training and recorder.training  # mode restored


class _LocScale(nn.Module):
    """A constant Gaussian pre-tanh: loc 0.2, scale 1 (wide, so sampled actions vary a lot)."""

    def forward(self, observation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (*observation.shape[:-1], 1)
        return torch.full(shape, 0.2), torch.full(shape, 1.0)


def stochastic_policy() -> ProbabilisticActor:
    """Pendulum torque 2 tanh(u), u ~ N(0.2, 1); its deterministic action is 2 tanh(0.2)."""
    return ProbabilisticActor(
        TensorDictModule(_LocScale(), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": -2.0, "high": 2.0},
    )


def test_sample_mode_differs_from_deterministic_and_is_reproducible_from_the_seed() -> None:
    env, policy = GymEnv("Pendulum-v1"), stochastic_policy()
    run = dict(num_episodes=3, max_steps=40)
    deterministic = evaluate_policy(env, policy, seed=3, **run)
    # the deterministic action is the constant torque 2 tanh(0.2): a gymnasium rollout gives it
    torque = 2 * math.tanh(0.2)
    expected = [gymnasium_return(3 + i, 40, torque) for i in range(3)]
    assert deterministic.tolist() == pytest.approx(expected, abs=1e-3)

    sampled = evaluate_policy(env, policy, seed=3, exploration_type=ExplorationType.RANDOM, **run)
    assert (sampled - deterministic).abs().min() > 1e-3  # every episode acted differently
    # the action noise is seeded by the episode seed, not by torch's global state
    torch.manual_seed(12345)
    _ = torch.rand(100)
    again = evaluate_policy(env, policy, seed=3, exploration_type=ExplorationType.RANDOM, **run)
    assert torch.equal(again, sampled)
    # episode i depends on seed + i only: seed 4 repeats episodes 1 and 2 of seed 3 first
    shifted = evaluate_policy(env, policy, seed=4, exploration_type=ExplorationType.RANDOM, **run)
    assert torch.equal(shifted[:2], sampled[1:])
    assert shifted[2] != sampled[2]


@pytest.mark.parametrize("mode", ["deterministic", "sample"])
def test_seeded_evaluation_leaves_the_global_rng_states_as_they_were(mode: str) -> None:
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002 - the legacy global state is what must be left alone
    before = rng_state()
    evaluator = Evaluator(
        GymEnv("Pendulum-v1"), stochastic_policy(), num_episodes=2, max_steps=20, seed=0, mode=mode
    )
    evaluator(step=1)
    after = rng_state()
    assert torch.equal(after["torch"], before["torch"])
    assert after["python"] == before["python"]
    assert all(np.array_equal(a, b) for a, b in zip(after["numpy"], before["numpy"]))
    # so training draws the numbers it would have drawn without the evaluation
    draw = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(draw, torch.rand(3))


def test_evaluator_mode_picks_the_exploration_type_and_is_recorded() -> None:
    seen = {}
    for mode in ("deterministic", "sample"):
        recorder = _RecordingPolicy()
        policy = TensorDictModule(recorder, in_keys=["observation"], out_keys=["action"])
        metrics = Evaluator(
            GymEnv("Pendulum-v1"), policy, num_episodes=1, max_steps=3, seed=0, mode=mode
        )(step=0)
        assert metrics["eval/mode"] == mode
        seen[mode] = {entry[0] for entry in recorder.seen}
    assert seen == {
        "deterministic": {ExplorationType.DETERMINISTIC},
        "sample": {ExplorationType.RANDOM},
    }
    sampled = Evaluator(
        GymEnv("Pendulum-v1"),
        stochastic_policy(),
        num_episodes=2,
        max_steps=30,
        seed=5,
        mode="sample",
    )
    deterministic = Evaluator(
        GymEnv("Pendulum-v1"), stochastic_policy(), num_episodes=2, max_steps=30, seed=5
    )
    first = sampled(step=10)
    assert sampled(step=20)["eval/return"] == first["eval/return"]  # same seeds, same noise
    assert first["eval/return"] != pytest.approx(deterministic(step=10)["eval/return"], abs=1e-3)


@pytest.mark.parametrize("bad", ["stochastic", "Sample", "", None])
def test_bad_evaluation_mode_names_eval_mode_and_the_choices(bad) -> None:
    with pytest.raises(ValueError, match=r"eval\.mode=.*deterministic.*sample"):
        Evaluator(None, None, mode=bad)
    assert exploration_type_of("sample") is ExplorationType.RANDOM
    assert tuple(EVAL_MODES) == ("deterministic", "sample")


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"num_episodes": 0}, "num_episodes"), ({"max_steps": 0}, "max_steps")]
)
def test_evaluate_policy_rejects_bad_counts(kwargs, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_policy(GymEnv("Pendulum-v1"), constant_policy(), **kwargs)


def test_evaluate_policy_rejects_a_two_dimensional_batch() -> None:
    env = SerialEnv(2, lambda: SerialEnv(2, lambda: GymEnv("Pendulum-v1")))
    try:
        with pytest.raises(ValueError, match=r"batch size \[N\]"):
            evaluate_policy(env, constant_policy(), num_episodes=1, max_steps=3)
    finally:
        env.close(raise_if_closed=False)


# vectorized evaluation ---------------------------------------------------------------------


def hopper_mlp_policy(seed: int = 0) -> TensorDictModule:
    """A small random tanh-MLP: hopper episodes end (fall) after different numbers of steps."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(11, 64), nn.ReLU(), nn.Linear(64, 3), nn.Tanh())
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(0.3)
    return TensorDictModule(net, in_keys=["observation"], out_keys=["action"])


def test_vectorized_returns_equal_sequential_episodes_under_the_same_seeds() -> None:
    policy = hopper_mlp_policy()
    sequential = evaluate_policy(make_env("hopper"), policy, num_episodes=7, max_steps=300, seed=5)
    calls = []
    policy.register_forward_hook(lambda module, args, out: calls.append(args[0].batch_size))
    # 7 episodes in 3 sub-envs: chunks of 3, 3 and a last one that keeps 1 of 3
    vectorized = evaluate_policy(
        make_env("hopper", num_envs=3), policy, num_episodes=7, max_steps=300, seed=5
    )
    assert vectorized.dtype == torch.float64 and vectorized.shape == (7,)
    torch.testing.assert_close(
        vectorized, sequential, rtol=1e-4, atol=1e-3
    )  # batched matmul rounding
    assert len(set(sequential.tolist())) == 7  # the episodes differ: the seeds reached the sub-envs
    assert set(calls) == {torch.Size([3])}  # one policy call per step for all sub-envs
    # every episode ended (fell) before the step limit: the batched loop stopped at the last one
    assert len(calls) < 3 * 300


def test_vectorized_return_counts_rewards_up_to_each_sub_envs_first_done() -> None:
    policy = hopper_mlp_policy(seed=1)
    lengths, expected = [], []
    for i in range(4):
        rollout = make_env("hopper", seed=20 + i).rollout(1000, policy, break_when_any_done=True)
        lengths.append(rollout.shape[0])
        expected.append(rollout.get(("next", "reward")).double().sum().item())
    assert len(set(lengths)) > 1  # episodes of different lengths: later steps must be masked
    vectorized = evaluate_policy(
        make_env("hopper", num_envs=4), policy, num_episodes=4, max_steps=1000, seed=20
    )
    assert vectorized.tolist() == pytest.approx(expected, rel=1e-5)


def test_vectorized_sample_mode_is_reproducible_and_leaves_the_rng_alone() -> None:
    env, policy = make_env("Pendulum-v1", num_envs=3), stochastic_policy()
    run = dict(num_episodes=3, max_steps=40, seed=3)
    deterministic = evaluate_policy(env, policy, **run)
    torque = 2 * math.tanh(0.2)
    assert deterministic.tolist() == pytest.approx(
        [gymnasium_return(3 + i, 40, torque) for i in range(3)], abs=1e-3
    )
    torch.manual_seed(11)
    before = rng_state()
    sampled = evaluate_policy(env, policy, exploration_type=ExplorationType.RANDOM, **run)
    assert torch.equal(rng_state()["torch"], before["torch"])
    assert (sampled - deterministic).abs().min() > 1e-3
    _ = torch.rand(10)
    again = evaluate_policy(env, policy, exploration_type=ExplorationType.RANDOM, **run)
    assert torch.equal(again, sampled)


def test_vectorized_env_normalizes_observations_like_the_unbatched_one() -> None:
    loc, scale = torch.arange(11.0) / 10, torch.full((11,), 2.0)
    single = make_env("hopper", seed=4, observation_norm=(loc, scale)).reset()
    batched = make_env("hopper", num_envs=2, observation_norm=(loc, scale))
    batched.set_seed(4)
    observation = batched.reset()["observation"]
    assert observation.shape == (2, 11) and observation.dtype == torch.float32
    torch.testing.assert_close(observation[0], single["observation"])


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4"])
def test_make_env_rejects_a_bad_num_envs(bad) -> None:
    with pytest.raises(ValueError, match="num_envs must be a positive integer"):
        make_env("hopper", num_envs=bad)


# Evaluator arithmetic ----------------------------------------------------------------------

# Per-evaluation episode returns; with linear_score the mean scores are 30, 60, 45, 90, 70.
FAKE_RETURNS = {
    0: [-800.0, -600.0],
    10: [-500.0, -300.0],
    20: [-550.0, -550.0],
    30: [-100.0, -100.0],
    40: [-400.0, -200.0],
}
MEAN_SCORES = [30.0, 60.0, 45.0, 90.0, 70.0]


def _fake_evaluations(evaluator: Evaluator, steps=tuple(FAKE_RETURNS)) -> list[dict[str, float]]:
    return [
        evaluator._record(step, torch.tensor(FAKE_RETURNS[step], dtype=torch.float64))
        for step in steps
    ]


def test_metrics_with_score_fn_last_k_and_best() -> None:
    evaluator = Evaluator(None, None, score_fn=linear_score, last_k=3)
    metrics = _fake_evaluations(evaluator)
    for i, (step, m) in enumerate(zip(FAKE_RETURNS, metrics)):
        returns = torch.tensor(FAKE_RETURNS[step], dtype=torch.float64)
        window = MEAN_SCORES[max(0, i - 2) : i + 1]
        assert m == pytest.approx(
            {
                "eval/return": returns.mean().item(),
                "eval/return_std": (returns - returns.mean()).pow(2).mean().sqrt().item(),
                "eval/episodes": 2.0,
                "eval/mode": "deterministic",
                "eval/normalized_score": MEAN_SCORES[i],
                "eval/normalized_score_last_k": sum(window) / len(window),
                "eval/normalized_score_best": max(MEAN_SCORES[: i + 1]),
            }
        )
    # Hand values of the last evaluation: last 3 of (30, 60, 45, 90, 70), best 90.
    assert metrics[-1]["eval/normalized_score_last_k"] == pytest.approx((45 + 90 + 70) / 3)
    assert metrics[-1]["eval/normalized_score_best"] == 90.0
    assert metrics[0]["eval/return_std"] == pytest.approx(100.0)
    assert [entry[0] for entry in evaluator.history] == list(FAKE_RETURNS)


def test_metrics_without_score_fn_track_returns() -> None:
    evaluator = Evaluator(None, None, last_k=2)
    metrics = _fake_evaluations(evaluator)
    assert set(metrics[-1]) == {
        "eval/return",
        "eval/return_std",
        "eval/episodes",
        "eval/mode",
        "eval/return_last_k",
        "eval/return_best",
    }
    # Mean returns: -700, -400, -550, -100, -300.
    assert metrics[-1]["eval/return_last_k"] == pytest.approx((-100 - 300) / 2)
    assert metrics[-1]["eval/return_best"] == pytest.approx(-100.0)
    assert metrics[2]["eval/return_best"] == pytest.approx(-400.0)
    assert metrics[0]["eval/return_last_k"] == pytest.approx(-700.0)


def test_summaries_are_nan_before_any_evaluation() -> None:
    evaluator = Evaluator(None, None)
    assert math.isnan(evaluator.best)
    assert math.isnan(evaluator.last_k_mean)


def test_score_fn_must_be_elementwise() -> None:
    evaluator = Evaluator(None, None, score_fn=lambda g: g.mean())
    with pytest.raises(ValueError, match="elementwise"):
        evaluator._record(0, torch.tensor([1.0, 2.0]))


def test_call_runs_episodes_and_records() -> None:
    evaluator = Evaluator(
        GymEnv("Pendulum-v1"),
        constant_policy(),
        num_episodes=2,
        max_steps=20,
        seed=3,
        score_fn=linear_score,
    )
    metrics = evaluator(step=5)
    expected = torch.tensor([gymnasium_return(3, 20), gymnasium_return(4, 20)])
    assert metrics["eval/episodes"] == 2.0
    assert metrics["eval/return"] == pytest.approx(expected.mean().item(), abs=1e-4)
    assert metrics["eval/normalized_score"] == pytest.approx(
        linear_score(expected).mean().item(), abs=1e-4
    )
    # Same episode seeds on every call: a deterministic policy scores the same.
    assert evaluator(step=6)["eval/return"] == metrics["eval/return"]
    assert [entry[0] for entry in evaluator.history] == [5, 6]


# CSV and resume ----------------------------------------------------------------------------


def test_csv_has_one_row_per_episode_and_one_header(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "eval.csv"
    evaluator = Evaluator(None, None, score_fn=linear_score, csv_path=path)
    _fake_evaluations(evaluator, steps=(0, 10, 20))
    rows = read_csv(path)
    assert rows[0] == list(CSV_COLUMNS)
    assert rows.count(list(CSV_COLUMNS)) == 1
    assert len(rows) == 1 + 3 * 2
    for row, (step, episode) in zip(rows[1:], [(s, e) for s in (0, 10, 20) for e in (0, 1)]):
        assert int(row[0]) == step and int(row[1]) == episode
        assert float(row[2]) == FAKE_RETURNS[step][episode]
        assert float(row[3]) == pytest.approx(linear_score(torch.tensor(float(row[2]))).item())


def test_csv_without_score_fn_leaves_score_empty(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    _fake_evaluations(Evaluator(None, None, csv_path=path), steps=(0,))
    assert read_csv(path) == [list(CSV_COLUMNS), ["0", "0", "-800.0", ""], ["0", "1", "-600.0", ""]]


def test_csv_with_foreign_header_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="header"):
        _fake_evaluations(Evaluator(None, None, csv_path=path), steps=(0,))


def test_state_dict_round_trip_through_checkpoint(tmp_path: Path) -> None:
    evaluator = Evaluator(None, None, score_fn=linear_score, last_k=3)
    _fake_evaluations(evaluator)
    save_checkpoint(tmp_path / "ckpt.pt", {"evaluator": evaluator.state_dict()})
    restored = Evaluator(None, None, score_fn=linear_score, last_k=3)
    restored.load_state_dict(load_checkpoint(tmp_path / "ckpt.pt")["evaluator"])
    assert restored.history == evaluator.history
    assert restored.best == evaluator.best == 90.0
    assert restored.last_k_mean == pytest.approx(evaluator.last_k_mean)


def test_resume_from_earlier_state_truncates_csv_and_continues_identically(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    original = Evaluator(None, None, score_fn=linear_score, last_k=3, csv_path=path)
    _fake_evaluations(original, steps=(0, 10))
    checkpoint = copy.deepcopy(original.state_dict())
    # The run goes on past the checkpoint, then is killed mid-write of a row.
    metrics_after = _fake_evaluations(original, steps=(20, 30))
    with open(path, "a") as file:
        file.write("40,0,-40")

    resumed = Evaluator(None, None, score_fn=linear_score, last_k=3, csv_path=path)
    resumed.load_state_dict(checkpoint)
    rows = read_csv(path)
    assert rows[0] == list(CSV_COLUMNS)
    assert [(int(r[0]), int(r[1])) for r in rows[1:]] == [(0, 0), (0, 1), (10, 0), (10, 1)]
    assert not list(tmp_path.glob("*.tmp-*"))
    assert resumed.best == 60.0
    assert resumed.last_k_mean == pytest.approx(45.0)

    # Re-running the evaluations after the checkpoint reproduces the original metrics and CSV.
    assert _fake_evaluations(resumed, steps=(20, 30)) == metrics_after
    assert [int(r[0]) for r in read_csv(path)[1:]] == [0, 0, 10, 10, 20, 20, 30, 30]
    assert read_csv(path).count(list(CSV_COLUMNS)) == 1


def test_resume_from_empty_history_keeps_only_header(tmp_path: Path) -> None:
    path = tmp_path / "eval.csv"
    evaluator = Evaluator(None, None, csv_path=path)
    empty = copy.deepcopy(evaluator.state_dict())
    _fake_evaluations(evaluator, steps=(0, 10))
    evaluator.load_state_dict(empty)
    assert read_csv(path) == [list(CSV_COLUMNS)]
    assert evaluator.history == []


def test_load_state_dict_rejects_mismatched_state() -> None:
    without_scores = Evaluator(None, None)
    _fake_evaluations(without_scores, steps=(0,))
    with pytest.raises(ValueError, match="score_fn"):
        Evaluator(None, None, score_fn=linear_score).load_state_dict(without_scores.state_dict())
    with pytest.raises(ValueError, match="version"):
        Evaluator(None, None).load_state_dict({"history": []})
