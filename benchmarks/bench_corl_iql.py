"""IQL end to end: CORL's single-file ``algorithms/offline/iql.py`` against ``recipes/iql.py``.

Both train IQL on the same locally generated D4RL-style Minari dataset (e.g.
``torchrl_sym/halfcheetah/medium-v1`` for ``--task halfcheetah-medium``), for the same number of
updates, with the same evaluation protocol, each in a fresh process on the same CPU core(s), and
are timed by the wall clock from process start to exit: imports, dataset loading, (our) compilation,
training, evaluations and all. CORL's code is run from a user's checkout of
https://github.com/corl-team/CORL (imported at run time, never copied here):

    git clone https://github.com/corl-team/CORL /tmp/CORL
    taskset -c 0 python benchmarks/bench_corl_iql.py --corl /tmp/CORL
    taskset -c 0 python benchmarks/bench_corl_iql.py --corl /tmp/CORL --task hopper-medium \\
        --steps 20000 --rounds 2 --stack 3 --write docs/benchmarks_corl_iql.md

``--corl`` is the folder that holds ``algorithms/offline/iql.py`` (the root of the clone).
``--dataset ID`` replaces ``--task`` (ours then gets ``dataset=ID``); ``--eval-max-steps``,
``--eval-episodes``, ``--eval-interval`` and ``--override KEY=VALUE`` (our runs only) make short
checks possible, e.g. 200 steps with one evaluation episode of 20 steps (tests/test_bench_corl.py).

What runs, in each of ``--rounds`` rounds (the order rotating every round, so that a loaded
machine slows all of them alike):

1. CORL: a child process of this script imports their ``iql.py`` with stand-ins in
   ``sys.modules`` for what it imports and that is not run here (see ``make_stand_ins``), builds
   their ``TrainConfig`` with this library's protocol and calls their ``train(config)``:

   - ``env``: our dataset id; ``gym.make(id)`` gives the Gymnasium MuJoCo v5 env of the dataset
     (``torchrl_sym.envs.resolve_env_id``) behind gym's old API (``seed``, ``reset() -> obs``,
     ``step(a) -> (obs, reward, done, info)``, ``get_normalized_score``), and
     ``d4rl.qlearning_dataset(env)`` the dataset's arrays (no reward transform, no action
     clipping; ``terminals`` are terminations only, time-limit truncations are not terminals);
   - ``normalize=True`` (their state standardization), ``normalize_reward=True`` (IQL's
     locomotion reward scaling ``1000 / (max return - min return)``, which our recipe's
     ``data.reward_transform=return_range`` also applies), ``batch_size=256``, ``device=cpu``,
     ``max_timesteps=--steps``, ``eval_freq=--eval-interval``, ``n_episodes=--eval-episodes``;
     their other settings are their defaults (β = 3, τ = 0.7, 2×256 networks, Adam 3e-4,
     cosine-decayed actor learning rate), as ours (``torchrl_sym/configs/iql.yaml``);
   - ``wandb`` and ``pyrallis`` are no-op stand-ins (nothing is logged or parsed).

2. torchrl_sym, one seed: ``python recipes/iql.py experiment=cpu task=<task> train.steps=<steps>``
   (``compile=true`` is the cpu preset's), with the same evaluation cadence and episodes, CSV
   logging (``time/compile_seconds`` is read from the run's ``csv/`` folder).

3. torchrl_sym, ``stack_seeds=K`` (``--stack``, default 3): K seeds in one process (vmapped);
   its rate is counted in seed-updates/s = K · steps / wall seconds.

CORL trains one seed per process, so its seed-updates/s is its updates/s. Reported per round and
as medians: wall seconds, updates/s (steps / wall), seed-updates/s, ours / CORL (the median of the
per-round ratios), and each run's final normalized score (the last evaluation, D4RL scale 0-100)
to show that like is compared with like.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CLONE_HINT = "git clone https://github.com/corl-team/CORL"
CORL_FILE = Path("algorithms/offline/iql.py")
CORL_MODULE = "corl_offline_iql"  # the name their file is imported under (never "iql")
STAND_INS = ("d4rl", "gym", "wandb", "pyrallis")
RESULT_MARK = "BENCH_CORL_RESULT "
DEFAULT_TASK = "halfcheetah-medium"


class CorlCodeError(ValueError):
    """``--corl`` is not a usable checkout of corl-team/CORL."""


def corl_dir(path: str | os.PathLike) -> Path:
    """``path`` as the root of a CORL checkout (holding ``algorithms/offline/iql.py``), or
    :class:`CorlCodeError` saying what to pass."""
    root = Path(path).expanduser()
    if not root.exists():
        raise CorlCodeError(
            f"--corl {str(path)!r} does not exist. Clone CORL first: `{CLONE_HINT} {path}`, "
            f"and pass that directory."
        )
    if not root.is_dir():
        raise CorlCodeError(
            f"--corl {str(path)!r} is not a directory. Pass the root of a clone of CORL "
            f"(`{CLONE_HINT}`), the folder holding {CORL_FILE}."
        )
    if not (root / CORL_FILE).is_file():
        raise CorlCodeError(
            f"--corl {str(path)!r} lacks {CORL_FILE}: it is not a checkout of corl-team/CORL. "
            f"Clone it with `{CLONE_HINT}` and pass the clone's root directory."
        )
    return root.resolve()


def corl_commit(root: Path) -> str:
    """The checkout's commit (``git rev-parse HEAD``), or ``"unknown"`` (e.g. an exported file)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def task_dataset(task: str) -> str:
    """The dataset id of a task name (``torchrl_sym/configs/task/<task>.yaml``'s ``dataset``):
    ``halfcheetah-medium`` -> ``torchrl_sym/halfcheetah/medium-v1``."""
    import yaml

    import torchrl_sym.configs

    path = Path(torchrl_sym.configs.__file__).parent / "task" / f"{task}.yaml"
    if not path.is_file():
        known = sorted(
            p.stem for p in path.parent.glob("*.yaml") if p.stem != "none"
        )  # the task configs
        raise ValueError(f"Unknown task {task!r}; known tasks: {', '.join(known)}.")
    dataset = yaml.safe_load(path.read_text()).get("dataset")
    if not dataset:
        raise ValueError(f"{path} names no dataset.")
    return str(dataset)


