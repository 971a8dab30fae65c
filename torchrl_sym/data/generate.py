"""D4RL-style MuJoCo datasets, generated locally into Minari from the shipped behavior policies.

    python -m torchrl_sym.data.generate hopper medium               # torchrl_sym/hopper/medium-v1
    python -m torchrl_sym.data.generate hopper medium --version 0   # torchrl_sym/hopper/medium-v0
    python -m torchrl_sym.data.generate hopper random --transitions 100000 --seed 0
    python -m torchrl_sym.data.generate --all                       # every env x every kind

Kinds, as D4RL built them:

* ``random``: uniform random actions;
* ``medium``: the shipped medium policy (its sampled rollouts average about one third of the
  expert's return), stochastic;
* ``expert``: the shipped expert policy (v1: CrossQ; v0: SAC on a CPU budget), stochastic;
* ``medium-replay``: the medium learner's replay buffer up to the medium snapshot (its size is
  fixed by training; ``--transitions`` does not apply);
* ``medium-expert``: the medium dataset followed by the expert dataset (each ``--transitions``
  long, same seed; read from disk when both exist with that size and seed).

Each dataset is the local Minari dataset ``torchrl_sym/<family>/<kind>-v<N>`` (under
``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``), with ``ref_min_score`` = the random policy's
mean return and ``ref_max_score`` = the expert's mean return from the policy cards, so
:func:`torchrl_sym.data.normalized_score` means what it means in D4RL. Its provenance (policy card,
seed, steps, library versions, sha256 of the arrays) is stored in ``provenance.json`` beside the
data and summarized in the dataset description.

Rollouts are vectorized over ``num_envs`` environments stepped in lockstep with one batched policy
call per step, and deterministic given the seed: the ``i``-th episode to start resets with
``seed + i``, and actions are drawn from generators seeded with ``seed``. The last episodes are cut
at the transition budget (neither terminated nor truncated: their final next-observation is real).
A dataset is written whole or not at all: it is built under a staging Minari root
(``<root>/.tmp-*``, holding a ``writer.json`` with the writer's pid and host) and moved into place
by one ``rename``. A staging directory left by a killed writer is removed by the next write (or
load) once that pid is no longer alive on this host; a live writer's is never touched. An existing
dataset, readable or not, is only replaced with ``overwrite=True`` (``--overwrite``), and that is
checked before any rollout.

Every write holds the dataset's lock (:class:`torchrl_sym.data._staging.dataset_lock`, an
``flock`` on ``.<name>.lock`` beside the dataset) from before it checks whether the dataset exists
until the dataset is in place, and every load holds it shared while it reads. A process that needs
a dataset another process is generating waits for it and then uses what that process wrote (it
says so in one line, with that dataset's size and seed), instead of failing or generating it
again; ``--overwrite`` waits for the readers and writers of the dataset before it replaces it. A
lock dies with its holder, so a killed generator blocks no one.

Ctrl-C (SIGINT) is never lost: the command exits with status 130 and says whether the dataset was
not written (nothing of it is kept) or was already complete (it is kept); it never exits 0 after
an interrupt.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

__all__ = [
    "DATASET_KINDS",
    "ENV_FAMILIES",
    "dataset_id_for",
    "episodes_sha256",
    "generate_dataset",
    "parse_generated_id",
    "rebuild_command",
    "remove_stale_staging",
    "rollout_episodes",
    "write_minari_dataset",
]

logger = logging.getLogger(__name__)

DATASET_KINDS = ("random", "medium", "medium-replay", "expert", "medium-expert")
ENV_FAMILIES = ("hopper", "halfcheetah", "walker2d")
# The newest dataset version (torchrl_sym.data.policies.CURRENT_VERSION). Without an explicit
# version, a family's datasets are built from its newest shipped policies (latest_version): v1 where
# they exist, else v0 (the SAC policies of the first release), which stays buildable (--version 0).
DATASET_VERSION = 1
_GENERATED_ID = re.compile(r"^torchrl_sym/(?P<family>[^/]+)/(?P<kind>[a-z-]+)-v(?P<version>\d+)$")

# (observations [K, S], step index) -> actions [K, A]; draws its noise from its own generator.
BatchPolicy = Callable[[np.ndarray], np.ndarray]


def latest_version(env: str) -> int:
    """The newest dataset version with shipped policies for ``env``'s family (0 if none newer)."""
    from torchrl_sym.data.policies import CARD_SETS, available_policies

    family = _family(env)
    for version in sorted(CARD_SETS, reverse=True):
        if (family, "expert") in available_policies(version):
            return version
    return 0


