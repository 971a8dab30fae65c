"""scripts/gpu_paper.py: the one-call pipeline a lent GPU window runs (install, generate, train,
collect), exercised here on the CPU with a tiny budget, and its unpacking into results/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_paper.py"
TINY = ["--device", "cpu", "--eval-interval", "10", "--stack", "2", "--wheels", "/nonexistent"]
TINY_OVERRIDES = ["--override", "compile=false", "eval.episodes=2", "eval.max_steps=20"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rows_name_their_variant_and_run_directory(tmp_path):
    row_dir = _module()._row_dir
    assert row_dir(tmp_path, "hopper-medium", "iql", 5) == (
        "iql",
        None,
        tmp_path / "hopper-medium" / "iql" / "run_stack5",
    )
    assert row_dir(tmp_path, "hopper-medium", "sfac:js", 5) == (
        "sfac",
        "sfac.divergence=js",
        tmp_path / "hopper-medium" / "sfac" / "js_stack5",
    )
    assert row_dir(tmp_path, "walker2d-medium", "srpo:beta=0.02", 3)[1:] == (
        "srpo.beta=0.02",
        tmp_path / "walker2d-medium" / "srpo" / "0.02_stack3",
    )


def test_bad_stack_and_unknown_command_fail_with_one_line():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "run", "--stack", "0"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--stack must be >= 1, got 0" in out.stderr


def test_unpack_refuses_paths_outside_results(tmp_path):
    archive = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x.txt"
    payload.write_text("x")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(payload, arcname="../../escape.txt")
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "unpack", str(archive), "--results", str(tmp_path / "r")],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "refusing archive member" in out.stderr
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.slow
def test_run_on_the_cpu_packs_a_stacked_row_that_unpacks_into_a_report(tmp_path, recipe_dataset):
    out, runs, results = tmp_path / "out", tmp_path / "runs", tmp_path / "results"
    cmd = [sys.executable, str(SCRIPT), "run", *TINY, "--steps", "20", "--rows", "iql"]
    cmd += ["--dataset", recipe_dataset, "--runs", str(runs), "--out", str(out), *TINY_OVERRIDES]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "torchrl 0.14" in (out / "env.txt").read_text()
    with tarfile.open(out / "paper_rows.tar.gz") as tar:
        names = set(tar.getnames())
    for seed in (0, 1):
        for f in ("config.yaml", "eval_returns.csv", "summary.json"):
            assert f"staged/finished/hopper-medium/iql/run_stack2/seed_{seed}/{f}" in names
    assert "logs/hopper-medium_iql_run_stack2.log" in names
    config = (runs / "hopper-medium/iql/run_stack2/seed_1/config.yaml").read_text()
    assert "stack_seeds: 2" in config and "experiment_name: paper" in config

    unpack = [sys.executable, str(SCRIPT), "unpack", str(out / "paper_rows.tar.gz")]
    subprocess.run([*unpack, "--results", str(results)], check=True, capture_output=True)
    row = results / "paper" / "hopper-medium" / "iql" / "run_stack2"
    assert sorted(p.name for p in row.iterdir()) == ["seed_0", "seed_1"]
    assert (results / "paper" / "device" / "env.txt").is_file()
    again = subprocess.run(
        [*unpack, "--results", str(results)], check=True, capture_output=True, text=True
    )
    assert "0 files" in again.stdout  # nothing is written over

    page = tmp_path / "paper.md"
    report = [
        sys.executable,
        "-m",
        "torchrl_sym.report",
        str(results / "paper"),
        "--out",
        str(page),
    ]
    subprocess.run(report, check=True, capture_output=True, cwd=ROOT)
    assert "iql" in page.read_text()


@pytest.mark.slow
def test_a_row_stopped_at_the_deadline_is_in_flight_and_the_next_call_resumes_it(
    tmp_path, recipe_dataset
):
    out, runs = tmp_path / "out", tmp_path / "runs"
    cmd = [sys.executable, str(SCRIPT), "run", *TINY, "--steps", "1000000", "--rows", "iql"]
    cmd += ["--dataset", recipe_dataset, "--runs", str(runs), "--out", str(out), "--deadline"]
    tail = [*TINY_OVERRIDES, "checkpoint.interval=20"]
    first = subprocess.run([*cmd, "45", *tail], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "iql: stopped at the deadline" in first.stdout
    run_dir = runs / "hopper-medium" / "iql" / "run_stack2"
    assert list(run_dir.glob("checkpoints/*.pt")), "no checkpoint before the deadline"
    with tarfile.open(out / "paper_rows.tar.gz") as tar:
        readme = tar.extractfile("staged/in_flight/README.md").read().decode()
    assert "run_stack2" in readme

    second = subprocess.run([*cmd, "50", *tail], capture_output=True, text=True, timeout=300)
    assert f"iql: {ROOT / 'recipes' / 'iql.py'} resume={run_dir}" in second.stdout
    with tarfile.open(out / "paper_rows.tar.gz") as tar:  # the second archive: both segments
        log = tar.extractfile("logs/hopper-medium_iql_run_stack2.log").read().decode()
    assert "Run directory" in log and "Resum" in log