# ------------------------------------------------------------------------------ stand-ins


class OldGymEnv:
    """A Gymnasium env behind the old gym API (gym < 0.26) that CORL's ``iql.py`` uses.

    ``seed(s)`` seeds the next ``reset()`` (later resets continue that generator, as old gym's
    seeded env did); ``reset()`` returns the observation only; ``step(a)`` returns
    ``(obs, reward, done, info)`` with ``done = terminated or truncated`` (the time limit ends
    the episode, as gym's ``TimeLimit`` did); ``get_normalized_score(R)`` is the dataset's D4RL
    score as a fraction (``torchrl_sym.data.normalized_score / 100``, as ``d4rl`` returns it),
    and each value it returned is kept in ``normalized_scores`` (×100).
    """

    def __init__(self, dataset_id: str, max_episode_steps: int | None = None):
        import gymnasium

        from torchrl_sym.envs import resolve_env_id

        self.dataset_id = dataset_id
        self.env_id = resolve_env_id(dataset_id)
        kwargs = {} if max_episode_steps is None else {"max_episode_steps": max_episode_steps}
        self._env = gymnasium.make(self.env_id, **kwargs)
        self.observation_space = self._env.observation_space
        self.action_space = self._env.action_space
        self._next_seed: int | None = None
        self.normalized_scores: list[float] = []

    def seed(self, seed: int | None = None) -> list[int | None]:
        self._next_seed = seed
        return [seed]

    def reset(self):
        obs, _ = self._env.reset(seed=self._next_seed)
        self._next_seed = None
        return obs

    def step(self, action):
        obs, reward, terminated, truncated, info = self._env.step(action)
        info = dict(info)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        return obs, float(reward), bool(terminated or truncated), info

    def get_normalized_score(self, episode_return: float) -> float:
        from torchrl_sym.data import normalized_score

        score = normalized_score(self.dataset_id, float(episode_return))
        self.normalized_scores.append(float(score))
        return float(score) / 100.0

    @property
    def unwrapped(self):
        return self

    def close(self) -> None:
        self._env.close()


class Wrapper:
    """Old gym's ``Wrapper``: every attribute it does not define is the wrapped env's."""

    def __init__(self, env):
        self.env = env

    def __getattr__(self, name: str):
        if name == "env" or name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self):
        return self.env.reset()

    def step(self, action):
        return self.env.step(action)


class TransformObservation(Wrapper):
    """Old gym's ``TransformObservation(env, f)``: observations from ``reset`` and ``step`` pass
    through ``f``."""

    def __init__(self, env, f):
        super().__init__(env)
        self.f = f

    def reset(self):
        return self.f(self.env.reset())

    def step(self, action):
        obs, reward, done, info = self.env.step(action)
        return self.f(obs), reward, done, info


class TransformReward(Wrapper):
    """Old gym's ``TransformReward(env, f)``: rewards from ``step`` pass through ``f``."""

    def __init__(self, env, f):
        super().__init__(env)
        self.f = f

    def step(self, action):
        obs, reward, done, info = self.env.step(action)
        return obs, self.f(reward), done, info


