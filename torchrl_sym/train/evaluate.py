"""Evaluation episodes (deterministic or sampled), normalized scores, last-k and best, eval CSV.

:func:`evaluate_policy` runs episodes and returns their returns; :class:`Evaluator` is what a
training loop calls every ``eval_every`` steps: it evaluates, keeps the history of mean returns
and normalized scores (so the "last k evaluations" and "best so far" numbers papers report can
be computed, also after a checkpoint-resume), and appends every episode to a CSV.

Two evaluation modes (:data:`EVAL_MODES`): ``"deterministic"`` acts with the policy's mode/mean
(``ExplorationType.DETERMINISTIC``, the usual D4RL protocol) and ``"sample"`` samples actions
from the policy (``ExplorationType.RANDOM``, the protocol of the Sf-AC authors). Seeded episodes
are reproducible in both, and leave the global random generators as they found them.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from torchrl_sym.train.checkpoint import rng_state, set_rng_state

if TYPE_CHECKING:
    from tensordict.nn import TensorDictModuleBase
    from torchrl.envs import EnvBase

__all__ = [
    "CSV_COLUMNS",
    "EVAL_MODES",
    "START_STATES",
    "Evaluator",
    "StackedEvaluator",
    "evaluate_policy",
    "evaluation_seeds",
    "exploration_type_of",
]

CSV_COLUMNS = ("step", "episode", "return", "normalized_score")
"""Columns of the evaluation CSV: one row per evaluation episode."""

EVAL_MODES = {"deterministic": ExplorationType.DETERMINISTIC, "sample": ExplorationType.RANDOM}
"""Evaluation modes (``eval.mode`` in the recipe configs) and the exploration type each runs in."""


def exploration_type_of(mode: str) -> ExplorationType:
    """The exploration type of an evaluation mode: ``"deterministic"`` -> ``DETERMINISTIC`` (the
    policy's mode/mean action), ``"sample"`` -> ``RANDOM`` (actions sampled from the policy).

    Raises:
        ValueError: ``mode`` is not a key of :data:`EVAL_MODES`; the message names ``eval.mode``
            and the choices.
    """
    if not isinstance(mode, str) or mode not in EVAL_MODES:
        raise ValueError(
            f"eval.mode={mode!r} is not an evaluation mode; choose one of {tuple(EVAL_MODES)}: "
            "'deterministic' acts with the policy's mode/mean, 'sample' samples its actions."
        )
    return EVAL_MODES[mode]


_STATE_VERSION = 1

START_STATES = ("disjoint", "legacy")
"""The evaluation start-state protocols (``eval.start_states``): see :func:`evaluation_seeds`."""

_DISJOINT_BASE = 1_000_000_000
_DISJOINT_STRIDE = 100_000


def evaluation_seeds(seed: int, num_episodes: int, start_states: str = "disjoint") -> list[int]:
    """The seed of each evaluation episode of a run trained with seed ``seed``.

    ``"disjoint"`` (every run started since 2026-12-07): episode ``i`` is seeded
    ``1_000_000_000 + 100_000 · seed + i``. Two training seeds never share a start state (for
    up to 100,000 episodes per evaluation), every algorithm trained with the same seed is
    evaluated from the same start states, and no evaluation seed equals a training seed.
    ``"legacy"`` (the runs before it): ``seed + 100 + i``, under which training seeds ``s`` and
    ``s + 1`` share all but one of their start states.

    Raises:
        ValueError: an unknown protocol, ``num_episodes`` out of ``[1, 100000]``, or a training
            seed whose evaluation seeds would be negative.
    """
    if start_states not in START_STATES:
        raise ValueError(
            f"eval.start_states={start_states!r} is not a start-state protocol; choose one of "
            f"{START_STATES}."
        )
    if not 1 <= int(num_episodes) <= _DISJOINT_STRIDE:
        raise ValueError(
            f"eval.episodes={num_episodes!r}: an evaluation runs 1 to {_DISJOINT_STRIDE} episodes."
        )
    if start_states == "legacy":
        base = int(seed) + 100
    else:
        base = _DISJOINT_BASE + _DISJOINT_STRIDE * int(seed)
    if base < 0:
        raise ValueError(
            f"seed={seed}: its evaluation seeds would be negative; use a seed >= "
            f"{-_DISJOINT_BASE // _DISJOINT_STRIDE}."
        )
    return [base + i for i in range(int(num_episodes))]


def evaluate_policy(
    env: EnvBase,
    policy: TensorDictModuleBase,
    *,
    num_episodes: int = 10,
    max_steps: int = 1000,
    seed: int | None = None,
    seeds: list[int] | None = None,
    exploration_type: ExplorationType = ExplorationType.DETERMINISTIC,
) -> Tensor:
    """Runs ``num_episodes`` episodes and returns their undiscounted returns.

    Episode ``i`` is ``env.rollout(max_steps, policy, break_when_any_done=True)`` under
    ``exploration_type`` and ``torch.no_grad()``; its return is ``G_i = sum_t r_t`` over the
    ``("next", "reward")`` entries of the rollout, summed in float64. An episode ends at the env's
    done (termination or truncation) or after ``max_steps`` steps, whichever comes first.
    ``ExplorationType.DETERMINISTIC`` (the default) acts with the policy's mode/mean;
    ``ExplorationType.RANDOM`` samples actions from the policy's distribution.

    If ``seed`` is given, before episode ``i`` the env is reseeded with ``env.set_seed(seed + i)``
    and torch's global generators (CPU and every CUDA device) with ``torch.manual_seed(seed + i)``,
    so the initial states and the actions a policy samples (from those generators) are the same
    on every call: the returns are a function of the policy and ``seed`` alone, in either mode.
    The global RNG states (Python ``random``, NumPy, torch, CUDA) are captured before the first
    episode and restored after the last, also on an error, so an evaluation neither consumes nor
    perturbs the random streams of training (a resumed run evaluates and trains exactly as an
    uninterrupted one). With ``seed=None`` the episodes continue the env's and torch's streams and
    nothing is restored.

    A vectorized env (batch size ``[N]``, e.g. ``make_env(..., num_envs=N)``) runs the episodes
    ``N`` at a time with one policy call per step for all of them: episodes ``start ..
    start + N - 1`` are sub-envs ``0 .. N - 1`` after ``env.set_seed(seed + start)`` (which
    seeds sub-env ``i`` with ``seed + start + i``, the seed episode ``start + i`` gets
    unbatched) and ``torch.manual_seed(seed + start)``; a sub-env's return counts its rewards up
    to its first done, and a last chunk with fewer episodes than ``N`` keeps the first ones. A
    deterministic policy therefore gets the same returns as from the unbatched env (up to
    float rounding of the batched forward pass; tested); sampled actions come from one stream
    per chunk instead of one per episode, the same distribution but other values.

    ``seeds`` (one per episode, instead of ``seed``) seeds episode ``i`` with ``seeds[i]`` in the
    same way: the unbatched env with ``env.set_seed(seeds[i])`` and ``torch.manual_seed(seeds[i])``;
    a vectorized env chunk by chunk, sub-env ``j`` of the chunk starting at episode ``start``
    with ``seeds[start + j]`` (``env.set_seed`` for consecutive seeds, else the Gymnasium vector
    env's ``reset(seed=[...])``) and ``torch.manual_seed(seeds[start])``. ``seeds=[s, s + 1,
    ...]`` is exactly ``seed=s``.

    A policy that is an ``nn.Module`` is put in eval mode for the episodes and restored to its
    previous mode afterwards.

    Args:
        env: an unbatched TorchRL env (``env.batch_size == ()``) or a vectorized one
            (``[N]``) whose sub-envs may be stepped past their end (Gymnasium's auto-reset).
        policy: reads ``"observation"`` and writes ``"action"``.
        num_episodes: number of episodes (>= 1).
        max_steps: step limit per episode (>= 1).
        seed: base seed of the episodes, or None to continue the env's and torch's random streams.
        seeds: the seed of each episode (``len(seeds) == num_episodes``), instead of ``seed``.
        exploration_type: ``DETERMINISTIC`` (the default: the policy's mode/mean) or ``RANDOM``
            (sampled actions); see :func:`exploration_type_of` for the ``eval.mode`` names.

    Returns:
        Float64 CPU tensor of shape ``[num_episodes]``: the return of each episode.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.envs import GymEnv
        >>> policy = TensorDictModule(
        ...     lambda obs: torch.zeros(*obs.shape[:-1], 1), in_keys=["observation"], out_keys=["action"]
        ... )
        >>> returns = evaluate_policy(GymEnv("Pendulum-v1"), policy, num_episodes=2, max_steps=20, seed=0)
        >>> returns.shape, returns.dtype
        (torch.Size([2]), torch.float64)
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    if len(env.batch_size) > 1:
        raise ValueError(
            f"evaluate_policy needs an unbatched env or a vectorized env of batch size [N], got "
            f"batch_size={tuple(env.batch_size)}"
        )
    if seeds is not None:
        if seed is not None:
            raise ValueError("evaluate_policy takes seed or seeds, not both")
        seeds = [int(s) for s in seeds]
        if len(seeds) != num_episodes:
            raise ValueError(f"seeds has {len(seeds)} entries for {num_episodes} episodes")
    elif seed is not None:
        seeds = [int(seed) + i for i in range(num_episodes)]
    was_training = getattr(policy, "training", None)
    if was_training is not None:
        policy.eval()
    returns = torch.empty(num_episodes, dtype=torch.float64)
    saved_rng = rng_state() if seeds is not None else None
    try:
        with set_exploration_type(exploration_type), torch.no_grad():
            if env.batch_size == torch.Size([]):
                for episode in range(num_episodes):
                    if seeds is not None:
                        env.set_seed(seeds[episode])
                        # after set_seed, which may draw from torch's generator itself
                        torch.manual_seed(seeds[episode])
                    rollout = env.rollout(max_steps, policy, break_when_any_done=True)
                    reward = rollout.get(("next", "reward"))
                    returns[episode] = reward.to(device="cpu", dtype=torch.float64).sum()
            else:
                num_envs = env.batch_size[0]
                for start in range(0, num_episodes, num_envs):
                    if seeds is not None:
                        _seed_sub_envs(env, seeds[start : start + num_envs])
                        torch.manual_seed(seeds[start])
                    chunk = _batched_returns(env, policy, max_steps)
                    stop = min(start + num_envs, num_episodes)
                    returns[start:stop] = chunk[: stop - start]
    finally:
        if saved_rng is not None:
            set_rng_state(saved_rng)
        if was_training is not None:
            policy.train(was_training)
    return returns


def _seed_sub_envs(env: EnvBase, seeds: list[int]) -> None:
    """Seeds sub-env ``j`` of a vectorized env with ``seeds[j]`` (the first ``len(seeds)`` of
    them; the others continue from ``seeds[-1] + 1``)."""
    num_envs = env.batch_size[0]
    seeds = list(seeds) + [seeds[-1] + 1 + j for j in range(num_envs - len(seeds))]
    if seeds == list(range(seeds[0], seeds[0] + num_envs)):
        env.set_seed(seeds[0])  # sub-env j: seeds[0] + j
        return
    base = env.base_env if hasattr(env, "base_env") else env
    base.reset(seed=seeds)  # Gymnasium vector envs take one seed per sub-env


def _batched_returns(env: EnvBase, policy: TensorDictModuleBase, max_steps: int) -> Tensor:
    """One episode in each sub-env of a vectorized env, all stepped together; their returns.

    Each sub-env's rewards are summed (float64) up to and including the step of its first done;
    what a sub-env does after it (an auto-reset episode, or repeated steps) is not counted. The
    loop stops when every sub-env is done or after ``max_steps`` steps. The done flags are
    read on the host once per step, the one sync the early stop needs.
    """
    num_envs = env.batch_size[0]
    alive = torch.ones(num_envs, dtype=torch.bool)
    returns = torch.zeros(num_envs, dtype=torch.float64)
    tensordict = env.reset()
    for _ in range(max_steps):
        tensordict = env.step(policy(tensordict))
        reward = tensordict.get(("next", "reward")).to(device="cpu", dtype=torch.float64)
        done = tensordict.get(("next", "done")).to("cpu")
        returns += torch.where(alive, reward.reshape(num_envs), 0.0)
        alive &= ~done.reshape(num_envs)
        if not alive.any():
            break
        tensordict = step_mdp(tensordict)
    return returns


class Evaluator:
    """Periodic evaluation with history, last-k / best summaries and a per-episode CSV.

    Each call ``evaluator(step)`` runs :func:`evaluate_policy` in ``mode`` (seeded with the same
    episode seeds ``seed + i`` every time, for the env and for the actions a policy samples, so
    successive evaluations differ only by the policy, the training RNG streams are left as they
    were, and a resumed run evaluates exactly as an uninterrupted one would) and records the
    result.

    With episode returns ``G_1..G_n`` and normalized scores ``s_i = score_fn(G)_i``, the
    metrics of one evaluation are

    - ``eval/return`` = mean_i G_i, ``eval/return_std`` = population std of G (0 for n=1),
    - ``eval/episodes`` = n, ``eval/mode`` = ``mode`` (a string: loggers skip it, a recipe's
      ``summary.json`` records it),
    - with ``score_fn``: ``eval/normalized_score`` = mean_i s_i,
      ``eval/normalized_score_last_k`` = mean of the last ``last_k`` evaluations'
      ``eval/normalized_score`` (fewer while fewer exist) and ``eval/normalized_score_best`` =
      the max of ``eval/normalized_score`` over all evaluations so far;
    - without ``score_fn``: ``eval/return_last_k`` and ``eval/return_best``, the same
      statistics of ``eval/return``.

    The history ``[(step, mean return, mean score or None), ...]`` is in :meth:`state_dict`, so
    a resumed run reports the same last-k and best as an uninterrupted one.

    If ``csv_path`` is set, every episode is appended as a row ``step,episode,return,
    normalized_score`` (score empty without ``score_fn``); the header is written once, when
    the file is new or empty, and the file is flushed and fsynced after each evaluation.
    :meth:`load_state_dict` drops rows written after the restored history, so the CSV of a
    resumed run has no evaluations from the abandoned run segment. Use a new path per run.

    Args:
        env: unbatched TorchRL evaluation env.
        policy: reads ``"observation"``, writes ``"action"``.
        num_episodes: episodes per evaluation.
        max_steps: step limit per episode.
        seed: base seed of the evaluation episodes (None: unseeded, and then sampled actions
            continue torch's global stream).
        seeds: the seed of each episode instead (:func:`evaluation_seeds` gives a run's).
        mode: ``"deterministic"`` (the policy's mode/mean action) or ``"sample"`` (actions
            sampled from the policy); see :data:`EVAL_MODES`.
        score_fn: maps a tensor of returns to normalized scores (0 = random, 100 = expert in
            D4RL's convention), elementwise; None if the task has no reference scores.
        last_k: number of latest evaluations averaged in the ``*_last_k`` metric.
        csv_path: where to append per-episode rows, or None.

    Examples:
        >>> import torch
        >>> ev = Evaluator(env=None, policy=None, score_fn=lambda g: 100 * (g + 1000) / 1000, last_k=2)
        >>> _ = ev._record(0, torch.tensor([-600.0, -400.0], dtype=torch.float64))
        >>> m = ev._record(10, torch.tensor([-200.0, -200.0], dtype=torch.float64))
        >>> m["eval/normalized_score"], m["eval/normalized_score_last_k"], m["eval/normalized_score_best"]
        (80.0, 65.0, 80.0)
    """

    def __init__(
        self,
        env: EnvBase,
        policy: TensorDictModuleBase,
        *,
        num_episodes: int = 10,
        max_steps: int = 1000,
        seed: int | None = None,
        seeds: list[int] | None = None,
        mode: str = "deterministic",
        score_fn: Callable[[Tensor], Tensor] | None = None,
        last_k: int = 10,
        csv_path: str | Path | None = None,
    ) -> None:
        if num_episodes < 1:
            raise ValueError(f"num_episodes must be >= 1, got {num_episodes!r}")
        if last_k < 1:
            raise ValueError(f"last_k must be >= 1, got {last_k!r}")
        self.exploration_type = exploration_type_of(mode)
        self.mode = mode
        self.env = env
        self.policy = policy
        self.num_episodes = num_episodes
        self.max_steps = max_steps
        if seeds is not None and len(seeds) != num_episodes:
            raise ValueError(f"seeds has {len(seeds)} entries for {num_episodes} episodes")
        self.seed = seed
        self.seeds = None if seeds is None else [int(x) for x in seeds]
        self.score_fn = score_fn
        self.last_k = last_k
        self.csv_path = Path(csv_path) if csv_path is not None else None
        self.history: list[tuple[int, float, float | None]] = []

    @property
    def _metric_name(self) -> str:
        return "normalized_score" if self.score_fn is not None else "return"

    def _tracked(self) -> list[float]:
        """The per-evaluation means the last-k and best metrics are computed from."""
        index = 2 if self.score_fn is not None else 1
        return [entry[index] for entry in self.history]

    @property
    def best(self) -> float:
        """Best mean normalized score (or mean return without ``score_fn``); nan if none yet."""
        tracked = self._tracked()
        return max(tracked) if tracked else math.nan

    @property
    def last_k_mean(self) -> float:
        """Mean over the last ``last_k`` evaluations of the mean score (or return); nan if none."""
        tracked = self._tracked()[-self.last_k :]
        return math.fsum(tracked) / len(tracked) if tracked else math.nan

    def __call__(self, step: int) -> dict[str, float | str]:
        """Runs one evaluation at training step ``step``, records it and returns its metrics."""
        returns = evaluate_policy(
            self.env,
            self.policy,
            num_episodes=self.num_episodes,
            max_steps=self.max_steps,
            seed=self.seed,
            seeds=self.seeds,
            exploration_type=self.exploration_type,
        )
        return self._record(step, returns)

    def _record(self, step: int, returns: Tensor) -> dict[str, float | str]:
        """Records the episode ``returns`` of an evaluation at ``step``; returns the metrics."""
        returns = torch.as_tensor(returns).detach().to(device="cpu", dtype=torch.float64).flatten()
        if returns.numel() == 0:
            raise ValueError(f"evaluation at step {step} has no episode returns")
        scores = None
        if self.score_fn is not None:
            scores = torch.as_tensor(self.score_fn(returns)).detach().to("cpu", torch.float64)
            if scores.shape != returns.shape:
                raise ValueError(
                    f"score_fn must map returns elementwise: returns of shape "
                    f"{tuple(returns.shape)} gave scores of shape {tuple(scores.shape)}"
                )
        mean_return = returns.mean().item()
        mean_score = scores.mean().item() if scores is not None else None
        self.history.append((int(step), mean_return, mean_score))
        self._append_csv(int(step), returns, scores)

        metrics = {
            "eval/return": mean_return,
            "eval/return_std": returns.std(correction=0).item(),
            "eval/episodes": float(returns.numel()),
            "eval/mode": self.mode,
        }
        if mean_score is not None:
            metrics["eval/normalized_score"] = mean_score
        metrics[f"eval/{self._metric_name}_last_k"] = self.last_k_mean
        metrics[f"eval/{self._metric_name}_best"] = self.best
        return metrics

    def _append_csv(self, step: int, returns: Tensor, scores: Tensor | None) -> None:
        if self.csv_path is None:
            return
        self.csv_path.parent.mkdir(parents=True, exist_ok=True)
        needs_header = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not needs_header:
            self._check_header()
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if needs_header:
            writer.writerow(CSV_COLUMNS)
        for episode, episode_return in enumerate(returns.tolist()):
            score = "" if scores is None else repr(scores[episode].item())
            writer.writerow((step, episode, repr(episode_return), score))
        # One write per evaluation, then fsync: a killed run keeps every finished evaluation.
        with open(self.csv_path, "a", newline="") as file:
            file.write(buffer.getvalue())
            file.flush()
            os.fsync(file.fileno())

    def _check_header(self) -> None:
        with open(self.csv_path, newline="") as file:
            header = file.readline().rstrip("\r\n")
        if header != ",".join(CSV_COLUMNS):
            raise ValueError(
                f"{self.csv_path} exists with header {header!r}, expected "
                f"{','.join(CSV_COLUMNS)!r}; it is not an evaluation CSV, pass another csv_path"
            )

    def state_dict(self) -> dict[str, Any]:
        """The evaluation history, ``{"version": 1, "history": [(step, return, score), ...]}``."""
        return {"version": _STATE_VERSION, "history": [tuple(entry) for entry in self.history]}

    def reset(self) -> None:
        """Forgets every evaluation and truncates the CSV to its header: a run that restarts from
        step 0 (no loadable checkpoint) never writes a step twice."""
        self.load_state_dict({"version": _STATE_VERSION, "history": []})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the history and drops CSV rows of evaluations after the restored ones.

        Rows whose step is greater than the last restored evaluation step (or all rows, if the
        restored history is empty) were written after the checkpoint was taken; they are
        removed by rewriting the CSV to a temporary file and ``os.replace``-ing it, so the
        CSV is never left half-rewritten. A final line without a newline (a write cut off by
        a kill) is dropped too.
        """
        if state_dict.get("version") != _STATE_VERSION or "history" not in state_dict:
            raise ValueError(
                f"Evaluator state must be {{'version': {_STATE_VERSION}, 'history': [...]}}, got "
                f"keys {sorted(state_dict)} with version {state_dict.get('version')!r}"
            )
        history = [
            (int(step), float(mean_return), None if score is None else float(score))
            for step, mean_return, score in state_dict["history"]
        ]
        missing_scores = [step for step, _, score in history if score is None]
        if self.score_fn is not None and missing_scores:
            raise ValueError(
                f"Evaluator has a score_fn but the restored evaluations at steps "
                f"{missing_scores[:5]} have no normalized score; they were saved by an "
                f"Evaluator without score_fn. Build the Evaluator the same way as the saved run."
            )
        self.history = history
        if self.csv_path is not None:
            self._truncate_csv(history[-1][0] if history else None)

    def _truncate_csv(self, last_step: int | None) -> None:
        if not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as file:
            lines = file.read().splitlines(keepends=True)
        if not lines:
            return
        self._check_header()
        header, rows = lines[0], lines[1:]
        if rows and not rows[-1].endswith("\n"):
            rows = rows[:-1]
        kept = []
        if last_step is not None:
            for row in rows:
                row_step = _csv_row_step(row)
                if row_step is not None and row_step <= last_step:
                    kept.append(row)
        if len(kept) == len(lines) - 1:
            return
        tmp = self.csv_path.with_name(f"{self.csv_path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "w", newline="") as file:
                file.write(header if header.endswith("\n") else header + "\n")
                file.writelines(kept)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, self.csv_path)
        finally:
            tmp.unlink(missing_ok=True)


def _csv_row_step(row: str) -> int | None:
    """The step of a CSV data row, or None if the row is malformed (e.g. a cut-off write)."""
    fields = row.rstrip("\r\n").split(",")
    if len(fields) != len(CSV_COLUMNS):
        return None
    try:
        return int(fields[0])
    except ValueError:
        return None


class StackedEvaluator:
    """The evaluations of K stacked seeds (:class:`~torchrl_sym.train.stacking.StackedPolicy`)
    in one vectorized env: each call runs the ``K · E`` episodes together (seed ``k``'s ``E``
    episodes on sub-envs ``k·E .. k·E + E − 1``, from seed ``k``'s own start states), then hands
    seed ``k``'s returns to ``evaluators[k]`` (its history, last-k/best and its CSV).

    Args:
        env: a vectorized env of ``K · E`` sub-envs (or of any ``N``: episodes then run ``N`` at a
            time, in order).
        policy: the stacked policy (acts for the seeds' sub-envs).
        evaluators: one :class:`Evaluator` per seed, all with the same ``num_episodes`` ``E``,
            ``max_steps`` and mode, each with its own ``seeds`` and ``csv_path``; their own
            ``env`` and ``policy`` are not used.
    """

    def __init__(self, env: EnvBase, policy, evaluators: list[Evaluator]):
        if not evaluators:
            raise ValueError("StackedEvaluator needs one Evaluator per seed")
        first = evaluators[0]
        for ev in evaluators:
            if (ev.num_episodes, ev.max_steps, ev.mode) != (
                first.num_episodes,
                first.max_steps,
                first.mode,
            ) or ev.seeds is None:
                raise ValueError(
                    "the evaluators of stacked seeds must share num_episodes, max_steps and mode, "
                    "and each name its episode seeds"
                )
        self.env = env
        self.policy = policy
        self.evaluators = list(evaluators)

    def __call__(self, step: int) -> list[dict[str, float | str]]:
        episodes = self.evaluators[0].num_episodes
        returns = evaluate_policy(
            self.env,
            self.policy,
            num_episodes=episodes * len(self.evaluators),
            max_steps=self.evaluators[0].max_steps,
            seeds=[s for ev in self.evaluators for s in ev.seeds],
            exploration_type=self.evaluators[0].exploration_type,
        )
        return [
            ev._record(step, returns[k * episodes : (k + 1) * episodes])
            for k, ev in enumerate(self.evaluators)
        ]

    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "seeds": [ev.state_dict() for ev in self.evaluators]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        states = state_dict.get("seeds")
        if states is None or len(states) != len(self.evaluators):
            raise ValueError(
                f"the checkpoint's evaluator state holds "
                f"{'no' if states is None else len(states)} seeds, this run has "
                f"{len(self.evaluators)}; resume with the configuration the run was started with"
            )
        for ev, state in zip(self.evaluators, states):
            ev.load_state_dict(state)

    def reset(self) -> None:
        for ev in self.evaluators:
            ev.reset()
