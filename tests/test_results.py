"""The committed results: docs/results.md is what the report tool generates from results/, and the
script that mirrors run logs into results/ keeps only the logs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "cpu"
PAGE = ROOT / "docs" / "results.md"


def _collect_module():
    spec = importlib.util.spec_from_file_location(
        "collect_results", ROOT / "scripts" / "collect_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not PAGE.is_file(), reason="docs/results.md is not generated yet")
def test_results_page_matches_the_committed_logs(monkeypatch):
    """The page's command, verbatim: ``python -m torchrl_sym.report results/cpu --out
    docs/results.md --preamble results/cpu/PROTOCOL.md``, run from the repository."""
    from torchrl_sym import report

    monkeypatch.chdir(ROOT)
    args = ["results/cpu", "--out", "docs/results.md", "--preamble", "results/cpu/PROTOCOL.md"]
    assert report.main([*args, "--check"]) == 0


def test_committed_runs_hold_only_logs():
    allowed = {"config.yaml", "eval_returns.csv", "summary.json", "overrides.yaml", "PROTOCOL.md"}
    for path in RESULTS.rglob("*"):
        if path.is_file():
            assert path.name in allowed, path


def test_collect_mirrors_the_logs_of_every_run_and_nothing_else(tmp_path):
    collect = _collect_module()
    sweep = tmp_path / "sweep"
    for name, finished in (("0_seed0", True), ("1_seed1", False)):
        run = sweep / name
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        (run / "config.yaml").write_text(f"algo: iql\nseed: {name[-1]}\n")
        (run / ".hydra" / "config.yaml").write_text("not a run\n")
        (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
        (run / "eval_returns.csv").write_text("step,episode,return,normalized_score\n")
        (run / "checkpoints" / "ckpt_00000010.pt").write_bytes(b"x" * 100)
        (run / "iql.log").write_text("log\n")
        if finished:
            (run / "summary.json").write_text("{}\n")
    out = tmp_path / "results"
    runs = collect.collect(sweep, out)
    assert [r.name for r in runs] == ["0_seed0", "1_seed1"]
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert copied == [
        "0_seed0/.hydra/overrides.yaml",
        "0_seed0/config.yaml",
        "0_seed0/eval_returns.csv",
        "0_seed0/summary.json",
        "1_seed1/.hydra/overrides.yaml",
        "1_seed1/config.yaml",
        "1_seed1/eval_returns.csv",
    ]
    # a second collect after the run finished adds its summary and leaves no temporary files
    (sweep / "1_seed1" / "summary.json").write_text("{}\n")
    collect.collect(sweep, out)
    assert (out / "1_seed1" / "summary.json").is_file()
    assert not [p for p in out.rglob(".*tmp-*")]
    assert collect.main([str(tmp_path / "missing"), str(out)]) == 2
