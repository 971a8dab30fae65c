"""Atomic checkpoints, RNG state capture and a keep-last-N checkpoint directory.

A checkpoint is one ``torch.save`` file holding whatever the loop needs for an exact resume
(models, targets, EMA, optimizers, schedulers, RNG states, sampler state, step). Writes are
atomic: a file at a checkpoint path is always complete, whatever moment the process is killed.

Checkpoints are loaded with ``weights_only=False`` because they contain RNG states (numpy
arrays, Python tuples) and other non-tensor objects: only load checkpoints you (or a run you
trust) wrote, as unpickling an untrusted file can execute arbitrary code.
"""

from __future__ import annotations

import os
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "CheckpointManager",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

_TMP_MARKER = ".tmp-"


def _tmp_path(path: Path) -> Path:
    return path.with_name(f"{path.name}{_TMP_MARKER}{os.getpid()}")


def _fsync_directory(directory: Path) -> None:
    """Makes a rename in ``directory`` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Writes ``state`` to ``path`` with ``torch.save``, atomically.

    The bytes go to ``<path>.tmp-<pid>`` in the same directory, which is flushed and fsynced,
    then renamed over ``path`` with ``os.replace`` (atomic on POSIX and Windows) and the
    directory is fsynced. ``path`` therefore holds either its previous content or the complete
    new checkpoint, never a partial one, even after a kill or a power loss. Parent directories
    are created. If the write fails, the temporary file is removed and the error re-raised.

    Examples:
        >>> import tempfile, torch
        >>> path = Path(tempfile.mkdtemp()) / "ckpt.pt"
        >>> save_checkpoint(path, {"step": 3, "w": torch.ones(2)})
        >>> load_checkpoint(path)["step"]
        3
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Loads a checkpoint written by :func:`save_checkpoint`, tensors mapped to ``map_location``.

    Uses ``torch.load(..., weights_only=False)``: checkpoints hold RNG states and other Python
    objects, so they are unpickled in full. Only load trusted files.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {path} does not exist (or is not a file)")
    state = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"Checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def rng_state() -> dict[str, Any]:
    """Captures the global RNG states: Python ``random``, NumPy's legacy global RNG, torch CPU,
    and every CUDA device's generator if CUDA is available.

    Returns:
        ``{"python": ..., "numpy": ..., "torch": ByteTensor, "cuda": [ByteTensor per device]}``
        (``"cuda"`` only with CUDA). Restore it with :func:`set_rng_state`.
    """
    state = {
        "python": random.getstate(),
        # The legacy global RNG is what np.random.* functions draw from; capturing it is the point.
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores global RNG states captured by :func:`rng_state`.

    After ``s = rng_state(); a = draw(); set_rng_state(s); b = draw()``, ``a == b`` for draws
    from ``random``, ``numpy.random`` and ``torch`` (and CUDA generators).
    """
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise ValueError(
            f"RNG state lacks {sorted(missing)}; expected the dict returned by rng_state()"
        )
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8, device="cpu"))
    cuda_states = state.get("cuda")
    if cuda_states is None:
        return
    if not torch.cuda.is_available():
        warnings.warn(
            "RNG state has CUDA generator states but CUDA is not available; they are not "
            "restored, so CUDA random draws will differ from the saved run.",
            stacklevel=2,
        )
        return
    num_devices = torch.cuda.device_count()
    if len(cuda_states) != num_devices:
        warnings.warn(
            f"RNG state has {len(cuda_states)} CUDA generator states but {num_devices} devices "
            f"are visible; restoring the first {min(len(cuda_states), num_devices)}.",
            stacklevel=2,
        )
    for device, cuda_state in enumerate(cuda_states[:num_devices]):
        torch.cuda.set_rng_state(cuda_state.cpu(), device)


def _pid_is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


