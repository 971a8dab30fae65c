"""Cells: the runs of one dataset × algorithm × variant, the checks that exclude a run from
its cell's statistics, the aggregates across datasets, the datasets' own level
(``--data-stats``), and :func:`build_report`, which reads every run and computes every number the
page shows."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torchrl_sym.report._text import _fmt, _rel
from torchrl_sym.report.claims import DEFAULT_CLAIM_SEEDS, claim_rows
from torchrl_sym.report.runs import (
    IGNORED_KEYS,
    Run,
    _ignored,
    _policy_diagnostics_text,
    _resumed_text,
    _run_order,
    _show,
    find_run_dirs,
    load_run,
)
from torchrl_sym.report.stats import (
    DEFAULT_REPS,
    DEFAULT_SEED,
    _aggregate_estimates,
    interval_kind,
    mean_ci,
)
from torchrl_sym.report.tuning import Sweep, find_sweeps, sweep_dirs
from torchrl_sym.tasks import dataset_kind, task_name

if TYPE_CHECKING:
    from torchrl_sym.report.claims import ClaimRow

__all__ = [
    "Aggregate",
    "Cell",
    "DataStat",
    "DataStatsError",
    "Report",
    "build_report",
    "load_data_stats",
]


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
    def ci_kind(self) -> str:
        """``"t"``, ``"bootstrap"`` or ``"none"``: the kind of its CIs (:func:`interval_kind`)."""
        return interval_kind(len(self.valid))

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
    # datasets left out: fewer valid runs than the report's claim_seeds while the row has other
    # datasets with that many (a cell being built seed by seed), and their count
    left_out: list[tuple[str, int]] = field(default_factory=list)

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
    # (data kind, its aggregates) where the page spans more than one kind (medium, medium-replay…)
    kind_aggregates: list[tuple[str | None, list[Aggregate]]] = field(default_factory=list)
    claim_seeds: int = DEFAULT_CLAIM_SEEDS
    data_stats: dict[str, DataStat] = field(default_factory=dict)
    sweeps: list[Sweep] = field(default_factory=list)  # the tuning protocol's sweeps (tuning.py)

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


# Keys that make a variant whenever a run of the algorithm sets them off their default, even where
# every run of a dataset agrees: a cell of bf16 runs, or of runs with the tuning protocol's
# hyperparameters, is labelled so, never shown as the plain (fp32, published) row.
LABELLED_UNLESS_DEFAULT = {"precision": "fp32", "hparams": "published"}


def _variant_keys(
    runs: Sequence[Run], forced: Sequence[str] | None, ignore: Sequence[str]
) -> dict[str, list[str]]:
    """Per algorithm, the config keys that tell its variants apart.

    Detected: the keys whose values differ between runs of the algorithm on one dataset
    (union over datasets), other than the seed and :data:`IGNORED_KEYS`; a key that differs only
    between datasets (a per-task setting) is not a variant, nor is a key that some configs lack
    while all that have it agree (a setting added to the recipes after the older runs). A key of
    :data:`LABELLED_UNLESS_DEFAULT` that any run sets off its default is always one. Forced:
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
        for key, default in LABELLED_UNLESS_DEFAULT.items():  # a bf16 or tuned row says so
            if not _ignored(key, ignore) and any(
                r.config.get(key, default) != default for r in algo_runs
            ):
                found.add(key)
        keys[algo] = sorted(found)
    return keys


def _variant_label(run: Run, keys: Sequence[str]) -> str:
    def value(key: str) -> str:
        if key in run.config:
            return _show(run.config[key])
        # a run older than the key ran what is now its default
        return LABELLED_UNLESS_DEFAULT.get(key, "<unset>")

    return ", ".join(f"{k}={value(k)}" for k in keys)


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
    tuning: Sequence[str | Path] | None = None,
) -> Report:
    """Finds and reads the runs under ``dirs``, groups them and computes every statistic the
    page shows (see the module docstring). ``preamble``: a markdown file whose text the page
    shows before its tables (the protocol and the commands that produced the runs). ``out`` is
    where the page goes (paths on it are written relative to its folder); ``figures_dir``
    defaults to ``<out folder>/<out stem>/``. ``claim_seeds``: the valid runs both cells of a
    claim need before it gets a verdict (:func:`claim_rows`). ``data_stats``: a JSON file of the
    datasets' own returns (:func:`load_data_stats`), shown under each table and in its curves.
    ``tuning``: folders of the tuning protocol's sweeps (``selection_*.json``); default, the
    ``tuning`` folder beside each of ``dirs`` where there is one (:func:`sweep_dirs`).
    """
    if claim_seeds < 2:
        raise ValueError(
            f"claim_seeds must be >= 2 (a confidence interval needs 2 runs per cell), got {claim_seeds}"
        )
    stats = load_data_stats(data_stats) if data_stats is not None else {}  # fail before the work

    out = Path(out)
    figures_dir = Path(figures_dir) if figures_dir is not None else out.parent / out.stem
    paths, skipped = find_run_dirs(dirs)
    sweeps, unread = find_sweeps(sweep_dirs(dirs, tuning))
    skipped += unread
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
            cell.final_ci = mean_ci(cell.finals, reps=reps, seed=seed)
            cell.best_ci = mean_ci(cell.bests, reps=reps, seed=seed)
        cells.append(cell)

    aggregates = _aggregates(cells, reps=reps, seed=seed, min_runs=claim_seeds)
    kinds = sorted({dataset_kind(c.dataset) for c in cells if c.valid}, key=_kind_order)
    kind_aggregates = []
    if len(kinds) > 1:  # a view per data kind only where the page spans more than one
        for kind in kinds:
            group = [c for c in cells if dataset_kind(c.dataset) == kind]
            kind_aggregates.append(
                (kind, _aggregates(group, reps=reps, seed=seed, min_runs=claim_seeds))
            )
    return Report(
        sweeps=sweeps,
        data_stats=stats,
        claims=claim_rows(cells, claim_seeds=claim_seeds),
        claim_seeds=claim_seeds,
        cells=cells,
        aggregates=aggregates,
        kind_aggregates=kind_aggregates,
        skipped=sorted(skipped),
        sources=sorted({Path(d).resolve() for d in dirs}),
        out=out,
        figures_dir=figures_dir,
        last_k=last_k,
        reps=reps,
        seed=seed,
        variant_keys=keys,
        forced_variant_keys=variant_keys is not None,
        preamble=_read_preamble(preamble, page_dir=out.parent),
    )