def dataset_id_for(env: str, kind: str, version: int | None = None) -> str:
    """``torchrl_sym/<family>/<kind>-v<version>`` for an env name such as "hopper" or "Hopper-v5"
    (``version=None``: the family's :func:`latest_version`)."""
    version = latest_version(env) if version is None else version
    return f"torchrl_sym/{_family(env)}/{kind}-v{version}"


def parse_generated_id(dataset_id: str) -> tuple[str, str, int] | None:
    """``(family, kind, version)`` of an id ``torchrl_sym/<family>/<kind>-v<N>`` naming one of this
    module's env families and kinds (any version), else None.

    >>> parse_generated_id("torchrl_sym/hopper/medium-replay-v0")
    ('hopper', 'medium-replay', 0)
    """
    match = _GENERATED_ID.match(dataset_id) if isinstance(dataset_id, str) else None
    if match is None or match["family"] not in ENV_FAMILIES or match["kind"] not in DATASET_KINDS:
        return None
    return match["family"], match["kind"], int(match["version"])


def rebuild_command(dataset_id: str) -> str | None:
    """The command that rebuilds the local dataset ``dataset_id`` in place (with ``--overwrite``),
    or None if this module does not build that id. It is the command recorded in the dataset's
    ``provenance.json`` (same size and seed) when that is readable, else the default one
    (1,000,000 transitions, seed 0)."""
    from torchrl_sym.data.policies import CARD_SETS

    parts = parse_generated_id(dataset_id)
    if parts is None or parts[2] not in CARD_SETS:
        return None
    family, kind, version = parts
    base = f"python -m torchrl_sym.data.generate {family} {kind}"
    command = f"{base} --version {version}"
    try:
        recorded = (read_provenance(dataset_id) or {}).get("command")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if isinstance(recorded, str) and recorded.startswith(base + " "):
        # the recorded size and seed; v0 datasets recorded no --version
        command = recorded if "--version" in recorded else f"{recorded} --version {version}"
    return command + " --overwrite"


