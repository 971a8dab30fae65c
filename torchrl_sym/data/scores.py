"""D4RL normalized scores on the 0–100 scale.

    score(R) = 100 · (R − R_min) / (R_max − R_min)

``R`` is an undiscounted episode return, ``R_min`` the average return of a uniformly random policy
and ``R_max`` that of an expert, so 0 is random and 100 is expert. ``d4rl.get_normalized_score``
and ``minari.get_normalized_score`` return the same quantity divided by 100; papers report ×100.

Where the reference returns come from, first match wins (:func:`reference_scores`):

1. the object itself, or its ``.info``, with ``ref_min_score`` / ``ref_max_score`` attributes
   (or a mapping with those keys, e.g. Minari metadata); a ``MinariDataset`` through
   ``dataset.storage.metadata``. Our generated datasets record their random and expert returns
   there, so their scores mean what D4RL's mean.
2. a string naming a *local* Minari dataset (``minari.list_local_datasets()``; nothing is ever
   downloaded) whose metadata holds reference scores;
3. a generated id ``torchrl_sym/<family>/<kind>-v<N>`` that is not on disk: the shipped policy
   cards of dataset version ``N`` (``R_min`` = the random card's ``return_mean``, ``R_max`` = the
   expert card's; :func:`torchrl_sym.data.policies.reference_returns`), the same numbers
   :mod:`torchrl_sym.data.generate` records in the dataset. A version without cards, or a family
   without them, raises :class:`ReferenceScoresError`;
4. a Minari ``mujoco/...`` id that is not on disk (or records no references) raises
   :class:`ReferenceScoresError`: Minari's MuJoCo datasets were collected in the v5 envs and carry
   their own ``ref_min_score`` / ``ref_max_score`` in their metadata, not D4RL's constants;
5. the D4RL-v2 locomotion constants below, looked up by environment family (:func:`env_family`),
   for every other name (``"hopper-medium-v2"``, ``"Hopper-v5"``, a D4RL file) and for objects
   that only carry an ``env_id`` / ``dataset_id``.

D4RL constants (``d4rl/infos.py``, ``REF_MIN_SCORE`` / ``REF_MAX_SCORE``, identical for every
``-v2`` dataset of one environment; ``docs/specs/baselines.md`` §0):

============  ============  ==========
family        R_min         R_max
============  ============  ==========
halfcheetah   −280.178953   12135.0
hopper        −20.272305    3234.3
walker2d      1.629008      4592.3
ant           −325.6        3879.7
============  ============  ==========

AntMaze (and other D4RL domains) are not in the table: use a dataset or object that carries its
own reference scores.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np
import torch

__all__ = [
    "D4RL_REF_SCORES",
    "ReferenceScoresError",
    "env_family",
    "normalized_score",
    "reference_scores",
]

D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "halfcheetah": (-280.178953, 12135.0),
    "hopper": (-20.272305, 3234.3),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}

# A family name must stand alone between non-alphanumerics, so "ant" never matches inside
# "antmaze" or "plant"; "half_cheetah" / "half-cheetah" are accepted spellings of halfcheetah.
_FAMILY_PATTERNS: dict[str, re.Pattern[str]] = {
    family: re.compile(rf"(?<![a-z0-9]){pattern}(?![a-z0-9])")
    for family, pattern in {
        "halfcheetah": r"half[-_ ]?cheetah",
        "hopper": r"hopper",
        "walker2d": r"walker[-_ ]?2d",
        "ant": r"ant",
    }.items()
}
_ANTMAZE = re.compile(r"(?<![a-z0-9])ant[-_ ]?maze")
_FILE_SUFFIXES = (".hdf5", ".h5", ".hdf", ".npz", ".npy", ".pkl", ".pt")
_HOW_TO_SUPPLY = (
    "To supply references, pass the loaded dataset or its info instead of the id "
    "(make_offline_replay_buffer(...).info, minari.load_dataset(...)), or the references "
    "themselves as a mapping {'ref_min_score': R_min, 'ref_max_score': R_max} (or any object "
    "with those attributes)."
)


class ReferenceScoresError(ValueError):
    """No reference returns are known for a dataset id that has its own (not D4RL's)."""


def env_family(name: str | os.PathLike[str]) -> str:
    """The D4RL locomotion family (a key of :data:`D4RL_REF_SCORES`) that ``name`` refers to.

    Accepts environment ids (``"Hopper-v5"``, ``"hopper"``), D4RL dataset names
    (``"hopper-medium-replay-v2"``), Minari ids (``"mujoco/hopper/medium-v0"``,
    ``"torchrl_sym/hopper/medium-v0"``) and dataset files (``"/data/walker2d-medium-v2.hdf5"``:
    only the file name is read). Matching is case-insensitive and on whole words.

    Raises:
        ValueError: naming ``name`` and the known families, when no family (or more than one)
            matches, or when ``name`` is an AntMaze dataset (not in the table).

    Examples:
        >>> env_family("mujoco/halfcheetah/expert-v0"), env_family("Walker2d-v5")
        ('halfcheetah', 'walker2d')
    """
    text = os.fspath(name)
    if not isinstance(text, str):
        raise TypeError(f"env_family expects a str or path, got {name!r}.")
    lowered = text.lower()
    if isinstance(name, os.PathLike) or lowered.endswith(_FILE_SUFFIXES):
        lowered = PurePath(lowered).name
    known = ", ".join(D4RL_REF_SCORES)
    if _ANTMAZE.search(lowered):
        raise ValueError(
            f"{text!r} is an AntMaze dataset, which has no entry in D4RL_REF_SCORES (known: "
            f"{known}). Pass a dataset or object that carries ref_min_score / ref_max_score "
            "(e.g. a local Minari D4RL/antmaze dataset)."
        )
    matches = [family for family, pattern in _FAMILY_PATTERNS.items() if pattern.search(lowered)]
    if len(matches) != 1:
        reason = "matches no" if not matches else f"matches several ({', '.join(matches)}) of the"
        raise ValueError(
            f"{text!r} {reason} known environment families: {known}. Pass an id such as "
            "'hopper-medium-v2' or 'mujoco/hopper/medium-v0', or an object with "
            "ref_min_score / ref_max_score."
        )
    return matches[0]


def _refs_from(source: Any) -> tuple[float, float] | None:
    """``(ref_min_score, ref_max_score)`` read from an object's attributes or a mapping."""
    if isinstance(source, Mapping):
        lo, hi = source.get("ref_min_score"), source.get("ref_max_score")
    else:
        lo = getattr(source, "ref_min_score", None)
        hi = getattr(source, "ref_max_score", None)
    if lo is None or hi is None:
        return None
    return float(lo), float(hi)


def _local_minari_metadata(dataset_id: str) -> Mapping[str, Any] | None:
    """Metadata of the local Minari dataset ``dataset_id``, or None if it is not on disk."""
    import minari  # a light import, deferred so that this module stays dependency-free to load

    return minari.list_local_datasets().get(dataset_id)


def _card_reference_scores(dataset_id: str, where: str) -> tuple[float, float]:
    """References of a generated ``torchrl_sym/<family>/<kind>-v<N>`` id from the shipped cards."""
    from torchrl_sym.data.generate import parse_generated_id
    from torchrl_sym.data.policies import reference_returns

    parts = parse_generated_id(dataset_id)
    if parts is None:
        raise ReferenceScoresError(
            f"No reference scores for {dataset_id!r}: the dataset {where}, and it is not one "
            "torchrl_sym.data.generate builds ('torchrl_sym/<family>/<kind>-v<N>' with family "
            "hopper, halfcheetah or walker2d and kind random, medium, medium-replay, expert or "
            f"medium-expert), so no policy cards define them. {_HOW_TO_SUPPLY}"
        )
    family, _kind, version = parts
    try:
        return reference_returns(family, version)
    except FileNotFoundError as err:
        raise ReferenceScoresError(
            f"No reference scores for {dataset_id!r}: the dataset {where} and the shipped "
            f"policy cards do not cover it ({str(err).rstrip('.')}). Once the dataset is on "
            "disk its id works (torchrl_sym.data.generate records the references in it). "
            f"{_HOW_TO_SUPPLY}"
        ) from err


def _reference_scores_for_id(text: str, local: Mapping[str, Any] | None) -> tuple[float, float]:
    """References for a dataset id string whose local metadata (if any) holds none."""
    where = (
        "is on disk but its metadata records no ref_min_score / ref_max_score"
        if local is not None
        else "is not on disk"
    )
    if text.startswith("torchrl_sym/"):
        return _card_reference_scores(text, where)
    if text.startswith("mujoco/"):
        raise ReferenceScoresError(
            f"No reference scores for {text!r}: the dataset {where}. Minari's MuJoCo datasets "
            "record their own references (from the v5 envs), which are not D4RL's constants, so "
            f"none are assumed. Download it (minari.download_dataset({text!r})), which makes its "
            f"recorded references available. {_HOW_TO_SUPPLY}"
        )
    return D4RL_REF_SCORES[env_family(text)]


def _reference_scores(obj: Any) -> tuple[float, float]:
    for source in (obj, getattr(obj, "info", None)):
        if source is not None and (refs := _refs_from(source)) is not None:
            return refs

    # minari.MinariDataset (duck-typed): reference scores live in the storage metadata.
    metadata = getattr(getattr(obj, "storage", None), "metadata", None)
    if isinstance(metadata, Mapping):
        if (refs := _refs_from(metadata)) is not None:
            return refs
        if isinstance(metadata.get("dataset_id"), str):
            return _reference_scores_for_id(metadata["dataset_id"], metadata)

    if isinstance(obj, (str, os.PathLike)):
        text = os.fspath(obj)
        if isinstance(obj, str) and not text.lower().endswith(_FILE_SUFFIXES):
            local = _local_minari_metadata(text)
            if local is not None and (refs := _refs_from(local)) is not None:
                return refs
            return _reference_scores_for_id(text, local)
        return D4RL_REF_SCORES[env_family(text)]

    # A dataset id that names no family (a file "data.hdf5") may still come with an env id.
    holders = (obj, getattr(obj, "info", None))
    ids = [getattr(h, attr, None) for h in holders for attr in ("dataset_id", "env_id")]
    ids = [value for value in ids if isinstance(value, (str, os.PathLike))]
    for i, value in enumerate(ids):
        try:
            return _reference_scores(value)
        except ReferenceScoresError:
            raise  # an id with references of its own: never fall back to the env's D4RL constants
        except ValueError:
            if i == len(ids) - 1:
                raise

    raise TypeError(
        f"Cannot find reference scores for {obj!r} ({type(obj).__name__}): expected an object "
        "with ref_min_score / ref_max_score (directly or on .info), a MinariDataset, a dataset or "
        "environment id string, or an object with a dataset_id / env_id attribute."
    )


def reference_scores(dataset_or_env: Any) -> tuple[float, float]:
    """``(R_min, R_max)``: the random and expert reference returns for ``dataset_or_env``.

    The lookup order is in the module docstring: the argument's own ``ref_min_score`` /
    ``ref_max_score`` (or those of its ``.info`` or Minari storage metadata), then a local Minari
    dataset of that id, then the shipped policy cards for a ``torchrl_sym/...`` id, then
    :data:`D4RL_REF_SCORES` by :func:`env_family` (never for ``torchrl_sym/...`` or
    ``mujoco/...`` ids, whose datasets define their own references).

    Raises:
        ReferenceScoresError: a ``torchrl_sym/...`` or ``mujoco/...`` id whose references are not
            known here (not on disk, and no shipped cards for it); the message says how to
            supply them. A subclass of ``ValueError``.
        ValueError: the name matches no known family, or ``R_max`` is not above ``R_min``.
        TypeError: the argument is none of the accepted kinds.

    Examples:
        >>> reference_scores("hopper-medium-v2")
        (-20.272305, 3234.3)
    """
    lo, hi = _reference_scores(dataset_or_env)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(
            f"Reference scores for {dataset_or_env!r} must be finite with ref_max_score > "
            f"ref_min_score, got ({lo}, {hi})."
        )
    return lo, hi


def normalized_score(
    dataset_or_env: Any, returns: float | np.ndarray | torch.Tensor
) -> float | np.ndarray | torch.Tensor:
    """D4RL normalized score ``100 · (R − R_min) / (R_max − R_min)`` of episode returns ``R``.

    Args:
        dataset_or_env: anything :func:`reference_scores` accepts.
        returns: a Python number (a float comes back), a numpy array or array-like (a numpy
            array comes back) or a torch tensor (a tensor of the same floating dtype and device
            comes back; integer tensors give the default float dtype). NaN stays NaN.

    Examples:
        >>> round(normalized_score("hopper", 0.0), 4)
        0.6229
        >>> normalized_score("hopper-medium-v2", torch.tensor([3234.3]))
        tensor([100.])
        >>> normalized_score({"ref_min_score": 0.0, "ref_max_score": 200.0}, 50.0)
        25.0
    """
    lo, hi = reference_scores(dataset_or_env)
    span = hi - lo
    if isinstance(returns, torch.Tensor):
        if not returns.is_floating_point():
            returns = returns.to(torch.get_default_dtype())
        return (returns - lo) / span * 100.0
    if isinstance(returns, numbers.Real):
        return 100.0 * (float(returns) - lo) / span
    array = np.asarray(returns)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return (array - lo) / span * 100.0
