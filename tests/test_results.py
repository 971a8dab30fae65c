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


def _page_command() -> list[str]:
    """The regenerate command PROTOCOL.md shows on the page (its ```bash block that runs the
    report), as arguments after ``python -m torchrl_sym.report``."""
    import re
    import shlex

    text = (RESULTS / "PROTOCOL.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    (command,) = [b for b in blocks if "torchrl_sym.report" in b]
    words = shlex.split(command.replace("\\\n", " "))
    assert words[:3] == ["python", "-m", "torchrl_sym.report"], words
    return words[3:]


@pytest.mark.skipif(not PAGE.is_file(), reason="docs/results.md is not generated yet")
def test_results_page_matches_the_committed_logs(monkeypatch):
    """The page's own command, verbatim from PROTOCOL.md (``python -m torchrl_sym.report
    results/cpu --out docs/results.md --preamble results/cpu/PROTOCOL.md --data-stats
    docs/datasets.json``), run from the repository with --check."""
    from torchrl_sym import report

    monkeypatch.chdir(ROOT)
    args = _page_command()
    assert args[:3] == ["results/cpu", "--out", "docs/results.md"]
    assert report.main([*args, "--check"]) == 0


def test_the_page_keeps_the_protocol_and_links_the_run_history():
    """The dated run history (sessions, machines, resumes, speeds) lives in results/cpu/HISTORY.md,
    linked from PROTOCOL.md; the page keeps the protocol and links the history where it is."""
    import os
    import re

    protocol = (RESULTS / "PROTOCOL.md").read_text()
    history = (RESULTS / "HISTORY.md").read_text()
    assert "[HISTORY.md](HISTORY.md)" in protocol
    assert "session by session" not in protocol.lower() and "2026-12-03" not in protocol
    assert "## Session by session" in history and "2026-12-03 22:49 UTC" in history
    assert "nearly flat" not in protocol  # the SRPO critic is not flat in the action
    page = PAGE.read_text()
    links = re.findall(r"\]\(([^)]*HISTORY\.md)\)", page)
    assert links and all(
        Path(os.path.normpath(PAGE.parent / link)) == RESULTS / "HISTORY.md" for link in links
    )


def test_committed_runs_hold_only_logs():
    allowed = {"config.yaml", "eval_returns.csv", "summary.json", "overrides.yaml", "PROTOCOL.md"}
    allowed.add("behavior_eval.json")  # SRPO runs: scripts/eval_behavior.py
    for path in RESULTS.rglob("*"):
        if path.parent == RESULTS and path.suffix == ".md":
            continue  # the folder's own documents: PROTOCOL.md, HISTORY.md (the run history), ...
        if path.is_file():
            assert path.name in allowed, path


def test_committed_in_flight_logs_hold_no_checkpoint():
    allowed = {"config.yaml", "eval_returns.csv", "overrides.yaml", "README.md"}
    for path in (ROOT / "results" / "in_flight").rglob("*"):
        if path.is_file():
            assert path.name in allowed or path.suffix == ".log", path


def test_collect_mirrors_the_logs_of_every_run_and_nothing_else(tmp_path):
    collect = _collect_module()
    sweep = tmp_path / "sweep"
    for name, finished in (("0_seed0", True), ("1_seed1", False)):
        run = sweep / name
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        (run / "config.yaml").write_text(f"algo: iql\ndataset: d-v0\nseed: {name[-1]}\n")
        (run / ".hydra" / "config.yaml").write_text("not a run\n")
        (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
        (run / "eval_returns.csv").write_text("step,episode,return,normalized_score\n")
        (run / "checkpoints" / "ckpt_00000010.pt").write_bytes(b"x" * 100)
        (run / "iql.log").write_text("log\n")
        if finished:
            (run / "summary.json").write_text("{}\n")
            (run / "behavior_eval.json").write_text("{}\n")  # scripts/eval_behavior.py
    out = tmp_path / "results"
    runs = collect.collect(sweep, out)
    assert [r.name for r in runs] == ["0_seed0"]  # the unfinished run stays behind
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert copied == [
        "0_seed0/.hydra/overrides.yaml",
        "0_seed0/behavior_eval.json",
        "0_seed0/config.yaml",
        "0_seed0/eval_returns.csv",
        "0_seed0/summary.json",
    ]
    # a second collect after the run finished adds it and leaves no temporary files
    (sweep / "1_seed1" / "summary.json").write_text("{}\n")
    assert [r.name for r in collect.collect(sweep, out)] == ["0_seed0", "1_seed1"]
    assert (out / "1_seed1" / "summary.json").is_file()
    assert not [p for p in out.rglob(".*tmp-*")]
    assert collect.main([str(tmp_path / "missing"), str(out)]) == 2


def test_in_flight_mirrors_the_unfinished_runs_and_says_where_each_stands(tmp_path):
    collect = _collect_module()
    src = tmp_path / "runs"
    for rel, finished, evals, ckpts in (
        ("cpu/hopper-medium/iql/0_seed0", True, (10000, 20000), (10000, 20000)),
        ("cpu/hopper-medium/xql/1_seed1", False, (10000, 20000, 30000), (20000, 30000)),
        ("cpu/halfcheetah-medium/srpo/0_seed0", False, (), (10000,)),  # still in stage 1
    ):
        run = src / rel
        (run / ".hydra").mkdir(parents=True)
        (run / "checkpoints").mkdir()
        (run / "config.yaml").write_text("algo: x\ndataset: d-v0\n")
        (run / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
        (run / "run.log").write_text("log\n")
        rows = "".join(f"{s},0,1.0,2.0\n" for s in evals)
        (run / "eval_returns.csv").write_text("step,episode,return,normalized_score\n" + rows)
        for step in ckpts:
            (run / "checkpoints" / f"ckpt_{step:09d}.pt").write_bytes(b"x")
        if finished:
            (run / "summary.json").write_text("{}\n")
        record = run / "resumes" / "2026-12-03_12-15-49"  # a resumed launch's record: not a run
        record.mkdir(parents=True)
        (record / "config.yaml").write_text("algo: x\ndataset: d-v0\n")
    dst = tmp_path / "in_flight"
    stale = dst / "cpu" / "hopper-medium" / "sfac" / "3_seed1"  # finished since the last copy
    stale.mkdir(parents=True)
    (stale / "config.yaml").write_text("algo: sfac\ndataset: d-v0\n")
    (stale / "sfac.log").write_text("old\n")

    assert collect.main(["--in-flight", str(src), str(dst)]) == 0
    copied = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file())
    assert copied == [
        "README.md",
        "cpu/halfcheetah-medium/srpo/0_seed0/.hydra/overrides.yaml",
        "cpu/halfcheetah-medium/srpo/0_seed0/config.yaml",
        "cpu/halfcheetah-medium/srpo/0_seed0/eval_returns.csv",
        "cpu/halfcheetah-medium/srpo/0_seed0/run.log",
        "cpu/hopper-medium/xql/1_seed1/.hydra/overrides.yaml",
        "cpu/hopper-medium/xql/1_seed1/config.yaml",
        "cpu/hopper-medium/xql/1_seed1/eval_returns.csv",
        "cpu/hopper-medium/xql/1_seed1/run.log",
    ]  # no checkpoint, no finished run, the stale run and its empty folders gone
    assert not (dst / "cpu" / "hopper-medium" / "sfac").exists()
    readme = (dst / "README.md").read_text()
    assert "| `cpu/hopper-medium/xql/1_seed1` | 30,000 | 30,000 |" in readme
    assert "| `cpu/halfcheetah-medium/srpo/0_seed0` | none yet | 10,000 |" in readme
    assert "iql" not in readme

    # everything finished: the folder empties to its README
    for run in ("cpu/hopper-medium/xql/1_seed1", "cpu/halfcheetah-medium/srpo/0_seed0"):
        (src / run / "summary.json").write_text("{}\n")
    assert collect.collect_in_flight(src, dst) == []
    assert [p.name for p in dst.rglob("*")] == ["README.md"]
    assert "| (none) | | |" in (dst / "README.md").read_text()

    # a folder of finished results is never taken for an in-flight folder
    results = tmp_path / "results"
    collect.collect(src, results)
    assert collect.main(["--in-flight", str(src), str(results)]) == 2
    assert len(list(results.rglob("summary.json"))) == 3


FAKE_PYTHON = r"""#!/usr/bin/env bash
# a stand-in for python: records each recipe call; a recipe call writes a finished stacked run
echo "$*" >> "$CALLS"
case "$1" in
  scripts/collect_results.py|scripts/check_data.py) exec "$REAL_PYTHON" "$@" ;;
  scripts/eval_behavior.py) echo "{}" > "$2/behavior_eval.json"; exit 0 ;;
esac
algo=$(basename "$1" .py); shift
run=""; seed=0; div=""; k=1; prec=""; starts=""
for arg in "$@"; do
  case "$arg" in
    hydra.run.dir=*) run=${arg#*=} ;;
    resume=*) run=${arg#*=}; cfg="$run/stack.yaml"; [ -f "$cfg" ] || cfg="$run/config.yaml"
              seed=$(sed -n 's/^seed: //p' "$cfg"); k=$(sed -n 's/^stack_seeds: //p' "$cfg");
              div=$(sed -n 's/^  divergence: //p' "$cfg") ;;
    seed=*) seed=${arg#*=} ;;
    stack_seeds=*) k=${arg#*=} ;;
    sfac.divergence=*) div=${arg#*=} ;;
    precision=*) prec=${arg#*=} ;;
    eval.start_states=*) starts=${arg#*=} ;;
  esac
done
write() {  # write <dir> <seed> <divergence>
  mkdir -p "$1"
  printf 'algo: %s\ndataset: d-v0\nseed: %s\nstack_seeds: %s\n' "$algo" "$2" "$k" > "$1/config.yaml"
  [ -n "$3" ] && printf 'sfac:\n  divergence: %s\n' "$3" >> "$1/config.yaml"
  [ -n "$prec" ] && printf 'precision: %s\n' "$prec" >> "$1/config.yaml"
  printf 'eval:\n  start_states: %s\n' "${starts:-disjoint}" >> "$1/config.yaml"
  echo "{}" > "$1/summary.json"
}
mkdir -p "$run"
if [ "$k" -eq 1 ]; then write "$run" "$seed" "$div"; exit 0; fi  # one seed: no stack.yaml
printf 'algo: %s\nseed: %s\nstack_seeds: %s\n' "$algo" "$seed" "$k" > "$run/stack.yaml"
[ -n "$div" ] && printf 'sfac:\n  divergence: %s\n' "$div" >> "$run/stack.yaml"
for ((i = 0; i < k; i++)); do write "$run/seed_$((seed + i))" $((seed + i)) "$div"; done
"""


def _fake_results_repo(tmp_path: Path, algos: str):
    """A copy of results_cpu.sh and collect_results.py with FAKE_PYTHON first on PATH; returns
    ``(repo, env, run)``: ``run()`` runs the script on hopper-medium and returns the calls the
    fake python recorded."""
    import os
    import shutil
    import subprocess
    import sys

    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("results_cpu.sh", "collect_results.py", "check_data.py"):
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "REAL_PYTHON": sys.executable,
        "RUNS": str(tmp_path / "runs"),
        "ALGOS": algos,
    }

    def run() -> list[str]:
        calls.write_text("")
        subprocess.run(
            ["bash", str(repo / "scripts" / "results_cpu.sh"), "hopper-medium"],
            env=env, check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        return calls.read_text().splitlines()

    return repo, env, run


def test_results_script_runs_only_what_neither_the_runs_nor_results_hold(tmp_path):
    import shutil
    import subprocess

    repo, env, run_all = _fake_results_repo(tmp_path, "iql sfac")
    calls = tmp_path / "calls.txt"
    runs = tmp_path / "runs" / "cpu" / "hopper-medium"

    def run():
        return [c for c in run_all() if c.startswith("recipes/")]

    first = run()  # one stacked run per cell; Sf-AC runs both divergences
    assert first == [
        "recipes/iql.py experiment=cpu task=hopper-medium seed=0 stack_seeds=3 "
        f"hydra.run.dir={runs}/iql/run_stack3",
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=0 stack_seeds=3 "
        f"sfac.divergence=jeffreys hydra.run.dir={runs}/sfac/jeffreys_stack3",
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=0 stack_seeds=3 "
        f"sfac.divergence=js hydra.run.dir={runs}/sfac/js_stack3",
    ]
    committed = repo / "results" / "cpu" / "hopper-medium"
    assert len(list(committed.glob("iql/run_stack3/seed_*/summary.json"))) == 3
    assert len(list(committed.glob("sfac/*/seed_*/summary.json"))) == 6
    assert run() == []  # everything finished: nothing runs again

    # a killed cell (fewer finished seeds than stacked) is resumed in its own directory
    (runs / "iql" / "run_stack3" / "seed_1" / "summary.json").unlink()
    assert run() == [f"recipes/iql.py resume={runs}/iql/run_stack3"]

    # a new machine (no run directories) whose results lack iql seed 2 (the last: topped up
    # alone) and sfac js seed 0 (the first: the whole cell runs again)
    shutil.rmtree(tmp_path / "runs")
    shutil.rmtree(committed / "iql" / "run_stack3" / "seed_2")
    (committed / "sfac" / "js_stack3" / "seed_0" / "summary.json").unlink()  # unfinished
    env["DRY_RUN"] = "1"  # the plan: what the next call runs, printed, nothing run or written
    calls.write_text("")
    before = sorted(p for p in tmp_path.rglob("*") if p != calls)
    plan = subprocess.run(
        ["bash", str(repo / "scripts" / "results_cpu.sh"), "hopper-medium"],
        env=env, check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sorted(p for p in tmp_path.rglob("*") if p != calls) == before
    assert not [c for c in calls.read_text().splitlines() if c.startswith("recipes/")]
    del env["DRY_RUN"]
    again = run()
    assert plan.stdout.splitlines() == [f"python {c}" for c in again]
    assert again == [
        "recipes/iql.py experiment=cpu task=hopper-medium seed=2 stack_seeds=1 "
        f"hydra.run.dir={runs}/iql/run_seed2_stack1",
        first[2],
    ]
    assert len(list(committed.glob("sfac/js_stack3/seed_*/summary.json"))) == 3
    assert (committed / "iql" / "run_seed2_stack1" / "summary.json").is_file()
    assert run() == []  # complete again
    # a top-up killed before it finished (so never mirrored into results/) resumes
    shutil.rmtree(committed / "iql" / "run_seed2_stack1")
    (runs / "iql" / "run_seed2_stack1" / "summary.json").unlink()
    assert run() == [f"recipes/iql.py resume={runs}/iql/run_seed2_stack1"]


def test_results_script_tops_up_a_cell_with_its_next_seeds_and_their_start_states(tmp_path):
    repo, env, run_all = _fake_results_repo(tmp_path, "iql sfac")
    runs = tmp_path / "runs" / "cpu" / "hopper-medium"
    committed = repo / "results" / "cpu" / "hopper-medium"
    # three seeds per cell, run one per process before start states were disjoint (no key)
    sfac = [("sfac", d, f"sfac:\n  divergence: {d}\n") for d in ("jeffreys", "js")]
    cells = [("iql", "run", ""), *sfac]
    for s in range(3):
        for algo, name, extra in cells:
            seed_dir = committed / algo / f"{name}_seed{s}"
            seed_dir.mkdir(parents=True)
            (seed_dir / "config.yaml").write_text(f"algo: {algo}\nseed: {s}\n{extra}")
            (seed_dir / "summary.json").write_text("{}")
    env.update(SEEDS="5")

    def run():
        return [c for c in run_all() if c.startswith("recipes/")]

    # seeds 3 and 4 of each cell, stacked, from the legacy start states the cell's seeds used
    assert run() == [
        "recipes/iql.py experiment=cpu task=hopper-medium seed=3 stack_seeds=2 "
        f"eval.start_states=legacy hydra.run.dir={runs}/iql/run_seed3_stack2",
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=3 stack_seeds=2 "
        "sfac.divergence=jeffreys eval.start_states=legacy "
        f"hydra.run.dir={runs}/sfac/jeffreys_seed3_stack2",
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=3 stack_seeds=2 "
        f"sfac.divergence=js eval.start_states=legacy hydra.run.dir={runs}/sfac/js_seed3_stack2",
    ]
    assert len(list(committed.glob("*/*/seed_*/summary.json"))) == 6
    assert run() == []  # five finished seeds per cell
    # a cell whose finished seeds used different start states cannot be topped up
    import subprocess

    bad = committed / "iql" / "run_seed2" / "config.yaml"
    bad.write_text("algo: iql\nseed: 2\neval:\n  start_states: disjoint\n")
    import shutil

    shutil.rmtree(committed / "iql" / "run_seed3_stack2")
    shutil.rmtree(runs / "iql")
    proc = subprocess.run(
        ["bash", str(repo / "scripts" / "results_cpu.sh"), "hopper-medium"],
        env={**env, "ALGOS": "iql"}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2 and "different start states (disjoint legacy)" in proc.stderr


def test_results_script_keeps_a_tagged_row_apart_with_out_and_variants(tmp_path):
    repo, env, run_all = _fake_results_repo(tmp_path, "sfac")
    runs = tmp_path / "runs" / "cpu" / "hopper-medium" / "sfac"
    env.update(OUT="results/bf16", VARIANTS="sfac.divergence=js")

    def run(tag: str) -> list[str]:
        env.update(TAG=tag, EXTRA=f"precision={tag}")
        return [c for c in run_all() if c.startswith("recipes/")]

    # one variant only, the tag in the directory's name, the logs under OUT
    assert run("bf16") == [
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=0 stack_seeds=3 "
        f"sfac.divergence=js precision=bf16 hydra.run.dir={runs}/js_bf16_stack3"
    ]
    out = repo / "results" / "bf16" / "hopper-medium" / "sfac"
    assert len(list(out.glob("js_bf16_stack3/seed_*/summary.json"))) == 3
    assert not (repo / "results" / "cpu").exists()
    # the fp32 row beside it is its own cell: the bf16 seeds do not count for it
    assert run("fp32") == [
        "recipes/sfac.py experiment=cpu task=hopper-medium seed=0 stack_seeds=3 "
        f"sfac.divergence=js precision=fp32 hydra.run.dir={runs}/js_fp32_stack3"
    ]
    import shutil

    shutil.rmtree(tmp_path / "runs")  # a new machine: both rows are found finished under OUT
    assert run("bf16") == [] and run("fp32") == []


@pytest.mark.parametrize("algo", ["srpo", "bdpo"])
def test_results_script_evaluates_each_finished_behavior_model_once(tmp_path, algo):
    """SRPO's μ with 20 DDPM steps; BDPO's ν̄ with its own N-step chain (no --sampling-steps)."""
    repo, _, run_all = _fake_results_repo(tmp_path, algo)

    def run():
        return [c for c in run_all() if "eval_behavior" in c]

    cell = tmp_path / "runs" / "cpu" / "hopper-medium" / algo / "run_stack3"
    steps = " --sampling-steps 20" if algo == "srpo" else ""
    assert run() == [f"scripts/eval_behavior.py {cell}/seed_{s}{steps}" for s in range(3)]
    committed = repo / "results" / "cpu" / "hopper-medium" / algo / "run_stack3"
    assert len(list(committed.glob("seed_*/behavior_eval.json"))) == 3  # collected with the logs
    assert run() == []  # evaluated once


def _check_data_module():
    spec = importlib.util.spec_from_file_location("check_data", ROOT / "scripts" / "check_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _summary(folder: Path, sha: str, dataset: str = "torchrl_sym/hopper/medium-v1") -> None:
    import json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({"dataset": {"id": dataset, "sha256": sha}}))


def _local_data(root: Path, sha: str, dataset: str = "torchrl_sym/hopper/medium-v1") -> None:
    import json

    (root / dataset).mkdir(parents=True, exist_ok=True)
    (root / dataset / "provenance.json").write_text(json.dumps({"sha256": sha}))


def test_results_script_refuses_a_new_cell_on_other_bits_of_the_data(tmp_path):
    import subprocess

    repo, env, _ = _fake_results_repo(tmp_path, "iql sfac")
    minari = tmp_path / "minari"
    env["MINARI_DATASETS_PATH"] = str(minari)
    table = repo / "results" / "cpu" / "hopper-medium"
    for s in range(3):  # the committed IQL cell (finished) trained on bits "a..."
        _summary(table / "iql" / "run_stack3" / f"seed_{s}", "a" * 64)
        (table / "iql" / "run_stack3" / f"seed_{s}" / "config.yaml").write_text(f"seed: {s}\n")
    _local_data(minari, "b" * 64)  # this machine generates other bits

    def run() -> subprocess.CompletedProcess:
        (tmp_path / "calls.txt").write_text("")
        return subprocess.run(
            ["bash", str(repo / "scripts" / "results_cpu.sh"), "hopper-medium"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def recipes() -> list[str]:
        calls = (tmp_path / "calls.txt").read_text().splitlines()
        return [c for c in calls if c.startswith("recipes/")]

    refused = run()  # the new Sf-AC cell would join a table of other bits: nothing runs
    assert refused.returncode == 3 and recipes() == []
    assert "bbbbbbbbbbbb" in refused.stderr and "aaaaaaaaaaaa (3 runs)" in refused.stderr
    assert "DATA_MISMATCH_OK=1" in refused.stderr and "docs/datasets.md" in refused.stderr
    assert not (table / "sfac").exists()

    env["DRY_RUN"] = "1"  # the plan refuses the same way, and never generates
    assert run().returncode == 3
    del env["DRY_RUN"]

    env["DATA_MISMATCH_OK"] = "1"  # asked for: it runs, with a warning
    mixed = run()
    assert mixed.returncode == 0 and len(recipes()) == 2 and "going on" in mixed.stderr
    del env["DATA_MISMATCH_OK"]

    # the same bits as the committed runs: a new cell runs; a cell follows its own runs first
    import shutil

    shutil.rmtree(table / "sfac")
    shutil.rmtree(tmp_path / "runs")
    _local_data(minari, "a" * 64)
    assert run().returncode == 0 and len(recipes()) == 2
    shutil.rmtree(table / "sfac")
    shutil.rmtree(tmp_path / "runs")
    _summary(table / "sfac" / "js_stack3" / "seed_0", "c" * 64)  # an unfinished cell on "c..."
    (table / "sfac" / "js_stack3" / "seed_0" / "config.yaml").write_text("seed: 0\n")
    refused = run()
    assert refused.returncode == 3 and "cccccccccccc (1 runs)" in refused.stderr


def test_check_data_compares_the_first_folder_that_records_bits(tmp_path, monkeypatch):
    check_data = _check_data_module()
    from torchrl_sym.data import generate

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    cell, table = tmp_path / "table" / "iql", tmp_path / "table"
    assert check_data.task_dataset("walker2d-medium") == "torchrl_sym/walker2d/medium-v1"
    with pytest.raises(SystemExit, match="unknown task 'walker3d-medium'"):
        check_data.task_dataset("walker3d-medium")

    # no run records its data (or only another dataset's): nothing to match, nothing generated
    _summary(table / "sql" / "seed_0", "a" * 64, dataset="torchrl_sym/hopper/expert-v1")
    calls = []
    monkeypatch.setattr(generate, "generate_dataset", lambda *a, **k: calls.append((a, k)))
    ok, message = check_data.check("hopper-medium", [cell, table])
    assert ok and "nothing to match" in message and calls == []

    # the table's runs record "a...": a missing local copy is generated first, then compared
    _summary(table / "sql" / "seed_1", "a" * 64)

    def make(family, kind, **kwargs):
        calls.append((family, kind, kwargs["version"]))
        _local_data(tmp_path / "minari", "a" * 64)

    monkeypatch.setattr(generate, "generate_dataset", make)
    ok, _ = check_data.check("hopper-medium", [cell, table], generate=False)
    assert ok and calls == []  # not generated when told not to: reported, not refused
    ok, message = check_data.check("hopper-medium", [cell, table])
    assert ok and calls == [("hopper", "medium", 1)] and "aaaaaaaaaaaa" in message

    # the cell's own runs decide before the table's
    _summary(cell / "seed_0", "b" * 64)
    ok, message = check_data.check("hopper-medium", [cell, table])
    assert not ok and "bbbbbbbbbbbb (1 runs)" in message
    assert check_data.main(["hopper-medium", str(cell), str(table)]) == 3
    monkeypatch.setenv("DATA_MISMATCH_OK", "1")
    assert check_data.main(["hopper-medium", str(cell), str(table)]) == 0
