"""Staging directories that record their writer, and the removal of those whose writer died.

Datasets and conversion caches are written into a staging directory (``.tmp-*``) beside their
destination and renamed into place when complete, so a reader never sees half a dataset. A writer
killed with SIGKILL cannot clean up after itself, so each staging directory holds a
``writer.json`` naming its writer (pid, hostname, the process's start time where ``/proc`` has
it): :func:`remove_stale_staging` removes a staging directory only when that writer is known dead
— on this host, and no process with that pid exists (or the pid now belongs to a process started
later). A live writer's directory, one written on another host, and one without a readable
``writer.json`` are kept.

Every dataset id also has a lock, :func:`dataset_lock`: an ``fcntl.flock`` on the hidden file
``.<name>.lock`` beside the dataset in the Minari root (``<root>/torchrl_sym/hopper/.random-v1.lock``
for ``torchrl_sym/hopper/random-v1``). A writer holds it exclusively from before it checks whether
the dataset exists until the dataset is renamed into place; a reader holds it shared while it opens
and converts the dataset. So two processes that need the same missing dataset do not both build it
(the second waits, then finds the first's), and no dataset is replaced while another process reads
or writes it. The kernel releases a ``flock`` when its holder dies, however it dies, so a killed
process never leaves a lock that blocks; the lock files themselves stay (they are empty or hold the
current writer's record) and must not be deleted while a process may use them.

:class:`honour_interrupts` makes sure a Ctrl-C during a write is never lost: Python runs a SIGINT
handler's ``KeyboardInterrupt`` wherever the interpreter happens to be, and when that is a
``__del__`` or a callback the exception is printed ("Exception ignored ...") and dropped, so the
write would go on and the process exit 0. The guard counts every SIGINT, and its
:meth:`~honour_interrupts.check` (and its exit) raises ``KeyboardInterrupt`` again for one that was
dropped.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX (Windows): datasets are written without a lock
    fcntl = None

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


# ------------------------------------------------------------------------------ dataset locks

LOCK_SUFFIX = ".lock"


def lock_path(root: str | os.PathLike, dataset_id: str) -> Path:
    """The lock file of ``dataset_id`` in the Minari root ``root``: ``.<name>.lock`` beside the
    dataset's directory (hidden, so Minari does not list it)."""
    namespace, _, name = dataset_id.rpartition("/")
    return Path(root) / namespace / f".{name}{LOCK_SUFFIX}"


@dataclass
class LockState:
    """What :class:`dataset_lock` found when it took the lock."""

    path: Path
    shared: bool
    locked: bool = True  # False: no lock could be taken (no fcntl, or an unwritable store)
    waited: bool = False  # another process held the lock when this one asked for it
    holder: dict | None = None  # the writer record of that process, when it was a known writer
    abandoned: dict | None = None  # the record of a writer that died holding the lock
    reentered: bool = False  # this process already held the lock (nested use)

    def holder_text(self) -> str:
        return _holder_text(self.holder)


def _read_record(fd: int) -> dict | None:
    try:
        record = json.loads(os.pread(fd, 65536, 0).decode() or "null")
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _holder_text(record: dict | None) -> str:
    if not record:
        return "another process"
    text = f"pid {record.get('pid')} on {record.get('hostname')}"
    return f"{text}, which is {record['purpose']}" if record.get("purpose") else text


class _LocalLock:
    """This process's hold on one lock file: a thread lock (flock does not exclude the threads of
    one process) and the flocked descriptor, taken once however deeply the lock is nested."""

    def __init__(self) -> None:
        self.rlock = threading.RLock()
        self.depth = 0
        self.fd: int | None = None
        self.shared = False


_LOCAL: dict[str, _LocalLock] = {}
_LOCAL_GUARD = threading.Lock()


