"""Where a run's wall time went: update, batch sampling, evaluation, logging, checkpoints, compile.

    python scripts/time_breakdown.py ~/runs/results/cpu/walker2d-medium/iql/run_stack3
    python scripts/time_breakdown.py RUN [RUN ...] --markdown      # a markdown table
    python scripts/time_breakdown.py RUN [RUN ...] --write docs/benchmarks.md   # its section there

Reads each run's per-phase seconds: ``summary.json``'s ``timings`` (runs since 2026-12-07), else
the last ``time/<phase>_seconds`` scalars of its TensorBoard events; and its wall time
(``summary.json``'s ``total_seconds``). A stacked run (``stack.yaml``, or the ``seed_<s>/``
folders results/ keeps of one) is read from its first seed's directory (the seeds share one loop) and counts its seeds' updates. "other" is the wall
time no phase accounts for (the loop's own Python, progress bar, and a launch's setup).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PHASES = ("update", "compile", "sample", "eval", "log", "checkpoint")


def _tensorboard_timings(run_dir: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, float] = {}
    for events in sorted(run_dir.glob("tensorboard/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for phase in PHASES:
            tag = f"time/{phase}_seconds"
            if tag in acc.Tags().get("scalars", []):
                out[phase] = max(out.get(phase, 0.0), acc.Scalars(tag)[-1].value)
    return out


def breakdown(run: Path) -> dict:
    """``{"run", "seeds", "steps", "wall", "phases": {phase: seconds}, "other"}`` of a run."""
    run = Path(run)
    seeds = 1
    target = run
    if (run / "stack.yaml").is_file() or (
        not (run / "summary.json").is_file() and any(run.glob("seed_*/summary.json"))
    ):  # a stacked run, or its seeds as scripts/collect_results.py mirrors them (no stack.yaml)
        dirs = sorted(run.glob("seed_*"))
        if not dirs:
            raise FileNotFoundError(f"{run}: a stacked run without seed directories")
        seeds, target = len(dirs), dirs[0]
    summary_path = target / "summary.json"
    if not summary_path.is_file():
        raise FileNotFoundError(f"{target}: no summary.json (the run has not finished)")
    summary = json.loads(summary_path.read_text())
    phases = summary.get("timings") or _tensorboard_timings(target)
    wall = float(summary.get("total_seconds") or summary.get("seconds") or 0.0)
    accounted = sum(phases.get(p, 0.0) for p in PHASES)
    return {
        "run": str(run),
        "seeds": seeds,
        "steps": int(summary.get("global_step", 0)),
        "wall": wall,
        "phases": {p: float(phases.get(p, 0.0)) for p in PHASES},
        "other": max(wall - accounted, 0.0),
    }


def markdown(rows: list[dict]) -> list[str]:
    lines = [
        "| run | seeds | steps | wall (min) | "
        + " | ".join(PHASES)
        + " | other | seed-updates/s (wall) |",
        "|---|---|---|---|" + "---|" * (len(PHASES) + 2),
    ]
    for r in rows:
        wall = r["wall"] or 1.0
        cells = [f"{r['phases'][p] / wall:.0%}" for p in PHASES]
        name = Path(r["run"]).parent.name + "/" + Path(r["run"]).name
        lines.append(
            f"| {name} | {r['seeds']} | {r['steps']:,} | {r['wall'] / 60:.1f} | "
            + " | ".join(cells)
            + f" | {r['other'] / wall:.0%} | {r['seeds'] * r['steps'] / wall:.1f} |"
        )
    return lines


def write_section(path: Path, rows: list[dict], argv: list[str]) -> None:
    """The table as the ``profile`` section of a page written by benchmarks/bench_losses.py
    (its other sections kept)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_losses import write_page

    from torchrl_sym.train.provenance import cpu_model

    body = [
        "",
        f"Command: `python scripts/time_breakdown.py {' '.join(str(a) for a in argv)}`",
        "",
        f"Machine: {cpu_model()}. Each row is one finished run (one process, one core, "
        "`experiment=cpu`, compiled update); columns are shares of its wall time; a stacked "
        "run trains its seeds in one loop, so its seed-updates/s counts every seed. A row with "
        "fewer steps than its recipe's `experiment=cpu` budget ran a shortened one (its "
        "directory names it): compiling costs the same at any length, so its compile share is "
        "larger than a full run's.",
        "",
        *markdown(rows),
        "",
    ]
    write_page(path, "profile", body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument(
        "--write", type=Path, default=None, help="write the table as the page's profile section"
    )
    args = parser.parse_args(argv)
    rows = []
    for run in args.runs:
        try:
            rows.append(breakdown(run))
        except FileNotFoundError as err:
            print(f"time_breakdown: {err}", file=sys.stderr)
            return 2
    if args.write is not None:
        write_section(args.write, rows, argv if argv is not None else sys.argv[1:])
    if args.markdown or args.write is not None:
        print("\n".join(markdown(rows)))
    else:
        for r in rows:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