def remove_stale_staging(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove staging directories under the Minari root (default: the current one) whose writer
    process is dead; return them. See the module docstring."""
    from minari.storage.datasets_root_dir import get_dataset_path

    from torchrl_sym.data._staging import remove_stale_staging as remove

    return remove(Path(root) if root is not None else Path(get_dataset_path()))


def _family(env: str) -> str:
    from torchrl_sym.envs import ENV_IDS, resolve_env_id

    env_id = resolve_env_id(env)
    family = next((k for k, v in ENV_IDS.items() if v == env_id), None)
    if family is None:
        raise ValueError(
            f"No torchrl_sym dataset family for env {env!r}; known: {sorted(ENV_IDS)}."
        )
    return family


def uniform_policy(action_space, seed: int) -> BatchPolicy:
    """Uniform actions in the env's box from a generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    low, high = action_space.low, action_space.high

    def act(obs: np.ndarray) -> np.ndarray:
        return rng.uniform(low, high, size=(obs.shape[0], *low.shape)).astype(np.float32)

    return act


def behavior_policy(env: str, kind: str, seed: int, version: int | None = None) -> BatchPolicy:
    """The shipped ``kind`` policy of dataset ``version``, sampling with a torch generator seeded
    with ``seed``."""
    import torch

    from torchrl_sym.data.policies import load_behavior_policy

    version = latest_version(env) if version is None else version
    policy = load_behavior_policy(env, kind, version)
    generator = torch.Generator().manual_seed(seed)

    def act(obs: np.ndarray) -> np.ndarray:
        return policy.act(obs, generator)

    return act


class _Episode:
    __slots__ = ("actions", "id", "observations", "rewards", "seed", "terminations", "truncations")

    def __init__(self, episode_id: int, seed: int, obs: np.ndarray):
        self.id, self.seed = episode_id, seed
        self.observations, self.actions, self.rewards = [obs], [], []
        self.terminations, self.truncations = [], []

    def buffer(self):
        from minari.data_collector import EpisodeBuffer

        return EpisodeBuffer(
            id=self.id,
            seed=self.seed,
            observations=np.stack(self.observations),
            actions=np.stack(self.actions).astype(np.float32),
            rewards=np.asarray(self.rewards, dtype=np.float64),
            terminations=np.asarray(self.terminations, dtype=bool),
            truncations=np.asarray(self.truncations, dtype=bool),
        )


def rollout_episodes(
    env_id: str,
    policy: BatchPolicy | None,
    num_transitions: int,
    *,
    seed: int = 0,
    num_envs: int = 32,
    progress: bool = True,
):
    """Roll ``policy`` out for exactly ``num_transitions`` steps over ``num_envs`` envs in lockstep.

    Returns ``minari.data_collector.EpisodeBuffer`` s ordered by the episode's start (episode ``i``
    reset with ``seed + i``). ``policy=None`` is the uniform random policy (seeded with ``seed``).
    """
    import gymnasium as gym
    from tqdm.auto import tqdm

    if not isinstance(num_transitions, int) or num_transitions <= 0:
        raise ValueError(f"num_transitions must be a positive int, got {num_transitions!r}.")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}.")
    num_envs = min(num_envs, num_transitions)
    envs = [gym.make(env_id) for _ in range(num_envs)]
    policy = policy or uniform_policy(envs[0].action_space, seed)
    finished: list[_Episode] = []
    started = 0

    def start(k: int) -> _Episode:
        nonlocal started
        obs, _ = envs[k].reset(seed=seed + started)
        episode = _Episode(started, seed + started, obs)
        started += 1
        return episode

    running = [start(k) for k in range(num_envs)]
    total = 0
    with tqdm(
        total=num_transitions, desc=f"rollouts {env_id}", disable=not progress, mininterval=1.0
    ) as bar:
        while total < num_transitions:
            live = min(num_envs, num_transitions - total)  # the last step may use fewer envs
            obs = np.stack([running[k].observations[-1] for k in range(live)])
            actions = policy(obs)
            for k in range(live):
                episode = running[k]
                next_obs, reward, terminated, truncated, _ = envs[k].step(actions[k])
                episode.observations.append(next_obs)
                episode.actions.append(actions[k])
                episode.rewards.append(reward)
                episode.terminations.append(terminated)
                episode.truncations.append(truncated)
                if terminated or truncated:
                    finished.append(episode)
                    running[k] = start(k)
            total += live
            bar.update(live)
    finished.extend(e for e in running if e.actions)  # episodes cut by the budget
    for env in envs:
        env.close()
    finished.sort(key=lambda e: e.id)
    return [e.buffer() for e in finished]


def episodes_sha256(episodes) -> str:
    """sha256 over every episode's arrays, in order: the dataset's content fingerprint."""
    h = hashlib.sha256()
    for ep in episodes:
        for arr in (ep.observations, ep.actions, ep.rewards, ep.terminations, ep.truncations):
            h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def write_minari_dataset(
    dataset_id: str,
    episodes,
    *,
    env_id: str,
    overwrite: bool = False,
    provenance: dict | None = None,
    **metadata,
):
    """Write ``episodes`` as the local Minari dataset ``dataset_id``, atomically.

    ``metadata`` goes to :func:`minari.create_dataset_from_buffers` (``ref_min_score``,
    ``ref_max_score``, ``description``, ``algorithm_name`` ...); ``provenance`` is written as
    ``provenance.json`` in the dataset directory. Returns the dataset's directory.

    The write holds the dataset's exclusive lock (it waits for the processes reading or writing
    ``dataset_id``) and checks whether the dataset exists only once it holds it. A Ctrl-C leaves
    either no new dataset or the complete one; the ``KeyboardInterrupt`` raised says which.
    """
    import minari
    from minari.storage.datasets_root_dir import get_dataset_path

    from torchrl_sym.data._staging import dataset_lock, honour_interrupts, make_staging_dir

    root = Path(get_dataset_path())
    final = root / dataset_id
    renamed = False
    try:
        with (
            honour_interrupts() as interrupts,
            dataset_lock(root, dataset_id, purpose="writing it"),
        ):
            if final.exists() and not overwrite:
                raise FileExistsError(
                    f"Minari dataset '{dataset_id}' already exists at {final}; pass "
                    "overwrite=True (--overwrite) to replace it."
                )
            remove_stale_staging(root)
            staging = make_staging_dir(root)
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
                        author_email=metadata.pop(
                            "author_email", "torchrl_sym@users.noreply.github.com"
                        ),
                        code_permalink=metadata.pop(
                            "code_permalink", "https://github.com/torchrl_sym/torchrl_sym"
                        ),
                        **metadata,
                    )
                if provenance is not None:
                    (staging / dataset_id / "provenance.json").write_text(
                        json.dumps(provenance, indent=2, default=str) + "\n"
                    )
                final.parent.mkdir(parents=True, exist_ok=True)
                # namespace metadata files (one per namespace level) are created by minari on demand
                for ns_file in staging.rglob("namespace_metadata.json"):
                    dest = root / ns_file.relative_to(staging)
                    if not dest.exists():
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(ns_file, dest)
                # a Ctrl-C whose KeyboardInterrupt was dropped (raised in a __del__) stops here
                interrupts.check()
                if final.exists():  # overwrite: the old dataset goes with the staging directory
                    os.rename(final, staging / ".replaced")
                os.rename(staging / dataset_id, final)
                renamed = True
            finally:
                if previous is None:
                    os.environ.pop("MINARI_DATASETS_PATH", None)
                else:
                    os.environ["MINARI_DATASETS_PATH"] = previous
                shutil.rmtree(staging, ignore_errors=True)
    except KeyboardInterrupt as err:
        if err.args:
            raise
        raise KeyboardInterrupt(_interrupted(dataset_id, final, renamed)) from None
    return final


