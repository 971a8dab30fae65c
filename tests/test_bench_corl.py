"""benchmarks/bench_corl_iql.py (IQL end to end against CORL's single-file iql.py): the stand-ins
for what CORL's file imports (old-API gym over Gymnasium, d4rl over our Minari datasets, no-op
wandb and pyrallis), their import, and the tables; with CORL's code at hand (the mirror below), a
short run of the whole benchmark (slow)."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from minari_reference import minari_reference

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CORL_MIRROR = Path("/work/.mirror/corl-team+CORL/repo")
TIMEOUTS_DATASET = "test/halfcheetah/timeouts-v0"


@pytest.fixture(scope="module")
def bench():
    """``bench_corl_iql`` imported from benchmarks/ (not a package)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import bench_corl_iql

        yield bench_corl_iql
    finally:
        while str(BENCHMARKS) in sys.path:
            sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def timeouts_dataset():
    """Two random-policy HalfCheetah-v5 episodes of 1000 steps: both end at the time limit."""
    import minari

    from torchrl_sym.data.generate import rollout_episodes, write_minari_dataset

    if TIMEOUTS_DATASET not in minari.list_local_datasets():
        episodes = rollout_episodes(
            "HalfCheetah-v5", None, 2000, seed=0, num_envs=2, progress=False
        )
        write_minari_dataset(TIMEOUTS_DATASET, episodes, env_id="HalfCheetah-v5")
    return TIMEOUTS_DATASET


def test_task_names_map_to_our_datasets(bench):
    assert bench.task_dataset("halfcheetah-medium") == "torchrl_sym/halfcheetah/medium-v1"
    assert bench.task_dataset("hopper-medium-replay") == "torchrl_sym/hopper/medium-replay-v1"
    with pytest.raises(ValueError, match=r"Unknown task 'cheetah'.*halfcheetah-medium"):
        bench.task_dataset("cheetah")


