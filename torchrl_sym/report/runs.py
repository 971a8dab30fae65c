"""Loading runs: finding run directories, reading their config.yaml, evaluation CSV,
summary.json and behavior_eval.json into :class:`Run` records.

A run directory holds a ``config.yaml`` with ``algo`` and ``dataset`` keys (the resolved config a
recipe writes when it starts). Nothing here raises for a damaged or partial run other than an
unreadable ``config.yaml``: what is wrong becomes a remark or a state the tables report.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_LAST_K",
    "IGNORED_KEYS",
    "Run",
    "find_run_dirs",
    "load_run",
]

# The evaluation CSV's columns (torchrl_sym.train.evaluate.CSV_COLUMNS; not imported from there
# because that module imports torch).
CSV_COLUMNS = ("step", "episode", "return", "normalized_score")
DEFAULT_LAST_K = 10
# Config keys that never make a variant: they differ between seeds of one experiment, or change
# where and how a run is logged, not what it computes.
IGNORED_KEYS = (
    "seed",
    "resume",
    "run_dir",
    "device",
    "compile",
    "compile.*",
    "logger.*",
    "train.progress",
    "train.log_interval",
    "checkpoint.*",
    "hydra.*",
)


@dataclass
class Run:
    """One run directory as read from disk.

    ``steps``/``scores`` are the evaluations in step order: ``scores[i]`` is the mean
    normalized score of the evaluation at ``steps[i]`` (nan if it is non-finite, None if the
    CSV has no normalized score for it).
    """

    path: Path
    config: dict[str, Any]  # flattened: dotted key -> hashable value
    algo: str
    dataset: str
    seed: int | None
    last_k: int
    csv_state: str  # "ok" | "missing" | "empty" | "bad header: ..."
    steps: tuple[int, ...] = ()
    scores: tuple[float | None, ...] = ()
    summary: dict | None = None
    remarks: list[str] = field(default_factory=list)  # facts found while reading (not fatal)
    behavior_eval: dict | None = None  # SRPO, BDPO: behavior_eval.json (scripts/eval_behavior.py)

    @property
    def last_step(self) -> int | None:
        return self.steps[-1] if self.steps else None

    @property
    def has_scores(self) -> bool:
        return bool(self.scores) and all(s is not None for s in self.scores)

    @property
    def finite(self) -> bool:
        return self.has_scores and all(math.isfinite(s) for s in self.scores)

    @property
    def final(self) -> float:
        """Mean of the last ``last_k`` evaluations' mean scores."""
        tail = self.scores[-self.last_k :]
        return math.fsum(tail) / len(tail)

    @property
    def best(self) -> float:
        return max(self.scores)

    @property
    def summary_fresh(self) -> bool:
        """summary.json was written at (or after) the CSV's last evaluation."""
        if self.summary is None:
            return False
        step = self.summary.get("global_step")
        return self.last_step is None or (isinstance(step, (int, float)) and step >= self.last_step)

    @property
    def wall_seconds(self) -> float | None:
        """Training wall time of this run over every segment (summary ``total_seconds``); for
        a seed of a stacked run (``summary["stacked"]["seeds"] = K``, K seeds trained in one
        process) its share, the process's wall time divided by K."""
        if not self.summary_fresh:
            return None
        value = self.summary.get("total_seconds", self.summary.get("seconds"))
        if not isinstance(value, (int, float)):
            return None
        stacked = self.summary.get("stacked")
        seeds = stacked.get("seeds") if isinstance(stacked, dict) else None
        return float(value) / seeds if isinstance(seeds, int) and seeds > 1 else float(value)

    @property
    def stage_start(self) -> int:
        """The global step where the evaluated stage began, for the curves: the first
        evaluation's step minus ``eval.interval`` (0 for a one-stage run; SRPO's policy stage and
        BDPO's actor stage start after their pretraining stages), never below 0."""
        interval = self.config.get("eval.interval")
        if not self.steps or not isinstance(interval, int) or isinstance(interval, bool):
            return 0
        return max(0, self.steps[0] - interval)

    @property
    def provenance(self) -> dict | None:
        """``summary.json``'s ``provenance`` block (torchrl_sym.train.provenance: ``commit``,
        ``dirty``, ``python``, ``versions``, ``cpu``, ``gpu``, ``threads``, ``device``,
        ``precision``); None for a summary written before runs recorded it, or no summary."""
        block = (self.summary or {}).get("provenance")
        return block if isinstance(block, dict) else None

    @property
    def start_states(self) -> str:
        """The evaluation start-state protocol of the run (``config.yaml`` ``eval.start_states``):
        ``"disjoint"`` (episode ``i`` of training seed ``s`` seeded ``1e9 + 1e5·s + i``), or
        ``"legacy"`` (``s + 100 + i``) for a config that names it or predates the key."""
        value = self.config.get("eval.start_states")
        return "legacy" if value is None else str(value)

    @property
    def data_sha256(self) -> str | None:
        dataset = (self.summary or {}).get("dataset") or {}
        return dataset.get("sha256") if isinstance(dataset, dict) else None

    @property
    def data_size(self) -> tuple[int, int] | None:
        """``(transitions, episodes)`` of the dataset the run trained on (``summary.json``)."""
        dataset = (self.summary or {}).get("dataset") or {}
        try:
            return int(dataset["transitions"]), int(dataset["episodes"])
        except (KeyError, TypeError, ValueError):
            return None


