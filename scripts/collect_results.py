"""Copy the logs of finished and unfinished runs into the repository's ``results/`` tree.

    python scripts/collect_results.py runs/results/cpu/hopper-medium/iql results/cpu/hopper-medium/iql

Every finished run directory under SRC (one holding ``config.yaml`` and the ``summary.json`` a run
writes when it ends) is mirrored under DST with only what the report reads and what reproduces it:
``config.yaml``, ``eval_returns.csv``, ``summary.json``, ``.hydra/overrides.yaml`` (the command
line) and, for SRPO and BDPO runs, ``behavior_eval.json`` (scripts/eval_behavior.py). Unfinished runs stay behind (they are resumed from their own directory, or run again by
scripts/results_cpu.sh on a machine that lost it), as do checkpoints, TensorBoard events and logs.
Files are written to a temporary name and renamed, so a killed copy never leaves a half-written
file.

    python scripts/collect_results.py --in-flight runs/results results/in_flight

mirrors instead the runs under SRC that have NOT finished (their config, evaluations so far,
command line and log) into DST, removes from DST every run that is no longer in flight, and
writes DST/README.md: which runs were still training, how far each got, and how each continues.
Commit that folder when a session stops with runs in flight, so that their progress is on record
even if the machine (and with it the checkpoints) is gone.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import shutil
import sys
import time
from pathlib import Path

from torchrl_sym.report import find_run_dirs

KEPT = (
    "config.yaml",
    "eval_returns.csv",
    "summary.json",
    ".hydra/overrides.yaml",
    "behavior_eval.json",  # SRPO, BDPO: scripts/eval_behavior.py
)
KEPT_IN_FLIGHT = ("config.yaml", "eval_returns.csv", ".hydra/overrides.yaml")


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _run_dirs(root: Path) -> list[Path]:
    """The run directories under ``root``, found as the report finds them
    (:func:`torchrl_sym.report.find_run_dirs`: a ``config.yaml`` with ``algo`` and ``dataset``,
    not searched further, so its ``.hydra/`` and ``resumes/`` records are not runs)."""
    root = root.resolve()
    runs, _ = find_run_dirs([root])
    return runs


def collect(src: Path, dst: Path) -> list[Path]:
    """Mirrors the kept files of every finished run under ``src`` into ``dst``; returns the runs
    copied."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory of runs")
    src = src.resolve()
    runs = [r for r in _run_dirs(src) if (r / "summary.json").is_file()]
    for run in runs:
        out = dst / run.relative_to(src)
        for name in KEPT:
            if (run / name).is_file():
                _copy(run / name, out / name)
    return runs


def _last_eval_step(run: Path) -> int | None:
    try:
        with open(run / "eval_returns.csv", newline="") as f:
            steps = [int(row["step"]) for row in csv.DictReader(f) if row.get("step")]
    except (OSError, ValueError, KeyError):
        return None
    return max(steps, default=None)


def _last_checkpoint_step(run: Path) -> int | None:
    # a seed of a stacked run (seed_<s>/ beside stack.yaml): the checkpoints of all its seeds
    # are its parent's
    folder = run.parent if (run.parent / "stack.yaml").is_file() else run
    steps = [
        int(m.group(1))
        for p in (folder / "checkpoints").glob("ckpt_*.pt")
        if (m := re.fullmatch(r"ckpt_(\d+)\.pt", p.name))
    ]
    return max(steps, default=None)


IN_FLIGHT_README = """# Runs in flight when a session stopped (not results)

Evaluation logs (`config.yaml`, `eval_returns.csv`, the command line and the run's log) of runs
that were still training when they were collected ({when}, by `python scripts/collect_results.py
--in-flight {src} <this folder>`). They are NOT read by the report and are not table rows: a run
counts only once it has finished and written `summary.json`. Their checkpoints are not committed,
so they cannot be resumed from here: `scripts/results_cpu.sh` resumes each run from its latest
checkpoint where its run directory (`{src}/<path below>`) still exists, and starts it again from
step 0 on a machine that lost it.

| run | last evaluation (global step) | latest checkpoint (global step) |
|---|---|---|
{rows}
"""


def collect_in_flight(src: Path, dst: Path) -> list[Path]:
    """Mirrors the logs of every unfinished run under ``src`` into ``dst``, removes the runs
    ``dst`` holds that are no longer in flight (finished, or gone), and writes ``dst/README.md``;
    returns the runs in flight."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory of runs")
    src, dst = src.resolve(), dst.resolve()
    runs = [r for r in _run_dirs(src) if not (r / "summary.json").is_file()]
    wanted = {r.relative_to(src) for r in runs}
    finished = [
        r for r in (_run_dirs(dst) if dst.is_dir() else []) if (r / "summary.json").exists()
    ]
    if finished:  # e.g. results/cpu by mistake: never delete committed results
        raise FileExistsError(
            f"{dst} holds finished runs ({finished[0]} has a summary.json): --in-flight writes "
            "a folder of unfinished runs only (e.g. results/in_flight); pick another DST"
        )
    if dst.is_dir():
        for old in _run_dirs(dst):
            if old.relative_to(dst) not in wanted:
                shutil.rmtree(old)
        for folder in sorted((p for p in dst.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
    rows = []
    for run in runs:
        rel = run.relative_to(src)
        out = dst / rel
        if out.is_dir():  # a fresh mirror: no file of an earlier copy is left behind
            shutil.rmtree(out)
        for name in KEPT_IN_FLIGHT:
            if (run / name).is_file():
                _copy(run / name, out / name)
        for log in sorted(run.glob("*.log")):
            _copy(log, out / log.name)
        evaluated, saved = _last_eval_step(run), _last_checkpoint_step(run)
        rows.append(
            f"| `{rel.as_posix()}` | {'none yet' if evaluated is None else f'{evaluated:,}'} "
            f"| {'none yet' if saved is None else f'{saved:,}'} |"
        )
    dst.mkdir(parents=True, exist_ok=True)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = IN_FLIGHT_README.format(
        when=when, src=src.as_posix(), rows="\n".join(rows) or "| (none) | | |"
    )
    tmp = dst / f".README.md.tmp-{os.getpid()}"
    tmp.write_text(text)
    os.replace(tmp, dst / "README.md")
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a run or sweep directory")
    parser.add_argument("dst", type=Path, help="where to mirror the runs' logs")
    parser.add_argument(
        "--in-flight",
        action="store_true",
        help="mirror the unfinished runs instead, drop the ones no longer in flight, and write "
        "DST/README.md",
    )
    args = parser.parse_args(argv)
    try:
        runs = (collect_in_flight if args.in_flight else collect)(args.src, args.dst)
    except (FileNotFoundError, FileExistsError) as err:
        print(f"collect_results: {err}", file=sys.stderr)
        return 2
    kind = "unfinished" if args.in_flight else "finished"
    print(f"{len(runs)} {kind} run(s) from {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
