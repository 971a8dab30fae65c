"""Run directories -> a results page: tables per dataset, aggregates, learning curves, profile.

Reads the run directories our recipes write (``config.yaml``, ``eval_returns.csv``,
``summary.json``; hydra sweep folders are searched recursively), groups the runs by
dataset × algorithm × variant and writes one markdown page plus PNG figures::

    python -m torchrl_sym.report multirun/ outputs/ --out docs/results.md
    python -m torchrl_sym.report multirun/ outputs/ --out docs/results.md --check

Per run, with ``s_1..s_E`` the mean normalized score of its evaluations (mean over the episodes
of one evaluation, in step order):

- final = mean of the last ``k`` evaluations ``s_{E-k+1..E}`` (all of them while ``E < k``),
  ``k`` = ``--last-k``, else the run's ``eval.last_k``, else 10 (as ``Evaluator.last_k_mean``);
- best = ``max_i s_i``.

Per cell (dataset, algorithm, variant) over its valid runs: mean, sample std (ddof = 1) and a
95% percentile-bootstrap CI of the mean from rliable (``get_interval_estimates`` with
``aggregate_mean`` on the ``[runs, 1]`` matrix). Across datasets per algorithm/variant: rliable's
``aggregate_mean`` and ``aggregate_iqm`` with stratified-bootstrap CIs, and a performance profile.
The papers' comparative claims (:data:`torchrl_sym.published.CLAIMS`) are tested pairwise on
each dataset: the difference of two cells' mean final scores with a 95% Welch t interval
(``scipy.stats.ttest_ind(equal_var=False)``), and a verdict once both cells have
``--claim-seeds`` valid runs.

A run is excluded from the statistics (and named in a note under its table) when it has no
evaluation, no normalized score, a non-finite score, or stops before the cell's last evaluation
step. See docs/report.md for the page's columns and the ``--check`` workflow.

Heavy libraries (numpy, matplotlib, rliable) are imported inside the functions that use them,
so ``import torchrl_sym.report`` stays cheap.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchrl_sym.published import (
    CLAIMS,
    NOT_PUBLISHED,
    PUBLISHED,
    Claim,
    published_for,
    published_order,
)
from torchrl_sym.tasks import task_name

__all__ = [
    "Aggregate",
    "Cell",
    "ClaimRow",
    "DataStat",
    "DataStatsError",
    "Report",
    "Run",
    "bootstrap_mean_ci",
    "build_report",
    "claim_rows",
    "find_run_dirs",
    "load_data_stats",
    "load_run",
    "main",
    "render_markdown",
    "task_name",
    "write_figures",
]

# The evaluation CSV's columns (torchrl_sym.train.evaluate.CSV_COLUMNS; not imported from there
# because that module imports torch).
CSV_COLUMNS = ("step", "episode", "return", "normalized_score")
DEFAULT_LAST_K = 10
DEFAULT_REPS = 2000
DEFAULT_SEED = 0
DEFAULT_CLAIM_SEEDS = 3  # the protocol's seeds per cell: a claim's verdict needs this many
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


# ---------------------------------------------------------------------------------- runs


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
    behavior_eval: dict | None = None  # SRPO: behavior_eval.json (scripts/eval_behavior.py)

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
        """Training wall time over every segment of the run (summary ``total_seconds``)."""
        if not self.summary_fresh:
            return None
        value = self.summary.get("total_seconds", self.summary.get("seconds"))
        return float(value) if isinstance(value, (int, float)) else None

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
    def data_sha256(self) -> str | None:
        dataset = (self.summary or {}).get("dataset") or {}
        return dataset.get("sha256") if isinstance(dataset, dict) else None


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
    """The remark for ``behavior_eval.json``'s ``policy_diagnostics`` (SRPO), or ``None`` when
    it is malformed (a file written before the diagnostics existed has no block: no remark)."""
    try:
        a = d["actions"]
        dist = {k: float(a[k]["distance_to_data"]) for k in ("policy", "behavior", "zeros")}
        q = {k: float(a[k]["q"]) for k in ("policy", "data", "behavior", "zeros")}
        states = int(d["num_states"])
    except (TypeError, KeyError, ValueError):
        return None
    return (
        f"its policy at {d.get('checkpoint', '?')} on {states:,} dataset states: actions "
        f"{dist['policy']:.2f} from the data's on average (behavior samples {dist['behavior']:.2f}, "
        f"the zero action {dist['zeros']:.2f}); critic value of the policy's actions "
        f"{q['policy']:.1f}, of the data's {q['data']:.1f}, of behavior samples "
        f"{q['behavior']:.1f}, of the zero action {q['zeros']:.1f}"
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


# ---------------------------------------------------------------------------------- tasks


def _data_source(dataset: str) -> str:
    if dataset.startswith("torchrl_sym/"):
        return "D4RL-style data generated locally by torchrl_sym, not D4RL's data"
    if dataset.endswith((".hdf5", ".h5")):
        return "a D4RL hdf5 file"
    if dataset.startswith("toy2d/"):
        return "a 2-D toy bandit"
    return "a Minari dataset"


def _d4rl_version(task: str) -> str:
    return "v0" if task.startswith("antmaze") else "v2"


# ---------------------------------------------------------------------------------- stats


@contextmanager
def _seeded_global_rng(seed: int):
    """rliable 1.2's ``StratifiedBootstrap`` draws its resamples with ``np.random.choice`` (the
    global NumPy RNG) whatever ``random_state`` says, so a fixed bootstrap needs the global RNG
    seeded; it is restored afterwards so callers' streams are untouched."""
    import numpy as np

    state = np.random.get_state()  # noqa: NPY002 - rliable draws from the legacy global RNG
    np.random.seed(seed)  # noqa: NPY002
    try:
        yield
    finally:
        np.random.set_state(state)  # noqa: NPY002


def bootstrap_mean_ci(
    values: Sequence[float], *, reps: int = DEFAULT_REPS, seed: int = DEFAULT_SEED
) -> tuple[float, float]:
    """95% percentile-bootstrap CI of the mean of ``values`` (one per seed), from rliable:
    ``get_interval_estimates({k: values[:, None]}, aggregate_mean)`` with the global NumPy RNG
    seeded with ``seed``."""
    import numpy as np
    from rliable import library, metrics

    scores = np.asarray(values, dtype=np.float64)[:, None]
    with _seeded_global_rng(seed):
        _, intervals = library.get_interval_estimates(
            {"cell": scores}, lambda x: np.array([metrics.aggregate_mean(x)]), reps=reps
        )
    low, high = intervals["cell"][:, 0]
    return float(low), float(high)


