"""Offline datasets as TorchRL replay buffers.

``make_offline_replay_buffer(dataset_id, batch_size)`` turns any of three sources into a
:class:`~torchrl.data.TensorDictReplayBuffer` of TorchRL TED-format batches::

    observation            float32 [B, S]
    action                 float32 [B, A]
    ("next", observation)  float32 [B, S]
    ("next", reward)       float32 [B, 1]
    ("next", done)         bool    [B, 1]   terminated | truncated
    ("next", terminated)   bool    [B, 1]   the bootstrap mask: y = r + γ (1 − terminated) V(s')
    ("next", truncated)    bool    [B, 1]   time limit reached

Sources, chosen from the id:

* a **Minari** id (``"mujoco/hopper/medium-v0"``, ``"torchrl_sym/hopper/random-v0"``): read from the
  local Minari root (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``); with ``download=True`` an id
  that is not local is downloaded with :func:`minari.download_dataset` when the remote answers
  (never attempted when ``TORCHRL_SYM_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``). A missing
  ``torchrl_sym/<env>/<kind>-v1`` (or ``-v0``) id that :mod:`torchrl_sym.data.generate` can build is generated
  on first use instead. Only a dataset that is not on disk at all is generated or downloaded: one
  that is there but corrupt or incomplete (unreadable ``metadata.json``, truncated
  ``main_data.hdf5``, an episode without its arrays) raises :class:`DatasetError`, which names the
  file and the command that rebuilds it.
* a **D4RL-v2 hdf5 file** given by path: ``observations``, ``actions``, ``rewards``, ``terminals``,
  ``timeouts`` and optionally ``next_observations``.
* a **2-D toy bandit** ``"toy2d/<name>"`` (see :mod:`torchrl_sym.data.toy2d`), or any TED
  :class:`~tensordict.TensorDict` passed directly.

Minari and D4RL conversions are cached as memory-mapped TensorDicts under ``root`` (default
``$TORCHRL_SYM_DATA`` or ``~/.cache/torchrl_sym/datasets``), keyed by a fingerprint of the source
files, and written atomically (a staging directory renamed into place once the data passed every
check, including the env shape check), so a killed conversion never leaves a half-written cache and
a rejected file leaves none. A cache whose files do not match the sizes recorded when it was written
is discarded and converted again from its source. Unlike TorchRL 0.14.1's
``MinariExperienceReplay`` (which calls ``memmap_like`` after filling its buffer and so stores
zeros), the cache holds the data.

Preprocessing is applied once, in memory, after loading:

* action clipping to ±(1 − 1e-5) (``action_clip="auto"`` clips datasets whose actions live in
  [−1, 1], so that tanh-squashed log-probs and diffusion steps stay finite);
* reward transforms: ``"identity"``; ``"return_range"`` (IQL's locomotion scaling,
  ``r ← r · 1000 / (G_max − G_min)`` with G the dataset's episode returns); ``"minus_one"``
  (``r ← r − 1``, IQL's AntMaze convention);
* observation statistics (mean, std + 1e-3) are always computed and stored in
  :attr:`OfflineDatasetInfo.observation_loc` / ``observation_scale``; with
  ``normalize_observations=True`` both observation entries are standardized with them, and
  :meth:`OfflineDatasetInfo.observation_norm` gives the matching TorchRL transform for the eval env.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import TensorDictReplayBuffer
from torchrl.data.replay_buffers import SamplerWithoutReplacement, TensorStorage
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter

__all__ = [
    "ACTION_CLIP",
    "REWARD_TRANSFORMS",
    "DatasetError",
    "OfflineDatasetInfo",
    "OfflineReplayBuffer",
    "load_offline_dataset",
    "make_offline_replay_buffer",
]

logger = logging.getLogger(__name__)

ACTION_CLIP = 1.0 - 1e-5
REWARD_TRANSFORMS = ("identity", "return_range", "minus_one")
OBSERVATION_STD_EPS = 1e-3
# Bump when the cached layout or the conversion changes: old caches are then ignored.
# 2: dataset.json records the size of every cached file, checked on each load.
_CACHE_VERSION = 2
_TED_FLOAT_KEYS = ("observation", "action", ("next", "observation"), ("next", "reward"))
_TED_FLAG_KEYS = (("next", "done"), ("next", "terminated"), ("next", "truncated"))
# Written last into a finished cache directory (tensordict writes its own meta.json).
_MARKER = "dataset.json"
_REMOTE_HOSTS = {"hf": "huggingface.co", "gcp": "storage.googleapis.com"}
_EPISODE_KEYS = ("observations", "actions", "rewards", "terminations", "truncations")
# minari's id syntax: [namespace/]name-v<N> of word characters, '-' and '_' (no '.', no leading '/')
_MINARI_ID = re.compile(r"^(?:[-\w][-\w/]*[-\w]/)?[-\w]+?-v\d+$")


class DatasetError(ValueError):
    """A dataset that is on disk but cannot be used: corrupt, truncated or incomplete.

    The message names the dataset, the offending file and what is wrong with it, and says how to
    rebuild it. A broken dataset is never regenerated or downloaded over silently.

    Attributes:
        dataset_id: the id or path that was asked for.
        path: the offending file or directory.
    """

    def __init__(self, message: str, *, dataset_id: str, path: os.PathLike | str):
        super().__init__(message)
        self.dataset_id = dataset_id
        self.path = Path(path)


@dataclass
class OfflineDatasetInfo:
    """What a recipe or a loss may need to know about a loaded dataset.

    ``episode_returns`` are the undiscounted returns of the dataset's episodes before any reward
    transform (episodes split at terminals, timeouts, breaks in the observation chain, and the end of
    the data). Rewards in the buffer are ``raw · reward_scale + reward_shift``.
    """

    dataset_id: str
    source: Literal["minari", "d4rl", "toy2d", "tensordict"]
    env_id: str | None
    num_transitions: int
    num_episodes: int
    observation_shape: tuple[int, ...]
    action_shape: tuple[int, ...]
    observation_loc: torch.Tensor
    observation_scale: torch.Tensor
    episode_returns: torch.Tensor
    normalize_observations: bool = False
    reward_transform: str = "identity"
    reward_scale: float = 1.0
    reward_shift: float = 0.0
    action_clip: float | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    cache_path: Path | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def observation_norm(self):
        """A TorchRL ``ObservationNorm`` giving an env the standardization the buffer applied.

        Returns ``None`` when the buffer's observations were not normalized.
        """
        if not self.normalize_observations:
            return None
        from torchrl.envs import ObservationNorm

        return ObservationNorm(
            loc=self.observation_loc.clone(),
            scale=self.observation_scale.clone(),
            standard_normal=True,
            in_keys=["observation"],
        )


class _Packed:
    """A dataset's columns packed row-major into one ``[N, D]`` float32 matrix, so a batch is one
    ``index_select`` (the columns of 256 random rows) instead of one advanced-indexing call per
    key; float columns are stored exactly, bool columns as 0/1."""

    def __init__(self, data: TensorDictBase):
        self.layout: list[tuple[tuple[str, ...], int, int, torch.dtype, tuple[int, ...]]] = []
        columns, start = [], 0
        for key, value in data.items(include_nested=True, leaves_only=True):
            key = key if isinstance(key, tuple) else (key,)
            if value.dtype not in (torch.float32, torch.bool):
                raise TypeError(f"offline data column {key} has dtype {value.dtype}")
            width = int(torch.Size(value.shape[1:]).numel())
            columns.append(value.reshape(len(value), -1).to(torch.float32))
            self.layout.append((key, start, width, value.dtype, tuple(value.shape[1:])))
            start += width
        self.matrix = torch.cat(columns, 1) if columns else torch.empty(len(data), 0)
        self.device = data.device

    def rows(self, index: torch.Tensor, batch_size: torch.Size) -> TensorDict:
        """The rows ``index`` (any shape ``batch_size``) as a TensorDict of ``batch_size``."""
        flat = self.matrix.index_select(0, index.reshape(-1))
        out: dict = {}
        for key, start, width, dtype, shape in self.layout:
            column = flat[:, start : start + width]
            column = column > 0.5 if dtype == torch.bool else column
            node = out
            for part in key[:-1]:
                node = node.setdefault(part, {})
            node[key[-1]] = column.reshape(*batch_size, *shape)
        return TensorDict(out, batch_size=batch_size, device=self.device)


class OfflineReplayBuffer(TensorDictReplayBuffer):
    """A read-only TensorDictReplayBuffer over an offline dataset, with its :attr:`info`.

    Batches have a static shape ``[batch_size]`` (sampling without replacement: a fresh random
    permutation of the transitions each epoch, drawn from the buffer's own generator, and the
    incomplete last batch of an epoch dropped), so a compiled update never recompiles.
    ``state_dict`` holds the sampler's position, its permutation and its random generator, not the
    data: the dataset is immutable and is reloaded from its source, so checkpoints stay small.

    A batch is gathered from the dataset packed into one ``[N, D]`` matrix (one ``index_select``
    per batch: 0.1-0.2 ms for a 256-transition Hopper batch where TorchRL's storage indexing took
    4.6 ms on this project's CPU; :meth:`with_batch_size` shares the packed matrix). A checkpoint
    written before the packed sampler (TorchRL's ``SamplerWithoutReplacement`` state) resumes with
    TorchRL's sampler, exactly as it was.
    """

    def __init__(
        self,
        data: TensorDictBase,
        info: OfflineDatasetInfo,
        *,
        batch_size: int,
        seed,
        packed: _Packed | None = None,
    ):
        generator = torch.Generator(device=data.device)
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
        super().__init__(
            storage=TensorStorage(data, device=data.device),
            sampler=SamplerWithoutReplacement(drop_last=True),
            writer=ImmutableDatasetWriter(),
            batch_size=batch_size,
            generator=generator,
        )
        self.info = info
        self._generator = generator
        self._batch = int(batch_size)
        self._packed = packed if packed is not None else _Packed(data)
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self._legacy = False  # resumed from a checkpoint of TorchRL's sampler

    @property
    def data(self) -> TensorDictBase:
        """The whole dataset (the storage's TensorDict, ``[num_transitions]``; do not write)."""
        return self._storage._storage

    def with_batch_size(self, batch_size: int, *, seed: int | None) -> OfflineReplayBuffer:
        """Another buffer over the same tensors (no copy) with its own batch size and sampler,
        e.g. a pretraining stage that samples larger batches than the main stage, or one seed of
        a stacked run."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
        return OfflineReplayBuffer(
            self.data, self.info, batch_size=batch_size, seed=seed, packed=self._packed
        )

    def next_indices(self) -> torch.Tensor:
        """The transitions of the next batch (``[batch_size]`` int64), advancing the sampler."""
        n = self.info.num_transitions if self.info is not None else len(self.data)
        if n < self._batch:
            raise RuntimeError(
                f"batch_size={self._batch} exceeds the dataset's {n} transitions (the incomplete "
                "last batch of an epoch is dropped, so no batch could be drawn)"
            )
        if self._perm is None or self._pos + self._batch > n:
            self._perm = torch.randperm(n, generator=self._generator, device=self._generator.device)
            self._pos = 0
        index = self._perm[self._pos : self._pos + self._batch]
        self._pos += self._batch
        return index

    def sample(self, batch_size: int | None = None, return_info: bool = False):
        if self._legacy or batch_size not in (None, self._batch) or return_info:
            return super().sample(batch_size, return_info=return_info)
        return self._packed.rows(self.next_indices(), torch.Size([self._batch]))

    def state_dict(self) -> dict[str, Any]:
        if self._legacy:
            return {
                "sampler": self._sampler.state_dict(),
                "generator": self._generator.get_state(),
                "num_transitions": self.info.num_transitions,
            }
        return {
            "format": "packed-1",
            "permutation": None if self._perm is None else self._perm.clone(),
            "position": self._pos,
            "generator": self._generator.get_state(),
            "num_transitions": self.info.num_transitions,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if int(state_dict["num_transitions"]) != self.info.num_transitions:
            raise ValueError(
                f"Replay-buffer state was saved for a dataset of {state_dict['num_transitions']} "
                f"transitions, but '{self.info.dataset_id}' has {self.info.num_transitions}; "
                "resume with the dataset the run was started with."
            )
        self._generator.set_state(state_dict["generator"])
        if state_dict.get("format") == "packed-1":
            perm = state_dict["permutation"]
            self._perm = None if perm is None else perm.to(self._generator.device)
            self._pos = int(state_dict["position"])
            self._legacy = False
            return
        # a checkpoint of TorchRL's sampler (before the packed one): continue with it
        self._sampler.load_state_dict(state_dict["sampler"])
        self._legacy = True


# ----------------------------------------------------------------------------------------------
# Public entry points
# ----------------------------------------------------------------------------------------------


def make_offline_replay_buffer(
    dataset_id: str | os.PathLike | TensorDictBase,
    batch_size: int,
    *,
    device: torch.device | str = "cpu",
    seed: int | None = None,
    root: str | os.PathLike | None = None,
    download: bool = True,
    env: str | Literal["auto"] | None = "auto",
    action_clip: float | Literal["auto"] | None = "auto",
    reward_transform: str = "identity",
    normalize_observations: bool = False,
    toy2d_size: int = 100_000,
    generate_transitions: int = 1_000_000,
) -> OfflineReplayBuffer:
    """Load an offline dataset and wrap it in a TorchRL replay buffer of float32 TED batches.

    Args:
        dataset_id: a Minari id, the path of a D4RL-v2 hdf5 file, ``"toy2d/<name>"``, or a TED
            TensorDict.
        batch_size: transitions per ``sample()``; must not exceed the dataset size.
        device: where the whole dataset lives and where batches are produced.
        seed: seeds the sampler's generator (and the toy2d draw); ``None`` draws a fresh seed.
        root: cache directory for converted datasets (default ``$TORCHRL_SYM_DATA`` or
            ``~/.cache/torchrl_sym/datasets``).
        download: allow downloading a Minari id that is not local (only if the remote answers).
        env: Gymnasium id whose observation/action shapes the data must match. ``"auto"`` uses the
            env recorded in a Minari dataset or inferred from a D4RL file name; ``None`` skips the
            check.
        action_clip: clip actions to ``±action_clip``; ``"auto"`` clips to ±(1 − 1e-5) when the
            actions lie in [−1, 1] (Minari: when the action space is [−1, 1]) and otherwise not.
        reward_transform: one of ``"identity"``, ``"return_range"``, ``"minus_one"``.
        normalize_observations: standardize observations with the dataset mean and std + 1e-3.
        toy2d_size: number of points drawn for a ``"toy2d/<name>"`` id.
        generate_transitions: size of a ``torchrl_sym/<env>/<kind>-v<N>`` dataset that is not on
            disk and that :mod:`torchrl_sym.data.generate` can build: it is generated on first use
            (with a message and a progress bar) and reused afterwards. One that is on disk but
            broken raises :class:`DatasetError` instead of being generated again.

    Returns:
        An :class:`OfflineReplayBuffer`: ``rb.sample()`` gives a ``[batch_size]`` TensorDict on
        ``device``; ``rb.info`` is the :class:`OfflineDatasetInfo`.

    Raises:
        DatasetError: a dataset on disk is corrupt or incomplete (names the file and how to
            rebuild it), or a D4RL file has 0 rows.
        IsADirectoryError: a directory was given where a D4RL file is expected.
        FileNotFoundError: an unknown Minari id (not local, not downloaded) or a missing file.
        ValueError: a string that is neither a Minari id nor an existing file; bad arrays,
            non-finite values, shapes that do not fit the env, bad arguments.

    Example:
        >>> from torchrl_sym.data import make_offline_replay_buffer
        >>> rb = make_offline_replay_buffer("toy2d/8gaussians", 256, toy2d_size=4096, seed=0)
        >>> batch = rb.sample()
        >>> batch["action"].shape, batch["next", "reward"].shape
        (torch.Size([256, 2]), torch.Size([256, 1]))
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    data, info = load_offline_dataset(
        dataset_id,
        root=root,
        download=download,
        env=env,
        action_clip=action_clip,
        reward_transform=reward_transform,
        normalize_observations=normalize_observations,
        toy2d_size=toy2d_size,
        generate_transitions=generate_transitions,
        seed=seed,
    )
    if batch_size > info.num_transitions:
        raise ValueError(
            f"batch_size={batch_size} exceeds the {info.num_transitions} transitions of "
            f"'{info.dataset_id}'; use a batch size of at most {info.num_transitions}."
        )
    data = data.to(device)
    return OfflineReplayBuffer(data, info, batch_size=batch_size, seed=seed)


def load_offline_dataset(
    dataset_id: str | os.PathLike | TensorDictBase,
    *,
    root: str | os.PathLike | None = None,
    download: bool = True,
    env: str | Literal["auto"] | None = "auto",
    action_clip: float | Literal["auto"] | None = "auto",
    reward_transform: str = "identity",
    normalize_observations: bool = False,
    toy2d_size: int = 100_000,
    generate_transitions: int = 1_000_000,
    seed: int | None = None,
) -> tuple[TensorDict, OfflineDatasetInfo]:
    """Load, validate and preprocess a dataset; return the TED TensorDict (CPU) and its info.

    Same arguments as :func:`make_offline_replay_buffer`, without the buffer.
    """
    if reward_transform not in REWARD_TRANSFORMS:
        raise ValueError(
            f"Unknown reward_transform {reward_transform!r}; expected one of {REWARD_TRANSFORMS}."
        )
    raw, meta = _load_raw(
        dataset_id,
        root=root,
        download=download,
        toy2d_size=toy2d_size,
        seed=seed,
        generate_transitions=generate_transitions,
        # a conversion that fails the env shape check is never committed to the cache
        validate=lambda data, meta: _check_env(data, meta, env),
    )
    data = raw.to_tensordict() if raw.is_memmap() else raw.clone()
    data = data.to("cpu")  # a TensorDict passed on a GPU too: statistics and info live on the CPU
    env_id = _check_env(data, meta, env)
    episode_returns = _episode_returns(data)

    clip = _resolve_action_clip(action_clip, data, meta)
    if clip is not None:
        data["action"] = data["action"].clamp(-clip, clip)

    scale, shift = _reward_affine(reward_transform, episode_returns, meta["dataset_id"])
    if (scale, shift) != (1.0, 0.0):
        data["next", "reward"] = data["next", "reward"] * scale + shift

    obs = data["observation"]
    loc = obs.mean(0)
    obs_scale = obs.std(0) + OBSERVATION_STD_EPS if obs.shape[0] > 1 else torch.ones_like(loc)
    if normalize_observations:
        data["observation"] = (obs - loc) / obs_scale
        data["next", "observation"] = (data["next", "observation"] - loc) / obs_scale

    info = OfflineDatasetInfo(
        dataset_id=meta["dataset_id"],
        source=meta["source"],
        env_id=env_id,
        num_transitions=data.shape[0],
        num_episodes=int(episode_returns.numel()),
        observation_shape=tuple(data["observation"].shape[1:]),
        action_shape=tuple(data["action"].shape[1:]),
        observation_loc=loc,
        observation_scale=obs_scale,
        episode_returns=episode_returns,
        normalize_observations=normalize_observations,
        reward_transform=reward_transform,
        reward_scale=scale,
        reward_shift=shift,
        action_clip=clip,
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
        cache_path=meta.get("cache_path"),
        metadata={k: v for k, v in meta.items() if k not in ("cache_path",)},
    )
    return data.exclude("episode_end"), info


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


def default_cache_root() -> Path:
    """``$TORCHRL_SYM_DATA`` if set, else ``~/.cache/torchrl_sym/datasets``."""
    env_root = os.environ.get("TORCHRL_SYM_DATA")
    return Path(env_root) if env_root else Path.home() / ".cache" / "torchrl_sym" / "datasets"


def _load_raw(
    dataset_id, *, root, download, toy2d_size, seed, generate_transitions, validate=None
) -> tuple[TensorDictBase, dict]:
    """Dispatch on the id; return raw float32 TED data (with an ``episode_end`` flag) and metadata.

    ``validate(data, meta)`` checks a fresh conversion before it is written to the cache.
    """
    if isinstance(dataset_id, TensorDictBase):
        data = _validated_ted(dataset_id, "the TensorDict passed as dataset_id")
        return data, {"dataset_id": "<tensordict>", "source": "tensordict", "env_id": None}
    if not isinstance(dataset_id, (str, os.PathLike)):
        raise TypeError(
            "dataset_id must be a Minari id, a path to a D4RL hdf5 file, 'toy2d/<name>' or a "
            f"TensorDict; got {type(dataset_id).__name__}."
        )
    name = os.fspath(dataset_id)
    if isinstance(dataset_id, str) and name.startswith("toy2d/"):
        return _load_toy2d(name, toy2d_size, seed)
    path = Path(name)
    hdf5_name = name.endswith((".hdf5", ".h5"))
    # a str in minari's id syntax is a Minari id, unless a file of that name exists
    if isinstance(dataset_id, str) and not hdf5_name and _MINARI_ID.match(name):
        if not path.is_file():
            return _load_minari_cached(name, root, download, generate_transitions, validate)
    if path.is_dir():
        raise IsADirectoryError(_directory_message(path))
    if hdf5_name or path.is_file():
        return _load_d4rl_cached(path, root, validate)
    if isinstance(dataset_id, os.PathLike):
        raise FileNotFoundError(
            f"No file exists at '{path}'. Pass the path of an existing D4RL-v2 hdf5 file, or a "
            "Minari id as a str ('namespace/name-v<N>')."
        )
    raise ValueError(
        f"'{name}' is not a Minari dataset id (expected '[namespace/]name-v<N>', e.g. "
        "'mujoco/hopper/medium-v0' or 'torchrl_sym/hopper/medium-v0') and no file exists at that "
        "path. Pass a Minari id, the path of an existing D4RL-v2 hdf5 file, 'toy2d/<name>', or a "
        "TED TensorDict."
    )


def _directory_message(path: Path) -> str:
    msg = f"'{path}' is a directory, not a D4RL-v2 hdf5 file."
    inside = sorted(p.name for p in path.glob("*") if p.is_file() and p.suffix in (".hdf5", ".h5"))
    if inside:
        shown = ", ".join(inside[:5]) + (", ..." if len(inside) > 5 else "")
        msg += f" It holds {shown}: pass the path of one of those files."
    else:
        msg += " Pass the path of the .hdf5 file itself."
    if (path / "data" / "metadata.json").is_file() or (path / "metadata.json").is_file():
        msg += (
            " It looks like a Minari dataset directory: pass its id ('namespace/name-v<N>') "
            "instead, with MINARI_DATASETS_PATH set to the Minari root that holds it."
        )
    return msg


def _load_toy2d(name: str, size: int, seed: int | None):
    from torchrl_sym.data.toy2d import make_toy2d_dataset

    data = make_toy2d_dataset(name.split("/", 1)[1], size, seed=0 if seed is None else int(seed))
    data = _validated_ted(data, name)
    return data, {"dataset_id": name, "source": "toy2d", "env_id": None}


def _validated_ted(data: TensorDictBase, what: str) -> TensorDict:
    """Check a TED TensorDict has the keys we need; return a float32 copy with ``episode_end``."""
    if data.batch_dims != 1:
        raise ValueError(
            f"{what} must have one batch dimension [N], got batch_size {data.batch_size}."
        )
    keys = set(data.keys(include_nested=True, leaves_only=True))
    missing = [k for k in (*_TED_FLOAT_KEYS, ("next", "terminated")) if k not in keys]
    if missing:
        raise KeyError(
            f"{what} lacks the TED entries {missing}; it needs observation, action and "
            "('next', observation | reward | terminated) (done and truncated are optional)."
        )
    out = TensorDict({}, batch_size=data.batch_size)
    for key in _TED_FLOAT_KEYS:
        out[key] = data[key].to(torch.float32)
    if out["next", "reward"].ndim == 1:
        out["next", "reward"] = out["next", "reward"].unsqueeze(-1)
    terminated = data["next", "terminated"].bool().reshape(-1, 1)
    truncated = (
        data["next", "truncated"].bool().reshape(-1, 1)
        if ("next", "truncated") in keys
        else torch.zeros_like(terminated)
    )
    out["next", "terminated"] = terminated
    out["next", "truncated"] = truncated
    out["next", "done"] = terminated | truncated
    end = (terminated | truncated).squeeze(-1).clone()
    end[-1] = True
    out["episode_end"] = end
    _check_finite(out, what)
    return out


def _load_d4rl_cached(path: Path, root, validate=None) -> tuple[TensorDictBase, dict]:
    if path.is_dir():
        raise IsADirectoryError(_directory_message(path))
    if not path.is_file():
        raise FileNotFoundError(
            f"D4RL dataset file '{path}' does not exist. Pass the path of a D4RL-v2 hdf5 file "
            "(keys observations, actions, rewards, terminals, timeouts), or a Minari id."
        )
    st = path.stat()
    fingerprint = _digest([str(path.resolve()), st.st_size, st.st_mtime_ns, _CACHE_VERSION])
    meta = {"dataset_id": str(path), "source": "d4rl", "env_id": None}
    return _cached(
        root, f"d4rl/{path.stem}", fingerprint, meta, lambda: _convert_d4rl(path), validate
    )


def _convert_d4rl(path: Path) -> tuple[TensorDict, dict]:
    import h5py

    required = ("observations", "actions", "rewards", "terminals", "timeouts")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise ValueError(
            f"Could not read '{path}' as an hdf5 file ({err}); expected a D4RL-v2 hdf5 file."
        ) from err
    with f:
        missing = [k for k in required if k not in f]
        if missing:
            raise KeyError(
                f"D4RL file '{path}' lacks the keys {missing}; found {sorted(f.keys())}. A D4RL-v2 "
                f"file holds {list(required)} and optionally next_observations."
            )
        arrays = {k: np.asarray(f[k]) for k in (*required, "next_observations") if k in f}
    n = arrays["observations"].shape[0]
    bad = {k: v.shape for k, v in arrays.items() if v.shape[0] != n}
    if bad or arrays["observations"].ndim != 2 or arrays["actions"].ndim != 2:
        raise ValueError(
            f"D4RL file '{path}': arrays must share the first dimension N = {n} and observations/"
            f"actions must be 2-D; got shapes { {k: v.shape for k, v in arrays.items()} }."
        )
    if n == 0:
        raise DatasetError(
            f"D4RL file '{path}' has 0 rows (shapes "
            f"{ {k: v.shape for k, v in arrays.items()} }): it holds no transitions. Pass a file "
            "with data, or export or download it again if it was cut short.",
            dataset_id=str(path),
            path=path,
        )
    obs = arrays["observations"]
    terminals = arrays["terminals"].astype(bool).reshape(n)
    timeouts = arrays["timeouts"].astype(bool).reshape(n)
    if "next_observations" in arrays:
        next_obs = arrays["next_observations"]
        keep = np.ones(n, dtype=bool)
        # An episode also ends where the chain of observations breaks (IQL's d4rl_utils rule).
        chain_break = np.zeros(n, dtype=bool)
        chain_break[:-1] = np.linalg.norm(obs[1:] - next_obs[:-1], axis=-1) > 1e-6
    else:
        # d4rl.qlearning_dataset: s' = s_{i+1}; the final step of a timed-out episode and the last
        # row have no successor in the file and are dropped.
        next_obs = np.concatenate([obs[1:], obs[-1:]], 0)
        keep = ~timeouts
        keep[-1] = False
        chain_break = np.zeros(n, dtype=bool)
        # the step before a dropped timeout row is now the last of its episode
        chain_break[:-1] = timeouts[1:]
    end = terminals | timeouts | chain_break
    end[-1] = True
    if not keep.any():
        raise ValueError(f"D4RL file '{path}' holds no usable transitions.")
    end = end[keep]
    end[-1] = True
    data = _ted_from_arrays(
        obs[keep],
        next_obs[keep],
        arrays["actions"][keep],
        arrays["rewards"].reshape(n)[keep],
        terminals[keep],
        timeouts[keep],
        end,
        what=f"D4RL file '{path}'",
    )
    return data, {}


def _generate_if_ours(dataset_id: str, num_transitions: int) -> bool:
    """Generate a missing ``torchrl_sym/<env>/<kind>-v<N>`` dataset that this library can build
    (a version with shipped policies: v0 or v1). When another process is generating it, this waits
    for that process under the dataset's lock and uses what it wrote (saying so in one line)."""
    from torchrl_sym.data import generate
    from torchrl_sym.data.policies import CARD_SETS

    parts = generate.parse_generated_id(dataset_id)
    if parts is None or parts[2] not in CARD_SETS:
        return False
    family, kind, version = parts
    if generate.dataset_id_for(family, kind, version) != dataset_id:
        return False
    logger.warning(
        "Dataset %s is not on disk: generating it now (%d transitions; done once, then reused).",
        dataset_id,
        num_transitions,
    )
    generate.generate_dataset(
        family, kind, num_transitions=num_transitions, version=version, exist_ok=True
    )
    return True


def _load_minari_cached(
    dataset_id: str, root, download: bool, generate_transitions: int, validate=None
) -> tuple[TensorDictBase, dict]:
    from minari.storage.datasets_root_dir import get_dataset_path

    from torchrl_sym.data._staging import dataset_lock, remove_stale_staging

    remove_stale_staging(get_dataset_path())  # left by generators that were killed
    path = Path(get_dataset_path(dataset_id))
    # Only a dataset that is not on disk at all is generated or downloaded; one that is there but
    # unreadable (which minari.list_local_datasets silently leaves out) raises in _open_minari.
    if not path.exists():
        if not _generate_if_ours(dataset_id, generate_transitions):
            from torchrl_sym.data import _staging

            _download_minari_or_raise(dataset_id, _staging.local_minari_ids(), download)
    # read under the dataset's shared lock: no generator replaces it (--overwrite) meanwhile
    with dataset_lock(get_dataset_path(), dataset_id, shared=True):
        return _read_minari_cached(dataset_id, path, root, validate)


def _read_minari_cached(dataset_id: str, path: Path, root, validate) -> tuple[TensorDictBase, dict]:
    dataset = _open_minari(dataset_id, path)
    data_dir = path / "data"
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    fingerprint = _digest(
        [dataset_id, _CACHE_VERSION]
        + [(str(p.relative_to(data_dir)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    )
    md = dataset.storage.metadata
    env_id = None
    if dataset.env_spec is not None:
        env_id = dataset.env_spec.id
    meta = {
        "dataset_id": dataset_id,
        "source": "minari",
        "env_id": env_id,
        "ref_min_score": md.get("ref_min_score"),
        "ref_max_score": md.get("ref_max_score"),
        "action_space_bounds": _box_bounds(dataset.action_space),
    }
    # a generated dataset's identity (provenance.json, written with it): results name their data
    prov_file = path / "provenance.json"
    if prov_file.is_file():
        try:
            prov = json.loads(prov_file.read_text())
        except (OSError, ValueError) as err:
            raise _broken(dataset_id, prov_file, f"is not valid JSON ({err})") from err
        for key in ("sha256", "episodes", "transitions", "dataset_version", "seed"):
            if key in prov:
                meta[key] = prov[key]
    return _cached(
        root,
        f"minari/{dataset_id}",
        fingerprint,
        meta,
        lambda: _convert_minari(dataset),
        validate,
    )


def _rebuild_hint(dataset_id: str) -> str:
    """How to replace the broken local dataset ``dataset_id``."""
    from minari.storage.datasets_root_dir import get_dataset_path

    from torchrl_sym.data.generate import rebuild_command

    command = rebuild_command(dataset_id)
    if command is not None:
        return (
            "It was not regenerated automatically (only a dataset that is missing is built on "
            f"first use); rebuild it with `{command}`."
        )
    return (
        f"Delete the dataset directory {get_dataset_path(dataset_id)} and download it again "
        f"(minari.download_dataset({dataset_id!r}), or load it with download=True), or recreate "
        "it the way it was made."
    )


def _broken(dataset_id: str, path: Path, problem: str) -> DatasetError:
    return DatasetError(
        f"Dataset '{dataset_id}' is corrupt or incomplete: {path} {problem}. "
        + _rebuild_hint(dataset_id),
        dataset_id=dataset_id,
        path=path,
    )


def _open_minari(dataset_id: str, path: Path):
    """``minari.load_dataset(dataset_id)`` after checking its files; :class:`DatasetError` if any is
    missing, unreadable, truncated or inconsistent."""
    import h5py
    import minari

    data_dir = path / "data"
    if not data_dir.is_dir():
        raise _broken(
            dataset_id, path, "has no data/ folder (an interrupted download, copy or deletion?)"
        )
    meta_file = data_dir / "metadata.json"
    if not meta_file.is_file():
        raise _broken(dataset_id, meta_file, "is missing")
    try:
        md = json.loads(meta_file.read_text())
    except UnicodeDecodeError as err:
        raise _broken(dataset_id, meta_file, f"is not valid JSON (not UTF-8 text: {err})") from err
    except ValueError as err:
        raise _broken(dataset_id, meta_file, f"is not valid JSON ({err})") from err
    except OSError as err:
        raise _broken(dataset_id, meta_file, f"cannot be read ({err})") from err
    if not isinstance(md, dict):
        raise _broken(
            dataset_id, meta_file, f"holds a JSON {type(md).__name__}, not the metadata object"
        )
    if md.get("dataset_id") != dataset_id:
        raise _broken(
            dataset_id,
            meta_file,
            f"records dataset_id {md.get('dataset_id')!r}, not {dataset_id!r} (a moved or "
            "mixed-up dataset)",
        )
    if md.get("data_format", "hdf5") == "hdf5":
        main = data_dir / "main_data.hdf5"
        if not main.is_file():
            raise _broken(dataset_id, main, "is missing")
        try:
            h5py.File(main, "r").close()
        except OSError as err:
            raise _broken(
                dataset_id, main, f"cannot be opened as HDF5: it is truncated or corrupt ({err})"
            ) from err
    try:
        return minari.load_dataset(dataset_id)
    except Exception as err:  # minari raises several types for inconsistent metadata
        raise _broken(
            dataset_id,
            meta_file,
            f"does not describe a loadable dataset ({type(err).__name__}: {err})",
        ) from err


def _offline_flag() -> bool:
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes")
        for k in ("TORCHRL_SYM_OFFLINE", "HF_HUB_OFFLINE")
    )


def _remote_reachable(timeout: float = 3.0) -> bool:
    """Whether Minari's remote host answers within ``timeout`` seconds (no retries, no waiting)."""
    if _offline_flag():
        return False
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    host = _REMOTE_HOSTS.get(remote.split("://", 1)[0])
    if host is None:
        return True  # an unknown remote type: let minari try and report
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _download_minari_or_raise(dataset_id: str, local: Sequence[str], download: bool) -> None:
    import minari

    reason = None
    if not download:
        reason = "download=False"
    elif not _remote_reachable():
        reason = "the Minari remote cannot be reached (offline)"
    else:
        logger.info("Downloading Minari dataset %s", dataset_id)
        try:
            minari.download_dataset(dataset_id)
            return
        except Exception as err:  # minari raises several types for an unknown id
            reason = f"the Minari remote does not provide it ({err})"
    from minari.storage.datasets_root_dir import get_dataset_path

    known = ", ".join(local) if local else "none"
    raise FileNotFoundError(
        f"Dataset '{dataset_id}' not found locally in {get_dataset_path()} and not downloaded: "
        f"{reason}. Local datasets: {known}. Create one with "
        "`python -m torchrl_sym.data.generate <env> <kind>` (writes torchrl_sym/<env>/<kind>-v1; kinds: "
        "random, medium, medium-replay, expert, medium-expert), "
        "with minari.create_dataset_from_buffers, or pass the path of a D4RL hdf5 file."
    )


def _box_bounds(space) -> tuple[float, float] | None:
    low = getattr(space, "low", None)
    high = getattr(space, "high", None)
    if low is None or high is None:
        return None
    return float(np.min(low)), float(np.max(high))


def _flat_observations(obs, dataset_id: str) -> np.ndarray:
    if isinstance(obs, dict):
        # Dict observation spaces (goal-conditioned tasks): concatenate the entries in key order.
        return np.concatenate(
            [np.asarray(obs[k]).reshape(len(obs[k]), -1) for k in sorted(obs)], axis=-1
        )
    obs = np.asarray(obs)
    if obs.ndim < 2:
        raise ValueError(
            f"Minari dataset '{dataset_id}' has observations of shape {obs.shape}; expected [T + 1, ...]."
        )
    return obs.reshape(obs.shape[0], -1) if obs.ndim > 2 else obs


def _convert_minari(dataset) -> tuple[TensorDict, dict]:
    from tqdm.auto import tqdm

    dataset_id = dataset.id
    if (
        not hasattr(dataset.action_space, "shape")
        or dataset.action_space.shape is None
        or (getattr(dataset.action_space, "low", None) is None)
    ):
        raise ValueError(
            f"Minari dataset '{dataset_id}' has action space {dataset.action_space}; torchrl_sym's "
            "losses need continuous (Box) actions."
        )
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("obs", "next_obs", "act", "rew", "term", "trunc", "end")
    }
    n_episodes = dataset.total_episodes
    episodes = _checked_episodes(dataset)
    for episode in tqdm(episodes, total=n_episodes, desc=f"converting {dataset_id}", leave=False):
        obs = _flat_observations(episode["observations"], dataset_id)
        actions = np.asarray(episode["actions"]).reshape(len(episode["actions"]), -1)
        steps = actions.shape[0]
        if steps == 0:
            continue
        if obs.shape[0] != steps + 1:
            raise _broken(
                dataset_id,
                _episode_file(dataset),
                f"(episode {episode['id']}) holds {obs.shape[0]} observations for {steps} "
                f"actions; expected {steps + 1}",
            )
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])
        parts["act"].append(actions)
        parts["rew"].append(np.asarray(episode["rewards"], dtype=np.float64).reshape(steps))
        parts["term"].append(np.asarray(episode["terminations"], dtype=bool).reshape(steps))
        parts["trunc"].append(np.asarray(episode["truncations"], dtype=bool).reshape(steps))
        end = np.zeros(steps, dtype=bool)
        end[-1] = True
        parts["end"].append(end)
    if not parts["act"]:
        raise ValueError(f"Minari dataset '{dataset_id}' holds no transitions.")
    cat = {k: np.concatenate(v, 0) for k, v in parts.items()}
    data = _ted_from_arrays(
        cat["obs"],
        cat["next_obs"],
        cat["act"],
        cat["rew"],
        cat["term"],
        cat["trunc"],
        cat["end"],
        what=f"Minari dataset '{dataset_id}'",
    )
    return data, {}


def _episode_file(dataset) -> Path:
    data_dir = Path(dataset.storage.data_path)
    main = data_dir / "main_data.hdf5"
    return main if main.is_file() else data_dir


def _checked_episodes(dataset):
    """``dataset``'s episodes in order; an episode that cannot be read raises :class:`DatasetError`
    naming the file, the episode and (HDF5) the arrays it lacks."""
    dataset_id = dataset.id
    done = 0
    try:
        for episode in dataset.storage.get_episodes(range(dataset.total_episodes)):
            yield episode
            done += 1
    except DatasetError:
        raise
    except (OSError, KeyError, ValueError, TypeError, IndexError, AssertionError) as err:
        file = _episode_file(dataset)
        raise _broken(dataset_id, file, _episode_problem(file, done, err)) from err


def _episode_problem(file: Path, index: int, err: Exception) -> str:
    """What is wrong with episode ``index`` of a Minari HDF5 file (``err`` when unknown)."""
    reason = f"{type(err).__name__}: {err}"
    if file.suffix != ".hdf5":
        return f"has an episode that cannot be read (episode {index}; {reason})"
    import h5py

    group = f"episode_{index}"
    try:
        with h5py.File(file, "r") as f:
            if group not in f:
                return (
                    f"has no group '{group}', but metadata.json counts more episodes than that "
                    f"(the file holds {sum(k.startswith('episode_') for k in f)})"
                )
            keys = sorted(f[group].keys())
    except OSError:
        return f"cannot be read at group '{group}' ({reason})"
    missing = [k for k in _EPISODE_KEYS if k not in keys]
    if missing:
        return f"lacks the arrays {missing} in group '{group}' (it has {keys})"
    return f"cannot be read at group '{group}' ({reason})"


def _ted_from_arrays(obs, next_obs, actions, rewards, terminated, truncated, episode_end, *, what):
    """A float32 TED TensorDict ``[N]`` (plus the ``episode_end`` flag) from numpy arrays."""
    data = TensorDict(
        {
            "observation": torch.as_tensor(obs, dtype=torch.float32),
            "action": torch.as_tensor(actions, dtype=torch.float32),
            "next": {
                "observation": torch.as_tensor(next_obs, dtype=torch.float32),
                "reward": torch.as_tensor(rewards, dtype=torch.float32).unsqueeze(-1),
                "terminated": torch.as_tensor(terminated, dtype=torch.bool).unsqueeze(-1),
                "truncated": torch.as_tensor(truncated, dtype=torch.bool).unsqueeze(-1),
            },
            "episode_end": torch.as_tensor(episode_end, dtype=torch.bool),
        },
        batch_size=[len(actions)],
    )
    data["next", "done"] = data["next", "terminated"] | data["next", "truncated"]
    _check_finite(data, what)
    return data


# ----------------------------------------------------------------------------------------------
# Cache
# ----------------------------------------------------------------------------------------------


def _digest(parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _cached(
    root,
    name: str,
    fingerprint: str,
    meta: dict,
    convert,
    validate: Callable[[TensorDictBase, dict], Any] | None = None,
) -> tuple[TensorDictBase, dict]:
    """Load ``name`` from the cache if its fingerprint matches; else convert and store atomically.

    A fresh conversion is checked (``validate(data, meta)``, e.g. the env shape check) before
    anything is written; then it is written into a staging directory beside the target (holding a
    ``writer.json`` for :mod:`~torchrl_sym.data._staging`), completed with a ``dataset.json``
    written last that records the size of every file, and renamed into place: a reader sees a whole
    cache or none, and a rejected dataset leaves nothing. A cache whose files do not match the
    recorded sizes, or that cannot be loaded, is moved aside and converted again from the source.
    """
    from torchrl_sym.data._staging import make_staging_dir, remove_stale_staging

    base = Path(root) if root is not None else default_cache_root()
    target = base / name / fingerprint
    meta = dict(meta, cache_path=target)
    remove_stale_staging(target.parent)  # left by conversions that were killed
    if target.exists():
        problem = _cache_problem(target)
        if problem is None:
            try:
                return TensorDict.load_memmap(target), meta
            except Exception as err:  # a damaged cache is rebuilt, never trusted
                problem = f"cannot be loaded ({type(err).__name__}: {err})"
        logger.warning(
            "Conversion cache of %s is damaged: %s; discarding it and converting again from the "
            "source.",
            meta["dataset_id"],
            problem,
        )
        _discard(target)
    data, extra = convert()
    meta.update(extra)
    if validate is not None:
        validate(data, meta)
    tmp = make_staging_dir(target.parent, tag=f"{fingerprint}-")
    try:
        data.memmap(tmp)
        files = {
            p.relative_to(tmp).as_posix(): p.stat().st_size
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != "writer.json"
        }
        record = {k: v for k, v in meta.items() if k != "cache_path"}
        with open(tmp / _MARKER, "w") as f:
            json.dump(dict(record, cache_files=files), f, default=str)
        try:
            os.rename(tmp, target)
        except OSError:
            if _cache_problem(target) is not None:  # not a concurrent writer's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return TensorDict.load_memmap(target), meta


def _cache_problem(target: Path) -> str | None:
    """What is wrong with the cache directory ``target`` (naming the file), or None if intact."""
    marker = target / _MARKER
    try:
        record = json.loads(marker.read_text())
        files = record["cache_files"]
        if not isinstance(files, dict):
            raise TypeError(f"cache_files is a {type(files).__name__}")
    except FileNotFoundError:
        return f"{marker} is missing"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{marker} is unreadable or lacks its file list ({type(err).__name__}: {err})"
    for rel, size in files.items():
        path = target / rel
        try:
            actual = path.stat().st_size
        except OSError:
            return f"{path} is missing"
        if actual != size:
            return f"{path} has {actual} bytes, {size} when it was written (truncated or replaced)"
    return None


def _discard(target: Path) -> None:
    """Move a damaged cache aside (one rename, so no reader sees half of it), then delete it."""
    from torchrl_sym.data._staging import STAGING_PREFIX, WRITER_FILE, writer_record

    trash = target.parent / f"{STAGING_PREFIX}discard-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(target, trash)
    except OSError:
        return  # already moved or replaced by a concurrent process
    try:  # if this process dies while deleting, the next load removes the rest
        (trash / WRITER_FILE).write_text(json.dumps(writer_record()) + "\n")
    except OSError:
        pass
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Validation and preprocessing
# ----------------------------------------------------------------------------------------------


def _check_finite(data: TensorDictBase, what: str) -> None:
    bad = []
    for key in _TED_FLOAT_KEYS:
        count = int((~torch.isfinite(data[key])).sum())
        if count:
            bad.append(f"{'/'.join(key) if isinstance(key, tuple) else key}: {count}")
    if bad:
        raise ValueError(
            f"{what} contains non-finite values (NaN or inf) in "
            + "; ".join(bad)
            + " entries. Remove or repair those transitions before training."
        )


def _check_env(data: TensorDictBase, meta: dict, env) -> str | None:
    """Check observation/action shapes against a Gymnasium env; return the env id used."""
    if env is None:
        return None
    if env == "auto":
        env_id = meta.get("env_id")
        if env_id is None and meta["source"] == "d4rl":
            try:
                from torchrl_sym.envs import resolve_env_id

                env_id = resolve_env_id(Path(meta["dataset_id"]).stem)
            except ValueError:
                env_id = None
        if env_id is None:
            return None
        explicit = False
    else:
        env_id, explicit = env, True
    import gymnasium as gym

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            genv = gym.make(env_id)
    except Exception as err:
        if explicit:
            raise ValueError(
                f"env={env_id!r} could not be made with gymnasium.make: {err}"
            ) from err
        logger.warning("Cannot make env %s to check dataset shapes (%s); skipping.", env_id, err)
        return env_id
    try:
        obs_shape = (int(np.prod(gym.spaces.flatdim(genv.observation_space))),)
        act_shape = tuple(genv.action_space.shape or ())
    finally:
        genv.close()
    got_obs = tuple(data["observation"].shape[1:])
    got_act = tuple(data["action"].shape[1:])
    for what, got, want in (("observation", got_obs, obs_shape), ("action", got_act, act_shape)):
        if got != want:
            raise ValueError(
                f"Dataset '{meta['dataset_id']}' has {what}s of shape {got}, but env '{env_id}' "
                f"expects {want}. Pass env=<the id the data was collected in> (or env=None to skip "
                "this check)."
            )
    return env_id


def _episode_returns(data: TensorDictBase) -> torch.Tensor:
    """Undiscounted return of every episode, episodes delimited by ``episode_end``."""
    rewards = data["next", "reward"].squeeze(-1).to(torch.float64)
    ends = data["episode_end"].nonzero().squeeze(-1)
    csum = torch.cat([rewards.new_zeros(1), rewards.cumsum(0)])
    bounds = torch.cat([ends.new_zeros(1), ends + 1])
    return csum[bounds[1:]] - csum[bounds[:-1]]


def _resolve_action_clip(action_clip, data: TensorDictBase, meta: dict) -> float | None:
    if action_clip is None:
        return None
    if action_clip != "auto":
        clip = float(action_clip)
        if not clip > 0:
            raise ValueError(f"action_clip must be positive, None or 'auto'; got {action_clip!r}.")
        return clip
    if meta["source"] == "toy2d":
        return None
    bounds = meta.get("action_space_bounds")
    if bounds is not None:
        return ACTION_CLIP if bounds[0] >= -1.0 and bounds[1] <= 1.0 else None
    return ACTION_CLIP if bool((data["action"].abs() <= 1.0).all()) else None


def _reward_affine(
    transform: str, episode_returns: torch.Tensor, dataset_id: str
) -> tuple[float, float]:
    if transform == "identity":
        return 1.0, 0.0
    if transform == "minus_one":
        return 1.0, -1.0
    spread = float(episode_returns.max() - episode_returns.min())
    if not spread > 0:
        raise ValueError(
            f"reward_transform='return_range' needs episodes with different returns, but every "
            f"episode of '{dataset_id}' returns {float(episode_returns[0]):.6g}; use 'identity'."
        )
    return 1000.0 / spread, 0.0