def _interrupted(dataset_id: str, final: Path, written: bool) -> str:
    """What a Ctrl-C left of the dataset ``dataset_id``: the message of the KeyboardInterrupt."""
    if written:
        return (
            f"interrupted after dataset '{dataset_id}' was written completely: it is kept at "
            f"{final}"
        )
    if final.exists():
        return (
            f"interrupted before this process wrote dataset '{dataset_id}': nothing of its write "
            f"is kept; {final} holds a complete dataset written before"
        )
    return (
        f"interrupted before dataset '{dataset_id}' was written: there is no dataset at {final} "
        "(nothing partial is kept)"
    )


def read_provenance(dataset_id: str) -> dict | None:
    """The ``provenance.json`` of a local dataset written by this module (``None`` if absent)."""
    from minari.storage.datasets_root_dir import get_dataset_path

    path = Path(get_dataset_path(dataset_id)) / "provenance.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _versions() -> dict[str, str]:
    import gymnasium
    import minari
    import mujoco
    import torch
    import torchrl

    import torchrl_sym

    return {
        "torchrl_sym": torchrl_sym.__version__,
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "gymnasium": gymnasium.__version__,
        "mujoco": mujoco.__version__,
        "minari": minari.__version__,
        "numpy": np.__version__,
    }


def _replay_episodes(env: str, version: int):
    from minari.data_collector import EpisodeBuffer

    from torchrl_sym.data.policies import load_medium_replay

    return [
        EpisodeBuffer(
            id=i,
            observations=e["observations"],
            actions=e["actions"].astype(np.float32),
            rewards=e["rewards"].astype(np.float64),
            terminations=e["terminations"].astype(bool),
            truncations=e["truncations"].astype(bool),
        )
        for i, e in enumerate(load_medium_replay(env, version))
    ]


def _local_or_rollout(
    family: str, kind: str, num_transitions: int, seed: int, rollout: dict, version: int
):
    """The episodes of ``torchrl_sym/<family>/<kind>-v<version>`` if it exists with this size and seed (rollouts
    are deterministic, so reading it equals rolling out again), else a fresh rollout."""
    import minari
    from minari.data_collector import EpisodeBuffer
    from minari.storage.datasets_root_dir import get_dataset_path

    from torchrl_sym.data._staging import dataset_lock
    from torchrl_sym.envs import resolve_env_id

    dataset_id = dataset_id_for(family, kind, version)
    with dataset_lock(get_dataset_path(), dataset_id, shared=True):  # not replaced while read
        prov = read_provenance(dataset_id) if dataset_id in _local_ids() else None
        if prov and prov.get("seed") == seed and prov.get("transitions") == num_transitions:
            return [
                EpisodeBuffer(
                    id=ep.id,
                    seed=seed + ep.id,
                    observations=ep.observations,
                    actions=ep.actions,
                    rewards=np.asarray(ep.rewards, dtype=np.float64),
                    terminations=ep.terminations,
                    truncations=ep.truncations,
                )
                for ep in minari.load_dataset(dataset_id).iterate_episodes()
            ]
    policy = behavior_policy(family, kind, seed, version)
    return rollout_episodes(resolve_env_id(family), policy, num_transitions, seed=seed, **rollout)


def _local_ids() -> list[str]:
    from torchrl_sym.data import _staging

    return _staging.local_minari_ids()


