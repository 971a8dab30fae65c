"""benchmarks/bench_losses.py runs and writes its table (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _run_bench(*args: str, timeout: int = 300) -> None:
    """benchmarks/bench_losses.py with ``args`` in a subprocess; it must succeed."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bench_losses_writes_the_table(tmp_path):
    page = tmp_path / "benchmarks.md"
    _run_bench(
        *("--losses", "iql", "iql_hand", "sfac"),
        *("--no-compile", "--threads", "1", "2", "--min-time", "0.05", "--batch", "32"),
        *("--hidden", "32", "32", "--write", str(page)),
    )
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


@pytest.mark.slow
def test_bench_losses_runs_the_staged_cases_of_srpo_and_bdpo(tmp_path):
    page = tmp_path / "benchmarks.md"
    _run_bench(
        *("--losses", "srpo", "bdpo", "--no-compile", "--threads", "1"),
        *("--min-time", "0.05", "--batch", "8", "--hidden", "16", "--write", str(page)),
        timeout=600,
    )
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


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_losses
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return bench_losses


def test_a_device_section_replaces_only_its_own(tmp_path):
    bench = _bench()
    page = tmp_path / "benchmarks.md"
    # a page from before the section markers: everything under "## Loss updates" is the CPU part
    page.write_text("# Benchmarks\n\nintro\n\n## Loss updates\n\nold cpu table\n")
    bench.write_page(page, "cuda", ["", "gpu table 1"])
    text = page.read_text()
    assert "old cpu table" in text and "gpu table 1" in text
    assert text.index("## Loss updates\n") < text.index("## Loss updates on a GPU")
    bench.write_page(page, "cpu", ["", "new cpu table"])
    text = page.read_text()
    assert "old cpu table" not in text and "new cpu table" in text and "gpu table 1" in text
    bench.write_page(page, "cuda", ["", "gpu table 2"])
    text = page.read_text()
    assert "gpu table 1" not in text and "gpu table 2" in text and "new cpu table" in text
    assert text.count("# Benchmarks") == 1 and text.count("<!-- section cpu -->") == 1
    assert not (tmp_path / "benchmarks.md.tmp").exists()


def test_the_gpu_table_and_its_targets():
    bench = _bench()
    nan = float("nan")
    rows = [
        ("iql", 1000.0, 2000.0, 6000.0, 0.63, 30.0),
        ("sfac", 900.0, nan, nan, 0.63, nan),  # compiled columns not measured (--no-compile)
        ("bdpo-critic", 100.0, 300.0, 500.0, 31.6, 60.0),
        ("bdpo-actor", 100.0, 300.0, 1000.0, 16.3, 60.0),
    ]
    lines = bench.table_lines(rows, peak=50_000.0, on_gpu=True)
    iql = next(line for line in lines if line.startswith("| TorchRL IQLLoss"))
    cells = [c.strip() for c in iql.split("|")[1:-1]]
    # best = the CUDA-graph column; best / eager, GFLOP/s and fraction of peak from it
    assert cells[1:5] == ["1,000.0", "2,000.0", "6,000.0", "6.00"]
    assert cells[6] == "3,780" and cells[7] == "7.6%" and cells[8] == "1.00"
    sfac = [c.strip() for c in lines[-3].split("|")[1:-1]]
    assert sfac[0] == "sfac" and sfac[4] == "1.00"  # only eager measured: best = eager
    targets = bench.gpu_targets(rows)
    assert "6,000 updates/s (target ≥ 5,000: met)" in targets[0]
    # 1 / (1/500 + 1/(5 * 1000)) = 454.5 steps/s
    assert "455 steps/s (target ≥ 400: met)" in targets[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_bench_losses_refuses_a_missing_device():
    def refused(device: str) -> str:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "bench_losses.py"), "--device", device],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr[-1000:]
        return proc.stderr

    assert "CUDA is not available" in refused("cuda")
    assert "use cpu or cuda" in refused("mps")


def _args(**kw):
    import argparse

    base = dict(
        device="cpu", losses=["iql_hand", "sfac"], obs_dim=11, action_dim=3, hidden=[16],
        batch=8, no_compile=False,
    )  # fmt: skip
    return argparse.Namespace(**{**base, **kw})


