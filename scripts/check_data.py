"""Refuse to add runs to a results table whose committed runs trained on other bits of its data.

    python scripts/check_data.py walker2d-medium results/cpu/walker2d-medium/sfac results/cpu/walker2d-medium

A generated dataset is the same id, size and statistics on every machine, but its bits depend on
the processor that generated it (docs/datasets.md lists which processors give which sha256): the
policies that roll it out run float matmuls whose last bits differ between CPUs, and MuJoCo's
dynamics amplify them. A cell whose seeds trained on different bits mixes two datasets, so
scripts/results_cpu.sh and scripts/tune.py call this before starting a new run.

The local dataset of TASK (``torchrl_sym/configs/task/<task>.yaml``: its ``dataset``) is compared
with the ``dataset.sha256`` that the committed runs' ``summary.json`` record, folder by folder:
the first FOLDER that holds runs with a recorded sha256 decides (give the cell's folder first,
then the table's, so a cell follows its own runs and a new cell follows the table). Exit 0 when
the local bits are among those, or when no folder records any; exit 3 with a message naming
both sha256 and the ways out otherwise. A dataset that is not on disk yet is generated first
(what the run would do anyway; ``--no-generate`` reports it instead and exits 0).
``DATA_MISMATCH_OK=1`` in the environment turns the refusal into a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

MISMATCH = 3


def task_dataset(task: str) -> str:
    """The dataset id of a task (``dataset:`` of its config file)."""
    import importlib.util

    import yaml

    # the installed package's configs, found without importing it (and torch with it)
    (package,) = importlib.util.find_spec("torchrl_sym").submodule_search_locations
    tasks = Path(package) / "configs" / "task"
    path = tasks / f"{task}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in tasks.glob("*.yaml") if p.stem != "none")
        raise SystemExit(f"check_data: unknown task {task!r}; one of {known}.")
    dataset = (yaml.safe_load(path.read_text()) or {}).get("dataset")
    if not isinstance(dataset, str):
        raise SystemExit(f"check_data: task {task!r} names no dataset ({path}).")
    return dataset


def committed_hashes(folder: Path, dataset_id: str) -> dict[str, list[Path]]:
    """sha256 -> the runs under ``folder`` that trained on ``dataset_id`` with those bits (runs
    that record no sha256, or another dataset, are left out)."""
    found: dict[str, list[Path]] = {}
    for summary in sorted(Path(folder).rglob("summary.json")):
        try:
            data = json.loads(summary.read_text())
        except (OSError, ValueError):
            continue
        dataset = data.get("dataset") if isinstance(data, dict) else None
        if not isinstance(dataset, dict) or dataset.get("id") != dataset_id:
            continue
        sha = dataset.get("sha256")
        if isinstance(sha, str) and sha:
            found.setdefault(sha, []).append(summary.parent)
    return found


def local_hash(dataset_id: str, generate: bool) -> str | None:
    """The sha256 of the local copy of ``dataset_id`` (its ``provenance.json``), generating a
    missing one this library can build when ``generate``; None when there is none."""
    from minari.storage.datasets_root_dir import get_dataset_path

    def provenance() -> dict | None:  # what torchrl_sym.data.generate.read_provenance reads,
        path = Path(get_dataset_path(dataset_id)) / "provenance.json"  # without torch's import
        return json.loads(path.read_text()) if path.is_file() else None

    found = provenance()
    if found is None and generate:
        from torchrl_sym.data import generate as gen

        parts = gen.parse_generated_id(dataset_id)
        if parts is not None:
            family, kind, version = parts
            gen.generate_dataset(family, kind, version=version, exist_ok=True)
            found = provenance()
    return found.get("sha256") if found else None


def check(task: str, folders: list[Path], *, generate: bool = True) -> tuple[bool, str]:
    """``(ok, message)``: whether a new run of ``task`` here trains on the bits the runs of the
    first folder (of ``folders``) that records any trained on."""
    dataset_id = task_dataset(task)
    for folder in folders:
        committed = committed_hashes(folder, dataset_id)
        if committed:
            break
    else:
        return True, f"check_data: no committed run of {task} records its data; nothing to match."
    local = local_hash(dataset_id, generate)
    theirs = ", ".join(f"{sha[:12]} ({len(runs)} runs)" for sha, runs in sorted(committed.items()))
    if local is None:
        return True, (
            f"check_data: {dataset_id} is not on disk yet, so it could not be compared with the "
            f"data of {folder}'s runs ({theirs}); the run generates it."
        )
    if local in committed:
        return True, f"check_data: {dataset_id} here is {local[:12]}, as {folder}'s runs."
    return False, (
        f"check_data: the local {dataset_id} has sha256 {local[:12]}, but the runs in {folder} "
        f"trained on {theirs}. A new run here would mix two datasets in one results table (the "
        "bits depend on the processor that generated them: docs/datasets.md). Run it on a "
        "machine that generates those bits, or write it to a results folder of its own (OUT=... "
        "for scripts/results_cpu.sh, --results for scripts/tune.py), or set DATA_MISMATCH_OK=1 "
        "to mix them anyway (the report then cautions under the table)."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task", help="a task name, e.g. walker2d-medium")
    parser.add_argument("folders", nargs="+", type=Path, help="committed results, cell first")
    parser.add_argument("--no-generate", action="store_true", help="never generate the data")
    args = parser.parse_args(argv)
    ok, message = check(args.task, args.folders, generate=not args.no_generate)
    if ok:
        print(message, file=sys.stderr)  # stdout stays the plan of a DRY_RUN
        return 0
    if os.environ.get("DATA_MISMATCH_OK") == "1":
        print(f"{message}\n(DATA_MISMATCH_OK=1: going on)", file=sys.stderr)
        return 0
    print(message, file=sys.stderr)
    return MISMATCH


if __name__ == "__main__":
    sys.exit(main())
