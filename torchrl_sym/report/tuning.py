"""The tuning sweeps of the protocol (results/cpu/TUNING.md) on the results page.

``scripts/tune.py`` mirrors a sweep's runs into ``<tuning>/<task>/<algo>/<key>_<value>/`` and
writes ``selection_<key>.json`` beside them (the values, each one's per-seed and mean final
scores, the published and the chosen value). The page renders every such sweep in a section of
its own, with each run's final score read again from the committed ``eval_returns.csv`` (the
selection file is checked against the logs, never copied onto the page unchecked).

Where the sweeps are: ``tuning`` folders given to the report, and by default the ``tuning``
folder beside each run folder the report reads (``results/cpu`` -> ``results/tuning``), so the
page's usual command renders them without another flag.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrl_sym.report.runs import load_run

__all__ = ["Sweep", "SweepValue", "find_sweeps", "sweep_dirs", "sweep_run_name", "value_text"]

TOLERANCE = 1e-6


def value_text(value: Any) -> str:
    """A swept value as the command line and the run folders write it (JSON; a string as is)."""
    return value if isinstance(value, str) else json.dumps(value)


def sweep_run_name(key: str, value: Any) -> str:
    """The folder of a sweep's run for ``key=value`` (``scripts/tune.py``): ``<key>_<value>``
    (no ``=``: hydra reads a run directory from an override)."""
    return f"{key}_{value_text(value)}"


@dataclass
class SweepValue:
    value: Any
    finals: dict[str, float | None]  # seed folder -> final score from the logs (None: unfinished)
    mean_final: float | None  # over the seeds, None unless every tuning seed finished

    @property
    def label(self) -> str:
        return value_text(self.value)


@dataclass
class Sweep:
    path: Path  # the selection_<key>.json
    algo: str
    task: str
    key: str
    published: Any
    chosen: Any
    tuning_seeds: list[int]
    fixed: list[str]
    tie: float
    values: list[SweepValue]
    when: str | None = None
    remarks: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def command(self) -> str:
        values = ",".join(v.label for v in self.values)
        fixed = [f for f in self.fixed if "=" in f and not f.startswith("--")]
        return " ".join(
            ["python scripts/tune.py", self.algo, self.task, f"{self.key}={values}", *fixed]
        )


def sweep_dirs(run_dirs: Iterable[str | Path], tuning: Sequence[str | Path] | None) -> list[Path]:
    """The folders searched for sweeps: ``tuning`` when given, else the ``tuning`` folder beside
    each of ``run_dirs`` that exists (``results/cpu`` -> ``results/tuning``)."""
    if tuning is not None:
        return [Path(t) for t in tuning]
    found = []
    for d in run_dirs:
        candidate = Path(d).resolve().parent / "tuning"
        if candidate.is_dir() and candidate not in found:
            found.append(candidate)
    return found


def _final(run_dir: Path) -> float | None:
    """The run's final score as the tables compute it (mean of its last ``eval.last_k``
    evaluations), None without a finished, finite evaluation."""
    try:
        run = load_run(run_dir)
    except Exception:
        return None
    if run.csv_state != "ok" or not run.finite or run.summary is None:
        return None
    return run.final


def _read(path: Path) -> Sweep:
    data = json.loads(path.read_text())
    for name in ("algo", "task", "key", "values", "chosen", "published", "tuning_seeds"):
        if name not in data:
            raise ValueError(f"no {name!r} (scripts/tune.py writes it)")
    sweep = Sweep(
        path=path,
        algo=str(data["algo"]),
        task=str(data["task"]),
        key=str(data["key"]),
        published=data["published"],
        chosen=data["chosen"],
        tuning_seeds=[int(s) for s in data["tuning_seeds"]],
        fixed=[str(f) for f in data.get("fixed", [])],
        tie=float(data.get("tie", 1.0)),
        values=[],
        when=data.get("when"),
    )
    for row in data["values"]:
        value = row["value"]
        label = value_text(value)
        run = path.parent / sweep_run_name(sweep.key, value)
        finals: dict[str, float | None] = {}
        for seed in sweep.tuning_seeds:
            seed_dir = run / f"seed_{seed}"
            finals[f"seed_{seed}"] = _final(seed_dir) if seed_dir.is_dir() else None
        done = [f for f in finals.values() if f is not None]
        mean = math.fsum(done) / len(done) if len(done) == len(sweep.tuning_seeds) else None
        recorded = row.get("mean_final")
        if mean is None and recorded is not None:
            sweep.remarks.append(
                f"{sweep.key}={label}: selection file gives a mean final of {recorded:.2f}, but "
                f"the committed logs under `{run.name}/` do not hold every tuning seed finished"
            )
        elif mean is not None and (recorded is None or abs(mean - recorded) > TOLERANCE):
            shown = "none" if recorded is None else f"{recorded:.4f}"
            sweep.remarks.append(
                f"{sweep.key}={label}: the logs give a mean final of {mean:.4f}, the selection "
                f"file {shown}: rerun the selection (`{sweep.command} --select-only`)"
            )
        sweep.values.append(SweepValue(value, finals, mean))
    if sweep.chosen not in [v.value for v in sweep.values]:
        sweep.remarks.append(f"the chosen value {sweep.chosen!r} is not among the swept values")
    unfinished = [value_text(v.value) for v in sweep.values if v.mean_final is None]
    if unfinished:
        sweep.remarks.append(
            f"the sweep is incomplete ({sweep.key}={', '.join(unfinished)} without every tuning "
            "seed finished in the committed logs): its choice is provisional, and no tuned row "
            "may use it yet"
        )
    return sweep


def find_sweeps(folders: Sequence[Path]) -> tuple[list[Sweep], list[tuple[Path, str]]]:
    """Every ``selection_*.json`` under ``folders``: the sweeps read, and the files that could
    not be read with the reason."""
    sweeps, skipped = [], []
    for folder in folders:
        if not folder.is_dir():
            skipped.append((folder, "no such tuning folder"))
            continue
        for path in sorted(folder.rglob("selection_*.json")):
            try:
                sweeps.append(_read(path))
            except (ValueError, KeyError, TypeError) as err:
                skipped.append((path, f"unreadable sweep selection ({type(err).__name__}: {err})"))
    sweeps.sort(key=lambda s: (s.task, s.algo, s.key, str(s.path)))
    return sweeps, skipped


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def tuning_section(sweeps: Sequence[Sweep], start: Path) -> list[str]:
    """The page's section of the tuning sweeps (nothing without any)."""
    if not sweeps:
        return []
    from torchrl_sym.report._text import _rel

    lines = [
        "## Tuning sweeps",
        "",
        "The tuning protocol's sweeps (results/cpu/TUNING.md), written down before any of them "
        "ran: only a hyperparameter the paper sets per task is swept, on the **tuning seeds** "
        "(disjoint from the reporting seeds, and evaluated from start states disjoint from "
        "theirs), at the reporting budget; the value of highest mean final score over the tuning "
        "seeds is chosen (a tie within the sweep's tie margin goes to the published value, else "
        "to the value nearest it). The chosen value goes into the task's settings under `tuned:` "
        "and runs on the reporting seeds as the row labelled `hparams=tuned` beside the published "
        "row. Each final score below is read from the sweep's committed `eval_returns.csv` "
        "(mean of the run's last `eval.last_k` evaluations).",
        "",
    ]
    for sweep in sweeps:
        seeds = [f"seed_{s}" for s in sweep.tuning_seeds]
        lines += [
            f"### {sweep.task} · {sweep.algo} · `{sweep.key}`",
            "",
            f"| `{sweep.key}` | "
            + " | ".join(f"tuning seed {s}" for s in sweep.tuning_seeds)
            + " | mean final | |",
            "|---|" + "---|" * len(seeds) + "---|---|",
        ]
        for v in sweep.values:
            marks = []
            if v.value == sweep.published:
                marks.append("published")
            if v.value == sweep.chosen:
                marks.append("**chosen**")
            lines.append(
                f"| {v.label} | "
                + " | ".join(_score(v.finals.get(s)) for s in seeds)
                + f" | {_score(v.mean_final)} | {', '.join(marks)} |"
            )
        fixed = [f for f in sweep.fixed if "=" in f]
        lines += [
            "",
            f"Chosen: `{sweep.key}={json.dumps(sweep.chosen)}` (published "
            f"`{json.dumps(sweep.published)}`; tie margin {sweep.tie:g}"
            + (f"; fixed for every run: {', '.join(f'`{f}`' for f in fixed)}" if fixed else "")
            + (f"; selected {sweep.when}" if sweep.when else "")
            + f"). Logs: `{_rel(sweep.folder, start)}`. Rerun: `{sweep.command}`.",
        ]
        for remark in sweep.remarks:
            lines.append(f"- Caution: {remark}.")
        lines.append("")
    return lines
