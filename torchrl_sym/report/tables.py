"""The markdown page: the legend, the preamble, a table per dataset with its notes, published
numbers and folded run list, the claims section and the aggregates (:func:`render_markdown`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from torchrl_sym.published import NOT_PUBLISHED, PUBLISHED, published_for
from torchrl_sym.report._text import _fmt, _fmt_ci, _fmt_seconds, _mean_std, _Notes, _rel
from torchrl_sym.report.cells import Aggregate, Cell, Report
from torchrl_sym.report.claims import _claims_section
from torchrl_sym.report.runs import DEFAULT_LAST_K, Run, _run_order
from torchrl_sym.report.stats import T_INTERVAL_BELOW
from torchrl_sym.report.tuning import tuning_section
from torchrl_sym.tasks import dataset_kind, task_name

__all__ = ["render_markdown"]


def _data_source(dataset: str) -> str:
    if dataset.startswith("torchrl_sym/"):
        return "D4RL-style data generated locally by torchrl_sym, not D4RL's data"
    if dataset.endswith((".hdf5", ".h5")):
        return "a D4RL hdf5 file"
    if dataset.startswith("toy2d/"):
        return "a 2-D toy bandit"
    return "a Minari dataset"


def _kind_lines(dataset: str, runs: Sequence[Run]) -> list[str]:
    """What a generated medium-replay or medium-expert dataset is, beside D4RL's."""
    kind = dataset_kind(dataset)
    if not dataset.startswith("torchrl_sym/") or kind not in ("medium-replay", "medium-expert"):
        return []
    sizes = sorted({r.data_size for r in runs if r.data_size})
    size = " and ".join(f"{t:,} transitions in {e:,} episodes" for t, e in sizes) if sizes else None
    if kind == "medium-replay":
        text = (
            "What this data is: the replay buffer of our CrossQ learner from its start up to the "
            "medium snapshot (the policy of the medium dataset)"
            + (f", {size}" if size else "")
            + "; D4RL's medium-replay holds 200k-400k transitions from SAC's, so ours is "
            "smaller and from another learner."
        )
    else:
        family, version = dataset.split("/")[1], dataset.rsplit("-", 1)[-1]
        text = (
            f"What this data is: `torchrl_sym/{family}/medium-{version}` followed by "
            f"`torchrl_sym/{family}/expert-{version}` (the same number of transitions each, "
            "collected with the same seed)"
            + (f", {size}" if size else "")
            + ", as D4RL's medium-expert joins its medium and expert datasets."
        )
    return [text, ""]


def _d4rl_version(task: str) -> str:
    return "v0" if task.startswith("antmaze") else "v2"


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
        f"{_data_source(dataset)}. {published}{_ci_sentence(cells)}",
        "",
        *_data_stat_lines(report, dataset, cells, start),
        *_kind_lines(dataset, runs),
        f"| algorithm | variant | seeds | steps | final ({_last_k_text(report, runs)}): "
        "mean ± std | final: 95% CI | best evaluation: mean ± std | best: 95% CI "
        f"| wall time / run | published (paper, D4RL -{version}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        *_commit_lines(cells),
        *_start_state_lines(cells),
    ]
    if notes.items:
        lines += ["Notes:", "", *notes.lines(), ""]
    if sources.items:
        lines += ["Published numbers:", "", *sources.lines(), ""]
    lines += _runs_details(cells, start)
    figure = _rel(report.curve_figure(dataset), start)
    lines += [f"![learning curves, {task}]({figure})", ""]
    return lines


def _ci_sentence(cells: Sequence[Cell]) -> str:
    """Which interval the table's CI columns hold (:func:`~torchrl_sym.report.stats.mean_ci`)."""
    kinds = {c.ci_kind for c in cells} - {"none"}
    t_text = (
        f"Student t intervals of the mean (fewer than {T_INTERVAL_BELOW} seeds: a bootstrap over "
        "so few values is only their range)"
    )
    if kinds == {"t"}:
        return f" The 95% CIs are {t_text}."
    if kinds == {"bootstrap"}:
        return " The 95% CIs are rliable's percentile bootstraps of the mean."
    if kinds:
        return (
            f" The 95% CIs are {t_text} for rows with fewer than {T_INTERVAL_BELOW} seeds, "
            "rliable's percentile bootstraps of the mean for the others."
        )
    return ""


def _row_summary(runs: Sequence[Run], token: Callable[[Run], str]) -> str:
    """One row's runs described by ``token``: the token when they agree, else each token with
    how many of the runs have it."""
    counts = Counter(token(r) for r in runs)
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{t} ({c} of {len(runs)} runs)" for t, c in sorted(counts.items()))