def _freeze(value: Any) -> Any:
    """A hashable copy of a YAML value (lists -> tuples, mappings -> sorted item tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = _freeze(value)
    return out


def _show(value: Any) -> str:
    """A config value as a short string: ``js``, ``0.3``, ``[256, 256]``."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _read_yaml(path: Path) -> dict:
    import yaml

    with open(path) as file:
        data = yaml.safe_load(file)
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a mapping")
    return data


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(
        key == p or (p.endswith(".*") and key.startswith(p[:-1])) or key.startswith(p + ".")
        for p in patterns
    )


def find_run_dirs(paths: Iterable[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Run directories under ``paths`` (each a run directory or a folder searched recursively).

    A run directory holds a ``config.yaml`` with ``algo`` and ``dataset`` keys; the search does
    not descend into it (its ``resumes/*/config.yaml`` and ``.hydra/`` are the run's records,
    not runs). Returns ``(runs, skipped)``: sorted resolved paths, and ``(path, reason)`` for
    directories with a ``config.yaml`` that is unreadable or is not an offline run's.
    """
    runs: set[Path] = set()
    skipped: dict[Path, str] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(
                f"{root} does not exist; pass run directories or the folders that hold them "
                "(outputs/, multirun/)."
            )
        for current, dirs, files in os.walk(root):
            here = Path(current)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "resumes")
            if "config.yaml" not in files:
                continue
            try:
                config = _read_yaml(here / "config.yaml")
            except Exception as err:  # a broken file must not stop the report
                # one line without the absolute path: it goes into a markdown list, and the page
                # must read the same from any checkout
                message = " ".join(str(err).split()).replace(
                    str(here / "config.yaml"), "config.yaml"
                )
                skipped[here.resolve()] = (
                    f"config.yaml unreadable ({type(err).__name__}: {message})"
                )
                dirs[:] = []
                continue
            if "algo" not in config:
                continue  # some other yaml; keep searching below
            dirs[:] = []
            if not config.get("dataset"):
                skipped[here.resolve()] = (
                    f"config.yaml has no dataset (algo={config['algo']}: not an offline run)"
                )
                continue
            runs.add(here.resolve())
    return sorted(runs), sorted(skipped.items())


def _read_csv(path: Path) -> tuple[str, dict[int, list[float | None]], list[str]]:
    """``(state, {step: [episode scores]}, remarks)`` of an evaluation CSV."""
    if not path.is_file():
        return "missing", {}, []
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    if not rows:
        return "empty", {}, []
    if tuple(rows[0]) != CSV_COLUMNS:
        return f"bad header {','.join(rows[0])!r}, expected {','.join(CSV_COLUMNS)!r}", {}, []
    per_step: dict[int, list[float | None]] = {}
    episodes: dict[int, set[str]] = {}
    malformed = 0
    duplicated = set()
    for row in rows[1:]:
        if len(row) != len(CSV_COLUMNS):
            malformed += 1
            continue
        try:
            step = int(row[0])
            score = float(row[3]) if row[3].strip() else None
        except ValueError:
            malformed += 1
            continue
        if row[1] in episodes.setdefault(step, set()):
            duplicated.add(step)
        episodes[step].add(row[1])
        per_step.setdefault(step, []).append(score)
    remarks = []
    if malformed:
        remarks.append(f"{malformed} malformed row(s) of eval_returns.csv skipped")
    if duplicated:
        remarks.append(
            f"eval_returns.csv holds step(s) {sorted(duplicated)[:3]} twice; their rows are "
            "averaged as one evaluation"
        )
    return ("ok" if per_step else "empty"), per_step, remarks


def load_run(path: str | Path, *, last_k: int | None = None) -> Run:
    """Reads one run directory (see :class:`Run`); never raises for a damaged or partial run
    other than an unreadable ``config.yaml``."""
    path = Path(path)
    raw = _read_yaml(path / "config.yaml")
    config = _flatten(raw)
    try:
        k = max(
            1, int(last_k if last_k is not None else config.get("eval.last_k") or DEFAULT_LAST_K)
        )
    except (TypeError, ValueError):
        k = DEFAULT_LAST_K
    seed = config.get("seed")
    state, per_step, remarks = _read_csv(path / "eval_returns.csv")
    steps = tuple(sorted(per_step))
    scores: list[float | None] = []
    for step in steps:
        values = per_step[step]
        if any(v is None for v in values):
            scores.append(None)
        else:
            finite = all(map(math.isfinite, values))
            # plain float sum for non-finite values: inf stays inf and nan stays nan in the notes
            scores.append((math.fsum(values) if finite else sum(values)) / len(values))
    summary = None
    summary_path = path / "summary.json"
    if summary_path.is_file():
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as err:
            remarks.append(f"summary.json unreadable ({type(err).__name__})")
    run = Run(
        path=path,
        config=config,
        algo=str(raw["algo"]),
        dataset=str(raw["dataset"]),
        seed=int(seed) if isinstance(seed, (int, float)) else None,
        last_k=k,
        csv_state=state,
        steps=steps,
        scores=tuple(scores),
        summary=summary,
        remarks=remarks,
    )
    run.remarks.extend(_resume_remarks(run))
    behavior = path / "behavior_eval.json"
    if behavior.is_file():
        try:
            data = json.loads(behavior.read_text())
            for mode in ("sample", "deterministic"):  # the fields the note reads
                data[mode]["normalized_score"] = float(data[mode]["normalized_score"])
            run.behavior_eval = data
        except (OSError, ValueError, KeyError, TypeError) as err:
            run.remarks.append(f"behavior_eval.json unreadable ({type(err).__name__})")
    return run


def _policy_diagnostics_text(d: Any) -> str | None:
    """The remark for ``behavior_eval.json``'s ``policy_diagnostics`` (SRPO, BDPO), or ``None`` when
    it is malformed (a file written before the diagnostics existed has no block: no remark)."""
    try:
        a = d["actions"]
        dist = {k: float(a[k]["distance_to_data"]) for k in ("policy", "behavior", "zeros")}
        q = {k: float(a[k]["q"]) for k in ("policy", "data", "behavior", "zeros")}
        states = int(d["num_states"])
    except (TypeError, KeyError, ValueError):
        return None
    try:  # BDPO: one sample of its actor beside the action it is evaluated with
        actor = (float(a["actor"]["distance_to_data"]), float(a["actor"]["q"]))
    except (TypeError, KeyError, ValueError):
        actor = None
    text = (
        f"its policy at {d.get('checkpoint', '?')} on {states:,} dataset states: actions "
        f"{dist['policy']:.2f} from the data's on average ("
        + (f"one sample of the actor {actor[0]:.2f}, " if actor else "")
        + f"behavior samples {dist['behavior']:.2f}, the zero action {dist['zeros']:.2f}); "
        f"critic value of the policy's actions {q['policy']:.1f}, "
        + (f"of the actor's samples {actor[1]:.1f}, " if actor else "")
        + f"of the data's {q['data']:.1f}, of behavior samples {q['behavior']:.1f}, of the zero "
        f"action {q['zeros']:.1f}"
    )
    try:  # files written since 2026-12-07 also hold the share of saturated action dimensions
        sat = {k: float(a[k]["saturated_fraction"]) for k in ("policy", "data")}
    except (TypeError, KeyError, ValueError):
        return text
    return text + (
        f"; action dimensions at the box's edge (|a| > 0.99): policy {sat['policy']:.0%}, "
        f"data {sat['data']:.0%}"
    )


def _resume_remarks(run: Run) -> list[str]:
    """Resumed segments that ran with settings other than ``config.yaml``'s (which groups it)."""
    folder = run.path / "resumes"
    if not folder.is_dir():
        return []
    changes = []
    for record in sorted(folder.glob("*/config.yaml")):
        try:
            resumed = _flatten(_read_yaml(record))
        except Exception:
            continue
        for key in sorted(set(resumed) | set(run.config)):
            if _ignored(key, IGNORED_KEYS):
                continue
            old, new = run.config.get(key), resumed.get(key)
            if old != new:
                changes.append(f"{key} {_show(old)} → {_show(new)} ({record.parent.name})")
    if not changes:
        return []
    return [
        "resumed with settings other than config.yaml's: "
        + "; ".join(changes)
        + " (grouped by config.yaml)"
    ]


def _run_order(run: Run):
    return (run.seed is None, run.seed if run.seed is not None else 0, str(run.path))


def _resumed_text(run: Run) -> str | None:
    """Where a run was resumed, from ``summary.json``'s ``resumes`` (else the ``resumes/``
    records' ``resumed_at_step``, else its ``resumed`` flag); None for a run never resumed."""
    summary = run.summary or {}
    history = summary.get("resumes")
    if not isinstance(history, list):
        from torchrl_sym.train.rundir import resume_history

        history = resume_history(run.path)
    if not history:
        if summary.get("resumed") is True:
            return (
                "resumed from a checkpoint (the step is not recorded: its summary.json predates "
                "`resumes`); the wall time sums every segment"
            )
        return None
    parts = []
    for entry in history:
        step = entry.get("at_step") if isinstance(entry, dict) else None
        if not isinstance(step, (int, float)) or isinstance(step, bool):
            parts.append("at a step not recorded")
        elif step == 0:
            parts.append("from step 0 (no loadable checkpoint: restarted)")
        else:
            parts.append(f"at step {int(step):,}")
    return "resumed " + ", then ".join(parts) + "; the wall time sums every segment"
