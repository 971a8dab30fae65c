"""Pick the expert and medium policies from a ``recipes/sac.py`` run and write them with their cards.

    python -m torchrl_sym.data.policies.build hopper /path/to/sac/run [--out DIR] [--episodes 20]

* **expert**: the actor snapshot with the highest evaluated return over the run (as far as the
  training budget allowed);
* **medium**: among earlier snapshots, the one whose evaluated return is closest to one third of the
  expert's (D4RL's definition of "medium");
* **random**: the uniform random policy (no weights; its mean return is the datasets'
  ``ref_min_score``).

Each policy is then evaluated afresh over ``--episodes`` deterministic episodes (seeds
``eval_seed + i``, disjoint from the SAC run's own evaluation seeds), and the card records those
figures. The replay buffer of the run up to the medium snapshot is written as
``<family>_medium_replay.npz`` (episodes in collection order).
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


def _evaluate(env_id: str, actor, episodes: int) -> tuple[float, float]:
    from torchrl_sym.envs import make_env
    from torchrl_sym.train.evaluate import evaluate_policy

    returns = evaluate_policy(
        make_env(env_id, seed=EVAL_SEED), actor, num_episodes=episodes, seed=EVAL_SEED
    )
    return float(returns.mean()), float(returns.std(unbiased=False))


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


def build(
    family: str,
    run_dir: Path,
    out_dir: Path = POLICY_DIR,
    episodes: int = 20,
    random_episodes: int = 100,
) -> dict:
    from omegaconf import OmegaConf

    from torchrl_sym.envs import resolve_env_id
    from torchrl_sym.models import make_tanh_gaussian_actor

    env_id = resolve_env_id(family)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    hidden = [int(h) for h in cfg.sac.hidden]
    import gymnasium as gym

    probe = gym.make(env_id)
    obs_dim, act_dim = int(probe.observation_space.shape[0]), int(probe.action_space.shape[0])
    probe.close()
    evals = _read_evals(run_dir)
    expert_frames, medium_frames = select_snapshots(evals)
    run_steps = max(f for f, _ in evals)
    sac_command = f"python recipes/sac.py env={family} seed={cfg.seed} frames={run_steps}"
    build_command = (
        f"python -m torchrl_sym.data.policies.build {family} <sac run dir> --episodes {episodes}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    cards = {}
    for kind, frames in (("expert", expert_frames), ("medium", medium_frames)):
        state = torch.load(run_dir / "actors" / f"actor_{frames:08d}.pt", weights_only=True)
        actor = make_tanh_gaussian_actor(obs_dim, act_dim, hidden)
        actor.load_state_dict(state)
        mean, std = _evaluate(env_id, actor, episodes)
        blob = {
            "state_dict": state,
            "obs_dim": obs_dim,
            "act_dim": act_dim,
            "hidden": hidden,
            "env_id": env_id,
        }
        pt = out_dir / f"{family}_{kind}.pt"
        torch.save(blob, pt)
        cards[kind] = {
            "env_id": env_id,
            "kind": kind,
            "algorithm": "SAC (recipes/sac.py)",
            "training_env_steps": frames,
            "sac_run_env_steps": run_steps,
            "note": (
                f"SAC trained for {run_steps:,} env steps on a 2-core CPU (D4RL's behavior policies had "
                "about 1M); returns are correspondingly lower than D4RL's. SAC on CPU is reproducible "
                "in distribution, not bit for bit, across machines."
            ),
            "return_mean": mean,
            "return_std": std,
            "episodes": episodes,
            "eval_seed": EVAL_SEED,
            "train_seed": int(cfg.seed),
            "architecture": f"MLP {hidden} ReLU -> tanh-Gaussian (state-dependent scale)",
            "sha256": hashlib.sha256(pt.read_bytes()).hexdigest(),
            "reproduce": [sac_command, build_command],
            "versions": _versions(),
        }
    rmean, rstd = _random_returns(env_id, random_episodes)
    cards["random"] = {
        "env_id": env_id,
        "kind": "random",
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
    replay = _replay_prefix(run_dir, medium_frames)
    np.savez_compressed(out_dir / f"{family}_medium_replay.npz", **replay)
    return cards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_sym.data.policies.build", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("family", help="hopper | halfcheetah | walker2d")
    parser.add_argument("run_dir", type=Path, help="a recipes/sac.py run directory")
    parser.add_argument("--out", type=Path, default=POLICY_DIR)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--random-episodes", type=int, default=100)
    args = parser.parse_args(argv)
    cards = build(args.family, args.run_dir, args.out, args.episodes, args.random_episodes)
    for kind, card in cards.items():
        print(
            f"{args.family} {kind}: {card['return_mean']:.1f} ± {card['return_std']:.1f} ({card.get('training_env_steps', '-')} steps)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
