"""The run directory: what ``resume=DIR`` continues, who may write it, and whether it can be written.

A run directory belongs to one run. This module keeps it that way:

* :func:`resume_config` — the configuration of a resumed run is the one it was started with
  (``DIR/config.yaml``) with only this command line's overrides applied on top. An override that
  changes what the checkpoints hold (algorithm, dataset, environment, seed, data preprocessing,
  network sizes) is refused with one line naming the key and both values. Nothing is written
  before this check passes, and ``DIR/config.yaml`` is never rewritten: each resumed segment
  records its own command line and effective configuration under ``DIR/resumes/``.
* :class:`RunDirLock` — one writer per run directory: ``DIR/.lock`` holds the writer's pid, host
  and process start time; a second writer fails at once naming the holder, and a lock left by a
  killed process (its pid is gone, or reused by another process) is taken over.
* :func:`check_writable` — the checkpoint directory is probed before the first training step.
* :func:`seed_everything` — Python's, NumPy's and torch's global RNGs from one seed.

Hydra's run directory follows ``resume`` through two resolvers registered on import
(``torchrl_sym_run_dir`` and ``torchrl_sym_hydra_subdir``, used by ``torchrl_sym/configs/common.yaml``): a
resumed launch logs into ``DIR`` (appending to its ``<recipe>.log``), writes no ``.hydra/`` over
the original's, and a ``resume`` that names no run directory fails before any directory is made.
"""

from __future__ import annotations

import json
import os
import random
import re
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FIXED_ON_RESUME",
    "ResumeError",
    "RunDirLock",
    "check_writable",
    "resume_config",
    "seed_everything",
]

# Keys a resumed run may not change: they decide what the checkpoints hold or what the run is.
FIXED_ON_RESUME = (
    "algo",
    "dataset",
    "env",
    "seed",
    "task",
    "data.reward_transform",
    "data.normalize_observations",
    "data.action_clip",
    "data.generate_transitions",
    "eval.mode",  # one evaluation protocol per run: its last-k and best mix no modes
    "eval.start_states",
    "stack_seeds",  # a stacked checkpoint holds exactly stack_seeds seeds
    "hparams",  # published or tuned: which row of the results a run is
)

RUN_CONFIG = "config.yaml"
"""A run directory's configuration (one seed; what the report reads)."""
STACK_CONFIG = "stack.yaml"
"""A stacked run's configuration (``stack_seeds=K``): the directory holds the checkpoints of all K
seeds and one ordinary run directory per seed (``seed_<s>/config.yaml``, ...)."""


def run_config_path(run_dir: str | Path) -> Path | None:
    """The configuration file of the run in ``run_dir``: ``stack.yaml`` for a stacked run,
    ``config.yaml`` otherwise; None if there is neither."""
    run_dir = Path(run_dir)
    for name in (STACK_CONFIG, RUN_CONFIG):
        if (run_dir / name).is_file():
            return run_dir / name
    return None


# Leaf names that size a network anywhere in the config (``sfac.hidden``, ``bdpo.ensemble_size``).
_ARCHITECTURE_LEAF = re.compile(
    r"^(.*hidden.*|num_blocks|num_steps|ensemble_size|.*layer_norm|dropout|num_qvalue_nets)$"
)


class ResumeError(ValueError):
    """``resume=DIR`` cannot continue the run DIR holds with the given overrides."""


# ------------------------------------------------------------------------------ seeding


def seed_everything(seed: int) -> None:
    """Seeds Python's ``random``, NumPy's legacy global RNG and torch (CPU and every CUDA device),
    so two fresh runs with one seed draw the same numbers from every global generator."""
    import numpy as np
    import torch

    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the legacy global RNG is the point
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------ writable


def check_writable(directory: str | Path, what: str = "checkpoint directory") -> Path:
    """Creates ``directory`` if needed and writes, then removes, a probe file in it.

    Raises:
        PermissionError: naming the directory, when it cannot be created or written.
    """
    directory = Path(directory)
    probe = directory / f".write-probe-{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        raise PermissionError(
            f"The {what} {directory} is not writable ({type(err).__name__}: {err.strerror or err}); "
            "checkpoints could not be saved. Fix its permissions or free disk space, or start "
            "the run in another directory (hydra.run.dir=<writable path>)."
        ) from err
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass
    return directory


# ------------------------------------------------------------------------------ lock