# a markdown link or image target: ](target) or ](target "title")
_LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def _rebase_links(text: str, source_dir: Path, page_dir: Path) -> str:
    """``text`` (markdown written in ``source_dir``) with its relative link and image targets
    rewritten relative to ``page_dir``, so that a link works both where the file lives and on the
    page that shows it. Absolute paths, URLs, anchors and fenced code blocks are left alone."""

    def rebase(match: re.Match) -> str:
        target = match.group(2)
        if target.startswith(("#", "/")) or _SCHEME.match(target):
            return match.group(0)
        path, hash_, anchor = target.partition("#")
        new = _rel(source_dir / path, page_dir) + hash_ + anchor
        return match.group(1) + new + match.group(3)

    out, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append(line if fenced else _LINK.sub(rebase, line))
    return "\n".join(out)


def _read_preamble(path: str | Path | None, *, page_dir: Path | None = None) -> str:
    """The text of ``--preamble``, its relative links rebased onto the page's folder
    (:func:`_rebase_links`) when ``page_dir`` is given."""
    if path is None:
        return ""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"--preamble {path}: no such file (a markdown file to show before the tables)"
        )
    text = path.read_text().strip()
    if page_dir is not None:
        text = _rebase_links(text, path.parent, page_dir)
    return text


def _kind_order(kind: str | None) -> tuple[int, str]:
    order = ("medium", "medium-replay", "medium-expert")
    return (order.index(kind) if kind in order else len(order), kind or "~")


def _aggregates(
    cells: Sequence[Cell], *, reps: int, seed: int, min_runs: int = DEFAULT_CLAIM_SEEDS
) -> list[Aggregate]:
    """One :class:`Aggregate` per algorithm/variant over the datasets of ``cells`` where it has
    valid runs: each dataset contributes the same number of runs (its lowest seeds). Where some
    of a row's cells have ``min_runs`` valid runs (the protocol's seeds, ``claim_seeds``), cells
    with fewer are left out (and named) instead of cutting every dataset down to their count: a
    cell built seed by seed does not shrink the row's other datasets to one run each."""
    import numpy as np

    aggregates = []
    by_group: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        if cell.valid:
            by_group.setdefault((cell.algo, cell.variant), []).append(cell)
    for (algo, variant), group_cells in sorted(by_group.items()):
        left_out = []
        if any(len(c.valid) >= min_runs for c in group_cells):
            left_out = [(c.dataset, len(c.valid)) for c in group_cells if len(c.valid) < min_runs]
            group_cells = [c for c in group_cells if len(c.valid) >= min_runs]
        n = min(len(c.valid) for c in group_cells)
        columns, trimmed = [], []
        for c in group_cells:
            columns.append([r.final for r in sorted(c.valid, key=_run_order)[:n]])
            if len(c.valid) > n:
                trimmed.append((c.dataset, len(c.valid)))
        matrix = np.asarray(columns, dtype=np.float64).T  # [runs, datasets]
        (mean, iqm), (agg_mean_ci, agg_iqm_ci) = _aggregate_estimates(matrix, reps=reps, seed=seed)
        aggregates.append(
            Aggregate(
                algo,
                variant,
                [c.dataset for c in group_cells],
                n,
                matrix,
                mean,
                iqm,
                agg_mean_ci if n >= 2 else None,
                agg_iqm_ci if n >= 2 else None,
                trimmed,
                left_out,
            )
        )
    return aggregates