def _aggregate_estimates(matrix, *, reps: int, seed: int):
    """``(mean, iqm), ((mean_lo, mean_hi), (iqm_lo, iqm_hi))`` of a ``[runs, datasets]`` matrix
    (rliable ``aggregate_mean``/``aggregate_iqm``, stratified bootstrap over runs)."""
    import numpy as np
    from rliable import library, metrics

    def both(x):
        return np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)])

    with _seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates({"g": matrix}, both, reps=reps)
    point, ci = points["g"], intervals["g"]
    return (float(point[0]), float(point[1])), (
        (float(ci[0, 0]), float(ci[1, 0])),
        (float(ci[0, 1]), float(ci[1, 1])),
    )


def welch_ci(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """95% Welch t confidence interval of ``mean(a) - mean(b)`` (scipy
    ``ttest_ind(a, b, equal_var=False).confidence_interval()``); ``None`` when a side has fewer
    than 2 values or neither has any spread."""
    if len(a) < 2 or len(b) < 2:
        return None
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return None
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    low, high = float(ci.low), float(ci.high)
    return (low, high) if math.isfinite(low) and math.isfinite(high) else None


def _verdict(expected: int, ci: tuple[float, float] | None, enough: bool) -> str:
    if not enough:
        return "pending"
    if ci is None:
        return "not resolved"
    low, high = ci
    if expected == 0:  # "not below"
        return "contradicts" if high < 0 else "not contradicted"
    if (expected > 0 and low > 0) or (expected < 0 and high < 0):
        return "agrees"
    if (expected > 0 and high < 0) or (expected < 0 and low > 0):
        return "contradicts"
    return "not resolved"


@dataclass
class Cell:
    """The runs of one dataset × algorithm × variant and their statistics."""

    dataset: str
    algo: str
    variant: str  # "" when the algorithm has one variant
    runs: list[Run]
    last_step: int | None = None  # the cell's last evaluation step (max over its runs)
    valid: list[Run] = field(default_factory=list)
    excluded: list[tuple[Run, str]] = field(default_factory=list)
    remarks: list[tuple[str, Run | None, str]] = field(default_factory=list)  # (column, run, text)
    final_ci: tuple[float, float] | None = None
    best_ci: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        return f"{self.algo} ({self.variant})" if self.variant else self.algo

    @property
    def finals(self) -> list[float]:
        return [r.final for r in self.valid]

    @property
    def bests(self) -> list[float]:
        return [r.best for r in self.valid]

    @property
    def wall_times(self) -> list[float]:
        return [r.wall_seconds for r in self.valid if r.wall_seconds is not None]


@dataclass
class Aggregate:
    algo: str
    variant: str
    datasets: list[str]
    runs_per_dataset: int
    matrix: Any  # numpy [runs_per_dataset, len(datasets)] of final scores
    mean: float
    iqm: float
    mean_ci: tuple[float, float] | None
    iqm_ci: tuple[float, float] | None
    trimmed: list[tuple[str, int]]  # datasets with more valid runs than used, and their count

    @property
    def label(self) -> str:
        return f"{self.algo} ({self.variant})" if self.variant else self.algo


class DataStatsError(ValueError):
    """A ``--data-stats`` file that is not a JSON object of dataset statistics."""


@dataclass(frozen=True)
class DataStat:
    """The dataset's own level: the mean return of its episodes, normalized with the dataset's
    reference scores like the runs' evaluations (``--data-stats``, e.g. docs/datasets.json)."""

    dataset: str
    score: float  # 100 * (return_mean - ref_min_score) / (ref_max_score - ref_min_score)
    return_mean: float
    sha256: str | None
    source: Path


def load_data_stats(path: str | Path) -> dict[str, DataStat]:
    """Reads a JSON object ``{dataset id: {"return_mean", "ref_min_score", "ref_max_score",
    "sha256"?}}`` (the format of docs/datasets.json, which scripts/make_datasets_doc.py measures
    from the data); ids without those numbers are left out."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--data-stats {path}: no such file (a JSON object of dataset id -> return_mean, "
            "ref_min_score, ref_max_score, e.g. docs/datasets.json)"
        )
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataStatsError(f"--data-stats {path}: not valid JSON ({err})") from None
    if not isinstance(table, dict):
        raise DataStatsError(
            f"--data-stats {path}: expected a JSON object of dataset id -> statistics, got "
            f"{type(table).__name__}"
        )
    stats = {}
    for dataset, entry in table.items():
        if not isinstance(entry, dict):
            continue
        try:
            mean, low, high = (
                float(entry[k]) for k in ("return_mean", "ref_min_score", "ref_max_score")
            )
        except (KeyError, TypeError, ValueError):
            continue
        if not all(map(math.isfinite, (mean, low, high))) or high == low:
            continue
        sha = entry.get("sha256")
        stats[dataset] = DataStat(
            dataset, 100.0 * (mean - low) / (high - low), mean, sha if sha else None, path
        )
    return stats


@dataclass
class ClaimRow:
    """One paper claim tested on one dataset: ``cell`` (the claiming algorithm) against ``other``.

    ``expected``: +1 the claim puts ``cell`` above ``other``, -1 below (a published order),
    0 "not below" (Sf-AC's claim). ``diff`` is mean(cell finals) - mean(other finals); ``ci`` its
    95% Welch t interval (None with fewer than 2 runs in a cell or no spread at all)."""

    claim: Claim
    dataset: str
    cell: Cell
    other: Cell
    expected: int
    diff: float
    ci: tuple[float, float] | None
    verdict: str  # "agrees", "contradicts", "not contradicted", "not resolved", "pending"


@dataclass
class Report:
    cells: list[Cell]
    aggregates: list[Aggregate]
    skipped: list[tuple[Path, str]]
    sources: list[Path]
    out: Path
    figures_dir: Path
    last_k: int | None
    reps: int
    seed: int
    variant_keys: dict[str, list[str]]  # algo -> the keys its variants are told apart by
    forced_variant_keys: bool
    preamble: str = ""  # markdown placed before the tables (--preamble FILE): protocol, commands
    claims: list[ClaimRow] = field(default_factory=list)
    claim_seeds: int = DEFAULT_CLAIM_SEEDS
    data_stats: dict[str, DataStat] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return sorted({c.dataset for c in self.cells}, key=lambda d: (task_name(d), d))

    def cells_of(self, dataset: str) -> list[Cell]:
        return [c for c in self.cells if c.dataset == dataset]

    def figure(self, name: str) -> Path:
        return self.figures_dir / name

    def curve_figure(self, dataset: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9.-]+", "_", dataset).strip("_")
        return self.figure(f"curves_{slug}.png")

    @property
    def profile_figure(self) -> Path:
        return self.figure("performance_profile.png")


def _variant_keys(
    runs: Sequence[Run], forced: Sequence[str] | None, ignore: Sequence[str]
) -> dict[str, list[str]]:
    """Per algorithm, the config keys that tell its variants apart.

    Detected: the keys whose values differ between runs of the algorithm on one dataset
    (union over datasets), other than the seed and :data:`IGNORED_KEYS`; a key that differs only
    between datasets (a per-task setting) is not a variant, nor is a key that some configs lack
    while all that have it agree (a setting added to the recipes after the older runs). Forced:
    the given keys that any run of the algorithm has.
    """
    by_algo: dict[str, list[Run]] = {}
    for run in runs:
        by_algo.setdefault(run.algo, []).append(run)
    keys: dict[str, list[str]] = {}
    for algo, algo_runs in by_algo.items():
        if forced is not None:
            keys[algo] = [k for k in forced if any(k in r.config for r in algo_runs)]
            continue
        found: set[str] = set()
        by_dataset: dict[str, list[Run]] = {}
        for run in algo_runs:
            by_dataset.setdefault(run.dataset, []).append(run)
        for group in by_dataset.values():
            for key in set().union(*(r.config for r in group)):
                if _ignored(key, ignore):
                    continue
                # A key some configs lack was added to the recipes after those runs: it makes a
                # variant only if the runs that have it disagree.
                if len({repr(r.config[key]) for r in group if key in r.config}) > 1:
                    found.add(key)
        keys[algo] = sorted(found)
    return keys


def _variant_label(run: Run, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={_show(run.config[k]) if k in run.config else '<unset>'}" for k in keys)


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


def _classify(cell: Cell) -> None:
    """Splits the cell's runs into valid and excluded (with the reason) and collects remarks."""
    with_evals = [r for r in cell.runs if r.steps]
    cell.last_step = max((r.last_step for r in with_evals), default=None)
    for run in sorted(cell.runs, key=_run_order):
        if run.csv_state == "missing":
            reason = "no eval_returns.csv (no evaluation finished)"
        elif run.csv_state == "empty":
            reason = "eval_returns.csv has no evaluation rows"
        elif run.csv_state != "ok":
            reason = f"eval_returns.csv has a {run.csv_state}"
        elif not run.has_scores:
            reason = (
                "eval_returns.csv has no normalized_score (the dataset has no reference returns)"
            )
        elif not run.finite:
            bad = [s for s, v in zip(run.steps, run.scores) if not math.isfinite(v)]
            raw = {str(v) for v in run.scores if not math.isfinite(v)}
            reason = (
                f"diverged: non-finite normalized score ({'/'.join(sorted(raw))}) at step "
                f"{bad[0]:,}" + (f" and {len(bad) - 1} later evaluation(s)" if len(bad) > 1 else "")
            )
        elif run.last_step < cell.last_step:
            reason = (
                f"partial: last evaluation at step {run.last_step:,}, the cell's runs reach "
                f"{cell.last_step:,} (killed, or still running)"
            )
        else:
            reason = None
        if reason is not None:
            cell.excluded.append((run, reason))
            continue
        cell.valid.append(run)
        if len(run.steps) < run.last_k:
            cell.remarks.append(
                (
                    "seeds",
                    run,
                    f"{len(run.steps)} evaluation(s), fewer than k = {run.last_k}: final "
                    "averages all of them",
                )
            )
        if run.summary is None:
            if not (run.path / "summary.json").exists():  # an unreadable one has its own remark
                cell.remarks.append(("wall", run, "no summary.json (the run did not finish)"))
        elif not run.summary_fresh:
            cell.remarks.append(
                (
                    "wall",
                    run,
                    f"summary.json is older than the CSV (global_step "
                    f"{run.summary.get('global_step')} < last evaluation {run.last_step:,}); "
                    "no wall time",
                )
            )
        resumed = _resumed_text(run)
        if resumed is not None:
            cell.remarks.append(("wall", run, resumed))
        if run.behavior_eval is not None:
            b = run.behavior_eval
            cell.remarks.append(
                (
                    "seeds",
                    run,
                    "its diffusion behavior model alone, as a policy (scripts/eval_behavior.py, "
                    f"{b.get('episodes', '?')} episodes, {b.get('sampling_steps', '?')}-step "
                    f"DDPM): {_fmt(b['sample']['normalized_score'])} sampled, "
                    f"{_fmt(b['deterministic']['normalized_score'])} zero-noise",
                )
            )
            if "policy_diagnostics" in b:
                text = _policy_diagnostics_text(b["policy_diagnostics"])
                cell.remarks.append(
                    ("seeds", run, text or "behavior_eval.json: policy_diagnostics unreadable")
                )
    for run in sorted(cell.runs, key=_run_order):
        for text in run.remarks:
            cell.remarks.append(("seeds", run, text))
    seeds: dict[Any, int] = {}
    for run in cell.valid:
        seeds[run.seed] = seeds.get(run.seed, 0) + 1
    for seed, count in sorted(seeds.items(), key=lambda kv: (kv[0] is None, str(kv[0]))):
        if count > 1:
            cell.remarks.append(
                ("seeds", None, f"seed {seed} has {count} valid runs; each is counted")
            )
    hashes = sorted({r.data_sha256 for r in cell.valid if r.data_sha256})
    if len(hashes) > 1:
        cell.remarks.append(
            (
                "seeds",
                None,
                f"runs trained on different data under one id (dataset sha256 "
                f"{', '.join(h[:12] for h in hashes)})",
            )
        )


def build_report(
    dirs: Sequence[str | Path],
    *,
    out: str | Path,
    figures_dir: str | Path | None = None,
    last_k: int | None = None,
    variant_keys: Sequence[str] | None = None,
    ignore_keys: Sequence[str] = (),
    reps: int = DEFAULT_REPS,
    seed: int = DEFAULT_SEED,
    preamble: str | Path | None = None,
    claim_seeds: int = DEFAULT_CLAIM_SEEDS,
    data_stats: str | Path | None = None,
) -> Report:
    """Finds and reads the runs under ``dirs``, groups them and computes every statistic the
    page shows (see the module docstring). ``preamble``: a markdown file whose text the page
    shows before its tables (the protocol and the commands that produced the runs). ``out`` is
    where the page goes (paths on it are written relative to its folder); ``figures_dir``
    defaults to ``<out folder>/<out stem>/``. ``claim_seeds``: the valid runs both cells of a
    claim need before it gets a verdict (:func:`claim_rows`). ``data_stats``: a JSON file of the
    datasets' own returns (:func:`load_data_stats`), shown under each table and in its curves.
    """
    if claim_seeds < 2:
        raise ValueError(
            f"claim_seeds must be >= 2 (a confidence interval needs 2 runs per cell), got {claim_seeds}"
        )
    stats = load_data_stats(data_stats) if data_stats is not None else {}  # fail before the work
    import numpy as np

    out = Path(out)
    figures_dir = Path(figures_dir) if figures_dir is not None else out.parent / out.stem
    paths, skipped = find_run_dirs(dirs)
    runs = []
    for path in paths:
        try:
            runs.append(load_run(path, last_k=last_k))
        except Exception as err:
            message = " ".join(str(err).split()).replace(str(path), "<run dir>")
            skipped.append((path, f"unreadable ({type(err).__name__}: {message})"))
    ignore = (*IGNORED_KEYS, *ignore_keys)
    keys = _variant_keys(runs, variant_keys, ignore)

    groups: dict[tuple[str, str, str], list[Run]] = {}
    for run in runs:
        label = _variant_label(run, keys[run.algo])
        groups.setdefault((run.dataset, run.algo, label), []).append(run)
    cells = []
    for (dataset, algo, label), members in sorted(
        groups.items(), key=lambda kv: (task_name(kv[0][0]), kv[0][0], kv[0][1], kv[0][2])
    ):
        cell = Cell(dataset, algo, label, sorted(members, key=_run_order))
        _classify(cell)
        if len(cell.valid) >= 2:
            cell.final_ci = bootstrap_mean_ci(cell.finals, reps=reps, seed=seed)
            cell.best_ci = bootstrap_mean_ci(cell.bests, reps=reps, seed=seed)
        cells.append(cell)

    aggregates = []
    by_group: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        if cell.valid:
            by_group.setdefault((cell.algo, cell.variant), []).append(cell)
    for (algo, variant), group_cells in sorted(by_group.items()):
        n = min(len(c.valid) for c in group_cells)
        columns, trimmed = [], []
        for c in group_cells:
            columns.append([r.final for r in sorted(c.valid, key=_run_order)[:n]])
            if len(c.valid) > n:
                trimmed.append((c.dataset, len(c.valid)))
        matrix = np.asarray(columns, dtype=np.float64).T  # [runs, datasets]
        (mean, iqm), (mean_ci, iqm_ci) = _aggregate_estimates(matrix, reps=reps, seed=seed)
        aggregates.append(
            Aggregate(
                algo,
                variant,
                [c.dataset for c in group_cells],
                n,
                matrix,
                mean,
                iqm,
                mean_ci if n >= 2 else None,
                iqm_ci if n >= 2 else None,
                trimmed,
            )
        )
    return Report(
        data_stats=stats,
        claims=claim_rows(cells, claim_seeds=claim_seeds),
        claim_seeds=claim_seeds,
        cells=cells,
        aggregates=aggregates,
        skipped=sorted(skipped),
        sources=sorted({Path(d).resolve() for d in dirs}),
        out=out,
        figures_dir=figures_dir,
        last_k=last_k,
        reps=reps,
        seed=seed,
        variant_keys=keys,
        forced_variant_keys=variant_keys is not None,
        preamble=_read_preamble(preamble),
    )


def claim_rows(
    cells: Sequence[Cell],
    claims: Sequence[Claim] = CLAIMS,
    *,
    claim_seeds: int = DEFAULT_CLAIM_SEEDS,
) -> list[ClaimRow]:
    """Every claim tested on every dataset where the claiming algorithm and an algorithm it is
    compared with both have valid runs (each variant a row of its own). A published-order claim
    is tested only on tasks where the papers' numbers order the pair (:func:`published_order`).
    The verdict needs ``claim_seeds`` valid runs in both cells ("pending" before):

    - published order: "agrees" when the 95% CI of the difference lies on the published side of
      zero, "contradicts" when it lies on the other side, "not resolved" when it covers zero;
    - not below: "contradicts" when the CI lies below zero, else "not contradicted".
    """
    rows = []
    for claim in claims:
        for cell in cells:
            if cell.algo != claim.algo or not cell.valid:
                continue
            task = task_name(cell.dataset)
            for other_algo in claim.against:
                if claim.kind == "not_below":
                    expected = 0
                elif claim.kind == "published_order":
                    expected = published_order(claim.algo, other_algo, task)
                    if expected == 0:
                        continue
                else:
                    raise ValueError(f"claim of {claim.algo}: unknown kind {claim.kind!r}")
                for other in cells:
                    if other.dataset != cell.dataset or other.algo != other_algo or not other.valid:
                        continue
                    a, b = cell.finals, other.finals
                    diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
                    ci = welch_ci(a, b)
                    enough = min(len(a), len(b)) >= claim_seeds
                    rows.append(
                        ClaimRow(claim, cell.dataset, cell, other, expected, diff, ci,
                                 _verdict(expected, ci, enough))
                    )  # fmt: skip
    return rows


def _read_preamble(path: str | Path | None) -> str:
    if path is None:
        return ""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--preamble {path}: no such file (a markdown file to show before the tables)"
        )
    return path.read_text().strip()


# ---------------------------------------------------------------------------------- markdown


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


def _published_cell(algo: str, task: str, sources: _Notes) -> str:
    entries = published_for(algo, task)
    if not entries:
        if algo in NOT_PUBLISHED:
            return "not published " + sources.add(NOT_PUBLISHED[algo])
        return "–"
    parts = []
    for p in entries:
        marker = sources.add(
            f"{p.column}: {p.paper_table}; transcribed in {p.spec}"
            + (" (tagged unverified [U] there)" if p.unverified else "")
        )
        value = _fmt(p.score) + (f" ± {_fmt(p.std)}" if p.std is not None else "")
        name = f" {p.column}" if len(entries) > 1 else ""
        parts.append(f"{value}{name}{' (unverified)' if p.unverified else ''} {marker}")
    return "; ".join(parts)


def _last_k_text(report: Report, runs: Iterable[Run]) -> str:
    if report.last_k is not None:
        return f"last {report.last_k} evaluations"
    ks = sorted({r.last_k for r in runs})
    if len(ks) == 1:
        return f"last {ks[0]} evaluations"
    if not ks:  # no valid run in the table
        return "last k evaluations"
    return f"last k evaluations, k ∈ {{{', '.join(map(str, ks))}}} from each run's eval.last_k"


def _dataset_section(report: Report, dataset: str, start: Path) -> list[str]:
    cells = report.cells_of(dataset)
    task = task_name(dataset)
    version = _d4rl_version(task)
    notes, sources = _Notes("n", start), _Notes("p", start)
    rows = []
    for cell in cells:
        seed_marks, wall_marks = [], []
        for run, reason in cell.excluded:
            seed_marks.append(notes.add(f"{cell.label}: excluded, {reason}", run))
        for column, run, text in cell.remarks:
            mark = notes.add(f"{cell.label}: {text}", run)
            target = wall_marks if column == "wall" else seed_marks
            if mark not in target:
                target.append(mark)
        seed_marks = list(dict.fromkeys(seed_marks))
        n, total = len(cell.valid), len(cell.runs)
        seeds = (str(n) if n == total else f"{n} of {total}") + "".join(f" {m}" for m in seed_marks)
        walls = cell.wall_times
        if walls:
            wall = _fmt_seconds(math.fsum(walls) / len(walls))
            if len(walls) < n:
                wall += f" ({len(walls)} of {n})"
        else:
            wall = "–"
        wall += "".join(f" {m}" for m in wall_marks)
        steps = f"{cell.last_step:,}" if cell.last_step is not None else "–"
        rows.append(
            f"| {cell.algo} | {cell.variant or '–'} | {seeds} | {steps} "
            f"| {_mean_std(cell.finals)} | {_fmt_ci(cell.final_ci, n)} "
            f"| {_mean_std(cell.bests)} | {_fmt_ci(cell.best_ci, n)} | {wall} "
            f"| {_published_cell(cell.algo, task, sources)} |"
        )
    runs = [r for c in cells for r in c.valid]
    if any(p.task == task for p in PUBLISHED):
        published = (
            f"Published: the papers' numbers on D4RL's own `{task}-{version}` data, in their own "
            "column; the data differ, so compare levels, not decimals."
        )
    else:
        published = f"No paper table we transcribed has `{task}`."
    lines = [
        f"### {task} (`{dataset}`)",
        "",
        f"Ours: D4RL normalized score (0 = random, 100 = expert) on `{dataset}`, "
        f"{_data_source(dataset)}. {published}",
        "",
        *_data_stat_lines(report, dataset, runs, start),
        f"| algorithm | variant | seeds | steps | final ({_last_k_text(report, runs)}): "
        "mean ± std | final: 95% CI | best evaluation: mean ± std | best: 95% CI "
        f"| wall time / run | published (paper, D4RL -{version}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if notes.items:
        lines += ["Notes:", "", *notes.lines(), ""]
    if sources.items:
        lines += ["Published numbers:", "", *sources.lines(), ""]
    lines += _runs_details(cells, start)
    figure = _rel(report.curve_figure(dataset), start)
    lines += [f"![learning curves, {task}]({figure})", ""]
    return lines


def _runs_details(cells: Sequence[Cell], start: Path) -> list[str]:
    """A folded table of every run behind a dataset's table: its seed, final and best score (and
    the step of the best), last evaluation, wall time and directory; excluded runs say so."""
    rows = []
    for cell in cells:
        excluded = {id(run) for run, _ in cell.excluded}
        for run in sorted(cell.runs, key=_run_order):
            if id(run) in excluded:
                final, best = "excluded (see the notes)", "–"
            else:
                at = run.steps[run.scores.index(run.best)]
                final, best = _fmt(run.final), f"{_fmt(run.best)} ({at:,})"
            last = f"{run.last_step:,}" if run.last_step is not None else "–"
            wall = run.wall_seconds
            rows.append(
                f"| {cell.algo} | {cell.variant or '–'} "
                f"| {run.seed if run.seed is not None else '–'} | {final} | {best} | {last} "
                f"| {_fmt_seconds(wall) if wall is not None else '–'} "
                f"| `{_rel(run.path, start)}` |"
            )
    return [
        "<details><summary>Every run of this table "
        f"({len(rows)}): its final and best score, the step of its best evaluation, its "
        "directory</summary>",
        "",
        "| algorithm | variant | seed | final | best (at step) | last evaluation | wall time "
        "| run directory |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "</details>",
        "",
    ]


def _data_stat_lines(report: Report, dataset: str, runs: Sequence[Run], start: Path) -> list[str]:
    stat = report.data_stats.get(dataset)
    if stat is None:
        return []
    text = (
        f"The data itself: its episodes' mean return is {_fmt(stat.return_mean)}, normalized "
        f"**{_fmt(stat.score)}** (`{_rel(stat.source, start)}`; the dashed line in the curves): "
        "a run above it does better than the behavior that collected the data."
    )
    hashes = sorted({r.data_sha256 for r in runs if r.data_sha256})
    if stat.sha256 and hashes and hashes != [stat.sha256]:
        text += (
            f" Caution: the runs trained on data with sha256 {', '.join(h[:12] for h in hashes)}, "
            f"the statistics describe {stat.sha256[:12]}."
        )
    return [text, ""]


def _aggregate_section(report: Report, start: Path) -> list[str]:
    lines = [
        "## Aggregates across datasets",
        "",
        "Final scores per algorithm/variant over the datasets it has valid runs on: mean of the "
        "per-dataset means (rliable `aggregate_mean`) and interquartile mean of all runs × "
        "datasets (`aggregate_iqm`), with 95% stratified-bootstrap CIs over runs. Each dataset "
        "contributes the same number of runs (its valid runs with the lowest seeds). The "
        "published column averages the papers' numbers over the same datasets (D4RL's data).",
        "",
        "| algorithm | variant | datasets | runs per dataset | mean | mean: 95% CI | IQM "
        "| IQM: 95% CI | published mean over the same datasets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = _Notes("a", start)
    coverage_mark = ""
    if len({tuple(a.datasets) for a in report.aggregates}) > 1:
        coverage_mark = " " + notes.add(
            "the rows cover different datasets, so they are not comparable with each other: "
            + "; ".join(
                f"{a.label}: " + ", ".join(f"`{task_name(d)}`" for d in a.datasets)
                for a in report.aggregates
            )
        )
    for agg in report.aggregates:
        marks = []
        for dataset, count in agg.trimmed:
            marks.append(
                notes.add(
                    f"{agg.label}: {agg.runs_per_dataset} of the {count} valid runs on "
                    f"`{dataset}` are used (the fewest any of its datasets has)"
                )
            )
        tasks = [task_name(d) for d in agg.datasets]
        columns: dict[str, dict[str, float]] = {}
        for p in PUBLISHED:
            if p.algo == agg.algo:
                columns.setdefault(p.column, {})[p.task] = p.score
        published = []
        for column, scores in columns.items():
            if all(t in scores for t in tasks):
                value = math.fsum(scores[t] for t in tasks) / len(tasks)
                published.append(f"{_fmt(value)}" + (f" {column}" if len(columns) > 1 else ""))
        if not published:
            published = ["not published" if agg.algo in NOT_PUBLISHED else "–"]
        n = agg.runs_per_dataset
        ci_text = "1 run per dataset" if n == 1 else None
        lines.append(
            f"| {agg.algo} | {agg.variant or '–'} | {len(agg.datasets)}{coverage_mark} "
            f"| {n}{''.join(' ' + m for m in marks)} | {_fmt(agg.mean)} "
            f"| {ci_text or _fmt_ci(agg.mean_ci, n)} | {_fmt(agg.iqm)} "
            f"| {ci_text or _fmt_ci(agg.iqm_ci, n)} | {'; '.join(published)} |"
        )
    lines.append("")
    if notes.items:
        lines += ["Notes:", "", *notes.lines(), ""]
    lines += [
        "Performance profile: the fraction of all runs × datasets whose final score exceeds τ, "
        "with 95% CI bands (rliable `create_performance_profile`).",
        "",
        f"![performance profile]({_rel(report.profile_figure, start)})",
        "",
    ]
    return lines


def _claim_text(row: ClaimRow, notes: _Notes) -> str:
    mark = notes.add(f"{row.claim.statement}. Source: {row.claim.source}")
    if row.expected == 0:
        return f"{row.cell.label} not below {row.other.label} {mark}"
    task = task_name(row.dataset)

    def scores(algo: str) -> str:
        entries = published_for(algo, task)
        return ", ".join(
            _fmt(p.score)
            + (f" {p.column}" if len(entries) > 1 else "")
            + (" (unverified)" if p.unverified else "")
            for p in entries
        )

    side = "above" if row.expected > 0 else "below"
    return (
        f"{row.cell.label} {side} {row.other.label} (published {scores(row.cell.algo)} vs "
        f"{scores(row.other.algo)}) {mark}"
    )


def _claims_section(report: Report, start: Path) -> list[str]:
    n = report.claim_seeds
    notes = _Notes("c", start)
    rows = []
    for row in report.claims:
        a, b = len(row.cell.valid), len(row.other.valid)
        ci = f"[{_fmt(row.ci[0])}, {_fmt(row.ci[1])}]" if row.ci is not None else "–"
        verdict = f"**{row.verdict}**" if row.verdict == "contradicts" else row.verdict
        if row.verdict == "pending":
            verdict += f" ({n} seeds each needed)"
        rows.append(
            f"| {task_name(row.dataset)} | {_claim_text(row, notes)} | {row.diff:+.1f} | {ci} "
            f"| {a}, {b} | {verdict} |"
        )
    contradicted = [r for r in report.claims if r.verdict == "contradicts"]
    decided = [r for r in report.claims if r.verdict != "pending"]
    if contradicted:
        plain = (
            "Contradicted on our runs: "
            + "; ".join(
                # a contradiction puts the cell on the side opposite to the claim's
                f"{r.cell.label} is {'below' if r.expected >= 0 else 'above'} {r.other.label} "
                f"on `{task_name(r.dataset)}` ({r.diff:+.1f}, CI [{_fmt(r.ci[0])}, "
                f"{_fmt(r.ci[1])}])"
                for r in contradicted
            )
            + "."
        )
    elif decided:
        plain = f"No claim is contradicted by a comparison with {n} or more seeds per cell."
    else:
        plain = f"No comparison has {n} seeds in both cells yet: every verdict is pending."
    unresolved = [r for r in report.claims if r.verdict == "not resolved"]
    if unresolved:
        plain += (
            " Not confirmed on our runs (the interval covers zero, or no interval): "
            + "; ".join(
                f"{r.cell.label} {'above' if r.expected > 0 else 'below'} {r.other.label} on "
                f"`{task_name(r.dataset)}` ({r.diff:+.1f})"
                for r in unresolved
            )
            + "."
        )
    counts = ", ".join(
        f"{sum(r.verdict == v for r in report.claims)} {v}"
        for v in ("agrees", "contradicts", "not contradicted", "not resolved", "pending")
        if any(r.verdict == v for r in report.claims)
    )
    lines = [
        "## The papers' claims on our runs",
        "",
        "Each row compares two cells of one dataset by their final scores: the difference of the "
        "means (claiming algorithm minus the other) and its 95% Welch t interval (scipy "
        f"`ttest_ind(equal_var=False)`). A verdict needs {n} valid seeds in both cells; with "
        "fewer the row is pending. A published order (the papers' D4RL numbers) *agrees* when "
        "the interval lies on its side of zero, is *contradicted* when it lies on the other side "
        'and *not resolved* when it covers zero; a "not below" claim is contradicted only '
        "when the interval lies below zero. The papers' numbers are on D4RL's data at their "
        "budget; ours are on the datasets and budget of this page, so a contradiction says the "
        "claim does not hold there, not that a paper is wrong.",
        "",
        f"{plain} ({counts}.)",
        "",
        "| dataset | claim | ours: difference of final means | 95% CI (Welch t) "
        "| seeds | verdict |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Claims:",
        "",
        *notes.lines(),
        "",
    ]
    return lines


def render_markdown(report: Report) -> str:
    """The results page. Deterministic: sorted order, fixed bootstrap seed, no timestamps, and
    paths relative to the page's folder."""
    start = report.out.parent
    sources = ", ".join(f"`{_rel(s, start)}`" for s in report.sources)
    if report.forced_variant_keys:
        keys_text = "forced with --variant-keys"
    else:
        keys_text = "detected: keys that differ between runs of one algorithm on one dataset"
    variants = "; ".join(
        f"{algo}: {', '.join(f'`{k}`' for k in keys) if keys else 'none'}"
        for algo, keys in sorted(report.variant_keys.items())
    )
    k_text = (
        str(report.last_k)
        if report.last_k is not None
        else f"each run's eval.last_k, default {DEFAULT_LAST_K}"
    )
    lines = [
        "# Results",
        "",
        "<!-- Generated by python -m torchrl_sym.report; do not edit by hand. -->",
        "",
        f"Generated by `python -m torchrl_sym.report` from the run directories under {sources} "
        "(paths on this page are relative to it); `--check` fails when this page is out of date. "
        "What each column means: docs/report.md in the torchrl_sym repository.",
        "",
        f"- final: mean of a run's last k evaluations (k = {k_text}); "
        "best: its best evaluation; each evaluation is the mean normalized score of its episodes.",
        "- mean ± std (sample std) and 95% percentile-bootstrap CIs of the mean are over seeds "
        f"(rliable, {report.reps} resamples, seed {report.seed}); a cell with one seed has no CI.",
        "- steps: the cell's last evaluation step (global, counting every stage of the recipe).",
        f"- variants ({keys_text}): {variants}.",
        "- Runs with no evaluation, no or a non-finite normalized score, or that stop before the "
        "cell's last evaluation step are excluded from the statistics and listed in the notes.",
        "- Published numbers are the papers' on D4RL's data; ours are on the datasets named "
        "above each table. They are never mixed in one column.",
        "",
    ]
    if report.preamble:
        lines += [report.preamble, ""]
    lines += ["## Per dataset", ""]
    for dataset in report.datasets:
        lines += _dataset_section(report, dataset, start)
    if report.claims:
        lines += _claims_section(report, start)
    if report.aggregates:
        lines += _aggregate_section(report, start)
    if report.skipped:
        lines += ["## Directories not reported", ""]
        lines += [f"- `{_rel(path, start)}`: {reason}" for path, reason in report.skipped]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


# ---------------------------------------------------------------------------------- figures


def _colors(report: Report) -> dict[str, Any]:
    """One fixed color per algorithm/variant label, the same in every figure."""
    from matplotlib import colormaps

    labels = sorted({c.label for c in report.cells})
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {label: palette(i % palette.N) for i, label in enumerate(labels)}


def _curve(cell: Cell, *, reps: int, seed: int):
    """``(steps, mean, ci or None)`` over the cell's valid runs at the steps they all have
    (None if they share no step), counted from the start of the evaluated stage
    (:attr:`Run.stage_start`); the CI is rliable's per-step percentile bootstrap of the mean over
    runs."""
    import numpy as np
    from rliable import library

    # each run's evaluations by the step of its evaluated stage (see Run.stage_start)
    curves = [{s - r.stage_start: v for s, v in zip(r.steps, r.scores)} for r in cell.valid]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        return None
    matrix = np.asarray([[c[s] for s in common] for c in curves], dtype=np.float64)[
        :, None, :
    ]  # [runs, 1 task, steps]
    steps = np.asarray(common)
    if len(cell.valid) < 2:
        return steps, matrix[0, 0], None
    with _seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates(
            {"c": matrix}, lambda x: x.mean(axis=(0, 1)), reps=reps
        )
    return steps, points["c"], intervals["c"]


def _new_figure(width: float, height: float):
    # An Agg canvas of its own: no pyplot state, no backend switch in the caller's process.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def write_figures(report: Report) -> list[Path]:
    """Writes one learning-curve PNG per dataset and the performance-profile PNG into
    ``report.figures_dir``; returns their paths."""
    import numpy as np

    report.figures_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(report)
    written = []
    for dataset in report.datasets:
        figure = _new_figure(7.0, 4.2)
        ax = figure.add_subplot()
        for cell in report.cells_of(dataset):
            color = colors[cell.label]
            for run, _ in cell.excluded:  # excluded runs: thin dotted lines, for diagnosis
                offset = run.stage_start
                finite = [(s - offset, v) for s, v in zip(run.steps, run.scores) if v is not None]
                finite = [(s, v) for s, v in finite if math.isfinite(v)]
                if finite:
                    xs, ys = zip(*finite)
                    ax.plot(xs, ys, color=color, linestyle=":", linewidth=0.8, alpha=0.7)
            if not cell.valid:
                continue
            curve = _curve(cell, reps=report.reps, seed=report.seed)
            if curve is None:
                continue
            steps, mean, ci = curve
            n = len(cell.valid)
            seeds = "1 seed" if n == 1 else f"{n} seeds"
            ax.plot(steps, mean, color=color, linewidth=1.8, label=f"{cell.label}, {seeds}")
            if ci is not None:
                ax.fill_between(steps, ci[0], ci[1], color=color, alpha=0.2, linewidth=0)
        if any(c.excluded for c in report.cells_of(dataset)):
            ax.plot([], [], color="gray", linestyle=":", label="excluded run (see the notes)")
        stat = report.data_stats.get(dataset)
        if stat is not None:
            ax.axhline(stat.score, color="black", linestyle="--", linewidth=1.0,
                       label=f"the data itself ({_fmt(stat.score)})")  # fmt: skip
        ax.set_title(f"{task_name(dataset)} ({dataset}): mean and 95% CI over seeds", fontsize=10)
        ax.set_xlabel("training step of the evaluated stage (pretraining stages not counted)")
        ax.set_ylabel("normalized score")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        path = report.curve_figure(dataset)
        figure.savefig(path, dpi=110)
        written.append(path)

    if report.aggregates:
        from rliable import library, plot_utils

        scores = {a.label: a.matrix for a in report.aggregates}
        values = np.concatenate([m.ravel() for m in scores.values()])
        low, high = min(0.0, float(values.min())), max(100.0, float(values.max()))
        taus = np.linspace(low, high, 101)
        with _seeded_global_rng(report.seed):
            profiles, cis = library.create_performance_profile(scores, taus, reps=report.reps)
        figure = _new_figure(7.0, 4.2)
        ax = figure.add_subplot()
        plot_utils.plot_performance_profiles(
            profiles,
            taus,
            performance_profile_cis=cis,
            colors={label: colors[label] for label in scores},
            ax=ax,
            xlabel=r"final normalized score ($\tau$)",
            ylabel=r"fraction of runs with score $> \tau$",
            labelsize="medium",
            ticklabelsize="small",
        )
        ax.legend(fontsize=8, loc="lower left")
        figure.savefig(report.profile_figure, dpi=110)
        written.append(report.profile_figure)
    return written


# ---------------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="torchrl-sym-report",
        description=(
            "Results page (markdown + PNG figures) from run directories: a table per dataset, "
            "aggregates across datasets, learning curves and a performance profile."
        ),
    )
    parser.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="run directories, or folders searched recursively for them (outputs/, multirun/)",
    )
    parser.add_argument("--out", default="docs/results.md", help="the markdown page to write")
    parser.add_argument(
        "--figures-dir",
        default=None,
        help="where the PNGs go (default: <out folder>/<out stem>/, e.g. docs/results/)",
    )
    parser.add_argument(
        "--last-k",
        type=int,
        default=None,
        help="final score = mean of the last K evaluations (default: each run's eval.last_k, else 10)",
    )
    parser.add_argument(
        "--variant-keys",
        default=None,
        help="comma-separated config keys that define variants, e.g. sfac.divergence "
        "(default: detected, the keys that differ between runs of one algorithm on one dataset)",
    )
    parser.add_argument(
        "--ignore-keys",
        default="",
        help="comma-separated config keys (or prefix.*) never treated as variants, besides "
        + ", ".join(IGNORED_KEYS),
    )
    parser.add_argument(
        "--preamble",
        default=None,
        metavar="FILE",
        help="a markdown file shown before the tables (the protocol and the commands of the runs)",
    )
    parser.add_argument(
        "--data-stats",
        default=None,
        metavar="FILE",
        help="JSON of the datasets' own returns and reference scores (docs/datasets.json): "
        "the data's normalized score under each table and as a line in its curves",
    )
    parser.add_argument(
        "--claim-seeds",
        type=int,
        default=DEFAULT_CLAIM_SEEDS,
        help="valid runs both cells of a paper claim need before it gets a verdict "
        "(default %(default)s, the protocol's seeds)",
    )
    parser.add_argument(
        "--reps", type=int, default=DEFAULT_REPS, help="bootstrap resamples (default %(default)s)"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed (default %(default)s)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if --out differs from what would be generated (or a figure "
        "it links is missing)",
    )
    return parser


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [k.strip() for k in text.split(",") if k.strip()]


def _regenerate_command(args: argparse.Namespace) -> str:
    parts = ["python -m torchrl_sym.report", *args.dirs, "--out", args.out]
    for flag, value in (
        ("--figures-dir", args.figures_dir),
        ("--last-k", args.last_k),
        ("--variant-keys", args.variant_keys),
        ("--ignore-keys", args.ignore_keys or None),
        ("--preamble", args.preamble),
        ("--data-stats", args.data_stats),
        ("--reps", None if args.reps == DEFAULT_REPS else args.reps),
        ("--seed", None if args.seed == DEFAULT_SEED else args.seed),
        ("--claim-seeds", None if args.claim_seeds == DEFAULT_CLAIM_SEEDS else args.claim_seeds),
    ):
        if value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def _linked_files(text: str, start: Path) -> list[Path]:
    return [start / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)]


def main(argv: Sequence[str] | None = None) -> int:
    """``torchrl-sym-report DIR... [--out PAGE] [--check] ...``; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.last_k is not None and args.last_k < 1:
        print(f"--last-k must be >= 1, got {args.last_k}", file=sys.stderr)
        return 2
    if args.claim_seeds < 2:
        print(
            f"--claim-seeds must be >= 2 (a confidence interval needs 2 runs per cell), "
            f"got {args.claim_seeds}",
            file=sys.stderr,
        )
        return 2
    try:
        report = build_report(
            args.dirs,
            out=args.out,
            figures_dir=args.figures_dir,
            last_k=args.last_k,
            variant_keys=_split(args.variant_keys),
            ignore_keys=_split(args.ignore_keys) or (),
            reps=args.reps,
            seed=args.seed,
            preamble=args.preamble,
            claim_seeds=args.claim_seeds,
            data_stats=args.data_stats,
        )
    except (FileNotFoundError, DataStatsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not report.cells:
        print(
            f"error: no run directories under {', '.join(args.dirs)}: a run directory holds a "
            "config.yaml with algo and dataset (written by recipes/<algo>.py).",
            file=sys.stderr,
        )
        return 2
    text = render_markdown(report)
    out = Path(args.out)
    if args.check:
        problems = []
        if not out.is_file():
            problems.append(f"{out} does not exist")
        else:
            current = out.read_text()
            if current != text:
                old, new = current.splitlines(), text.splitlines()
                line = next(
                    (i for i, (a, b) in enumerate(zip(old, new)) if a != b), min(len(old), len(new))
                )
                problems.append(
                    f"{out} is out of date with the runs (first difference at line {line + 1}: "
                    f"{(old[line] if line < len(old) else '<end of file>')[:100]!r} on disk, "
                    f"{(new[line] if line < len(new) else '<end of file>')[:100]!r} generated)"
                )
            missing = [p for p in _linked_files(current, out.parent) if not p.is_file()]
            if missing:
                problems.append(
                    "figures it links are missing: " + ", ".join(str(p) for p in missing)
                )
        if problems:
            print(
                "; ".join(problems) + f". Regenerate it: {_regenerate_command(args)}",
                file=sys.stderr,
            )
            return 1
        print(f"{out} is up to date ({len(report.cells)} cells)")
        return 0
    write_figures(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    n_runs = sum(len(c.runs) for c in report.cells)
    print(
        f"wrote {out} ({len(report.datasets)} datasets, {len(report.cells)} cells, {n_runs} runs) "
        f"and figures in {report.figures_dir}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