def _process_start_time(pid: int) -> str | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ')'
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class RunDirLock:
    """An exclusive lock on a run directory: ``DIR/.lock`` created with ``O_EXCL``.

    The file holds ``{"pid", "host", "start_time", "since", "command"}``. :meth:`acquire` fails
    with :class:`RuntimeError` naming the holder if another live process on this host holds it; a
    lock whose process is gone (killed runs never release theirs) or whose pid now belongs to a
    process started at another time is stale and taken over. A lock held on another host is never
    taken over (its liveness cannot be checked from here): delete it by hand if that run is over.
    The lock is released by :meth:`release`, by leaving a ``with`` block, and at interpreter exit.

    Examples:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with RunDirLock(d):
        ...     RunDirLock(d).acquire()
        Traceback (most recent call last):
        ...
        RuntimeError: ...
    """

    NAME = ".lock"

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / self.NAME
        self._held = False

    def _record(self) -> dict[str, Any]:
        import sys

        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_time": _process_start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(sys.argv),
        }

    def holder(self) -> dict[str, Any] | None:
        """The lock file's record, ``{}`` if unreadable, None if there is no lock."""
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, record: dict[str, Any]) -> bool:
        if not record:
            # unreadable: a writer killed between creating and filling it (or a foreign file)
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        if record.get("host") != socket.gethostname():
            return False
        pid = int(record.get("pid", -1))
        if pid <= 0 or not _pid_alive(pid):
            return True
        started = record.get("start_time")
        return started is not None and _process_start_time(pid) not in (None, started)

    def acquire(self) -> RunDirLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                record = self.holder()
                if record is None:
                    continue  # released meanwhile
                if record.get("pid") == os.getpid() and record.get("host") == socket.gethostname():
                    raise RuntimeError(
                        f"{self.run_dir} is already in use by this process (pid {os.getpid()}); "
                        "one run per directory."
                    ) from None
                if not self._stale(record):
                    who = (
                        f"pid {record.get('pid')} on {record.get('host')} since "
                        f"{record.get('since')} ({record.get('command', '?')})"
                        if record
                        else "a process that is writing its lock"
                    )
                    raise RuntimeError(
                        f"{self.run_dir} is in use by {who}. One run writes a directory at a time: "
                        f"wait for it to finish or stop it; if it is gone, delete {self.path}."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its writer is dead
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
            self._held = True
            import atexit

            atexit.register(self.release)
            return self
        raise RuntimeError(f"Could not take the lock {self.path}; try again.")

    def release(self) -> None:
        if not self._held:
            return
        record = self.holder()
        if record and record.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ------------------------------------------------------------------------------ resume


def _flatten(cfg, prefix: str = "") -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    out: dict[str, Any] = {}
    container = cfg if isinstance(cfg, dict) else OmegaConf.to_container(cfg, resolve=True)
    for key, value in container.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, DictConfig)):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def is_fixed_on_resume(key: str) -> bool:
    """Whether a resumed run may not change ``key`` (see :data:`FIXED_ON_RESUME`)."""
    return key in FIXED_ON_RESUME or bool(_ARCHITECTURE_LEAF.match(key.rsplit(".", 1)[-1]))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def resume_config(
    run_dir: str | Path,
    current,
    overridden: Sequence[str],
    *,
    recipe_algo: str | None = None,
):
    """The configuration a resumed run continues with.

    Args:
        run_dir: the run directory (``DIR/config.yaml`` is the run's configuration).
        current: this launch's composed configuration (defaults plus this command line).
        overridden: the dotted keys this command line changes (:func:`overridden_keys`); their
            values are taken from ``current`` and applied on top of ``DIR/config.yaml``.
        recipe_algo: the launching recipe's algorithm, checked against the run's.

    Returns:
        ``(config, changes)``: the merged configuration (with ``resume`` set to ``run_dir``) and
        ``{key: (old, new)}`` of the keys whose values changed.

    Raises:
        ResumeError: ``DIR`` holds no ``config.yaml``, holds another recipe's run, or an override
            changes a key of :func:`is_fixed_on_resume`.
    """
    from omegaconf import OmegaConf, open_dict

    run_dir = Path(run_dir)
    path = run_config_path(run_dir)
    if path is None:
        raise ResumeError(
            f"resume={str(run_dir)!r}: {run_dir / RUN_CONFIG} does not exist, so this is not a run "
            "directory (a run writes config.yaml, or stack.yaml for stacked seeds, when it "
            "starts). Pass the directory of an earlier run."
        )
    try:
        saved = OmegaConf.load(path)
    except Exception as err:
        raise ResumeError(
            f"resume={str(run_dir)!r}: {path} is not a readable config ({type(err).__name__}: "
            f"{err}); the run's configuration is lost, start a new run."
        ) from err
    saved_algo = saved.get("algo")
    if recipe_algo is not None and saved_algo != recipe_algo:
        raise ResumeError(
            f"resume={str(run_dir)!r} holds a run of algo={saved_algo!r}; this recipe trains "
            f"algo={recipe_algo!r}. Resume it with recipes/{saved_algo}.py."
        )
    missing = object()
    changes: dict[str, tuple[Any, Any]] = {}
    merged = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    with open_dict(merged):
        for key in overridden:
            if key == "resume":
                continue
            new = OmegaConf.select(current, key, default=missing)
            if new is missing:
                continue
            new = OmegaConf.to_container(new, resolve=True) if OmegaConf.is_config(new) else new
            old = OmegaConf.select(saved, key, default=missing)
            old = OmegaConf.to_container(old, resolve=True) if OmegaConf.is_config(old) else old
            if old is not missing and old == new:
                continue
            if is_fixed_on_resume(key):
                shown = "<absent>" if old is missing else _short(old)
                raise ResumeError(
                    f"resume={str(run_dir)!r}: {key} is {shown} in the run and {_short(new)} on this "
                    f"command line; {key} decides what the run's checkpoints hold, so a resumed run "
                    "cannot change it. Drop the override, or start a new run."
                )
            OmegaConf.update(merged, key, new, force_add=True)
            changes[key] = (None if old is missing else old, new)
        merged.resume = str(run_dir)
    return merged, changes