def qlearning_arrays(dataset_id: str) -> tuple[dict[str, Any], Any]:
    """``d4rl.qlearning_dataset``'s arrays for one of our datasets, and its ``OfflineDatasetInfo``.

    ``observations`` / ``next_observations`` / ``actions`` float32 ``[N, ·]``, ``rewards``
    float32 ``[N]`` (raw: no transform), ``terminals`` bool ``[N]``: terminations only (a
    time-limit truncation is not a terminal, as in D4RL). Every transition is kept: a Minari
    dataset records the true next observation at a time limit too (D4RL's ``qlearning_dataset``
    drops those last transitions, whose next observation it lacks). Actions are not clipped.
    """
    from torchrl_sym.data import load_offline_dataset

    data, info = load_offline_dataset(dataset_id, action_clip=None, reward_transform="identity")
    arrays = {
        "observations": data["observation"].numpy().copy(),
        "actions": data["action"].numpy().copy(),
        "next_observations": data["next", "observation"].numpy().copy(),
        "rewards": data["next", "reward"].reshape(-1).numpy().copy(),
        "terminals": data["next", "terminated"].reshape(-1).numpy().copy(),
    }
    return arrays, info


def make_stand_ins(max_episode_steps: int | None = None) -> dict[str, types.ModuleType]:
    """The modules CORL's ``iql.py`` imports and that are replaced here, by name.

    - ``gym``: ``make(dataset_id)`` -> :class:`OldGymEnv` (Gymnasium's env for the dataset, its
      episodes cut at ``max_episode_steps`` if given), ``Env``, ``Wrapper`` and
      ``wrappers.TransformObservation`` / ``wrappers.TransformReward`` with old gym's signatures;
      ``made`` lists the envs it made.
    - ``d4rl``: ``qlearning_dataset(env)`` -> :func:`qlearning_arrays` of ``env.dataset_id``;
      ``last`` holds ``(raw rewards, the returned dict, info)`` of its latest call (their
      ``modify_reward`` scales the returned rewards in place, so the scale they used can be read).
    - ``wandb``: ``init``, ``log``, ``finish`` and ``run.save`` do nothing.
    - ``pyrallis``: ``wrap()`` is the identity decorator (their ``train(config)`` takes the config
      given; nothing is parsed from the command line), ``dump`` writes the config's repr.
    """
    gym = types.ModuleType("gym")
    gym.__doc__ = (
        "Stand-in for gym (old API) over Gymnasium MuJoCo v5 (benchmarks/bench_corl_iql.py)."
    )
    gym.made = []

    def make(name: str, **kwargs):
        env = OldGymEnv(name, max_episode_steps=kwargs.get("max_episode_steps", max_episode_steps))
        gym.made.append(env)
        return env

    wrappers = types.ModuleType("gym.wrappers")
    wrappers.TransformObservation = TransformObservation
    wrappers.TransformReward = TransformReward
    gym.make = make
    gym.Env = OldGymEnv
    gym.Wrapper = Wrapper
    gym.wrappers = wrappers

    d4rl = types.ModuleType("d4rl")
    d4rl.__doc__ = (
        "Stand-in for d4rl over torchrl_sym's Minari datasets (benchmarks/bench_corl_iql.py)."
    )
    d4rl.last = None

    def qlearning_dataset(env, dataset=None, **kwargs):
        if dataset is not None:
            raise NotImplementedError("the d4rl stand-in loads the env's dataset only")
        arrays, info = qlearning_arrays(env.dataset_id)
        d4rl.last = (arrays["rewards"].copy(), arrays, info)
        return arrays

    d4rl.qlearning_dataset = qlearning_dataset

    wandb = types.ModuleType("wandb")
    wandb.__doc__ = "No-op stand-in for wandb (benchmarks/bench_corl_iql.py)."
    wandb.run = types.SimpleNamespace(save=lambda *a, **k: None)
    wandb.init = lambda *a, **k: wandb.run
    wandb.log = lambda *a, **k: None
    wandb.finish = lambda *a, **k: None

    pyrallis = types.ModuleType("pyrallis")
    pyrallis.__doc__ = "Stand-in for pyrallis (benchmarks/bench_corl_iql.py)."
    pyrallis.wrap = lambda *a, **k: lambda fn: fn
    pyrallis.dump = lambda config, stream=None, **k: (
        stream.write(repr(config)) if stream is not None else repr(config)
    )
    return {
        "gym": gym,
        "gym.wrappers": wrappers,
        "d4rl": d4rl,
        "wandb": wandb,
        "pyrallis": pyrallis,
    }