def _by_rows(cells: Sequence[Cell], token: Callable[[Run], str]) -> str:
    """``every row: X`` or ``awac, iql: X; sfac (…): Y``: the rows (their valid runs) grouped by
    :func:`_row_summary`."""
    groups: dict[str, list[str]] = {}
    for cell in cells:
        if cell.valid:
            groups.setdefault(_row_summary(cell.valid, token), []).append(cell.label)
    if len(groups) == 1:
        return f"every row: {next(iter(groups))}"
    return "; ".join(f"{', '.join(labels)}: {text}" for text, labels in groups.items())


NOT_RECORDED = "not recorded"


def _commit(run: Run) -> str:
    """The short commit of a run's ``provenance`` (``dirty`` marked), or :data:`NOT_RECORDED`."""
    block = run.provenance
    if block is None:
        return NOT_RECORDED
    commit = block.get("commit")
    if not isinstance(commit, str) or not commit:
        return "no commit (not run from a git checkout)"
    dirty = block.get("dirty")
    return f"`{commit[:7]}`" + (" dirty" if dirty is True else " (dirty?)" if dirty is None else "")


def _commit_lines(cells: Sequence[Cell]) -> list[str]:
    """The commits that produced the table's rows (``summary.json`` ``provenance``)."""
    if not any(c.valid for c in cells):
        return []
    text = (
        "Code: the commit of each row's runs (short sha from `summary.json` `provenance`; "
        '"dirty": the checkout had uncommitted changes; "not recorded": a summary.json '
        f"written before runs recorded their provenance): {_by_rows(cells, _commit)}."
    )
    return [text, ""]


def _start_state_lines(cells: Sequence[Cell]) -> list[str]:
    """Which rows were evaluated from the legacy start states (``eval.start_states``)."""
    runs = [r for c in cells for r in c.valid]
    if not runs:
        return []
    text = (
        "Evaluation start states (`eval.start_states` in config.yaml): "
        + _by_rows(cells, lambda r: r.start_states)
        + "."
    )
    legacy = [r for r in runs if r.start_states == "legacy"]
    disjoint = any(r.start_states == "disjoint" for r in runs)
    if legacy:
        text += (
            " Legacy is the protocol before disjoint start states (a config.yaml without "
            "`eval.start_states` predates them): episode i of training seed s starts from "
            "environment seed s + 100 + i, so neighbouring seeds share most start states"
        )
        seeds = sorted({r.seed for r in legacy if r.seed is not None})
        episodes = {r.config.get("eval.episodes") for r in legacy}
        if len(seeds) > 1 and len(episodes) == 1:
            (n,) = episodes
            if isinstance(n, int) and not isinstance(n, bool):
                shared = max(0, n - (seeds[-1] - seeds[0]))
                text += (
                    f" (seeds {seeds[0]}–{seeds[-1]} of this table share {shared} of their "
                    f"{n} start states)"
                )
        text += "."
    text += (
        " Disjoint"
        + (" (every run started since)" if not disjoint else "")
        + ": episode i of training seed s starts from environment seed 10⁹ + 10⁵·s + i, and no "
        "two seeds share a start state."
    )
    return [text, ""]


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


def _data_stat_lines(report: Report, dataset: str, cells: Sequence[Cell], start: Path) -> list[str]:
    stat = report.data_stats.get(dataset)
    if stat is None:
        return []
    text = (
        f"The data itself: its episodes' mean return is {_fmt(stat.return_mean)}, normalized "
        f"**{_fmt(stat.score)}** (`{_rel(stat.source, start)}`; the dashed line in the curves): "
        "a run above it does better than the behavior that collected the data."
    )
    runs = [r for c in cells for r in c.runs]
    hashes = sorted({r.data_sha256 for r in runs if r.data_sha256})
    if stat.sha256 and hashes and hashes != [stat.sha256]:
        if len(hashes) == 1:
            text += (
                f" Caution: the runs trained on data with sha256 {hashes[0][:12]}, the "
                f"statistics describe {stat.sha256[:12]}."
            )
        else:  # a table whose rows trained on different bits of one dataset id: say which
            text += (
                f" Caution: the statistics describe the data with sha256 {stat.sha256[:12]}, and "
                "the rows trained on data with sha256 "
                + _by_rows(cells, lambda r: (r.data_sha256 or "not recorded")[:12])
                + " (the same generator and policy on other processors: docs/datasets.md, "
                '"What is reproducible").'
            )
    return [text, ""]


def _few_runs_text(report: Report) -> str:
    few = [a for a in report.aggregates if 2 <= a.runs_per_dataset < T_INTERVAL_BELOW]
    if not few:
        return ""
    return (
        f" With fewer than {T_INTERVAL_BELOW} runs per dataset (rows with "
        f"{', '.join(sorted({str(a.runs_per_dataset) for a in few}))}) these bootstrap CIs are "
        "narrow: a bootstrap never leaves the range of the values it resamples, so read them as "
        "descriptive, not as the uncertainty of the mean."
    )