def _reference_returns(
    family: str, version: int | None = None
) -> tuple[float | None, float | None]:
    """(random mean return, expert mean return) from the shipped cards of this dataset version
    (:func:`torchrl_sym.data.policies.reference_returns`, which :func:`normalized_score` also
    reads for an id that is not on disk), or Nones without cards."""
    from torchrl_sym.data.policies import reference_returns

    try:
        return reference_returns(family, latest_version(family) if version is None else version)
    except FileNotFoundError:
        return None, None


def generate_dataset(
    env: str,
    kind: str = "random",
    *,
    num_transitions: int = 1_000_000,
    seed: int = 0,
    num_envs: int = 32,
    overwrite: bool = False,
    progress: bool = True,
    version: int | None = None,
    exist_ok: bool = False,
) -> str:
    """Generate ``torchrl_sym/<family>/<kind>-v<version>`` locally (see the module docstring) from
    that version's shipped policies; return its id.

    An existing dataset raises :class:`FileExistsError` before any rollout, unless ``overwrite``
    (replace it) or ``exist_ok`` (return its id). The generation holds the dataset's lock; when
    another process held it and wrote the dataset meanwhile, that dataset is used (one logged
    line) and nothing is generated. A Ctrl-C raises ``KeyboardInterrupt`` saying whether the
    dataset was written.
    """
    from torchrl_sym.data._staging import dataset_lock, honour_interrupts
    from torchrl_sym.data.policies import load_card

    if kind not in DATASET_KINDS:
        raise ValueError(f"Unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}.")
    from minari.storage.datasets_root_dir import get_dataset_path

    family = _family(env)
    version = latest_version(family) if version is None else int(version)
    dataset_id = dataset_id_for(family, kind, version)
    if kind != "random":  # fail before any rollout when the version has no policies for family
        load_card(family, "expert", version)
    final = Path(get_dataset_path(dataset_id))
    if final.exists() and not overwrite:  # checked before the rollouts, not after them
        if exist_ok:
            return dataset_id
        raise FileExistsError(
            f"Minari dataset '{dataset_id}' already exists at {final}; pass overwrite=True "
            "(--overwrite) to replace it."
        )
    purpose = (
        f"{'regenerating' if overwrite else 'generating'} it ({num_transitions} transitions, "
        f"seed {seed})"
    )
    written = False
    try:
        with (
            honour_interrupts() as interrupts,
            dataset_lock(get_dataset_path(), dataset_id, purpose=purpose) as lock,
        ):
            if final.exists() and not overwrite:  # written by another process meanwhile
                _use_concurrent(dataset_id, lock, num_transitions, seed)
                return dataset_id
            _generate_locked(
                family,
                kind,
                version,
                num_transitions=num_transitions,
                seed=seed,
                overwrite=overwrite,
                rollout={"num_envs": num_envs, "progress": progress},
                interrupts=interrupts,
            )
            written = True
    except KeyboardInterrupt as err:
        if err.args:
            raise
        raise KeyboardInterrupt(_interrupted(dataset_id, final, written)) from None
    return dataset_id


def _use_concurrent(dataset_id: str, lock, num_transitions: int, seed: int) -> None:
    """Say, in one line, that the dataset another process wrote meanwhile is used (``lock``: the
    :class:`~torchrl_sym.data._staging.LockState` of the wait)."""
    try:
        prov = read_provenance(dataset_id) or {}
    except (OSError, ValueError):
        prov = {}
    what = (
        f" ({prov['transitions']} transitions, seed {prov.get('seed')})"
        if isinstance(prov, dict) and "transitions" in prov
        else ""
    )
    holder = lock.holder
    by = f"pid {holder.get('pid')} on {holder.get('hostname')}" if holder else "another process"
    logger.warning(
        "Dataset '%s' was written by %s %s: using that dataset%s instead of generating it (this "
        "call asked for %d transitions, seed %d).",
        dataset_id,
        by,
        "while this process waited for its lock" if lock.waited else "meanwhile",
        what,
        num_transitions,
        seed,
    )


