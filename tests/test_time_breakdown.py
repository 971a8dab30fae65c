"""scripts/time_breakdown.py: a run's wall time by phase, one seed or stacked."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "time_breakdown", ROOT / "scripts" / "time_breakdown.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(folder: Path, timings: dict, wall: float, steps: int) -> None:
    folder.mkdir(parents=True)
    payload = {"global_step": steps, "total_seconds": wall, "timings": timings}
    (folder / "summary.json").write_text(json.dumps(payload))


def test_breakdown_of_a_stacked_run_counts_its_seeds(tmp_path):
    script = _script()
    run = tmp_path / "run"
    run.mkdir()
    (run / "stack.yaml").write_text("seed: 0\nstack_seeds: 2\n")
    timings = {"update": 60.0, "sample": 5.0, "eval": 10.0, "compile": 20.0, "checkpoint": 1.0}
    for s in (0, 1):
        _summary(run / f"seed_{s}", timings, wall=100.0, steps=1000)
    row = script.breakdown(run)
    assert row["seeds"] == 2 and row["steps"] == 1000
    assert row["phases"]["update"] == 60.0 and row["phases"]["log"] == 0.0
    assert row["other"] == pytest.approx(4.0)
    table = script.markdown([row])
    assert "| 60% |" in table[-1] and table[-1].endswith("| 20.0 |")  # 2 x 1000 / 100 s
    # the seeds of a stacked run as results/ keeps them (no stack.yaml): still stacked
    (run / "stack.yaml").unlink()
    assert script.breakdown(run)["seeds"] == 2
    one = tmp_path / "single"
    _summary(one, {"update": 1.0}, wall=2.0, steps=10)
    assert script.breakdown(one)["seeds"] == 1
    assert script.main([str(tmp_path / "nothing")]) == 2