def _aggregate_rows(aggregates: Sequence[Aggregate], notes: _Notes) -> list[str]:
    """The table rows of ``aggregates`` (their notes go to ``notes``)."""
    lines: list[str] = []
    coverage_mark = ""
    if len({tuple(a.datasets) for a in aggregates}) > 1:
        coverage_mark = " " + notes.add(
            "the rows cover different datasets, so they are not comparable with each other: "
            + "; ".join(
                f"{a.label}: " + ", ".join(f"`{task_name(d)}`" for d in a.datasets)
                for a in aggregates
            )
        )
    for agg in aggregates:
        marks = []
        for dataset, count in agg.trimmed:
            marks.append(
                notes.add(
                    f"{agg.label}: {agg.runs_per_dataset} of the {count} valid runs on "
                    f"`{dataset}` are used (the fewest any of its datasets has)"
                )
            )
        for dataset, count in agg.left_out:
            marks.append(
                notes.add(
                    f"{agg.label}: `{dataset}` is left out, with {count} valid "
                    f"run{'s' if count != 1 else ''} (an aggregate takes a row's cells with at "
                    "least as many runs as a claim's verdict needs, where it has any)"
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
    return lines


def _aggregate_section(report: Report, start: Path) -> list[str]:
    lines = [
        "## Aggregates across datasets",
        "",
        "Final scores per algorithm/variant over the datasets it has valid runs on: mean of the "
        "per-dataset means (rliable `aggregate_mean`) and interquartile mean of all runs × "
        "datasets (`aggregate_iqm`), with 95% stratified-bootstrap CIs over runs. Each dataset "
        "contributes the same number of runs (its valid runs with the lowest seeds); where a "
        f"row has cells of at least {report.claim_seeds} runs (the seeds a claim's verdict "
        "needs), its cells with fewer are left out and named. The "
        "published column averages the papers' numbers over the same datasets (D4RL's data)."
        + _few_runs_text(report),
        "",
        "| algorithm | variant | datasets | runs per dataset | mean | mean: 95% CI | IQM "
        "| IQM: 95% CI | published mean over the same datasets |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = _Notes("a", start)
    lines += _aggregate_rows(report.aggregates, notes)
    lines.append("")
    if notes.items:
        lines += ["Notes:", "", *notes.lines(), ""]
    lines += _kind_section(report, start)
    lines += [
        "Performance profile: the fraction of all runs × datasets whose final score exceeds τ, "
        "with 95% CI bands (rliable `create_performance_profile`).",
        "",
        f"![performance profile]({_rel(report.profile_figure, start)})",
        "",
    ]
    return lines


def _kind_section(report: Report, start: Path) -> list[str]:
    """The aggregates again per D4RL data kind (medium, medium-replay, medium-expert), where the
    page spans more than one kind."""
    if not report.kind_aggregates:
        return []
    lines = [
        "### Per data kind",
        "",
        "The same aggregates over the datasets of one kind at a time (the kind is read from the "
        "dataset's name; other data under `other`).",
        "",
    ]
    for kind, aggregates in report.kind_aggregates:
        notes = _Notes(f"{kind or 'other'} ", start)
        lines += [
            f"**{kind or 'other'}**",
            "",
            "| algorithm | variant | datasets | runs per dataset | mean | mean: 95% CI | IQM "
            "| IQM: 95% CI | published mean over the same datasets |",
            "|---|---|---|---|---|---|---|---|---|",
            *_aggregate_rows(aggregates, notes),
            "",
        ]
        if notes.items:
            lines += ["Notes:", "", *notes.lines(), ""]
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
        "- mean ± std (sample std) and the 95% CIs of the mean are over seeds. With fewer than "
        f"{T_INTERVAL_BELOW} seeds the CI is a Student t interval, mean ± t(0.975, n − 1) · s / √n "
        "(a percentile bootstrap over 3 values is only their min and max); with "
        f"{T_INTERVAL_BELOW} or more, rliable's percentile bootstrap ({report.reps} resamples, "
        f"seed {report.seed}). A cell with one seed has no CI. The curves' bands follow the same "
        "rule.",
        "- steps: the cell's last evaluation step (global, counting every stage of the recipe).",
        "- Under each table: the commits that produced its rows (`summary.json` `provenance`) "
        "and the evaluation start states they used (`eval.start_states`; legacy for runs that "
        "predate it).",
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
    lines += tuning_section(report.sweeps, start)
    if report.claims:
        lines += _claims_section(report, start)
    if report.aggregates:
        lines += _aggregate_section(report, start)
    if report.skipped:
        lines += ["## Directories not reported", ""]
        lines += [f"- `{_rel(path, start)}`: {reason}" for path, reason in report.skipped]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"
