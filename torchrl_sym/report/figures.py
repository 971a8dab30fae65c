"""The figures: one learning-curve PNG per dataset and the performance profile, drawn on
matplotlib Agg canvases of their own (no pyplot state).

A dataset's curves are small multiples: one panel per row of its table (algorithm × variant),
each with the row's mean over seeds, the 95% CI band of that mean (the rule of the tables:
Student t below :data:`~torchrl_sym.report.stats.T_INTERVAL_BELOW` seeds, else rliable's
bootstrap), every seed as a thin line, and two references in every panel: the data's own level
(``--data-stats``, black dashed) and the best baseline's mean curve (gray dash-dot). The panels
share their axes; the y-range is set by what they draw (means, single runs, references; not the
CI bands), clamped to :data:`Y_WINDOW`, so one diverged row cannot flatten the others (a mean
curve that leaves the window says so in its panel). The legend sits below the panels, outside
every axes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torchrl_sym.report._deps import require
from torchrl_sym.report._text import _fmt
from torchrl_sym.report.cells import Cell, Report
from torchrl_sym.report.stats import T_INTERVAL_BELOW, _seeded_global_rng
from torchrl_sym.tasks import task_name

__all__ = ["BASELINES", "Y_WINDOW", "write_figures"]

BASELINES = ("awac", "iql", "sql", "td3bc", "xql")
"""The baselines the papers compare against (docs/baselines.md): the best of them on a dataset
(highest mean final score) is drawn in every panel of its curves."""
Y_WINDOW = (-25.0, 125.0)
"""The widest y-range of the curves (normalized score): a quarter of the random-to-expert scale
beyond either end. A mean curve outside it is named in its panel, not drawn to scale."""
PANEL_COLUMNS = 4
BEST_STYLE = {"color": "0.35", "linestyle": "-.", "linewidth": 1.1}


def _colors(report: Report) -> dict[str, Any]:
    """One fixed color per algorithm/variant label, the same in every figure (tab10 or tab20
    without their grays, which the references use)."""
    colormaps = require("matplotlib").colormaps

    labels = sorted({c.label for c in report.cells})
    if len(labels) <= 9:
        palette = [colormaps["tab10"](i) for i in range(10) if i != 7]
    else:
        palette = [colormaps["tab20"](i) for i in range(20) if i not in (14, 15)]
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _stage_curves(cell: Cell) -> list[dict[int, float]]:
    """Each valid run's evaluations keyed by the step of its evaluated stage
    (:attr:`~torchrl_sym.report.runs.Run.stage_start`)."""
    return [{s - r.stage_start: v for s, v in zip(r.steps, r.scores)} for r in cell.valid]


def _curve(cell: Cell, *, reps: int, seed: int):
    """``(steps, mean, ci or None)`` over the cell's valid runs at the steps they all have
    (None if they share no step), counted from the start of the evaluated stage
    (:attr:`Run.stage_start`); ``ci`` (``[2, steps]``) is the per-step 95% CI of the mean over
    runs by the tables' rule: a Student t interval below ``T_INTERVAL_BELOW`` runs, else
    rliable's percentile bootstrap."""
    import numpy as np

    curves = _stage_curves(cell)
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        return None
    matrix = np.asarray([[c[s] for s in common] for c in curves], dtype=np.float64)[
        :, None, :
    ]  # [runs, 1 task, steps]
    steps = np.asarray(common)
    n = len(cell.valid)
    if n < 2:
        return steps, matrix[0, 0], None
    if n < T_INTERVAL_BELOW:
        stats = require("scipy.stats")
        values = matrix[:, 0, :]
        mean = values.mean(axis=0)
        half = stats.t.ppf(0.975, n - 1) * values.std(axis=0, ddof=1) / math.sqrt(n)
        return steps, mean, np.stack([mean - half, mean + half])
    library = require("rliable.library")
    with _seeded_global_rng(seed):
        points, intervals = library.get_interval_estimates(
            {"c": matrix}, lambda x: x.mean(axis=(0, 1)), reps=reps
        )
    return steps, points["c"], intervals["c"]


