"""Formatting shared by the page's sections: numbers, CIs, durations, relative paths, and the
numbered notes of a table."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torchrl_sym.report.runs import Run


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), Path(start).resolve())).as_posix()


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _fmt_ci(ci: tuple[float, float] | None, n: int) -> str:
    if n == 0:
        return "–"
    if n == 1 or ci is None:
        return "1 seed"
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _fmt_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "–"
    mean = math.fsum(values) / len(values)
    if len(values) == 1:
        return _fmt(mean)
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return f"{_fmt(mean)} ± {_fmt(math.sqrt(var))}"


class _Notes:
    """Numbered notes of one table: identical texts share a number and list their runs."""

    def __init__(self, prefix: str, start: Path):
        self.prefix, self.start = prefix, start
        self.items: list[tuple[str, list[str]]] = []

    def add(self, text: str, run: Run | None = None) -> str:
        who = None if run is None else f"`{_rel(run.path, self.start)}` (seed {run.seed})"
        for i, (existing, runs) in enumerate(self.items):
            if existing == text:
                if who and who not in runs:
                    runs.append(who)
                return f"[{self.prefix}{i + 1}]"
        self.items.append((text, [who] if who else []))
        return f"[{self.prefix}{len(self.items)}]"

    def lines(self) -> list[str]:
        out = []
        for i, (text, runs) in enumerate(self.items):
            suffix = f": {', '.join(runs)}" if runs else ""
            out.append(f"- [{self.prefix}{i + 1}] {text}{suffix}")
        return out