def test_a_failing_column_is_recorded_and_the_other_rows_kept(monkeypatch):
    """A compile that raises (say a CUDA graph capture on a new GPU stack) costs that column only:
    the row keeps its eager speed, the page names the failure, and the next loss is measured."""
    bench = _bench()

    def broken_compile(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("inductor fell over\nsecond line")

        return call

    monkeypatch.setattr(bench.torch, "compile", broken_compile)
    monkeypatch.setattr(bench, "matmul_peak", lambda *a, **k: 50.0)
    seen = []
    lines, _ = bench.measure(_args(), 0.01, extras=False, progress=seen.append)
    rows = [line for line in lines if line.startswith("| ") and "updates/s" not in line]
    assert [r.split("|")[1].strip() for r in rows] == ["IQL, hand-written PyTorch", "sfac"]
    for row in rows:
        assert float(row.split("|")[2]) > 0  # eager measured
        assert row.split("|")[3].strip() == "—"  # compiled not
    failures = [line for line in lines if line.startswith("- ")]
    assert failures == [
        f"- {name}, compile: failed (RuntimeError: inductor fell over)"
        for name in ("iql_hand", "sfac")
    ]
    # progress got the table after each case: first one row, then both
    assert len(seen) == 2
    assert sum(line.startswith("| IQL, hand") for line in seen[0]) == 1
    assert not any(line.startswith("| sfac") for line in seen[0])
    assert any(line.startswith("| sfac") for line in seen[1])


def test_a_stopped_run_leaves_the_rows_it_measured(tmp_path):
    """--write rewrites the page after every case, marked partial until the run ends, so a run
    killed at a time limit (a lent GPU's) keeps what it measured."""
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks\n\n## Loss updates on a GPU\n<!-- section cuda -->\nkept gpu part\n<!-- end section cuda -->\n"
    )
    bench = _bench()
    bench._write_partial(page, "cpu", ["", "Command: x", ""], [], ["| loss |", "| iql | 1 |"])
    text = page.read_text()
    assert "*Partial: the run was still measuring" in text and "| iql | 1 |" in text
    assert "kept gpu part" in text
    _run_bench(
        *("--losses", "iql_hand", "--no-compile", "--threads", "1", "--min-time", "0.05"),
        *("--batch", "8", "--hidden", "16", "--write", str(page)),
    )
    text = page.read_text()
    assert "Partial" not in text and "IQL, hand-written PyTorch" in text and "kept gpu part" in text


def test_an_update_leaves_its_batch_as_it_was():
    """TorchRL's IQLLoss writes its actor's outputs into the TensorDict it gets; the benchmark's
    update hands it a shallow copy, as the training loop hands every step a fresh batch (a CUDA
    graph refuses an input that requires grad)."""
    bench = _bench()
    for name in ("iql", "sfac"):
        ((_, update, batch),) = bench.cases(name, 11, 3, [16], 8)
        keys = set(batch.keys(True, True))
        update(batch)
        assert set(batch.keys(True, True)) == keys, name


def test_stacked_seeds_print_the_ratio_line_and_write_their_section(tmp_path):
    """--stack-seeds K: one fp32 seed and K stacked seeds of each loss, the ratio line the issue
    names, and a "Stacked seeds" section beside the page's others (timings not asserted)."""
    page = tmp_path / "benchmarks.md"
    page.write_text(
        "# Benchmarks\n\n## Loss updates\n<!-- section cpu -->\nrows\n<!-- end section cpu -->\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_losses.py"),
            *("--losses", "iql", "sfac", "--stack-seeds", "2", "--no-compile", "--rounds", "2"),
            *("--min-time", "0.05", "--batch", "32", "--hidden", "32", "--write", str(page)),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for loss in ("iql", "sfac"):
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{loss}: "))
        assert line.startswith(f"{loss}: seed-updates/s ratio vs one fp32 seed: ")
        assert float(line.rsplit(" ", 1)[1]) > 0
    text = page.read_text()
    assert "## Stacked seeds" in text and "rows" in text  # the CPU section is kept
    assert "| sfac |" in text and "2 seeds fp32" in text
    assert "best of 2 interleaved timing rounds" in text


@pytest.mark.slow
def test_cpu_kernel_facts_write_their_section(tmp_path):
    page = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cpu_kernels.py"), "--min-time", "0.01",
         "--write", str(page)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    text = page.read_text()
    assert "## CPU kernels behind the choices" in text
    assert "bf16 GFLOP/s" in text and "(x + |x|) / 2" in text and "packed" in text
    assert "256×1024 Mish, forward + backward" in text and "one exponential" in text


def test_a_stacked_column_that_fails_shows_a_dash_and_is_named(monkeypatch):
    """A stacked update that fails to build or run (say a CUDA-graph capture of the vmapped update
    on a new GPU stack) costs its column only: "—" in the table, the error named under it, the
    ratio from the columns that ran."""
    import argparse

    bench = _bench()
    real = bench.stacked_update

    def failing(name, seeds, prec, compiled, args, device, graphs=False):
        if compiled:
            raise RuntimeError("capture refused")
        return real(name, seeds, prec, compiled, args, device, graphs=graphs)

    monkeypatch.setattr(bench, "stacked_update", failing)
    args = argparse.Namespace(
        device="cpu", stack_seeds=2, precision="fp32", losses=["iql"], no_compile=False,
        rounds=1, obs_dim=11, action_dim=3, hidden=[16], batch=8,
    )  # fmt: skip
    lines = bench.measure_stacked(args, 0.02)
    header = next(x for x in lines if x.startswith("| loss |"))
    assert header.split(" | ")[1:5] == [
        "1 fp32 seed eager", "1 fp32 seed compiled", "2 seeds fp32 eager", "2 seeds fp32 compiled"
    ]  # fmt: skip
    row = next(x for x in lines if x.startswith("| TorchRL IQLLoss |") or x.startswith("| iql |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "—" and cells[4] == "—" and float(cells[1]) > 0 and float(cells[5]) > 0
    assert "Columns that failed (—):" in lines
    assert any("iql, one fp32 seed, compiled: RuntimeError: capture refused" in x for x in lines)