def overridden_keys(current, defaults, command_line: Sequence[str]) -> list[str]:
    """The dotted keys a command line changes: the keys it names (``a.b=v``, ``+a.b=v``), and
    every leaf whose value differs between ``current`` (composed with the command line) and
    ``defaults`` (composed without it), which is what a config-group choice such as
    ``profile=smoke`` sets. ``hydra.*`` keys are not the run's."""
    keys: list[str] = []
    for override in command_line:
        name = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and not name.startswith("hydra") and "/" not in name:
            keys.append(name)
    now, before = _flatten(current), _flatten(defaults)
    for key in sorted(set(now) | set(before)):
        if key.startswith("hydra.") or key in keys:
            continue
        if now.get(key, object()) != before.get(key, object()):
            keys.append(key)
    return keys


# ------------------------------------------------------------------------------ hydra resolvers


def _run_dir_resolver(resume: Any, default: str) -> str:
    if resume in (None, "", "null", "None"):
        return default
    path = Path(str(resume)).expanduser()
    if run_config_path(path) is None:
        # Hydra resolves this before it creates the run directory; SystemExit passes through its
        # error formatting, so the user reads one line and no directory is made.
        raise SystemExit(
            f"Error: resume={str(resume)!r} is not a run directory (no {path / 'config.yaml'}); "
            "pass the directory of an earlier run (outputs/<algo>/<date>)."
        )
    return str(path)


def _hydra_subdir_resolver(resume: Any) -> str | None:
    # a resumed launch writes no .hydra/ over the original's (resume_config records it instead)
    return ".hydra" if resume in (None, "", "null", "None") else None


def register_resolvers() -> None:
    """Registers the resolvers the recipes' ``hydra.run`` settings use (done on import of
    ``torchrl_sym``)."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("torchrl_sym_run_dir", _run_dir_resolver, replace=True)
    OmegaConf.register_new_resolver(
        "torchrl_sym_hydra_subdir", _hydra_subdir_resolver, replace=True
    )


def resume_history(run_dir: Path) -> list[dict[str, Any]]:
    """Every resumed launch of the run in ``run_dir``, oldest first, from its ``resumes/`` records:
    ``{"launch": <record folder>, "at_step": <global step it continued from>}``; ``at_step`` is
    0 for a launch that found no loadable checkpoint and restarted, and None for a record written
    before the step was recorded (or unreadable)."""
    from omegaconf import OmegaConf

    history = []
    for record in sorted((run_dir / "resumes").glob("*/overrides.yaml")):
        try:
            step = OmegaConf.to_container(OmegaConf.load(record)).get("resumed_at_step")
        except Exception:  # a damaged record says nothing about the step; the run goes on
            step = None
        history.append(
            {"launch": record.parent.name, "at_step": int(step) if step is not None else None}
        )
    return history
