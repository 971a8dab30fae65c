"""Staging directories that record their writer, and the removal of those whose writer died.

Datasets and conversion caches are written into a staging directory (``.tmp-*``) beside their
destination and renamed into place when complete, so a reader never sees half a dataset. A writer
killed with SIGKILL cannot clean up after itself, so each staging directory holds a
``writer.json`` naming its writer (pid, hostname, the process's start time where ``/proc`` has
it): :func:`remove_stale_staging` removes a staging directory only when that writer is known dead
— on this host, and no process with that pid exists (or the pid now belongs to a process started
later). A live writer's directory, one written on another host, and one without a readable
``writer.json`` are kept.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".tmp-"
WRITER_FILE = "writer.json"


def _start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: split after it
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])  # field 22 overall: starttime
    except (IndexError, ValueError):
        return None


def writer_record() -> dict:
    """What identifies this process as a staging directory's writer."""
    return {
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "start_ticks": _start_ticks(os.getpid()),
        "created": time.time(),
    }


def make_staging_dir(parent: str | os.PathLike, tag: str = "") -> Path:
    """Create ``parent/.tmp-<tag><random>`` holding a ``writer.json`` for this process."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{tag}{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    (staging / WRITER_FILE).write_text(json.dumps(writer_record()) + "\n")
    return staging


def writer_is_dead(record: dict) -> bool:
    """Whether the writer named by ``record`` is known to be dead (False when in doubt)."""
    if record.get("hostname") != socket.gethostname():
        return False  # another machine's process: its liveness cannot be checked from here
    pid = record.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # exists, owned by another user
    # the pid exists; it is another process if it started after the writer recorded it
    recorded, now = record.get("start_ticks"), _start_ticks(pid)
    return recorded is not None and now is not None and now != recorded


def remove_stale_staging(parent: str | os.PathLike) -> list[Path]:
    """Remove the ``.tmp-*`` staging directories in ``parent`` whose writer is dead.

    Returns the directories removed. Directories of live writers, of writers on another host, and
    without a readable ``writer.json`` are left alone.
    """
    parent = Path(parent)
    removed: list[Path] = []
    try:
        candidates = [p for p in parent.iterdir() if p.name.startswith(STAGING_PREFIX)]
    except OSError:
        return removed
    for staging in candidates:
        if not staging.is_dir():
            continue
        try:
            record = json.loads((staging / WRITER_FILE).read_text())
        except (OSError, ValueError):
            logger.debug("Keeping %s: no readable %s.", staging, WRITER_FILE)
            continue
        if not isinstance(record, dict) or not writer_is_dead(record):
            continue
        logger.warning(
            "Removing %s, left behind by a writer (pid %s) that is no longer running.",
            staging,
            record.get("pid"),
        )
        shutil.rmtree(staging, ignore_errors=True)
        if not staging.exists():
            removed.append(staging)
    return removed


def local_minari_ids() -> list[str]:
    """The ids of the datasets in the local Minari store (``MINARI_DATASETS_PATH``), sorted."""
    import warnings

    import minari

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return sorted(minari.list_local_datasets().keys())