def _new_figure(width: float, height: float):
    # An Agg canvas of its own: no pyplot state, no backend switch in the caller's process.
    FigureCanvasAgg = require("matplotlib.backends.backend_agg").FigureCanvasAgg
    Figure = require("matplotlib.figure").Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _best_baseline(cells: list[Cell]) -> Cell | None:
    """The baseline row (:data:`BASELINES`) with the highest mean final score."""
    candidates = [c for c in cells if c.algo in BASELINES and c.valid]
    return max(candidates, key=lambda c: (sum(c.finals) / len(c.finals), c.label), default=None)


def _y_limits(curves: list, references: list[float]) -> tuple[tuple[float, float], bool]:
    """The shared y-range: the mean curves and the other values drawn (references, single
    runs), padded, within :data:`Y_WINDOW`; and whether any of them leaves that range."""
    values = [float(v) for _, mean, _ in curves for v in mean if math.isfinite(v)]
    values += [v for v in references if math.isfinite(v)]
    if not values:
        return (0.0, 100.0), False
    low, high = min(values), max(values)
    inside = (max(Y_WINDOW[0], low), min(Y_WINDOW[1], high))
    pad = max(2.0, 0.06 * (inside[1] - inside[0]))
    limits = (max(Y_WINDOW[0], inside[0] - pad), min(Y_WINDOW[1], inside[1] + pad))
    return limits, low < Y_WINDOW[0] or high > Y_WINDOW[1]


