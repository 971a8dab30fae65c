"""benchmarks/bench_losses.py runs and writes its table (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_losses_writes_the_table(tmp_path):
    page = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_losses.py"),
            *("--losses", "iql", "iql_hand", "sfac"),
            *("--no-compile", "--threads", "1", "2", "--min-time", "0.05", "--batch", "32"),
            *("--hidden", "32", "32", "--write", str(page)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = page.read_text()
    assert "**1 thread(s)**" in text and "**2 thread(s)**" in text  # one table per thread count
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    header = [i for i, row in enumerate(rows) if row.startswith("| loss | updates/s eager |")]
    assert header == [0, 4]
    labels = [row.split("|")[1].strip() for row in rows[1:4]]
    assert labels == ["TorchRL IQLLoss", "IQL, hand-written PyTorch", "sfac"]
    for row in rows[1:4] + rows[5:]:
        eager, gflop = float(row.split("|")[2]), float(row.split("|")[5])
        assert eager > 0 and gflop > 0


def test_bench_losses_runs_the_staged_cases_of_srpo_and_bdpo(tmp_path):
    page = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_losses.py"),
            *("--losses", "srpo", "bdpo", "--no-compile", "--threads", "1"),
            *("--min-time", "0.05", "--batch", "8", "--hidden", "16", "--write", str(page)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = page.read_text()
    labels = [row.split("|")[1].strip() for row in text.splitlines() if row.startswith("| ")]
    assert {"srpo policy", "bdpo-critic", "bdpo-actor"} <= set(labels)
    assert "SRPO / diffusion" in text  # the acting-speed section of cases_srpo


def test_bdpo_gflops_count_both_step_samplings():
    """cases_bdpo's FLOP table: stratified steps cost less than uniform in both updates."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import cases_bdpo

        gflops = cases_bdpo.gflops_by_step_sampling(11, 3, 20)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert set(gflops) == {"uniform", "stratified"}
    (critic_u, actor_u), (critic_s, actor_s) = gflops["uniform"], gflops["stratified"]
    assert 0 < critic_s < critic_u and 0 < actor_s < actor_u