def _generate_locked(
    family: str,
    kind: str,
    version: int,
    *,
    num_transitions: int,
    seed: int,
    overwrite: bool,
    rollout: dict,
    interrupts,
) -> None:
    """The rollouts and the write of :func:`generate_dataset`, under the dataset's lock."""
    from torchrl_sym.data.policies import load_card
    from torchrl_sym.envs import resolve_env_id

    env_id = resolve_env_id(family)
    dataset_id = dataset_id_for(family, kind, version)

    policies: dict[str, dict | str] = {}
    if kind == "random":
        episodes = rollout_episodes(env_id, None, num_transitions, seed=seed, **rollout)
        policies["random"] = "uniform random actions"
    elif kind in ("medium", "expert"):
        episodes = rollout_episodes(
            env_id,
            behavior_policy(family, kind, seed, version),
            num_transitions,
            seed=seed,
            **rollout,
        )
        policies[kind] = load_card(family, kind, version)
    elif kind == "medium-replay":
        episodes = _replay_episodes(family, version)
        policies["medium-replay"] = load_card(family, "medium", version)
    else:
        # D4RL's medium-expert is the medium dataset followed by the expert dataset
        episodes = []
        for part in ("medium", "expert"):
            episodes += _local_or_rollout(family, part, num_transitions, seed, rollout, version)
            policies[part] = load_card(family, part, version)
    episodes = [dataclasses.replace(ep, id=i) for i, ep in enumerate(episodes)]
    interrupts.check()  # a Ctrl-C dropped during the rollouts: write nothing
    sha = episodes_sha256(episodes)
    steps = sum(len(ep.actions) for ep in episodes)
    ref_min, ref_max = _reference_returns(family, version)
    provenance = {
        "dataset_id": dataset_id,
        "env_id": env_id,
        "kind": kind,
        "policies": policies,
        "seed": seed,
        "transitions": steps,
        "episodes": len(episodes),
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "sha256": sha,
        "versions": _versions(),
        "dataset_version": version,
        "command": f"python -m torchrl_sym.data.generate {family} {kind} --transitions {num_transitions} --seed {seed} --version {version}",
    }
    refs = {} if ref_max is None else {"ref_min_score": ref_min, "ref_max_score": ref_max}
    write_minari_dataset(
        dataset_id,
        episodes,
        env_id=env_id,
        overwrite=overwrite,
        provenance=provenance,
        **refs,
        algorithm_name=f"{kind} policy (torchrl_sym.data.generate)",
        description=(
            f"D4RL-style {kind} data in {env_id}: {steps} transitions, {len(episodes)} episodes, seed {seed}, "
            f"sha256 {sha}. Provenance in provenance.json."
        ),
    )
    logger.info(
        "wrote %s (%d transitions, %d episodes, sha256 %s)", dataset_id, steps, len(episodes), sha
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchrl_sym.data.generate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("env", nargs="?", help=f"one of {ENV_FAMILIES} (or a v5 id)")
    parser.add_argument("kind", nargs="?", choices=DATASET_KINDS)
    parser.add_argument("--all", action="store_true", help="every env family and every kind")
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--version",
        type=int,
        default=None,
        help="dataset version (default: the family's newest with shipped policies; 0: the first "
        "release's SAC policies)",
    )
    args = parser.parse_args(argv)
    if args.all == bool(args.env or args.kind):
        parser.error("give ENV KIND, or --all")
    if not args.all and not (args.env and args.kind):
        parser.error("give both ENV and KIND")
    jobs = (
        [(e, k) for e in ENV_FAMILIES for k in DATASET_KINDS]
        if args.all
        else [(args.env, args.kind)]
    )
    from torchrl_sym.data import _staging

    target, written = None, False
    try:
        with _staging.honour_interrupts():
            for env, kind in jobs:
                target, written = dataset_id_for(env, kind, args.version), False
                if args.all and not args.overwrite and target in _staging.local_minari_ids():
                    print(f"{target} exists (--overwrite to rebuild)")
                    continue
                try:
                    dataset_id = generate_dataset(
                        env,
                        kind,
                        num_transitions=args.transitions,
                        seed=args.seed,
                        num_envs=args.num_envs,
                        overwrite=args.overwrite,
                        version=args.version,
                    )
                except (ValueError, FileExistsError, FileNotFoundError) as err:
                    print(f"error: {err}", file=sys.stderr)
                    return 2
                written = True
                print(dataset_id, flush=True)
    except KeyboardInterrupt as err:
        # never exit 0 after a Ctrl-C; say what is on disk (128 + SIGINT, as shells do)
        message = str(err) or "interrupted"
        if not err.args and target is not None:
            from minari.storage.datasets_root_dir import get_dataset_path

            message = _interrupted(target, Path(get_dataset_path(target)), written)
        print(message, file=sys.stderr, flush=True)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
