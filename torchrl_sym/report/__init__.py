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
95% CI of the mean: a Student t interval below 5 runs (a bootstrap over 3 values is only their
range), else rliable's percentile bootstrap (``get_interval_estimates`` with ``aggregate_mean`` on
the ``[runs, 1]`` matrix). Across datasets per algorithm/variant: rliable's ``aggregate_mean`` and
``aggregate_iqm`` with stratified-bootstrap CIs, and a performance profile. The papers'
comparative claims (:data:`torchrl_sym.published.CLAIMS`) are tested pairwise on each dataset:
the difference of two cells' mean final scores with a 95% Welch t interval and p-value
(``scipy.stats.ttest_ind(equal_var=False)``), and a verdict, Holm-corrected over every comparison
of the page, once both cells have ``--claim-seeds`` valid runs. Under each table: the commits
that produced its rows (``summary.json`` ``provenance``) and their evaluation start states
(``eval.start_states``).

A run is excluded from the statistics (and named in a note under its table) when it has no
evaluation, no normalized score, a non-finite score, or stops before the cell's last evaluation
step. See docs/report.md for the page's columns and the ``--check`` workflow.

The modules, in the order the data flows through them:

- :mod:`~torchrl_sym.report.runs`: loading runs (:func:`find_run_dirs`, :func:`load_run`, the
  evaluation CSV, ``summary.json``);
- :mod:`~torchrl_sym.report.stats`: statistics (CIs of a mean, bootstrap, Welch tests);
- :mod:`~torchrl_sym.report.cells`: cells, exclusions, aggregates, :func:`build_report`;
- :mod:`~torchrl_sym.report.claims`: the papers' claims tested on the cells;
- :mod:`~torchrl_sym.report.tables`: the markdown page (:func:`render_markdown`);
- :mod:`~torchrl_sym.report.figures`: the PNGs (:func:`write_figures`);
- :mod:`~torchrl_sym.report.cli`: the command line (:func:`main`; ``__main__`` runs it).

Heavy libraries (numpy, matplotlib, rliable, scipy) are imported inside the functions that use
them, so ``import torchrl_sym.report`` stays cheap.
"""

from __future__ import annotations

from torchrl_sym.report.cells import (
    Aggregate,
    Cell,
    DataStat,
    DataStatsError,
    Report,
    build_report,
    load_data_stats,
)
from torchrl_sym.report.claims import DEFAULT_CLAIM_SEEDS, ClaimRow, claim_rows
from torchrl_sym.report.cli import main
from torchrl_sym.report.figures import _curve as _curve  # the curves' numbers (tests)
from torchrl_sym.report.figures import write_figures
from torchrl_sym.report.runs import (
    CSV_COLUMNS,
    DEFAULT_LAST_K,
    IGNORED_KEYS,
    Run,
    find_run_dirs,
    load_run,
)
from torchrl_sym.report.stats import DEFAULT_REPS, DEFAULT_SEED, bootstrap_mean_ci, welch_ci
from torchrl_sym.report.tables import render_markdown
from torchrl_sym.tasks import task_name

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_CLAIM_SEEDS",
    "DEFAULT_LAST_K",
    "DEFAULT_REPS",
    "DEFAULT_SEED",
    "IGNORED_KEYS",
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
    "welch_ci",
    "write_figures",
]
