"""Pick the expert and medium policies from ``recipes/sac.py`` runs and write them with their cards.

    python -m torchrl_sym.recipes.build_policies hopper EXPERT_RUN [--medium-run MEDIUM_RUN]
        [--version 1] [--min-replay 100000] [--episodes 20] [--medium-episodes 10]

* **expert**: the actor snapshot of ``EXPERT_RUN`` with the highest evaluated (deterministic) return
  (as far as the training budget allowed);
* **medium** (D4RL's definition): the snapshot of ``MEDIUM_RUN`` (default: the expert's run) whose
  *sampled* (stochastic) rollouts average closest to one third of the expert's return, among the
  snapshots taken after at least ``--min-replay`` collected transitions, so that the medium-replay
  set (every transition the learner collected up to that snapshot) has that size. Without
  ``--medium-run`` (the v0 build), the earlier snapshot of the expert's run whose evaluated
  deterministic return is closest to a third of the expert's;
* **random**: the uniform random policy (no weights; its mean return is the datasets'
  ``ref_min_score``).

A sample-efficient learner (CrossQ) reaches medium returns after a few thousand env steps, so the
medium policy and its replay come from a second run of the same learner with a lower update-to-data
ratio (``sac.utd=0.1``): it learns ten times slower per env step, and its medium snapshot comes
after a D4RL-sized replay.

Each policy is then evaluated afresh over ``--episodes`` episodes, deterministic and sampled (seeds
``eval_seed + i``, disjoint from the runs' own evaluation seeds), and the card records those
figures. The replay buffer of the medium run up to the medium snapshot is written as
``<family>_medium_replay.npz`` (episodes in collection order). Version ``N >= 1`` writes into
``torchrl_sym/data/policies/v<N>/`` (the policies of ``torchrl_sym/<family>/<kind>-v<N>``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import platform
from pathlib import Path

import numpy as np
import torch

from torchrl_sym.data.policies import POLICY_DIR

EVAL_SEED = 10_000


MEDIUM_FRACTION = 1 / 3  # D4RL: medium rollouts average about a third of the expert's return


def _read_evals(run_dir: Path) -> list[tuple[int, float]]:
    with open(run_dir / "actors" / "evals.csv") as f:
        rows = [(int(r["frames"]), float(r["return_mean"])) for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{run_dir} has no evaluated actor snapshots yet.")
    return rows


def select_snapshots(evals: list[tuple[int, float]]) -> tuple[int, int]:
    """``(expert_frames, medium_frames)`` from ``[(frames, mean return), ...]`` (see module doc)."""
    expert_frames, expert_return = max(evals, key=lambda r: r[1])
    earlier = [r for r in evals if r[0] < expert_frames]
    if not earlier:
        raise ValueError(
            "No snapshot precedes the expert; the run is too short to pick a medium policy."
        )
    medium_frames = min(earlier, key=lambda r: abs(r[1] - expert_return / 3))[0]
    return expert_frames, medium_frames


def _versions() -> dict[str, str]:
    import gymnasium
    import mujoco
    import torchrl

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
    }


def _evaluate(
    env_id: str, actor, episodes: int, *, sampled: bool = False, seed: int = EVAL_SEED
) -> tuple[float, float]:
    """Mean and std of the return over ``episodes`` episodes, deterministic (``tanh μ(s)``) or
    sampled (``a ~ π(·|s)``, as the datasets are rolled out)."""
    from torchrl.envs.utils import ExplorationType

    from torchrl_sym.envs import make_env
    from torchrl_sym.train.evaluate import evaluate_policy

    # sampled episodes are seeded by evaluate_policy itself (torch seeded with seed + i)
    kwargs = {"exploration_type": ExplorationType.RANDOM} if sampled else {}
    returns = evaluate_policy(
        make_env(env_id, seed=seed), actor, num_episodes=episodes, seed=seed, **kwargs
    )
    return float(returns.mean()), float(returns.std(unbiased=False))


def select_sampled_medium(
    candidates: list[tuple[int, float]],
    expert_return: float,
    sampled_return,
    *,
    min_frames: int = 0,
) -> tuple[int, float, list[tuple[int, float]]]:
    """The medium snapshot: among ``candidates`` ``[(frames, deterministic return), ...]`` taken
    after ``min_frames``, the one whose sampled return (``sampled_return(frames)``) is closest to
    ``MEDIUM_FRACTION * expert_return``.

    Only snapshots whose deterministic return lies in ``[f/2, 3f]`` of the target ``f`` are rolled
    out (sampled returns sit below deterministic ones, rarely far above), and they are tried in
    order of that distance, stopping once one lands within 5% of the expert's return of the target.

    Returns:
        ``(frames, sampled return, [(frames, sampled return) of every snapshot rolled out])``.

    Raises:
        ValueError: no snapshot after ``min_frames``, or none in the range.
    """
    target = MEDIUM_FRACTION * expert_return
    late = [(f, r) for f, r in candidates if f >= min_frames]
    if not late:
        raise ValueError(
            f"No snapshot after {min_frames:,} collected transitions: train the medium run longer "
            "(or lower --min-replay)."
        )
    near = sorted(
        [(f, r) for f, r in late if target / 2 <= r <= 3 * target], key=lambda x: abs(x[1] - target)
    )
    if not near:
        best = min(late, key=lambda x: abs(x[1] - target))
        raise ValueError(
            f"No snapshot after {min_frames:,} transitions returns near a third of the expert's "
            f"({target:.0f}); the closest is {best[1]:.0f} at {best[0]:,} frames. Lower the medium "
            "run's learning speed (sac.utd) or --min-replay."
        )
    tried: list[tuple[int, float]] = []
    for frames, _ in near:
        tried.append((frames, float(sampled_return(frames))))
        if abs(tried[-1][1] - target) <= 0.05 * expert_return:
            break
    frames, value = min(tried, key=lambda x: abs(x[1] - target))
    return frames, value, sorted(tried)


def _random_returns(env_id: str, episodes: int) -> tuple[float, float]:
    import gymnasium as gym

    env = gym.make(env_id)
    rng = np.random.default_rng(EVAL_SEED)
    returns = []
    for i in range(episodes):
        env.reset(seed=EVAL_SEED + i)
        total, done = 0.0, False
        while not done:
            _, r, term, trunc, _ = env.step(
                rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            )
            total += float(r)
            done = term or trunc
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


def _replay_prefix(run_dir: Path, frames: int) -> dict[str, np.ndarray]:
    """The first ``frames`` collected transitions, stored episode-wise (observations T + 1 rows)."""
    path = run_dir / "replay_buffer.pt"
    if path.is_file():
        data = torch.load(path, weights_only=False)
    else:  # an unfinished run: the buffer saved with its latest checkpoint
        from torchrl_sym.train.checkpoint import CheckpointManager

        data = CheckpointManager(run_dir / "checkpoints").load_latest()["buffer"]
    if data.shape[0] < frames:
        raise ValueError(
            f"The saved replay buffer of {run_dir} holds {data.shape[0]} < {frames} transitions."
        )
    data = data[:frames]
    traj = data["collector", "traj_ids"].reshape(-1).numpy()
    starts = np.flatnonzero(np.r_[True, traj[1:] != traj[:-1]])
    ends = np.r_[starts[1:], len(traj)]
    obs, nxt = data["observation"].numpy(), data["next", "observation"].numpy()
    out = {
        k: []
        for k in (
            "observations",
            "actions",
            "rewards",
            "terminations",
            "truncations",
            "episode_lengths",
        )
    }
    for s, e in zip(starts, ends):
        out["observations"].append(np.concatenate([obs[s:e], nxt[e - 1 : e]]))
        out["actions"].append(data["action"][s:e].numpy())
        out["rewards"].append(data["next", "reward"][s:e].reshape(-1).numpy())
        out["terminations"].append(data["next", "terminated"][s:e].reshape(-1).numpy())
        out["truncations"].append(data["next", "truncated"][s:e].reshape(-1).numpy())
        out["episode_lengths"].append(np.array([e - s]))
    return {
        k: np.concatenate(v).astype(np.int64 if k == "episode_lengths" else v[0].dtype)
        for k, v in out.items()
    }


def _learner(cfg) -> str:
    algo = str(cfg.get("algo", "sac"))
    name = {"sac": "SAC", "crossq": "CrossQ"}.get(algo, algo)
    return f"{name} (recipes/sac.py algo={algo}, utd {cfg.sac.utd})"


def _train_command(family: str, cfg, frames: int) -> str:
    algo = str(cfg.get("algo", "sac"))
    extra = "" if float(cfg.sac.utd) == 1 else f" sac.utd={cfg.sac.utd}"
    return f"python recipes/sac.py algo={algo} env={family} seed={cfg.seed} frames={frames}{extra}"


def _load_actor(run_dir: Path, frames: int, obs_dim: int, act_dim: int, hidden: list[int]):
    from torchrl_sym.models import make_tanh_gaussian_actor

    state = torch.load(run_dir / "actors" / f"actor_{frames:08d}.pt", weights_only=True)
    actor = make_tanh_gaussian_actor(obs_dim, act_dim, hidden)
    actor.load_state_dict(state)
    return actor, state


def output_dir(version: int) -> Path:
    """Where the policies of dataset version ``version`` live (v0: the package folder itself)."""
    return POLICY_DIR if version == 0 else POLICY_DIR / f"v{version}"


def build(
    family: str,
    run_dir: Path,
    out_dir: Path | None = None,
    episodes: int = 20,
    random_episodes: int = 100,
    *,
    medium_run: Path | None = None,
    min_replay: int = 0,
    medium_episodes: int = 10,
    version: int = 0,
) -> dict:
    """Writes ``<family>_{expert,medium,random}.json``, the two actors and the medium-replay
    buffer into ``out_dir`` (default :func:`output_dir` of ``version``); returns the cards."""
    from omegaconf import OmegaConf

    from torchrl_sym.envs import resolve_env_id

    out_dir = output_dir(version) if out_dir is None else Path(out_dir)
    env_id = resolve_env_id(family)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    hidden = [int(h) for h in cfg.sac.hidden]
    import gymnasium as gym

    probe = gym.make(env_id)
    obs_dim, act_dim = int(probe.observation_space.shape[0]), int(probe.action_space.shape[0])
    probe.close()
    evals = _read_evals(run_dir)
    build_command = (
        f"python -m torchrl_sym.recipes.build_policies {family} <expert run dir>"
        + (" --medium-run <medium run dir>" if medium_run is not None else "")
        + f" --version {version} --episodes {episodes}"
        + (f" --min-replay {min_replay} --medium-episodes {medium_episodes}" if medium_run else "")
    )
    expert_frames = max(evals, key=lambda r: r[1])[0]
    expert_actor, _ = _load_actor(run_dir, expert_frames, obs_dim, act_dim, hidden)
    expert_return = _evaluate(env_id, expert_actor, episodes)[0]
    selection: dict = {}
    if medium_run is None:  # v0: one run, deterministic returns
        medium_run, medium_cfg = run_dir, cfg
        medium_frames = select_snapshots(evals)[1]
    else:
        medium_cfg = OmegaConf.load(medium_run / "config.yaml")
        medium_evals = _read_evals(medium_run)
        medium_hidden = [int(h) for h in medium_cfg.sac.hidden]

        def sampled(frames: int) -> float:
            actor, _ = _load_actor(medium_run, frames, obs_dim, act_dim, medium_hidden)
            return _evaluate(env_id, actor, medium_episodes, sampled=True, seed=EVAL_SEED + 500)[0]

        medium_frames, _, tried = select_sampled_medium(
            medium_evals, expert_return, sampled, min_frames=min_replay
        )
        selection = {
            "rule": (
                f"the snapshot after >= {min_replay:,} collected transitions whose sampled return "
                f"over {medium_episodes} episodes is closest to {MEDIUM_FRACTION:.3f} x the "
                "expert's deterministic return"
            ),
            "target_return": MEDIUM_FRACTION * expert_return,
            "sampled_returns_tried": [[f, r] for f, r in tried],
        }
    out_dir.mkdir(parents=True, exist_ok=True)
    cards = {}
    sources = {
        "expert": (run_dir, cfg, expert_frames),
        "medium": (medium_run, medium_cfg, medium_frames),
    }
    for kind, (source, source_cfg, frames) in sources.items():
        source_hidden = [int(h) for h in source_cfg.sac.hidden]
        actor, state = _load_actor(source, frames, obs_dim, act_dim, source_hidden)
        mean, std = _evaluate(env_id, actor, episodes)
        sampled_mean, sampled_std = _evaluate(env_id, actor, episodes, sampled=True)
        blob = {
            "state_dict": state,
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "hidden": source_hidden,
            "env_id": env_id,
        }
        pt = out_dir / f"{family}_{kind}.pt"
        torch.save(blob, pt)
        source_steps = max(f for f, _ in _read_evals(source))
        cards[kind] = {
            "env_id": env_id,
            "kind": kind,
            "dataset_version": version,
            "algorithm": _learner(source_cfg),
            "training_env_steps": frames,
            "run_env_steps": source_steps,
            "note": (
                f"Trained on a 2-core CPU for {source_steps:,} env steps (D4RL's behavior policies "
                "had about 1M SAC steps). Training on CPU is reproducible in distribution, not bit "
                "for bit, across machines."
            ),
            "return_mean": mean,
            "return_std": std,
            "sampled_return_mean": sampled_mean,
            "sampled_return_std": sampled_std,
            "episodes": episodes,
            "eval_seed": EVAL_SEED,
            "train_seed": int(source_cfg.seed),
            "architecture": f"MLP {source_hidden} ReLU -> tanh-Gaussian (state-dependent scale)",
            "sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
            "reproduce": [_train_command(family, source_cfg, source_steps), build_command],
            "versions": _versions(),
        }
        if kind == "medium" and selection:
            cards[kind]["selection"] = selection
    rmean, rstd = _random_returns(env_id, random_episodes)
    cards["random"] = {
        "env_id": env_id,
        "kind": "random",
        "dataset_version": version,
        "algorithm": "uniform random actions",
        "return_mean": rmean,
        "return_std": rstd,
        "episodes": random_episodes,
        "eval_seed": EVAL_SEED,
        "reproduce": [build_command],
        "versions": _versions(),
    }
    for kind, card in cards.items():
        (out_dir / f"{family}_{kind}.json").write_text(json.dumps(card, indent=2) + "\n")
    replay = _replay_prefix(medium_run, medium_frames)
    np.savez_compressed(out_dir / f"{family}_medium_replay.npz", **replay)
    return cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_sym.recipes.build_policies", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("family", help="hopper | halfcheetah | walker2d")
    parser.add_argument("run_dir", type=Path, help="the expert's recipes/sac.py run directory")
    parser.add_argument(
        "--medium-run", type=Path, default=None, help="the medium policy's run (default: run_dir)"
    )
    parser.add_argument("--version", type=int, default=0, help="dataset version (v1: 1)")
    parser.add_argument("--min-replay", type=int, default=0, help="medium-replay size at least")
    parser.add_argument("--medium-episodes", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="default: the version's folder")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--random-episodes", type=int, default=100)
    args = parser.parse_args(argv)
    cards = build(
        args.family,
        args.run_dir,
        args.out,
        args.episodes,
        args.random_episodes,
        medium_run=args.medium_run,
        min_replay=args.min_replay,
        medium_episodes=args.medium_episodes,
        version=args.version,
    )
    for kind, card in cards.items():
        print(
            f"{args.family} {kind}: {card['return_mean']:.1f} ± {card['return_std']:.1f} ({card.get('training_env_steps', '-')} steps)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