def load_corl(root: Path, stand_ins: dict[str, types.ModuleType]) -> types.ModuleType:
    """Import CORL's ``algorithms/offline/iql.py`` from ``root`` with ``stand_ins`` in
    ``sys.modules`` (what held those names before is restored afterwards; their module keeps
    its references to the stand-ins)."""
    path = corl_dir(root) / CORL_FILE
    names = (*stand_ins, CORL_MODULE)
    saved = {name: sys.modules.pop(name) for name in names if name in sys.modules}
    sys.modules.update(stand_ins)
    try:
        spec = importlib.util.spec_from_file_location(CORL_MODULE, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[CORL_MODULE] = module  # dataclasses look their module up while it is built
        spec.loader.exec_module(module)
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
    return module


def corl_config(corl: types.ModuleType, dataset_id: str, args) -> Any:
    """Their ``TrainConfig`` with this benchmark's protocol (the module docstring)."""
    return corl.TrainConfig(
        env=dataset_id,
        normalize=True,
        normalize_reward=True,
        batch_size=256,
        device="cpu",
        max_timesteps=args.steps,
        eval_freq=args.eval_interval,
        n_episodes=args.eval_episodes,
        seed=args.seed,
        checkpoints_path=None,
    )


def corl_child(args) -> None:
    """The child process of a CORL run: import their code, run ``train(config)``, print one
    result line (``RESULT_MARK`` + JSON)."""
    import torch

    torch.set_num_threads(args.threads)
    stand_ins = make_stand_ins(args.eval_max_steps)
    corl = load_corl(Path(args.corl), stand_ins)
    config = corl_config(corl, args.dataset_id, args)
    eval_seconds: list[float] = []
    evaluate = corl.eval_actor

    def timed_eval(*a, **k):  # their train() looks eval_actor up in their module at each call
        start = time.perf_counter()
        out = evaluate(*a, **k)
        eval_seconds.append(time.perf_counter() - start)
        return out

    corl.eval_actor = timed_eval
    start = time.perf_counter()
    corl.train(config)
    seconds = time.perf_counter() - start
    env = stand_ins["gym"].made[0]
    raw, arrays, info = stand_ins["d4rl"].last
    moved = raw != 0
    their_scale = float((arrays["rewards"][moved] / raw[moved]).mean()) if moved.any() else 1.0
    returns = info.episode_returns
    result = {
        "train_seconds": seconds,
        "eval_seconds": eval_seconds,
        "scores": env.normalized_scores,  # their `evaluations`: one per evaluation
        "transitions": int(info.num_transitions),
        "reward_scale": their_scale,
        "reward_scale_episodes": 1000.0 / float(returns.max() - returns.min()),
        "torch_threads": torch.get_num_threads(),
    }
    print(RESULT_MARK + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------ runs


@dataclass
class Run:
    """One timed process."""

    side: str  # "corl" | "ours" | "stacked"
    seeds: list[int]
    steps: int
    wall: float  # process start to exit, seconds
    scores: list[float]  # final normalized score of each seed
    compile_s: float = math.nan  # ours: time/compile_seconds
    inner_s: float = math.nan  # CORL: train(config); ours: summary.json's "seconds" (the loop)
    eval_s: float = math.nan  # seconds per evaluation (CORL: their eval_actor; ours: the loop's)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def updates_per_s(self) -> float:
        return self.steps / self.wall

    @property
    def seed_updates_per_s(self) -> float:
        return len(self.seeds) * self.steps / self.wall

    @property
    def score(self) -> float:
        return statistics.fmean(self.scores) if self.scores else math.nan


def _child_env(args) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def _timed(cmd: list[str], log: Path, env: dict[str, str]) -> tuple[float, str]:
    """Run ``cmd`` (stdout and stderr to ``log``); its wall seconds and its output. Raises with
    the output's tail if it fails."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-40:])
        raise RuntimeError(f"{shlex.join(cmd)} exited with {proc.returncode} (log: {log}):\n{tail}")
    return wall, text


def run_corl(args, seed: int, work: Path) -> Run:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--corl",
        str(args.corl),
        "--dataset",
        args.dataset_id,
        "--steps",
        str(args.steps),
        "--seed",
        str(seed),
        "--eval-interval",
        str(args.eval_interval),
        "--eval-episodes",
        str(args.eval_episodes),
        "--threads",
        str(args.threads),
        "--corl-child",
    ]
    if args.eval_max_steps is not None:
        cmd += ["--eval-max-steps", str(args.eval_max_steps)]
    wall, text = _timed(cmd, work / f"corl_seed{seed}.log", _child_env(args))
    lines = [line for line in text.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        raise RuntimeError(f"the CORL run printed no result line (log: {work})")
    result = json.loads(lines[-1][len(RESULT_MARK) :])
    scores = result["scores"][-1:]  # the final evaluation
    return Run(
        "corl",
        [seed],
        args.steps,
        wall,
        scores,
        inner_s=result["train_seconds"],
        eval_s=statistics.fmean(result["eval_seconds"]) if result["eval_seconds"] else math.nan,
        extra=result,
    )


def _seconds_per_evaluation(path: Path, interval: int) -> float:
    """Our loop's ``time/eval_seconds`` at its last log, per evaluation: logged at step ``L``
    before that step's evaluation, it sums the evaluations at the multiples of ``interval``
    below ``L``."""
    if not path.is_file():
        return math.nan
    rows = [row for row in csv.reader(path.open()) if row]
    if not rows:
        return math.nan
    step, seconds = int(float(rows[-1][0])), float(rows[-1][1])
    count = (step - 1) // interval
    return seconds / count if count > 0 else math.nan


def _last_csv_value(path: Path) -> float:
    if not path.is_file():
        return math.nan
    rows = [row for row in csv.reader(path.open()) if row]
    return float(rows[-1][1]) if rows else math.nan


def ours_command(args, seed: int, run_dir: Path, stack: int = 1) -> list[str]:
    """``recipes/iql.py experiment=cpu`` with this benchmark's task, budget and evaluation."""
    where = f"task={args.task}" if args.task else f"dataset={args.dataset_id}"
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "iql.py"),
        "experiment=cpu",
        where,
        f"train.steps={args.steps}",
        f"seed={seed}",
        f"eval.interval={args.eval_interval}",
        f"eval.episodes={args.eval_episodes}",
        "logger.backend=csv",
        f"hydra.run.dir={run_dir}",
    ]
    if args.eval_max_steps is not None:
        cmd.append(f"eval.max_steps={args.eval_max_steps}")
    if stack > 1:
        cmd.append(f"stack_seeds={stack}")
        if getattr(args, "stack_precision", "fp32") != "fp32":
            cmd.append(f"precision={args.stack_precision}")
    return cmd + list(args.override)


