"""Copy the logs of finished and unfinished runs into the repository's ``results/`` tree.

    python scripts/collect_results.py runs/results/cpu/hopper-medium/iql results/cpu/hopper-medium/iql

Every finished run directory under SRC (one holding ``config.yaml`` and the ``summary.json`` a run
writes when it ends) is mirrored under DST with only what the report reads and what reproduces it:
``config.yaml``, ``eval_returns.csv``, ``summary.json`` and ``.hydra/overrides.yaml`` (the command
line). Unfinished runs stay behind (they are resumed from their own directory, or run again by
scripts/results_cpu.sh on a machine that lost it), as do checkpoints, TensorBoard events and logs. Files are written to a temporary name and renamed, so a
killed copy never leaves a half-written file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

KEPT = ("config.yaml", "eval_returns.csv", "summary.json", ".hydra/overrides.yaml")


def collect(src: Path, dst: Path) -> list[Path]:
    """Mirrors the kept files of every finished run under ``src`` into ``dst``; returns the runs
    copied."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory of runs")
    runs = sorted(
        p.parent
        for p in src.rglob("config.yaml")
        if ".hydra" not in p.parts and (p.parent / "summary.json").is_file()
    )
    for run in runs:
        out = dst / run.relative_to(src)
        for name in KEPT:
            source = run / name
            if not source.is_file():
                continue
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="a run or sweep directory")
    parser.add_argument("dst", type=Path, help="where to mirror the runs' logs")
    args = parser.parse_args(argv)
    try:
        runs = collect(args.src, args.dst)
    except FileNotFoundError as err:
        print(f"collect_results: {err}", file=sys.stderr)
        return 2
    print(f"{len(runs)} finished run(s) from {args.src} -> {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