class dataset_lock:  # lower case: used like a function, ``with dataset_lock(root, id):``
    """Hold the lock of Minari dataset ``dataset_id`` under the root ``root`` (a context manager
    that returns a :class:`LockState`).

    ``shared=False`` (writers) excludes every other holder; ``shared=True`` (readers) excludes
    writers only. A lock held by another process is waited for (``timeout`` seconds at most, or
    forever with None, then :class:`TimeoutError` naming the holder), saying so in one logged
    line. The lock is reentrant within a process (a nested exclusive or shared use inside an
    exclusive hold, or shared inside shared), and other threads of the process wait for it; a
    shared hold is never upgraded (:class:`RuntimeError`). An exclusive holder writes its
    :func:`writer_record` (plus ``purpose``) into the lock file and clears it on release; a record
    found by the next exclusive holder was left by a writer that died holding the lock, and is
    reported in :attr:`LockState.abandoned`. Without ``fcntl`` (not POSIX), or where a reader
    cannot create the lock file (a read-only store), nothing is locked.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        dataset_id: str,
        *,
        shared: bool = False,
        timeout: float | None = None,
        purpose: str | None = None,
    ) -> None:
        self.path = lock_path(root, dataset_id)
        self.dataset_id = dataset_id
        self.shared = shared
        self.timeout = timeout
        self.purpose = purpose
        self._local: _LocalLock | None = None

    def __enter__(self) -> LockState:
        key = os.path.abspath(self.path)
        with _LOCAL_GUARD:
            local = _LOCAL.setdefault(key, _LocalLock())
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        if not local.rlock.acquire(timeout=-1 if self.timeout is None else self.timeout):
            raise TimeoutError(
                f"Timed out after {self.timeout:g} s waiting for the lock on dataset "
                f"'{self.dataset_id}' ({self.path}), held by another thread of this process."
            )
        try:
            if local.depth:
                if local.shared and not self.shared:
                    raise RuntimeError(
                        f"This process holds a shared lock on dataset '{self.dataset_id}' and "
                        "asked for an exclusive one; a shared lock is not upgraded."
                    )
                state = LockState(self.path, local.shared, reentered=True)
            else:
                state, local.fd = self._acquire(deadline)
                local.shared = self.shared
            local.depth += 1
        except BaseException:
            local.rlock.release()
            raise
        self._local = local
        return state

    def __exit__(self, *exc) -> bool:
        local, self._local = self._local, None
        if local is None:
            return False
        try:
            local.depth -= 1
            if local.depth == 0 and local.fd is not None:
                fd, local.fd = local.fd, None
                try:
                    if not local.shared:
                        os.ftruncate(fd, 0)  # released normally: clear the writer's record
                except OSError:
                    pass
                finally:
                    os.close(fd)  # releases the flock
        finally:
            local.rlock.release()
        return False

    def _acquire(self, deadline: float | None) -> tuple[LockState, int | None]:
        if fcntl is None:
            return LockState(self.path, self.shared, locked=False), None
        try:
            fd = self._open()
        except OSError as err:
            if not self.shared:
                raise
            logger.debug("Reading %s without a lock: %s", self.dataset_id, err)
            return LockState(self.path, self.shared, locked=False), None
        state = LockState(self.path, self.shared)
        mode = fcntl.LOCK_SH if self.shared else fcntl.LOCK_EX
        try:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                state.waited = True
                record = _read_record(fd)
                # a record names the holder only while that writer lives (one that died holding
                # the lock left it, and the lock is then held by a reader)
                state.holder = record if record and not writer_is_dead(record) else None
                logger.warning(
                    "Dataset '%s' is locked by %s: waiting for it (lock file %s).",
                    self.dataset_id,
                    _holder_text(state.holder)
                    if state.holder
                    else "another process that is reading it",
                    self.path,
                )
                self._wait(fd, mode, deadline, state)
            if not self.shared:
                state.abandoned = _read_record(fd)
                if state.abandoned:
                    logger.warning(
                        "The lock on dataset '%s' was last taken by %s, which exited without "
                        "releasing it (killed?); the kernel released it.",
                        self.dataset_id,
                        _holder_text(state.abandoned),
                    )
                record = dict(writer_record(), dataset_id=self.dataset_id, purpose=self.purpose)
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
                except OSError:
                    pass  # a lock file opened read-only: locked, but anonymous
        except BaseException:
            os.close(fd)
            raise
        return state, fd

    def _open(self) -> int:
        flags = getattr(os, "O_CLOEXEC", 0)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o666)
        except PermissionError:
            return os.open(self.path, os.O_RDONLY | flags)  # another user's lock file

    def _wait(self, fd: int, mode: int, deadline: float | None, state: LockState) -> None:
        if deadline is None:
            fcntl.flock(fd, mode)  # a SIGINT interrupts it (KeyboardInterrupt)
            return
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Timed out after {self.timeout:g} s waiting for the lock on dataset "
                        f"'{self.dataset_id}' ({self.path}), held by {state.holder_text()}."
                    ) from None
                time.sleep(0.05)


# ------------------------------------------------------------------------------ Ctrl-C

_interrupts = 0


def _count_sigint(signum, frame):
    global _interrupts
    _interrupts += 1
    raise KeyboardInterrupt


class honour_interrupts:  # lower case: used like a function
    """Count SIGINTs while the block runs, so that one whose ``KeyboardInterrupt`` was dropped
    (raised inside a ``__del__`` or a callback: "Exception ignored ...") is raised again by
    :meth:`check` and at the end of the block.

    The counting handler raises ``KeyboardInterrupt`` exactly like Python's default one; it is
    installed only in the main thread, only over the default handler (a program's own SIGINT
    handling is left alone), and the previous handler is restored on exit. Guards nest: an inner
    one counts through the outer one's handler.
    """

    def __init__(self) -> None:
        self._start = _interrupts
        self._previous = None
        self._counting = False  # SIGINTs are counted for this block (in the main thread)

    def __enter__(self) -> honour_interrupts:
        self._start = _interrupts
        if threading.current_thread() is threading.main_thread():
            try:
                if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                    self._previous = signal.signal(signal.SIGINT, _count_sigint)
                self._counting = signal.getsignal(signal.SIGINT) is _count_sigint
            except (ValueError, OSError):
                pass
        return self

    @property
    def interrupted(self) -> bool:
        """Whether a SIGINT arrived since the block began (always False outside the main thread,
        or where the program handles SIGINT itself)."""
        return self._counting and _interrupts > self._start

    def check(self) -> None:
        """Raise ``KeyboardInterrupt`` if a SIGINT arrived since the block began."""
        if self.interrupted:
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if exc_type is None:
            self.check()
        return False