def run_ours(args, seed: int, work: Path, stack: int = 1) -> Run:
    name = f"ours_seed{seed}" if stack == 1 else f"stacked{stack}_seed{seed}"
    run_dir = work / name
    wall, _ = _timed(
        ours_command(args, seed, run_dir, stack), work / f"{name}.log", _child_env(args)
    )
    # a stacked run keeps each seed's summary and logs in seed_<s>/ (s = seed .. seed + K - 1)
    seed_dirs = (
        [run_dir] if stack == 1 else [run_dir / f"seed_{s}" for s in range(seed, seed + stack)]
    )
    summaries = [json.loads((d / "summary.json").read_text()) for d in seed_dirs]
    scores = [s["eval/normalized_score"] for s in summaries if "eval/normalized_score" in s]
    time_dir = seed_dirs[0] / "csv" / "scalars" / "time"
    return Run(
        "ours" if stack == 1 else "stacked",
        list(range(seed, seed + stack)),
        args.steps,
        wall,
        scores,
        compile_s=_last_csv_value(time_dir / "compile_seconds.csv"),
        inner_s=float(summaries[0].get("seconds", math.nan)),
        eval_s=_seconds_per_evaluation(time_dir / "eval_seconds.csv", args.eval_interval),
        extra={"run_dir": str(run_dir)},
    )


SIDES = ("corl", "ours", "stacked")
LABELS = {"corl": "CORL iql.py", "ours": "torchrl_sym", "stacked": "torchrl_sym stacked"}


def _load() -> tuple[float, float]:
    try:
        one, five, _ = os.getloadavg()
        return one, five
    except OSError:
        return math.nan, math.nan


