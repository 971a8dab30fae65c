"""Which code and which machine produced a run (``summary.json``'s ``provenance``)."""

from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

__all__ = ["PACKAGES", "cpu_model", "git_state", "provenance"]

PACKAGES = ("torch", "torchrl", "tensordict", "gymnasium", "mujoco", "minari", "torchrl_sym")
"""The packages whose versions a run records."""


def _git(*args: str, cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


@lru_cache(maxsize=1)
def git_state() -> dict[str, Any]:
    """``{"commit": <HEAD sha or None>, "dirty": <tracked files differ from HEAD, or None>}`` of
    the checkout the package is imported from (both None for an installed wheel)."""
    root = Path(__file__).resolve().parents[2]
    top = _git("rev-parse", "--show-toplevel", cwd=root)
    if top is None or Path(top.strip()).resolve() != root:
        return {"commit": None, "dirty": None}
    commit = _git("rev-parse", "HEAD", cwd=root)
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=root)
    return {
        "commit": commit.strip() if commit else None,
        "dirty": None if status is None else bool(status.strip()),
    }


@lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(*, device: str, precision: str) -> dict[str, Any]:
    """What produced a run: the git commit (and whether the tree was dirty), Python and package
    versions, the CPU model, the GPU's name on a CUDA device, torch's thread count, the device
    and the precision."""
    dev = torch.device(device)
    gpu = None
    if dev.type == "cuda" and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(dev)
    return {
        **git_state(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
        "cpu": cpu_model(),
        "gpu": gpu,
        "threads": torch.get_num_threads(),
        "device": str(dev),
        "precision": precision,
    }