class CheckpointManager:
    """Keeps the ``keep`` newest checkpoints of a run in ``directory`` as ``ckpt_{step:09d}.pt``.

    The newest checkpoint is found by listing the directory, not through a ``latest`` pointer
    file: every ``ckpt_*.pt`` is complete (it appears only through an atomic rename), so the
    listing is always consistent, whereas a pointer is a second file that a kill between the
    two renames, a failed pruning, or a manual deletion can leave pointing at a missing or
    older checkpoint. If the newest file still does not load (disk corruption, a truncated
    copy), :meth:`latest` warns and falls back to the previous one.

    Temporary files ``*.tmp-<pid>`` of killed writes are never taken for checkpoints; those of
    processes that are no longer alive are deleted when the manager is created and on save.
    One process writes to a directory at a time.

    Examples:
        >>> import tempfile, torch
        >>> manager = CheckpointManager(tempfile.mkdtemp(), keep=2)
        >>> for step in (100, 200, 300):
        ...     _ = manager.save(step, {"step": step, "w": torch.full((2,), float(step))})
        >>> [p.name for p in manager.checkpoints()]
        ['ckpt_000000200.pt', 'ckpt_000000300.pt']
        >>> manager.load_latest()["step"]
        300
    """

    _PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 (checkpoints to retain), got {keep!r}")
        self.directory = Path(directory)
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()

    def path_for(self, step: int) -> Path:
        """The checkpoint path of ``step``: ``directory / f"ckpt_{step:09d}.pt"``."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step!r}")
        return self.directory / f"ckpt_{step:09d}.pt"

    def checkpoints(self) -> list[Path]:
        """Checkpoint files in the directory, sorted by step (oldest first); no temp files."""
        found = []
        for path in self.directory.iterdir():
            match = self._PATTERN.match(path.name)
            if match is not None and path.is_file():
                found.append((int(match[1]), path))
        return [path for _, path in sorted(found)]

    @classmethod
    def step_of(cls, path: str | Path) -> int:
        """The step encoded in a checkpoint file name ``ckpt_{step}.pt``."""
        match = cls._PATTERN.match(Path(path).name)
        if match is None:
            raise ValueError(f"{path} is not a checkpoint file name (ckpt_<step>.pt)")
        return int(match[1])

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Writes ``state`` atomically as the checkpoint of ``step`` and prunes old ones.

        After the write, checkpoints with a greater step are deleted (they belong to a run
        segment that was abandoned when the run resumed from an earlier checkpoint; kept, they
        would shadow this one in :meth:`latest`), then all but the ``keep`` newest.

        Returns:
            The path written.
        """
        path = self.path_for(step)
        self._remove_stale_tmp()
        save_checkpoint(path, state)
        existing = self.checkpoints()
        newer = [p for p in existing if self.step_of(p) > step]
        if newer:
            warnings.warn(
                f"Deleting checkpoints newer than step {step} from an abandoned run segment: "
                f"{[p.name for p in newer]}",
                stacklevel=2,
            )
        older = [p for p in existing if self.step_of(p) <= step]
        for stale in newer + older[: -self.keep]:
            stale.unlink(missing_ok=True)
        return path

    def latest(self) -> Path | None:
        """The newest checkpoint that loads, or None if there is none.

        Each candidate, newest first, is opened with ``torch.load(mmap=True)``, which reads
        the archive structure and the pickled objects but not the tensor bytes, so checking a
        large checkpoint is cheap. An unloadable one is skipped with a warning.
        """
        found = self._newest_loadable(map_location="cpu", mmap=True)
        return found[0] if found is not None else None

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any] | None:
        """Loads the newest checkpoint that loads (falling back past corrupt ones, with a
        warning); None if the directory has no loadable checkpoint."""
        found = self._newest_loadable(map_location=map_location, mmap=False)
        return found[1] if found is not None else None

    def _newest_loadable(self, map_location: Any, mmap: bool) -> tuple[Path, dict] | None:
        failures = []
        for path in reversed(self.checkpoints()):
            try:
                state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
                if not isinstance(state, dict):
                    raise ValueError(f"holds a {type(state).__name__}, expected a dict")
            except Exception as err:
                failures.append(f"{path.name} ({type(err).__name__}: {err})")
                continue
            if failures:
                warnings.warn(
                    f"Skipped unloadable checkpoint(s) in {self.directory}: "
                    f"{'; '.join(failures)}; using {path.name}",
                    stacklevel=3,
                )
            return path, state
        if failures:
            warnings.warn(
                f"No loadable checkpoint in {self.directory}; unloadable: {'; '.join(failures)}",
                stacklevel=3,
            )
        return None

    def _remove_stale_tmp(self) -> None:
        """Deletes ``*.tmp-<pid>`` files whose writing process is no longer alive."""
        for path in self.directory.iterdir():
            name, marker, pid = path.name.rpartition(_TMP_MARKER)
            if not marker or not name:
                continue
            if pid.isdigit() and (int(pid) == os.getpid() or _pid_is_alive(int(pid))):
                # A live writer's file (our own, or another process's on this host).
                continue
            path.unlink(missing_ok=True)