def _fmt(x: float, spec: str = ".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _stack_label(args) -> str:
    """``K=3`` or ``K=3, bf16``: the stacked run's size and precision."""
    precision = getattr(args, "stack_precision", "fp32")
    return f"K={args.stack}" + ("" if precision == "fp32" else f", {precision}")


def describe(run: Run, stack: str) -> str:
    label = LABELS[run.side] + (f" {stack}" if run.side == "stacked" else "")
    seeds = (
        f"seed {run.seeds[0]}" if len(run.seeds) == 1 else f"seeds {run.seeds[0]}-{run.seeds[-1]}"
    )
    text = (
        f"{label:24s} {seeds:10s} wall {run.wall:7.1f} s  {run.updates_per_s:6.1f} updates/s  "
        f"{run.seed_updates_per_s:6.1f} seed-updates/s  score {_fmt(run.score)}"
    )
    if run.side == "corl":
        text += f"  (train() {run.inner_s:.1f} s; {_fmt(run.eval_s)} s per evaluation)"
    else:
        text += (
            f"  (loop {_fmt(run.inner_s)} s, of which compile {_fmt(run.compile_s)} s, "
            f"{_fmt(run.eval_s)} s per evaluation)"
        )
    return text


PAGE_ARGS = (
    "argv",
    "task",
    "dataset_id",
    "steps",
    "rounds",
    "stack",
    "stack_precision",
    "seed",
    "eval_interval",
    "eval_episodes",
    "eval_max_steps",
    "threads",
)


def save_results(path: Path, args, rounds: list[dict[str, Run]], meta: dict) -> None:
    """Everything the page is made of, as JSON (rewritten after every run; ``--from-results``
    renders the page again from it)."""
    payload = {
        "args": {k: getattr(args, k, None) for k in PAGE_ARGS},
        "rounds": [{side: asdict(x) for side, x in rnd.items()} for rnd in rounds],
        **meta,
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)


def load_results(path: Path) -> tuple[argparse.Namespace, list[dict[str, Run]], dict]:
    payload = json.loads(Path(path).read_text())
    args = argparse.Namespace(**payload.pop("args"))
    if getattr(args, "stack_precision", None) is None:  # results written before the option
        args.stack_precision = "fp32"
    rounds = [{side: Run(**x) for side, x in rnd.items()} for rnd in payload.pop("rounds")]
    return args, rounds, payload


def run(args) -> tuple[list[dict[str, Run]], dict]:
    """The timed runs, round by round; their results and what the page says about the machine."""
    work = Path(tempfile.mkdtemp(prefix="bench_corl_iql_", dir=args.workdir))
    results = work / "results.json"
    print(f"runs and logs in {work} (results: {results})", flush=True)
    meta = {"load": [_load()], "commit": corl_commit(Path(args.corl)), "work": str(work)}
    rounds: list[dict[str, Run]] = []
    for r in range(args.rounds):
        order = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
        seed = args.seed + r
        done: dict[str, Run] = {}
        rounds.append(done)
        print(f"round {r + 1}/{args.rounds} (order: {', '.join(order)})", flush=True)
        for side in order:
            if side == "corl":
                result = run_corl(args, seed, work)
            elif side == "ours":
                result = run_ours(args, seed, work)
            else:
                result = run_ours(args, args.seed + r * args.stack, work, stack=args.stack)
            done[side] = result
            print("  " + describe(result, _stack_label(args)), flush=True)
            save_results(results, args, rounds, meta)
    meta["load"].append(_load())
    save_results(results, args, rounds, meta)
    return rounds, meta


def report(args, rounds: list[dict[str, Run]], meta: dict) -> tuple[list[str], dict]:
    """Print the medians and the two summary lines; the page's lines and what it was made of."""
    summary = summarize(rounds)
    print(flush=True)
    for side in SIDES:
        s = summary[side]
        print(
            f"median {LABELS[side]:20s} wall {s['wall']:7.1f} s  {s['updates']:6.1f} updates/s  "
            f"{s['seed_updates']:6.1f} seed-updates/s  score {_fmt(s['score'])}",
            flush=True,
        )
    print(
        f"SUMMARY one seed: torchrl_sym {summary['ours']['updates']:.1f} updates/s vs CORL "
        f"{summary['corl']['updates']:.1f} updates/s end to end: {summary['ours']['ratio']:.2f}x "
        f"(median wall {summary['ours']['wall']:.0f} s vs {summary['corl']['wall']:.0f} s; final "
        f"normalized score {_fmt(summary['ours']['score'])} vs {_fmt(summary['corl']['score'])})",
        flush=True,
    )
    print(
        f"SUMMARY stacked {_stack_label(args)}: torchrl_sym {summary['stacked']['seed_updates']:.1f} "
        f"seed-updates/s vs CORL {summary['corl']['seed_updates']:.1f}: "
        f"{summary['stacked']['ratio']:.2f}x (median wall {summary['stacked']['wall']:.0f} s for "
        f"{args.stack} seeds; final normalized score {_fmt(summary['stacked']['score'])} mean over "
        "seeds)",
        flush=True,
    )
    first_corl = rounds[0]["corl"].extra
    info = {
        "rounds": rounds,
        "summary": summary,
        "load": tuple(meta["load"]),
        "commit": meta["commit"],
        "work": meta.get("work"),
        "reward_scale": first_corl.get("reward_scale", math.nan),
        "reward_scale_episodes": first_corl.get("reward_scale_episodes", math.nan),
        "transitions": first_corl.get("transitions"),
    }
    return render(args, info), info


def summarize(rounds: list[dict[str, Run]]) -> dict[str, dict[str, float]]:
    """Per side: medians over rounds, and the median of the per-round ratios to CORL's
    seed-updates/s (for one seed, that is CORL wall / ours wall)."""
    out = {}
    for side in SIDES:
        runs = [r[side] for r in rounds]
        ratios = [r[side].seed_updates_per_s / r["corl"].seed_updates_per_s for r in rounds]
        scores = [x.score for x in runs if not math.isnan(x.score)]
        compiles = [x.compile_s for x in runs if not math.isnan(x.compile_s)]
        evals = [x.eval_s for x in runs if not math.isnan(x.eval_s)]
        out[side] = {
            "wall": statistics.median(x.wall for x in runs),
            "updates": statistics.median(x.updates_per_s for x in runs),
            "seed_updates": statistics.median(x.seed_updates_per_s for x in runs),
            "ratio": statistics.median(ratios),
            "score": statistics.median(scores) if scores else math.nan,
            "compile": statistics.median(compiles) if compiles else math.nan,
            "eval": statistics.median(evals) if evals else math.nan,
        }
    return out


# ------------------------------------------------------------------------------ page


def cpu_model() -> str:
    """``model name`` of ``/proc/cpuinfo``, or the platform's processor string."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cores() -> str:
    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return f"{os.cpu_count()} cores"
    pinned = ",".join(map(str, affinity))
    return f"{os.cpu_count()} cores, runs pinned to core(s) {pinned}"


def render(args, info) -> list[str]:
    import torch

    summary = info["summary"]
    rounds = info["rounds"]
    k = args.stack
    stack_label = _stack_label(args)
    precision = getattr(args, "stack_precision", "fp32")
    bf16 = precision != "fp32"
    rows = [
        "| round | run | seeds | wall s | updates/s | seed-updates/s | vs CORL | compile s | "
        "s / evaluation | final normalized score |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for i, rnd in enumerate(rounds):
        for side in SIDES:
            x = rnd[side]
            ratio = x.seed_updates_per_s / rnd["corl"].seed_updates_per_s
            seeds = ", ".join(map(str, x.seeds))
            scores = ", ".join(f"{s:.1f}" for s in x.scores) or "—"
            rows.append(
                f"| {i + 1} | {LABELS[side]} | {seeds} | {x.wall:.1f} | {x.updates_per_s:.1f} | "
                f"{x.seed_updates_per_s:.1f} | {ratio:.2f}× | {_fmt(x.compile_s)} | "
                f"{_fmt(x.eval_s)} | {scores} |"
            )
    medians = [
        "| run | wall s | updates/s | seed-updates/s | vs CORL (median of per-round ratios) | "
        "compile s | s / evaluation | final normalized score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for side in SIDES:
        s = summary[side]
        label = LABELS[side] + (f" ({stack_label})" if side == "stacked" else "")
        medians.append(
            f"| {label} | {s['wall']:.1f} | {s['updates']:.1f} | {s['seed_updates']:.1f} | "
            f"{s['ratio']:.2f}× | {_fmt(s['compile'])} | {_fmt(s['eval'])} | {_fmt(s['score'])} |"
        )
    (l1b, l5b), (l1a, l5a) = info["load"]
    n = f", {info['transitions']:,} transitions" if info["transitions"] else ""
    if args.task:
        where = f"Task `{args.task}` (dataset `{args.dataset_id}`{n})"
    else:
        where = f"Dataset `{args.dataset_id}` ({n[2:] or 'local'})"
    eval_steps = "" if args.eval_max_steps is None else f" of at most {args.eval_max_steps} steps"
    ours_cmd = (
        "`python recipes/iql.py experiment=cpu "
        + (f"task={args.task}" if args.task else f"dataset={args.dataset_id}")
        + f" train.steps={args.steps} logger.backend=csv`"
    )
    ours_scale, their_scale = info["reward_scale_episodes"], info["reward_scale"]
    if math.isclose(ours_scale, their_scale, rel_tol=1e-4):
        reward_note = f"Here both give {ours_scale:.4g}."
    else:
        reward_note = (
            f"Here they differ: ours {ours_scale:.4g}, CORL's {their_scale:.4g} (an episode shorter "
            "than 1000 steps that ends without a termination shifts CORL's split points)."
        )
    return [
        "# IQL end to end: torchrl_sym against CORL's single-file iql.py",
        "",
        "<!-- generated by benchmarks/bench_corl_iql.py --write; do not edit by hand -->",
        "",
        "IQL trained on the same dataset for the same number of updates by",
        "[CORL](https://github.com/corl-team/CORL)'s `algorithms/offline/iql.py` (imported from a",
        "checkout at run time, never vendored here) and by this library's recipe, each in a fresh",
        "process on the same core, timed by the wall clock from process start to exit: imports,",
        "dataset loading, our `torch.compile`, training, evaluations and checkpoints included.",
        "",
        "- **CORL**: their `train(config)` with their `TrainConfig` set to this protocol: `env` = our",
        "  dataset, `normalize=True`, `normalize_reward=True` (IQL's locomotion reward scaling, as our",
        "  recipe's `return_range`), batch 256, `device=cpu`, "
        f"`max_timesteps={args.steps}`, `eval_freq={args.eval_interval}`,",
        f"  `n_episodes={args.eval_episodes}`; the rest their defaults. What their file imports is",
        "  replaced by stand-ins (`make_stand_ins` in the script): `d4rl.qlearning_dataset` gives our",
        "  Minari dataset's arrays (raw rewards, unclipped actions, terminations only as `terminals`),",
        "  `gym.make` the dataset's Gymnasium MuJoCo v5 env behind gym's old API with our D4RL",
        "  normalized score, `wandb` and `pyrallis` do nothing. Their evaluation runs its episodes one",
        "  after another in one env.",
        f"- **torchrl_sym**: {ours_cmd} (the cpu preset compiles the update), the same evaluation",
        "  cadence and episodes (vectorized: one policy call per step for all episodes); and the same",
        f"  with `stack_seeds={k}`"
        + (f" `precision={precision}`" if bf16 else "")
        + " (seeds trained together in one process), counted in seed-updates/s",
        f"  = {k} · steps / wall seconds. CORL trains one seed per process: its seed-updates/s is its",
        "  updates/s.",
        "",
        "The same algorithm at the same sizes on both sides: 2×256 ReLU networks, a Gaussian actor",
        "with a tanh mean and a state-independent log σ, expectile 0.7, β = 3 with the advantage",
        "weight clipped at 100, Adam 3e-4 with the actor's learning rate cosine-decayed, Polyak 0.005,",
        "batch 256, and Q regressed on V(s') from before the step's V update. Where they differ: CORL",
        "standardizes observations (`normalize=True`, as in its configs) and our IQL recipe does not;",
        "log σ is clipped to [-20, 2] there and [-5, 2] here; our buffer's actions are clipped to",
        "±(1 - 1e-5) (for the log-likelihood), theirs are not.",
        "",
        f"Command: `python benchmarks/bench_corl_iql.py {shlex.join(args.argv)}`",
        "",
        f"Machine: {cpu_model()}, {_cores()}; torch {torch.__version__}, {args.threads} thread(s) "
        f"per process (`OMP_NUM_THREADS`). CORL commit {info['commit']}. {where}; {args.steps:,} "
        f"updates per seed, evaluations of {args.eval_episodes} episodes{eval_steps} every "
        f"{args.eval_interval:,} updates, the final one reported. {args.rounds} round(s), the order "
        f"of the three runs rotating every round; round r trains seed {args.seed} + r on both "
        f"sides. Load average (1 min / 5 min) {l1b:.2f} / {l5b:.2f} before, {l1a:.2f} / {l5a:.2f} "
        "after"
        + (
            ": the machine was shared (other jobs on the same cores), so absolute rates are low; "
            "the runs of a round met the same load."
            if max(l1b, l1a) > 1.2
            else "."
        ),
        "",
        "Medians over rounds:",
        "",
        *medians,
        "",
        f"One seed: torchrl_sym / CORL = **{summary['ours']['ratio']:.2f}×** end to end. "
        f"Stacked ({stack_label}): **{summary['stacked']['ratio']:.2f}×** CORL's seed-updates/s.",
        "",
        "Compile s: our loop's `time/compile_seconds` (the first calls of the compiled update),",
        "part of the wall time. s / evaluation: one evaluation's seconds (CORL: their `eval_actor`,",
        "episodes one after another; ours: the loop's `time/eval_seconds`, all episodes in one",
        "vectorized env, every stacked seed's in a stacked run).",
        "",
        "Every run:",
        "",
        *rows,
        "",
        "Reward scale: both multiply rewards by `1000 / (max - min episode return)`: ours over the",
        "dataset's episodes as recorded (split at terminations, time limits and breaks in the data),",
        "CORL's `return_reward_range` over pieces split at `terminals` and every 1000 steps counted",
        "from the last split. " + reward_note,
        "",
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--corl",
        default=None,
        help=f"root of a CORL checkout, the folder holding {CORL_FILE} ({CLONE_HINT})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--task",
        default=None,
        help=f"a task of torchrl_sym/configs/task/ (default {DEFAULT_TASK})",
    )
    where.add_argument(
        "--dataset", default=None, help="a dataset id instead of a task (ours: dataset=<id>)"
    )
    parser.add_argument("--steps", type=int, default=20_000, help="updates per seed")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stack", type=int, default=3, help="K of the stack_seeds=K run")
    parser.add_argument(
        "--stack-precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="precision of the stacked run (bf16: autocast, docs/training.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-interval", type=int, default=10_000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--eval-max-steps", type=int, default=None, help="cut evaluation episodes (default: 1000)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an extra hydra override for our runs (repeatable), e.g. train.log_interval=100",
    )
    parser.add_argument("--workdir", default=None, help="where run folders go (default: $TMPDIR)")
    parser.add_argument("--write", default=None, help="write the page (markdown) to this file")
    parser.add_argument(
        "--from-results",
        default=None,
        metavar="RESULTS_JSON",
        help="run nothing: print (and --write) the page of an earlier run's results.json",
    )
    parser.add_argument("--corl-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.from_results:
        saved, rounds, meta = load_results(Path(args.from_results))
        lines, _ = report(saved, rounds, meta)
        print()
        print("\n".join(lines), flush=True)
        if args.write:
            Path(args.write).write_text("\n".join(lines))
        return
    if args.corl is None:
        parser.error("--corl is required (the root of a CORL checkout: " + CLONE_HINT + ")")
    try:
        args.corl = str(corl_dir(args.corl))
    except CorlCodeError as err:
        parser.error(str(err))
    for name in ("steps", "rounds", "stack", "eval_interval", "eval_episodes", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.dataset is None and args.task is None:
        args.task = DEFAULT_TASK
    args.dataset_id = args.dataset if args.dataset else task_dataset(args.task)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.corl_child:
        corl_child(args)
        return
    rounds, meta = run(args)
    lines, _ = report(args, rounds, meta)
    print()
    print("\n".join(lines), flush=True)
    if args.write:
        Path(args.write).write_text("\n".join(lines))


if __name__ == "__main__":
    main()