def _curves_figure(report: Report, dataset: str, colors: dict[str, Any]) -> Path:
    Line2D = require("matplotlib.lines").Line2D
    Patch = require("matplotlib.patches").Patch
    ticker = require("matplotlib.ticker")

    cells = report.cells_of(dataset)
    curves = {
        c.label: _curve(c, reps=report.reps, seed=report.seed) if c.valid else None for c in cells
    }
    stat = report.data_stats.get(dataset)
    best = _best_baseline(cells)
    best_curve = curves.get(best.label) if best is not None else None
    references = ([stat.score] if stat is not None else []) + (
        [float(v) for v in best_curve[1]] if best_curve is not None else []
    )
    # every valid run's own curve too (not the CI bands: a t band over 3 seeds can be very wide)
    references += [v for c in cells for r in c.valid for v in r.scores]
    (low, high), _ = _y_limits([c for c in curves.values() if c is not None], references)

    columns = min(PANEL_COLUMNS, len(cells))
    rows = math.ceil(len(cells) / columns)
    figure = _new_figure(2.9 * columns + 0.5, 2.25 * rows + 1.3)
    axes = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= len(cells):
            ax.set_visible(False)
            above = axes.flat[index - columns] if index >= columns else None
            if above is not None:
                above.xaxis.set_tick_params(labelbottom=True)
            continue
        cell = cells[index]
        color = colors[cell.label]
        for run, _ in cell.excluded:  # excluded runs: thin dotted lines, for diagnosis
            points = [
                (s - run.stage_start, v)
                for s, v in zip(run.steps, run.scores)
                if v is not None and math.isfinite(v)
            ]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=color, linestyle=":", linewidth=0.9, alpha=0.8)
        if stat is not None:
            ax.axhline(
                stat.score,
                color="black",
                linestyle="--",
                linewidth=0.9,
                label=f"the data itself ({_fmt(stat.score)})",
            )
        if best_curve is not None and best is not cell:
            ax.plot(best_curve[0], best_curve[1], **BEST_STYLE, zorder=1)
        curve = curves[cell.label]
        n = len(cell.valid)
        if curve is None:
            title = f"{cell.label}\nno valid run (see the notes)"
        else:
            steps, mean, ci = curve
            if n > 1:
                for run_curve in _stage_curves(cell):
                    xs = sorted(run_curve)
                    ax.plot(xs, [run_curve[x] for x in xs], color=color, linewidth=0.7, alpha=0.45)
            if ci is not None:
                ax.fill_between(steps, ci[0], ci[1], color=color, alpha=0.2, linewidth=0)
            ax.plot(steps, mean, color=color, linewidth=2.0)
            final = sum(cell.finals) / n
            title = f"{cell.label}\n{n} seed{'s' if n > 1 else ''}, final {_fmt(final)}"
            if cell is best:
                title += " (best baseline)"
            off = [float(v) for v in mean if math.isfinite(v) and not low <= v <= high]
            if off:
                ax.text(
                    0.5,
                    0.1 if min(off) < low else 0.85,
                    f"mean leaves the axes: {_fmt(min(off) if min(off) < low else max(off))}",
                    transform=ax.transAxes,
                    bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"},
                    ha="center",
                    fontsize=7,
                    color=color,
                )
        ax.set_title(title, fontsize=8.5)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7.5)
        ax.xaxis.set_major_locator(ticker.MaxNLocator(4))
        ax.xaxis.set_major_formatter(
            ticker.FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0")
        )
    axes.flat[0].set_ylim(low, high)
    figure.suptitle(
        f"{task_name(dataset)} ({dataset}): one panel per row of its table\n"
        "x: training steps of the stage that is evaluated (pretraining stages not counted)",
        fontsize=9.5,
    )
    for ax in axes[-1]:
        if not ax.get_visible():
            ax = axes[-2][list(axes[-1]).index(ax)]
        ax.set_xlabel("step of the evaluated stage", fontsize=8)
    figure.supylabel("normalized score", fontsize=9)

    handles = [
        Line2D([], [], color="0.2", linewidth=2.0, label="mean over seeds (panel color)"),
        Patch(
            facecolor="0.2",
            alpha=0.2,
            label=f"95% CI of the mean (Student t below {T_INTERVAL_BELOW} seeds, else bootstrap)",
        ),
        Line2D([], [], color="0.2", linewidth=0.7, alpha=0.45, label="one seed"),
    ]
    if any(c.excluded for c in cells):
        handles.append(
            Line2D([], [], color="0.2", linestyle=":", label="excluded run (see the notes)")
        )
    if stat is not None:
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle="--",
                linewidth=0.9,
                label=f"the data itself ({_fmt(stat.score)})",
            )
        )
    if best_curve is not None:
        handles.append(
            Line2D(
                [],
                [],
                **BEST_STYLE,
                label=f"best baseline: {best.label} (final {_fmt(sum(best.finals) / len(best.finals))})",
            )
        )
    figure.legend(handles=handles, loc="outside lower center", ncols=3, fontsize=8, frameon=False)
    path = report.curve_figure(dataset)
    figure.savefig(path, dpi=110)
    return path


def write_figures(report: Report) -> list[Path]:
    """Writes one learning-curve PNG per dataset and the performance-profile PNG into
    ``report.figures_dir``; returns their paths."""
    import numpy as np

    report.figures_dir.mkdir(parents=True, exist_ok=True)
    colors = _colors(report)
    written = [_curves_figure(report, dataset, colors) for dataset in report.datasets]

    if report.aggregates:
        library, plot_utils = require("rliable.library"), require("rliable.plot_utils")

        scores = {a.label: a.matrix for a in report.aggregates}
        values = np.concatenate([m.ravel() for m in scores.values()])
        low, high = min(0.0, float(values.min())), max(100.0, float(values.max()))
        taus = np.linspace(low, high, 101)
        with _seeded_global_rng(report.seed):
            profiles, cis = library.create_performance_profile(scores, taus, reps=report.reps)
        figure = _new_figure(8.5, 4.2)
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
        figure.legend(*ax.get_legend_handles_labels(), loc="outside right center", fontsize=8)
        figure.savefig(report.profile_figure, dpi=110)
        written.append(report.profile_figure)
    return written