def test_corl_dir_says_what_to_pass(bench, tmp_path):
    with pytest.raises(bench.CorlCodeError, match=r"does not exist.*git clone"):
        bench.corl_dir(tmp_path / "nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(bench.CorlCodeError, match="not a directory"):
        bench.corl_dir(tmp_path / "file")
    with pytest.raises(bench.CorlCodeError, match=r"lacks algorithms/offline/iql\.py"):
        bench.corl_dir(tmp_path)
    (tmp_path / "algorithms" / "offline").mkdir(parents=True)
    (tmp_path / "algorithms" / "offline" / "iql.py").write_text("")
    assert bench.corl_dir(tmp_path) == tmp_path.resolve()


def test_gym_stand_in_has_the_old_api(bench, hopper_minari_id):
    gym = bench.make_stand_ins(max_episode_steps=5)["gym"]
    env = gym.make(hopper_minari_id)
    assert isinstance(env, gym.Env) and gym.made == [env]
    assert env.env_id == "Hopper-v5"
    assert env.observation_space.shape == (11,) and env.action_space.shape == (3,)
    assert float(env.action_space.high[0]) == 1.0
    env.action_space.seed(0)  # their set_seed seeds the action space too

    # seed(s) seeds the next reset; later resets continue that generator (old gym's behaviour)
    assert env.seed(3) == [3]
    first = env.reset()
    assert isinstance(first, np.ndarray) and first.shape == (11,)
    env.seed(3)
    np.testing.assert_array_equal(env.reset(), first)
    assert not np.array_equal(env.reset(), first)

    # step -> (obs, reward, done, info); the 5-step limit ends the episode (done, not terminal)
    env.seed(0)
    env.reset()
    for t in range(5):
        obs, reward, done, info = env.step(np.zeros(3))
        assert obs.shape == (11,) and isinstance(reward, float) and isinstance(done, bool)
        assert done == (t == 4)
    assert info["TimeLimit.truncated"]

    # the dataset's reference returns are -20 and 3000; d4rl's score is a fraction
    assert env.get_normalized_score(3000.0) == pytest.approx(1.0)
    assert env.get_normalized_score(-20.0) == pytest.approx(0.0)
    assert env.normalized_scores == pytest.approx([100.0, 0.0])


def test_gym_wrappers_transform_and_forward(bench, hopper_minari_id):
    gym = bench.make_stand_ins()["gym"]
    plain, env = gym.make(hopper_minari_id), gym.make(hopper_minari_id)
    wrapped = gym.wrappers.TransformReward(
        gym.wrappers.TransformObservation(env, lambda obs: obs + 100.0), lambda r: 2.0 * r
    )
    # seed, spaces and get_normalized_score reach the env through both wrappers
    assert wrapped.seed(1) == [1] and plain.seed(1) == [1]
    assert wrapped.action_space is env.action_space
    assert wrapped.observation_space is env.observation_space
    assert wrapped.dataset_id == hopper_minari_id
    np.testing.assert_allclose(wrapped.reset(), plain.reset() + 100.0)
    action = np.full(3, 0.3)
    obs, reward, done, _ = wrapped.step(action)
    obs_plain, reward_plain, done_plain, _ = plain.step(action)
    np.testing.assert_allclose(obs, obs_plain + 100.0)
    assert reward == pytest.approx(2.0 * reward_plain) and done == done_plain
    assert wrapped.get_normalized_score(3000.0) == pytest.approx(1.0)
    assert env.normalized_scores == pytest.approx([100.0])


@pytest.mark.parametrize("which", ["terminations", "timeouts"])
def test_d4rl_stand_in_gives_the_datasets_arrays(bench, hopper_minari_id, timeouts_dataset, which):
    dataset_id = hopper_minari_id if which == "terminations" else timeouts_dataset
    stand_ins = bench.make_stand_ins()
    env = stand_ins["gym"].wrappers.TransformObservation(
        stand_ins["gym"].make(dataset_id), lambda obs: obs
    )
    data = stand_ins["d4rl"].qlearning_dataset(env)
    assert set(data) == {"observations", "actions", "next_observations", "rewards", "terminals"}
    ref, _ = minari_reference(dataset_id)
    n = len(ref["act"])
    obs_dim = 11 if which == "terminations" else 17
    act_dim = 3 if which == "terminations" else 6
    assert data["observations"].shape == data["next_observations"].shape == (n, obs_dim)
    assert data["actions"].shape == (n, act_dim)
    assert data["rewards"].shape == data["terminals"].shape == (n,)
    for key in ("observations", "actions", "next_observations", "rewards"):
        assert data[key].dtype == np.float32, key
    assert data["terminals"].dtype == np.bool_
    np.testing.assert_allclose(data["observations"], ref["obs"], rtol=1e-6)
    np.testing.assert_allclose(data["next_observations"], ref["next_obs"], rtol=1e-6)
    np.testing.assert_allclose(data["actions"], ref["act"], rtol=1e-6)  # not clipped
    np.testing.assert_allclose(data["rewards"], ref["rew"], rtol=1e-6)  # not transformed
    # terminals are the terminations; a time-limit truncation is not a terminal
    np.testing.assert_array_equal(data["terminals"], ref["term"].astype(bool))
    if which == "terminations":
        assert data["terminals"].any()
    else:
        assert ref["trunc"].sum() == 2 and not data["terminals"].any()
    # their modify_reward scales the returned rewards in place: `last` keeps the raw ones
    raw, returned, info = stand_ins["d4rl"].last
    assert returned is data and raw is not data["rewards"]
    np.testing.assert_array_equal(raw, data["rewards"])
    assert info.num_transitions == n


def test_load_corl_imports_with_the_stand_ins_and_restores_sys_modules(bench, tmp_path):
    fake = tmp_path / "algorithms" / "offline"
    fake.mkdir(parents=True)
    (fake / "iql.py").write_text(
        "from dataclasses import dataclass\n"
        "import d4rl, gym, pyrallis, wandb\n"
        "@dataclass\n"
        "class TrainConfig:\n"
        "    env: str = 'x'\n"
        "def wrap_env(env: gym.Env) -> gym.Env:\n"
        "    return gym.wrappers.TransformObservation(env, lambda o: o)\n"
        "@pyrallis.wrap()\n"
        "def train(config: TrainConfig):\n"
        "    wandb.init(config={}); wandb.run.save(); wandb.log({'a': 1}, step=1)\n"
        "    return config.env, d4rl, gym\n"
    )
    before = {name: sys.modules.get(name) for name in bench.STAND_INS}
    stand_ins = bench.make_stand_ins()
    corl = bench.load_corl(tmp_path, stand_ins)
    assert {name: sys.modules.get(name) for name in bench.STAND_INS} == before
    assert bench.CORL_MODULE not in sys.modules
    env, d4rl, gym = corl.train(corl.TrainConfig(env="y"))
    assert env == "y" and d4rl is stand_ins["d4rl"] and gym is stand_ins["gym"]


def _run(bench, side, seeds, wall, scores, compile_s=math.nan):
    return bench.Run(
        side, seeds, 1000, wall, scores, compile_s=compile_s, inner_s=wall - 1.0, eval_s=2.0
    )


def test_summary_page_and_results_file(bench, tmp_path):
    rounds = [
        {
            "corl": _run(bench, "corl", [0], 10.0, [40.0]),
            "ours": _run(bench, "ours", [0], 8.0, [42.0], compile_s=2.0),
            "stacked": _run(bench, "stacked", [0, 1, 2], 15.0, [41.0, 43.0, 42.0], 3.0),
        },
        {
            "corl": _run(bench, "corl", [1], 20.0, [44.0]),
            "ours": _run(bench, "ours", [1], 10.0, [46.0], compile_s=4.0),
            "stacked": _run(bench, "stacked", [3, 4, 5], 30.0, [45.0, 47.0, 46.0], 5.0),
        },
    ]
    summary = bench.summarize(rounds)
    assert summary["corl"]["updates"] == pytest.approx((100.0 + 50.0) / 2)
    assert summary["ours"]["ratio"] == pytest.approx((10 / 8 + 20 / 10) / 2)
    # stacked: 3 seeds' updates per wall second against CORL's one seed
    assert summary["stacked"]["seed_updates"] == pytest.approx((3000 / 15 + 3000 / 30) / 2)
    assert summary["stacked"]["ratio"] == pytest.approx((3000 / 15 / 100 + 3000 / 30 / 50) / 2)
    assert summary["stacked"]["score"] == pytest.approx((42.0 + 46.0) / 2)
    assert summary["ours"]["compile"] == pytest.approx(3.0)
    assert math.isnan(summary["corl"]["compile"])

    args = argparse.Namespace(
        argv=["--corl", "/tmp/CORL"],
        task="halfcheetah-medium",
        dataset_id="torchrl_sym/halfcheetah/medium-v1",
        steps=1000,
        rounds=2,
        stack=3,
        seed=0,
        eval_interval=500,
        eval_episodes=10,
        eval_max_steps=None,
        threads=1,
    )
    for rnd in rounds:
        rnd["corl"].extra = {
            "reward_scale": 0.25,
            "reward_scale_episodes": 0.25,
            "transitions": 10**6,
        }
    meta = {"load": [(0.1, 0.1), (0.2, 0.1)], "commit": "abc"}
    page = "\n".join(bench.report(args, rounds, meta)[0])
    assert "generated by benchmarks/bench_corl_iql.py --write" in page
    assert f"torchrl_sym / CORL = **{summary['ours']['ratio']:.2f}×**" in page
    assert "| torchrl_sym stacked (K=3) |" in page
    assert "Here both give 0.25." in page
    lines = page.splitlines()
    assert sum(line.startswith("| 1 | ") for line in lines) == 3
    assert sum(line.startswith("| 2 | ") for line in lines) == 3
    assert "Command: `python benchmarks/bench_corl_iql.py --corl /tmp/CORL`" in page

    # results.json holds everything the page is made of: --from-results renders the same page
    results = tmp_path / "results.json"
    bench.save_results(results, args, rounds, meta)
    saved_args, saved_rounds, saved_meta = bench.load_results(results)
    assert saved_rounds[1]["stacked"] == rounds[1]["stacked"]
    assert "\n".join(bench.report(saved_args, saved_rounds, saved_meta)[0]) == page

    # a bf16 stacked run: named in the page, and precision=bf16 on its command line only
    args.stack_precision = "bf16"
    page = "\n".join(bench.report(args, rounds, meta)[0])
    assert "| torchrl_sym stacked (K=3, bf16) |" in page
    assert "`stack_seeds=3` `precision=bf16`" in page
    args.override, args.task = [], "halfcheetah-medium"
    assert "precision=bf16" in bench.ours_command(args, 0, tmp_path / "s", stack=3)
    assert not any("precision" in a for a in bench.ours_command(args, 0, tmp_path / "o"))


@pytest.mark.slow
@pytest.mark.skipif(not (CORL_MIRROR / "HEAD").exists(), reason="no copy of corl-team/CORL")
def test_benchmark_runs_end_to_end(tmp_path, recipe_dataset):
    corl = tmp_path / "corl"
    (corl / "algorithms" / "offline").mkdir(parents=True)
    source = subprocess.run(
        ["git", "-C", str(CORL_MIRROR), "show", "HEAD:algorithms/offline/iql.py"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (corl / "algorithms" / "offline" / "iql.py").write_text(source)
    page = tmp_path / "page.md"
    cmd = [
        sys.executable,
        str(BENCHMARKS / "bench_corl_iql.py"),
        "--corl",
        str(corl),
        "--dataset",
        recipe_dataset,
        "--steps",
        "200",
        "--rounds",
        "1",
        "--seed",
        "1",  # the stacked run's seed folders are seed_1, seed_2
        "--stack",
        "2",
        "--eval-interval",
        "200",
        "--eval-episodes",
        "1",
        "--eval-max-steps",
        "20",
        "--override",
        "compile=false",
        "--override",
        "train.log_interval=100",
        "--workdir",
        str(tmp_path),
        "--write",
        str(page),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summaries = [line for line in out.stdout.splitlines() if line.startswith("SUMMARY")]
    assert len(summaries) == 2, out.stdout
    assert "SUMMARY one seed" in summaries[0] and "SUMMARY stacked K=2" in summaries[1]
    text = page.read_text()
    assert "| 1 | CORL iql.py | 1 |" in text and "| 1 | torchrl_sym stacked | 1, 2 |" in text
    # the page again from the run's results.json
    (results,) = tmp_path.glob("bench_corl_iql_*/results.json")
    again = subprocess.run(
        [sys.executable, str(BENCHMARKS / "bench_corl_iql.py"), "--from-results", str(results)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert [line for line in again.stdout.splitlines() if line.startswith("SUMMARY")] == summaries
    # every run evaluated once (1 episode of 20 steps) and reports a finite final score
    for line in text.splitlines():
        if line.startswith("| 1 | "):
            assert line.rstrip(" |").split("| ")[-1] != "—", line
