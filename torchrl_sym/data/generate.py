"""Roll policies out in Gymnasium MuJoCo envs into local Minari datasets.

``python -m torchrl_sym.data.generate hopper random --transitions 100000 --seed 0`` writes the
Minari dataset ``torchrl_sym/hopper/random-v0`` under the Minari root (``MINARI_DATASETS_PATH`` or
``~/.minari/datasets``), readable by :func:`minari.load_dataset` and by
:func:`torchrl_sym.data.make_offline_replay_buffer`.

A dataset is written whole or not at all: it is built under a temporary Minari root beside the real
one and moved into place by one ``rename``. Generation is deterministic given the seed: episode ``i``
resets the env with ``seed + i`` and the policy draws from a generator seeded with ``seed``.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
import sys
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "DATASET_KINDS",
    "dataset_id_for",
    "generate_dataset",
    "rollout_episodes",
    "write_minari_dataset",
]

logger = logging.getLogger(__name__)

# Kinds this module can produce today: the random policy needs no checkpoint.
DATASET_KINDS = ("random",)

Policy = Callable[[np.ndarray, np.random.Generator], np.ndarray]


def dataset_id_for(env: str, kind: str, version: int = 0) -> str:
    """``torchrl_sym/<family>/<kind>-v<version>`` for an env name such as "hopper" or "Hopper-v5"."""
    from torchrl_sym.envs import ENV_IDS, resolve_env_id

    env_id = resolve_env_id(env)
    family = next((k for k, v in ENV_IDS.items() if v == env_id), None)
    if family is None:
        raise ValueError(
            f"No torchrl_sym dataset family for env {env!r}; known: {sorted(ENV_IDS)}."
        )
    return f"torchrl_sym/{family}/{kind}-v{version}"


def random_policy(action_space) -> Policy:
    """Uniform actions in the env's box, drawn from the caller's generator."""
    low, high = action_space.low, action_space.high

    def act(obs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(low, high).astype(np.float32)

    return act


def rollout_episodes(
    env_id: str,
    policy: Policy | None,
    num_transitions: int,
    *,
    seed: int = 0,
    progress: bool = True,
):
    """Run whole episodes until at least ``num_transitions`` steps; the last episode is cut there.

    Returns a list of ``minari.data_collector.EpisodeBuffer`` (observations ``[T + 1, S]``; a cut
    final episode is neither terminated nor truncated, so its last ``next observation`` is real).
    """
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer
    from tqdm.auto import tqdm

    if num_transitions <= 0:
        raise ValueError(f"num_transitions must be positive, got {num_transitions}.")
    env = gym.make(env_id)
    policy = policy or random_policy(env.action_space)
    rng = np.random.default_rng(seed)
    episodes, total = [], 0
    with tqdm(total=num_transitions, desc=f"rollouts {env_id}", disable=not progress) as bar:
        while total < num_transitions:
            ep = len(episodes)
            obs, _ = env.reset(seed=seed + ep)
            o, a, r, te, tr = [obs], [], [], [], []
            while True:
                action = policy(obs, rng)
                obs, reward, terminated, truncated, _ = env.step(action)
                o.append(obs)
                a.append(action)
                r.append(reward)
                te.append(terminated)
                tr.append(truncated)
                if terminated or truncated or total + len(a) >= num_transitions:
                    break
            episodes.append(
                EpisodeBuffer(
                    id=ep,
                    seed=seed + ep,
                    observations=np.stack(o),
                    actions=np.stack(a).astype(np.float32),
                    rewards=np.asarray(r, dtype=np.float64),
                    terminations=np.asarray(te, dtype=bool),
                    truncations=np.asarray(tr, dtype=bool),
                )
            )
            total += len(a)
            bar.update(len(a))
    env.close()
    return episodes


def write_minari_dataset(
    dataset_id: str, episodes, *, env_id: str, overwrite: bool = False, **metadata
):
    """Write ``episodes`` as the local Minari dataset ``dataset_id``, atomically.

    ``metadata`` goes to :func:`minari.create_dataset_from_buffers` (``ref_min_score``,
    ``ref_max_score``, ``description``, ``algorithm_name`` ...). Returns the dataset's directory.
    """
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    root = Path(get_dataset_path())
    final = root / dataset_id
    if (final / "data").exists() and not overwrite:
        raise FileExistsError(
            f"Minari dataset '{dataset_id}' already exists at {final}; pass overwrite=True to replace it."
        )
    staging = root / f".tmp-{uuid.uuid4().hex[:8]}"
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=episodes,
                env=env_id,
                author=metadata.pop("author", "torchrl_sym"),
                author_email=metadata.pop("author_email", "torchrl_sym@users.noreply.github.com"),
                code_permalink=metadata.pop(
                    "code_permalink", "https://github.com/torchrl_sym/torchrl_sym"
                ),
                **metadata,
            )
        final.parent.mkdir(parents=True, exist_ok=True)
        # namespace metadata files (one per namespace level) are created by minari on demand
        for ns_file in staging.rglob("namespace_metadata.json"):
            dest = root / ns_file.relative_to(staging)
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ns_file, dest)
        if final.exists():
            shutil.rmtree(final)
        os.rename(staging / dataset_id, final)
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous
        shutil.rmtree(staging, ignore_errors=True)
    return final


def episodes_sha256(episodes) -> str:
    """sha256 over every episode's arrays, in order: the dataset's content fingerprint."""
    h = hashlib.sha256()
    for ep in episodes:
        for arr in (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def generate_dataset(
    env: str,
    kind: str = "random",
    *,
    num_transitions: int = 1_000_000,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> str:
    """Generate ``torchrl_sym/<env>/<kind>-v0`` locally and return its id."""
    from torchrl_sym.envs import resolve_env_id

    if kind not in DATASET_KINDS:
        raise ValueError(
            f"Unknown dataset kind {kind!r}; this version can generate {DATASET_KINDS}."
        )
    env_id = resolve_env_id(env)
    dataset_id = dataset_id_for(env, kind)
    episodes = rollout_episodes(env_id, None, num_transitions, seed=seed, progress=progress)
    sha = episodes_sha256(episodes)
    write_minari_dataset(
        dataset_id,
        episodes,
        env_id=env_id,
        overwrite=overwrite,
        algorithm_name=f"{kind} policy (torchrl_sym.data.generate, seed={seed})",
        description=(
            f"{kind} policy rollouts in {env_id}: {num_transitions} transitions, seed {seed}, "
            f"sha256 {sha}."
        ),
    )
    logger.info("wrote %s (%d episodes, sha256 %s)", dataset_id, len(episodes), sha)
    return dataset_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_sym.data.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("env", help="hopper, halfcheetah, walker2d, ant (or a v5 id)")
    parser.add_argument("kind", choices=DATASET_KINDS)
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        dataset_id = generate_dataset(
            args.env,
            args.kind,
            num_transitions=args.transitions,
            seed=args.seed,
            overwrite=args.overwrite,
        )
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(dataset_id)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
