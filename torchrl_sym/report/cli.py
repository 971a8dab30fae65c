"""The command line: ``python -m torchrl_sym.report`` / ``torchrl-sym-report`` (:func:`main`)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from torchrl_sym.report._deps import MissingDependency, missing
from torchrl_sym.report.cells import DataStatsError, build_report
from torchrl_sym.report.claims import DEFAULT_CLAIM_SEEDS
from torchrl_sym.report.figures import write_figures
from torchrl_sym.report.runs import IGNORED_KEYS
from torchrl_sym.report.stats import DEFAULT_REPS, DEFAULT_SEED
from torchrl_sym.report.tables import render_markdown

__all__ = ["main"]


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
        "--tuning",
        action="append",
        default=None,
        metavar="DIR",
        help="a folder of tuning sweeps (scripts/tune.py: selection_*.json and their runs), "
        "rendered in a section of their own; repeatable (default: the `tuning` folder beside "
        "each DIR, e.g. results/tuning for results/cpu, where there is one)",
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
        *(("--tuning", t) for t in args.tuning or ()),
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
    absent = missing()
    if absent:  # before any work: one line, not a traceback from deep inside
        print(f"error: {MissingDependency(absent[0], also=absent[1:])}", file=sys.stderr)
        return 2
    try:
        return _generate(args)
    except MissingDependency as err:  # installed but does not import (e.g. a broken arch)
        print(f"error: {err}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
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
            tuning=args.tuning,
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
