"""Task names: what a dataset id or path is called in per-task configs and published tables.

Import-light (no torch), so the report tool can use it.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["dataset_kind", "task_name"]

# D4RL's locomotion data kinds, longest first (medium-replay before medium)
KINDS = ("medium-replay", "medium-expert", "full-replay", "medium", "expert", "random")


def task_name(dataset: str) -> str:
    """``<family>-<kind>`` for a dataset id or path: ``torchrl_sym/hopper/medium-replay-v1``,
    ``mujoco/hopper/medium-replay-v0`` and ``/data/hopper-medium-replay-v2.hdf5`` all give
    ``hopper-medium-replay``; ``toy2d/moons`` gives ``toy2d-moons``.

    >>> task_name("torchrl_sym/hopper/medium-v1"), task_name("/data/walker2d-medium-expert-v2.hdf5")
    ('hopper-medium', 'walker2d-medium-expert')
    """
    name = str(dataset)
    if name.endswith((".hdf5", ".h5")):
        stem = Path(name).stem
    else:
        parts = name.split("/")
        stem = "-".join(parts[-2:]) if len(parts) >= 2 else parts[-1]
    return re.sub(r"-v\d+$", "", stem)


def dataset_kind(dataset: str) -> str | None:
    """The D4RL data kind of a dataset id or path (``medium``, ``medium-replay``,
    ``medium-expert``, ``expert``, ``random``, ``full-replay``), or ``None`` for other data.

    >>> dataset_kind("torchrl_sym/hopper/medium-replay-v1"), dataset_kind("toy2d/moons")
    ('medium-replay', None)
    """
    name = task_name(dataset)
    for kind in KINDS:
        if name.endswith("-" + kind):
            return kind
    return None
