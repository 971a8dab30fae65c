"""torchrl_sym.report on synthetic run directories: numbers against independent computations,
CIs against direct rliable calls, variants, notes for damaged runs, published columns, figures,
--check and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from torchrl_sym import report as rp
from torchrl_sym.published import NOT_PUBLISHED, PUBLISHED, published_for

HOPPER = "torchrl_sym/hopper/medium-v1"
WALKER = "torchrl_sym/walker2d/medium-replay-v1"
REPS = 300
STEPS = tuple(range(1000, 10001, 1000))  # 10 evaluations
LAST_K = 3  # eval.last_k in the synthetic configs


def episode_scores(algo: str, dataset: str, variant: str, seed: int) -> np.ndarray:
    """[evaluations, 2 episodes] of normalized scores: a rising curve with a per-run offset."""
    base = {"sfac": 50.0, "iql": 40.0, "xql": 45.0, "bdpo": 70.0, "awac": 35.0, "sql": 42.0}[algo]
    base += 7.0 if variant == "js" else 0.0
    base += 10.0 if dataset == WALKER else 0.0
    t = np.arange(len(STEPS), dtype=np.float64)
    mean = base + 3.0 * t + 2.5 * seed + 0.7 * np.sin(seed + t)
    return np.stack([mean - 1.0 - 0.1 * seed, mean + 1.0 + 0.1 * seed], axis=1)


def write_run(
    run_dir: Path,
    algo: str,
    dataset: str,
    seed: int,
    *,
    variant: str = "",
    scores: np.ndarray | None = None,
    steps: tuple[int, ...] = STEPS,
    csv: bool = True,
    summary: bool = True,
    config: dict | None = None,
    sha256: str = "abc123",
) -> Path:
    """A run directory as recipes/<algo>.py writes it (config.yaml, eval_returns.csv,
    summary.json); ``scores`` [evaluations, episodes] default to :func:`episode_scores`."""
    run_dir.mkdir(parents=True)
    cfg = {
        "algo": algo,
        "dataset": dataset,
        "seed": seed,
        "device": "cpu" if seed % 2 else "cuda",  # differs between seeds: never a variant
        "experiment_name": "default",
        "train": {"steps": STEPS[-1], "log_interval": 500, "progress": seed == 0},
        "eval": {"interval": 1000, "episodes": 2, "max_steps": 1000, "last_k": LAST_K},
        "logger": {"backend": "tensorboard" if seed else "csv", "project": "torchrl_sym"},
        algo: {"discount": 0.99, "hidden": [256, 256], "lr": 3e-4},
    }
    if seed != 1:
        cfg["eval"]["mode"] = "deterministic"  # a key the oldest runs lack: not a variant
    if algo == "sfac":
        cfg["sfac"]["divergence"] = variant
    if algo == "iql":  # a per-task setting: differs between datasets only, not a variant
        cfg["iql"]["expectile"] = 0.7 if dataset == HOPPER else 0.9
    for key, value in (config or {}).items():
        section = cfg
        *parents, leaf = key.split(".")
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = value
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    if scores is None:
        scores = episode_scores(algo, dataset, variant, seed)
    if csv:
        lines = ["step,episode,return,normalized_score"]
        for step, row in zip(steps, scores):
            for episode, score in enumerate(row):
                lines.append(f"{step},{episode},{score * 30.0!r},{float(score)!r}")
        (run_dir / "eval_returns.csv").write_text("\n".join(lines) + "\n")
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps(
                {
                    "global_step": steps[-1],
                    "seconds": 100.0 + seed,
                    "total_seconds": 3600.0 * (1 + seed),
                    "resumed": False,
                    "dataset": {
                        "id": dataset,
                        "transitions": 1000,
                        "episodes": 3,
                        "sha256": sha256,
                    },
                    "eval/normalized_score": float(scores[len(steps) - 1].mean()),
                }
            )
        )
    return run_dir


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A hydra sweep of Sf-AC (two divergences × two datasets × three seeds) and single runs of
    IQL (with a partial, a diverged and a missing run), XQL (2 seeds), BDPO (1 seed) and SAC."""
    root = tmp_path_factory.mktemp("runs")
    sweep = root / "multirun" / "sfac" / "2026-01-01_00-00-00"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    job = 0
    for dataset in (HOPPER, WALKER):
        for variant in ("jeffreys", "js"):
            for seed in range(3):
                run = write_run(sweep / f"{job}_seed{seed}", "sfac", dataset, seed, variant=variant)
                (run / ".hydra").mkdir()
                (run / ".hydra" / "config.yaml").write_text("algo: sfac\ndataset: ${x}\n")
                job += 1
    out = root / "outputs"
    for seed in range(3):
        write_run(out / "iql" / f"hopper_s{seed}", "iql", HOPPER, seed)
    # killed at step 5000: its CSV stops there, no summary.json
    partial = episode_scores("iql", HOPPER, "", 3)[:5]
    write_run(out / "iql" / "hopper_s3", "iql", HOPPER, 3, scores=partial, steps=STEPS[:5])
    (out / "iql" / "hopper_s3" / "summary.json").unlink()
    # diverged: nan from step 7000 on
    diverged = episode_scores("iql", HOPPER, "", 4)
    diverged[6:] = np.nan
    write_run(out / "iql" / "hopper_s4", "iql", HOPPER, 4, scores=diverged)
    # missing: killed before its first evaluation (config.yaml only)
    write_run(out / "iql" / "hopper_s5", "iql", HOPPER, 5, csv=False, summary=False)
    for seed in range(2):
        write_run(out / "iql" / f"walker_s{seed}", "iql", WALKER, seed)
    for seed in range(2):
        write_run(out / "xql" / f"hopper_s{seed}", "xql", HOPPER, seed)
    write_run(out / "bdpo" / "hopper_s0", "bdpo", HOPPER, 0)
    # a behavior-policy run (no dataset): listed as not reported
    (out / "sac" / "run").mkdir(parents=True)
    (out / "sac" / "run" / "config.yaml").write_text("algo: sac\nenv: Hopper-v5\n")
    return root


@pytest.fixture(scope="module")
def report(tree) -> rp.Report:
    return rp.build_report([tree], out=tree / "docs" / "results.md", reps=REPS)


@pytest.fixture(scope="module")
def page(tree) -> Path:
    """The page and figures written through main() (the console script's function)."""
    out = tree / "docs" / "results.md"
    assert rp.main([str(tree), "--out", str(out), "--reps", str(REPS)]) == 0
    return out


def cell(report, dataset, algo, variant=""):
    (found,) = [
        c for c in report.cells if c.dataset == dataset and c.algo == algo and c.variant == variant
    ]
    return found


def row(text: str, dataset: str, algo: str, variant: str = "–") -> list[str]:
    """The table row of (algo, variant) in the section of ``dataset``, split into cells."""
    section = text.split(f"(`{dataset}`)", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 10 and cells[0] == algo and cells[1] == variant:
            return cells
    raise AssertionError(f"no row {algo}/{variant} for {dataset}")


def expected_final_and_best(algo, dataset, variant, seeds, last_k=LAST_K):
    evals = [episode_scores(algo, dataset, variant, s).mean(axis=1) for s in seeds]
    return (
        np.array([e[-last_k:].mean() for e in evals]),
        np.array([e.max() for e in evals]),
    )


# ---------------------------------------------------------------------------------- numbers


def test_final_and_best_match_an_independent_computation(report, page):
    text = page.read_text()
    for dataset, algo, variant, seeds in (
        (HOPPER, "sfac", "js", range(3)),
        (WALKER, "sfac", "jeffreys", range(3)),
        (HOPPER, "iql", "", range(3)),
        (WALKER, "iql", "", range(2)),
    ):
        label = f"sfac.divergence={variant}" if variant else ""
        c = cell(report, dataset, algo, label)
        finals, bests = expected_final_and_best(algo, dataset, variant, seeds)
        np.testing.assert_allclose(c.finals, finals, rtol=0, atol=1e-9)
        np.testing.assert_allclose(c.bests, bests, rtol=0, atol=1e-9)
        cells = row(text, dataset, algo, label or "–")
        assert cells[2] == str(len(seeds)) or cells[2].startswith(f"{len(seeds)} of ")
        assert cells[3] == "10,000"  # the cell's last evaluation step
        assert cells[4] == f"{finals.mean():.1f} ± {finals.std(ddof=1):.1f}"
        assert cells[6] == f"{bests.mean():.1f} ± {bests.std(ddof=1):.1f}"
        # wall time: mean of summary.json total_seconds = 3600 (1 + seed)
        seconds = 3600.0 * np.mean([1 + s for s in seeds])
        wall = f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"
        assert cells[8] == wall
    assert "final (last 3 evaluations)" in text


def test_last_k_option_overrides_the_configs(tree):
    forced = rp.build_report([tree], out=tree / "x.md", last_k=1, reps=REPS)
    finals, _ = expected_final_and_best("iql", HOPPER, "", range(3), last_k=1)
    np.testing.assert_allclose(cell(forced, HOPPER, "iql").finals, finals, atol=1e-9)
    assert "final (last 1 evaluations)" in rp.render_markdown(forced)


def test_t_interval_against_a_hand_computation():
    """Three values 1, 2, 6: mean 3, s = √7, s/√3 = √(7/3); t(0.975, 2 df) = 4.302652729749462
    (a t table gives 4.303), so the interval is 3 ± 4.3027 · 1.5275 = [-3.5724, 9.5724]."""
    t_975_2df = 4.302652729749462
    half = t_975_2df * (7.0 / 3.0) ** 0.5
    low, high = rp.stats.t_mean_ci([1.0, 2.0, 6.0])
    assert (low, high) == pytest.approx((3.0 - half, 3.0 + half), abs=1e-12)
    assert (low, high) == pytest.approx((-3.5724, 9.5724), abs=1e-4)
    assert rp.stats.t_mean_ci([5.0]) is None
    assert rp.stats.t_mean_ci([4.0, 4.0, 4.0]) == (4.0, 4.0)  # no spread: a point
    # which interval a cell gets: t below 5 seeds, the bootstrap from 5 on
    assert [rp.stats.interval_kind(n) for n in (0, 1, 2, 4, 5, 9)] == [
        "none", "none", "t", "t", "bootstrap", "bootstrap"
    ]  # fmt: skip


def test_cells_of_few_seeds_show_a_t_interval(report, page):
    """A 3-seed cell: a Student t interval of the mean, not a bootstrap (which over 3 values is
    their min and max); the page says which interval its tables hold."""
    from scipy.stats import t

    text = page.read_text()
    c = cell(report, HOPPER, "sfac", "sfac.divergence=jeffreys")
    assert c.ci_kind == "t"
    finals, bests = expected_final_and_best("sfac", HOPPER, "jeffreys", range(3))
    for values, got, column in ((finals, c.final_ci, 5), (bests, c.best_ci, 7)):
        half = t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
        assert got == pytest.approx((values.mean() - half, values.mean() + half), abs=1e-9)
        assert got[0] < values.min() and values.max() < got[1]  # wider than the range here
        assert row(text, HOPPER, "sfac", "sfac.divergence=jeffreys")[column] == (
            f"[{got[0]:.1f}, {got[1]:.1f}]"
        )
    assert "With fewer than 5 seeds the CI is a Student t interval" in text
    section = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    assert "The 95% CIs are Student t intervals of the mean" in section


def test_cells_of_five_seeds_show_rliables_bootstrap(tmp_path):
    from rliable import library, metrics

    root = tmp_path / "runs"
    for seed in range(5):
        write_run(root / f"s{seed}", "iql", HOPPER, seed)
    for seed in range(3):
        write_run(root / f"x{seed}", "xql", HOPPER, seed)
    report = rp.build_report([root], out=tmp_path / "page.md", reps=REPS)
    c = cell(report, HOPPER, "iql")
    assert c.ci_kind == "bootstrap"
    finals, bests = expected_final_and_best("iql", HOPPER, "", range(5))
    before = np.random.get_state()[1].copy()  # noqa: NPY002 - rliable draws from the global RNG
    for values, got in ((finals, c.final_ci), (bests, c.best_ci)):
        saved = np.random.get_state()  # noqa: NPY002 - rliable draws from the global RNG
        np.random.seed(rp.DEFAULT_SEED)  # noqa: NPY002 - rliable draws from the global RNG
        _, ci = library.get_interval_estimates(
            {"x": values[:, None]}, lambda x: np.array([metrics.aggregate_mean(x)]), reps=REPS
        )
        np.random.set_state(saved)  # noqa: NPY002 - rliable draws from the global RNG
        assert got == (ci["x"][0, 0], ci["x"][1, 0])
        assert got[0] <= values.mean() <= got[1]
    assert rp.bootstrap_mean_ci(finals, reps=REPS) == c.final_ci
    # the report seeds the global RNG only inside its bootstrap calls
    rp.bootstrap_mean_ci(finals, reps=50)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # noqa: NPY002 - rliable draws from the global RNG
    text = rp.render_markdown(report)
    assert (
        "The 95% CIs are Student t intervals of the mean (fewer than 5 seeds: a bootstrap over "
        "so few values is only their range) for rows with fewer than 5 seeds, rliable's "
        "percentile bootstraps of the mean for the others." in text
    )


def test_aggregates_are_rliables_mean_and_iqm(tree, report, page, tmp_path):
    from rliable import library, metrics

    # with claim_seeds=2 both of IQL's cells have enough runs (hopper 3 valid, walker2d 2): each
    # dataset contributes its 2 lowest seeds
    two = rp.build_report([tree], out=tmp_path / "r.md", reps=REPS, claim_seeds=2)
    (agg,) = [a for a in two.aggregates if a.algo == "iql"]
    assert agg.datasets == [HOPPER, WALKER] and agg.runs_per_dataset == 2
    assert agg.trimmed == [(HOPPER, 3)] and agg.left_out == []
    hopper, _ = expected_final_and_best("iql", HOPPER, "", range(2))
    walker, _ = expected_final_and_best("iql", WALKER, "", range(2))
    matrix = np.stack([hopper, walker], axis=1)
    np.testing.assert_allclose(agg.matrix, matrix, atol=1e-9)
    np.random.seed(rp.DEFAULT_SEED)  # noqa: NPY002 - rliable draws from the global RNG
    points, cis = library.get_interval_estimates(
        {"g": matrix},
        lambda x: np.array([metrics.aggregate_mean(x), metrics.aggregate_iqm(x)]),
        reps=REPS,
    )
    assert (agg.mean, agg.iqm) == tuple(points["g"])
    assert agg.mean == pytest.approx(matrix.mean(axis=0).mean())
    assert agg.mean_ci == (cis["g"][0, 0], cis["g"][1, 0])
    assert agg.iqm_ci == (cis["g"][0, 1], cis["g"][1, 1])
    text = rp.render_markdown(two)
    aggregates = text.split("## Aggregates across datasets", 1)[1]
    line = next(x for x in aggregates.splitlines() if x.startswith("| iql |"))
    assert f"| {agg.mean:.1f} | [{agg.mean_ci[0]:.1f}, {agg.mean_ci[1]:.1f}] |" in line
    assert f"| {agg.iqm:.1f} | [{agg.iqm_ci[0]:.1f}, {agg.iqm_ci[1]:.1f}] |" in line
    # published mean over the same datasets: IQL hopper-medium 66.3, walker2d-medium-replay 73.9
    assert line.rstrip().endswith(f"| {(66.3 + 73.9) / 2:.1f} |")
    assert "2 of the 3 valid runs on `torchrl_sym/hopper/medium-v1` are used" in aggregates
    # bdpo ran on one dataset, sfac on two: the page says the rows are not comparable
    assert "the rows cover different datasets, so they are not comparable" in aggregates
    # the default claim_seeds=3: the 2-run walker2d cell is left out (and named) rather than
    # cutting hopper down to 2 runs
    (agg,) = [a for a in report.aggregates if a.algo == "iql"]
    assert agg.datasets == [HOPPER] and agg.runs_per_dataset == 3
    assert agg.left_out == [(WALKER, 2)] and agg.trimmed == []
    hopper, _ = expected_final_and_best("iql", HOPPER, "", range(3))
    assert agg.mean == pytest.approx(hopper.mean())
    aggregates = page.read_text().split("## Aggregates across datasets", 1)[1]
    line = next(x for x in aggregates.splitlines() if x.startswith("| iql |"))
    assert f"| {agg.mean:.1f} |" in line and line.rstrip().endswith("| 66.3 |")
    assert (
        f"iql: `{WALKER}` is left out, with 2 valid runs (an aggregate takes a row's cells with "
        "at least as many runs as a claim's verdict needs, where it has any)" in aggregates
    )
    # a row whose cells all have fewer runs keeps them all (as many runs as its smallest cell)
    (bdpo,) = [a for a in report.aggregates if a.algo == "bdpo"]
    assert bdpo.left_out == [] and bdpo.runs_per_dataset < 3


def test_per_kind_aggregates_use_only_their_kinds_datasets(report, page, tmp_path):
    """hopper-medium (medium) and walker2d-medium-replay (medium-replay): one view per kind, each
    aggregate over that kind's datasets alone, with its own runs per dataset."""
    assert [kind for kind, _ in report.kind_aggregates] == ["medium", "medium-replay"]
    by_kind = {kind: {a.label: a for a in aggs} for kind, aggs in report.kind_aggregates}
    iql_medium, iql_replay = by_kind["medium"]["iql"], by_kind["medium-replay"]["iql"]
    assert iql_medium.datasets == [HOPPER] and iql_medium.runs_per_dataset == 3
    assert iql_replay.datasets == [WALKER] and iql_replay.runs_per_dataset == 2
    hopper, _ = expected_final_and_best("iql", HOPPER, "", range(3))
    assert iql_medium.mean == pytest.approx(hopper.mean())
    assert "bdpo" in by_kind["medium"] and "bdpo" not in by_kind["medium-replay"]
    text = page.read_text().split("### Per data kind", 1)[1].split("Performance profile", 1)[0]
    medium, replay = text.split("**medium**", 1)[1].split("**medium-replay**", 1)
    line = next(x for x in medium.splitlines() if x.startswith("| iql |"))
    assert f"| 1 | 3 | {iql_medium.mean:.1f} |" in line
    line = next(x for x in replay.splitlines() if x.startswith("| iql |"))
    assert f"| 1 | 2 | {iql_replay.mean:.1f} |" in line
    # one kind only: no per-kind view
    single = tmp_path / "single"
    for seed in range(2):
        write_run(single / f"iql_s{seed}", "iql", HOPPER, seed)
    alone = rp.build_report([single], out=tmp_path / "r.md", reps=REPS)
    assert alone.kind_aggregates == []
    assert "### Per data kind" not in rp.render_markdown(alone)


def test_replay_and_medium_expert_tables_say_what_their_data_is(report, page, tmp_path):
    text = page.read_text()
    walker = text.split(f"(`{WALKER}`)", 1)[1].split("\n### ", 1)[0]
    hopper = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    assert (
        "What this data is: the replay buffer of our CrossQ learner from its start up to the "
        "medium snapshot (the policy of the medium dataset), 1,000 transitions in 3 episodes; "
        "D4RL's medium-replay holds 200k-400k transitions from SAC's" in walker
    )
    assert "What this data is" not in hopper
    expert = "torchrl_sym/hopper/medium-expert-v1"
    for seed in range(2):
        write_run(tmp_path / "me" / f"iql_s{seed}", "iql", expert, seed)
    me = rp.render_markdown(rp.build_report([tmp_path / "me"], out=tmp_path / "r.md", reps=REPS))
    assert (
        "What this data is: `torchrl_sym/hopper/medium-v1` followed by "
        "`torchrl_sym/hopper/expert-v1`" in me
    )


# ---------------------------------------------------------------------------------- grouping


def test_variants_are_detected_from_the_configs(report):
    # device, logger.*, train.progress differ between seeds, iql.expectile between datasets,
    # eval.mode is missing in the seed-1 configs: none of them makes a variant
    assert report.variant_keys == {
        "bdpo": [],
        "iql": [],
        "sfac": ["sfac.divergence"],
        "xql": [],
    }
    sfac = sorted((c.dataset, c.variant, len(c.runs)) for c in report.cells if c.algo == "sfac")
    assert sfac == [
        (HOPPER, "sfac.divergence=jeffreys", 3),
        (HOPPER, "sfac.divergence=js", 3),
        (WALKER, "sfac.divergence=jeffreys", 3),
        (WALKER, "sfac.divergence=js", 3),
    ]
    # the runs' .hydra/config.yaml and the sweep's multirun.yaml are not runs
    assert sum(len(c.runs) for c in report.cells) == 12 + 6 + 2 + 2 + 1


def test_variant_keys_can_be_forced_or_ignored(tree):
    forced = rp.build_report([tree], out=tree / "x.md", variant_keys=["device"], reps=REPS)
    labels = {(c.algo, c.variant) for c in forced.cells if c.dataset == HOPPER}
    assert ("sfac", "device=cpu") in labels and ("iql", "device=cuda") in labels
    merged = rp.build_report([tree], out=tree / "x.md", ignore_keys=["sfac.*"], reps=REPS)
    assert len(cell(merged, HOPPER, "sfac").runs) == 6


def test_task_name_agrees_with_the_recipes():
    from torchrl_sym.train.recipe import task_name

    for dataset in (
        HOPPER,
        "mujoco/hopper/medium-replay-v0",
        "/data/walker2d-medium-expert-v2.hdf5",
        "toy2d/moons",
        "D4RL/antmaze/umaze-diverse-v1",
    ):
        assert rp.task_name(dataset) == task_name(dataset)


# ---------------------------------------------------------------------------------- damaged runs


def test_missing_partial_and_diverged_runs_are_noted_and_excluded(tree, report, page):
    c = cell(report, HOPPER, "iql")
    assert [r.seed for r in c.valid] == [0, 1, 2]
    reasons = {r.seed: reason for r, reason in c.excluded}
    assert set(reasons) == {3, 4, 5}
    assert reasons[3].startswith("partial: last evaluation at step 5,000")
    assert reasons[4].startswith("diverged: non-finite normalized score (nan) at step 7,000")
    assert reasons[5].startswith("no eval_returns.csv")
    text = page.read_text()
    cells = row(text, HOPPER, "iql")
    assert cells[2].startswith("3 of 6 [n")
    section = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    for seed, words in ((3, "partial"), (4, "diverged"), (5, "no eval_returns.csv")):
        line = next(x for x in section.splitlines() if f"hopper_s{seed}` (seed {seed})" in x)
        assert words in line and line.startswith("- [n")
        assert "../outputs/iql/" in line  # relative to the page
    # the statistics are those of the three valid runs only
    finals, _ = expected_final_and_best("iql", HOPPER, "", range(3))
    assert cells[4] == f"{finals.mean():.1f} ± {finals.std(ddof=1):.1f}"


def test_every_run_is_listed_with_its_scores_and_directory(report, page):
    """The folded run table under each dataset: one row per run (excluded ones say so), with its
    final, best and the step of the best computed independently, and its directory."""
    text = page.read_text()
    section = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    runs_table = section.split("<details>", 1)[1].split("</details>", 1)[0]
    assert "Every run of this table (15)" in runs_table  # 6 sfac + 6 iql + 2 xql + 1 bdpo
    rows = {}
    for line in runs_table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[-1].startswith("`"):
            rows[cells[-1].strip("`")] = cells
    assert len(rows) == sum(len(c.runs) for c in report.cells_of(HOPPER)) == 15
    evals = episode_scores("iql", HOPPER, "", 2).mean(axis=1)
    iql2 = rows["../outputs/iql/hopper_s2"]
    assert iql2[:3] == ["iql", "–", "2"]
    assert iql2[3] == f"{evals[-LAST_K:].mean():.1f}"
    assert iql2[4] == f"{evals.max():.1f} ({STEPS[int(evals.argmax())]:,})"
    assert iql2[5] == f"{STEPS[-1]:,}" and iql2[6] == "3.0 h"  # total_seconds 3600 * (1 + 2)
    for seed in (3, 4, 5):  # partial, diverged, missing
        assert rows[f"../outputs/iql/hopper_s{seed}"][3:5] == ["excluded (see the notes)", "–"]
    assert rows["../outputs/iql/hopper_s5"][5] == "–"
    assert rows["../outputs/iql/hopper_s3"][6] == "–"  # no summary.json: no wall time


def test_curves_count_the_steps_of_the_evaluated_stage(tmp_path):
    """A run whose evaluated stage follows pretraining stages (SRPO's policy stage, BDPO's actor
    stage) is drawn from the start of that stage, beside one-stage runs; the table keeps the
    global steps."""
    root = tmp_path / "runs"
    late = [s + 50_000 for s in STEPS]  # evaluated after 50,000 pretraining steps
    for seed in range(2):
        write_run(root / f"bdpo_s{seed}", "bdpo", HOPPER, seed, steps=late)
        write_run(root / f"iql_s{seed}", "iql", HOPPER, seed)
    r = rp.build_report([root], out=tmp_path / "r.md", reps=50)
    bdpo, iql = cell(r, HOPPER, "bdpo"), cell(r, HOPPER, "iql")
    assert [run.stage_start for run in bdpo.valid] == [50_000, 50_000]
    assert [run.stage_start for run in iql.valid] == [0, 0]
    for c in (bdpo, iql):
        steps, mean, _ = rp._curve(c, reps=50, seed=0)
        assert list(steps) == list(STEPS)
    steps, mean, _ = rp._curve(bdpo, reps=50, seed=0)
    expected = np.mean([episode_scores("bdpo", HOPPER, "", s).mean(axis=1) for s in range(2)], 0)
    np.testing.assert_allclose(mean, expected, rtol=0, atol=1e-9)
    assert row(rp.render_markdown(r), HOPPER, "bdpo")[3] == f"{late[-1]:,}"  # global steps
    no_interval = write_run(tmp_path / "x", "iql", HOPPER, 0, steps=late, config={"eval": {}})
    assert rp.load_run(no_interval).stage_start == 0  # no eval.interval: no shift


def test_behavior_model_scores_are_named_under_the_table(tmp_path):
    root = tmp_path / "runs"
    runs = [write_run(root / f"s{seed}", "bdpo", HOPPER, seed) for seed in range(3)]
    result = {"episodes": 10, "sampling_steps": 20, "sample": {"normalized_score": 30.72},
              "deterministic": {"normalized_score": 32.57}}  # fmt: skip
    (runs[0] / "behavior_eval.json").write_text(json.dumps(result))
    (runs[1] / "behavior_eval.json").write_text('{"sample": {}}')
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "r.md", reps=50))
    notes = text.split("Notes:", 1)[1].split("<details>", 1)[0]
    assert (
        "bdpo: its diffusion behavior model alone, as a policy (scripts/eval_behavior.py, 10 "
        "episodes, 20-step DDPM): 30.7 sampled, 32.6 zero-noise: `runs/s0` (seed 0)" in notes
    )
    assert "bdpo: behavior_eval.json unreadable (KeyError): `runs/s1`" in notes
    assert "`runs/s2`" not in notes
    assert "its policy at" not in notes  # no policy_diagnostics in these files
    assert (
        len(cell(rp.build_report([root], out=tmp_path / "r.md", reps=50), HOPPER, "bdpo").valid)
        == 3
    )


def test_srpo_policy_diagnostics_are_noted_under_the_table(tmp_path):
    """behavior_eval.json's policy_diagnostics (scripts/eval_behavior.py) become a remark
    naming the run; a malformed block is named as unreadable without losing the behavior score."""
    root = tmp_path / "runs"
    runs = [write_run(root / f"s{seed}", "bdpo", HOPPER, seed) for seed in range(2)]
    actions = {"data": {"q": 92.86, "distance_to_data": 0.0},
               "policy": {"q": 94.28, "distance_to_data": 1.0544},
               "behavior": {"q": 92.85, "distance_to_data": 0.5856},
               "zeros": {"q": 92.16, "distance_to_data": 1.8725}}  # fmt: skip
    result = {"episodes": 10, "sampling_steps": 20, "sample": {"normalized_score": 36.19},
              "deterministic": {"normalized_score": 35.03},
              "policy_diagnostics": {"checkpoint": "ckpt_000300000.pt", "num_states": 4096,
                                     "actions": actions}}  # fmt: skip
    (runs[0] / "behavior_eval.json").write_text(json.dumps(result))
    result["policy_diagnostics"] = {"actions": {"policy": {"q": "x"}}, "num_states": 4096}
    (runs[1] / "behavior_eval.json").write_text(json.dumps(result))
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "r.md", reps=50))
    notes = text.split("Notes:", 1)[1].split("<details>", 1)[0]
    assert (
        "bdpo: its policy at ckpt_000300000.pt on 4,096 dataset states: actions 1.05 from the "
        "data's on average (behavior samples 0.59, the zero action 1.87); critic value of the "
        "policy's actions 94.3, of the data's 92.9, of behavior samples 92.8, of the zero action "
        "92.2: `runs/s0` (seed 0)" in notes
    )
    assert notes.count("its policy at") == 1
    assert "bdpo: behavior_eval.json: policy_diagnostics unreadable: `runs/s1` (seed 1)" in notes
    # BDPO's files also hold one sample of its actor beside the selected action
    actions["actor"] = {"q": 95.04, "distance_to_data": 1.2561}
    result["policy_diagnostics"] = {"checkpoint": "ckpt_000125000.pt", "num_states": 4096,
                                    "actions": actions}  # fmt: skip
    (runs[1] / "behavior_eval.json").write_text(json.dumps(result))
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "r.md", reps=50))
    assert (
        "bdpo: its policy at ckpt_000125000.pt on 4,096 dataset states: actions 1.05 from the "
        "data's on average (one sample of the actor 1.26, behavior samples 0.59, the zero action "
        "1.87); critic value of the policy's actions 94.3, of the actor's samples 95.0, of the "
        "data's 92.9, of behavior samples 92.8, of the zero action 92.2: `runs/s1` (seed 1)" in text
    )
    # the behavior score of both runs stays (one remark naming both)
    assert "35.0 zero-noise: `runs/s0` (seed 0), `runs/s1` (seed 1)" in notes


def test_one_seed_cell_shows_no_ci(report, page):
    assert cell(report, HOPPER, "bdpo").final_ci is None
    cells = row(page.read_text(), HOPPER, "bdpo")
    assert cells[2] == "1" and cells[5] == "1 seed" and cells[7] == "1 seed"
    assert "±" not in cells[4]
    (agg,) = [a for a in report.aggregates if a.algo == "bdpo"]
    assert agg.mean_ci is None


def test_damaged_files_and_stale_summaries_never_crash(tmp_path):
    root = tmp_path / "runs"
    write_run(root / "a", "iql", HOPPER, 0)
    write_run(root / "b", "iql", HOPPER, 1)
    # a cut-off last row and a stale summary (written before a resume that was then killed)
    with open(root / "b" / "eval_returns.csv", "a") as f:
        f.write("11000,0,12")
    summary = json.loads((root / "b" / "summary.json").read_text())
    summary["global_step"] = 5000
    (root / "b" / "summary.json").write_text(json.dumps(summary))
    # a header-only CSV, an inf score, a broken summary.json, a broken config.yaml
    write_run(root / "c", "iql", HOPPER, 2, scores=np.empty((0, 2)), steps=(), summary=False)
    scores = episode_scores("iql", HOPPER, "", 3)
    scores[-1, 0] = np.inf
    write_run(root / "d", "iql", HOPPER, 3, scores=scores)
    (root / "d" / "summary.json").write_text("{not json")
    (root / "e").mkdir()
    (root / "e" / "config.yaml").write_text("algo: [unclosed\n")
    # a second run of seed 0 on other data
    write_run(root / "f", "iql", HOPPER, 0, sha256="def456")
    out = tmp_path / "results.md"
    assert rp.main([str(root), "--out", str(out), "--reps", "50"]) == 0
    text = out.read_text()
    assert "1 malformed row(s) of eval_returns.csv skipped" in text
    assert "summary.json is older than the CSV (global_step 5000 < last evaluation 10,000)" in text
    assert "eval_returns.csv has no evaluation rows" in text
    assert "diverged: non-finite normalized score (inf) at step 10,000" in text
    assert "summary.json unreadable" in text
    assert "seed 0 has 2 valid runs" in text
    assert "runs trained on different data under one id" in text
    assert "## Directories not reported" in text and "config.yaml unreadable" in text
    cells = row(text, HOPPER, "iql")
    assert cells[2].startswith("3 of 5")
    assert cells[8].startswith("60 min (2 of 3) [n")  # the two seed-0 runs; b's summary is stale
    assert str(tmp_path) not in text


def test_resumed_run_is_grouped_by_its_config_yaml(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root / f"s{seed}", "iql", HOPPER, seed)
    record = root / "s1" / "resumes" / "2026-01-02_00-00-00"
    record.mkdir(parents=True)
    cfg = yaml.safe_load((root / "s1" / "config.yaml").read_text())
    cfg["train"]["steps"] = 20000
    cfg["resume"] = str(root / "s1")
    (record / "config.yaml").write_text(yaml.safe_dump(cfg))
    r = rp.build_report([root], out=tmp_path / "r.md", reps=50)
    c = cell(r, HOPPER, "iql")
    assert len(c.valid) == 2  # one cell: grouped by config.yaml, not by the resume record
    text = rp.render_markdown(r)
    assert "train.steps 10000 → 20000 (2026-01-02_00-00-00)" in text


def test_resumed_runs_are_named_with_the_step_they_continued_from(tmp_path):
    """summary.json's ``resumes`` (every resumed launch, oldest first) becomes a note on the wall
    time; a record without it falls back to the resumes/ records, then to the ``resumed`` flag."""
    root = tmp_path / "runs"
    runs = [write_run(root / f"s{seed}", "iql", HOPPER, seed) for seed in range(5)]

    def set_summary(run, **fields):
        summary = json.loads((run / "summary.json").read_text())
        summary.update(fields)
        (run / "summary.json").write_text(json.dumps(summary))

    set_summary(runs[1], resumed=True, resumes=[{"launch": "a", "at_step": 5000}])
    set_summary(runs[2], resumes=[{"launch": "a", "at_step": 0}, {"launch": "b", "at_step": 7000}])
    set_summary(runs[3], resumed=True)  # written before summaries listed their resumes
    record = runs[4] / "resumes" / "2026-01-02_00-00-00"  # a record, no summary field
    record.mkdir(parents=True)
    (record / "overrides.yaml").write_text("command_line: []\nresumed_at_step: 3000\n")
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "r.md", reps=50))
    wall = row(text, HOPPER, "iql")[8]
    assert wall.count("[n") == 4  # s0 was never resumed
    notes = text.split("Notes:", 1)[1].split("<details>", 1)[0]
    assert "iql: resumed at step 5,000; the wall time sums every segment: `runs/s1`" in notes
    assert "resumed from step 0 (no loadable checkpoint: restarted), then at step 7,000" in notes
    assert "the step is not recorded: its summary.json predates `resumes`" in notes
    assert "iql: resumed at step 3,000;" in notes and "`runs/s4`" in notes
    assert "`runs/s0`" not in notes


def _set_summary(run: Path, **fields) -> None:
    summary = json.loads((run / "summary.json").read_text())
    summary.update(fields)
    (run / "summary.json").write_text(json.dumps(summary))


def _provenance(commit, dirty):
    return {"commit": commit, "dirty": dirty, "python": "3.11.7", "versions": {"torch": "2.9"},
            "cpu": "x", "gpu": None, "threads": 1, "device": "cpu", "precision": "fp32"}  # fmt: skip


def test_each_table_names_the_commits_of_its_rows(tmp_path):
    """summary.json's provenance: the short commit of each row's runs, dirty marked; a summary
    that predates provenance counts as not recorded."""
    root = tmp_path / "runs"
    iql = [write_run(root / f"iql{s}", "iql", HOPPER, s) for s in range(3)]
    xql = [write_run(root / f"xql{s}", "xql", HOPPER, s) for s in range(2)]
    old = [write_run(root / f"bdpo{s}", "bdpo", HOPPER, s) for s in range(2)]
    sha_a, sha_b = "a4b3733" + "0" * 33, "5ac73f3" + "1" * 33
    for run in iql:
        _set_summary(run, provenance=_provenance(sha_a, False))
    _set_summary(xql[0], provenance=_provenance(sha_b, True))  # xql[1]: not recorded
    report = rp.build_report([root], out=tmp_path / "page.md", reps=50)
    assert cell(report, HOPPER, "iql").valid[0].provenance["commit"] == sha_a
    assert old[0].is_dir() and cell(report, HOPPER, "bdpo").valid[0].provenance is None
    text = rp.render_markdown(report)
    (line,) = [x for x in text.splitlines() if x.startswith("Code: ")]
    assert line.endswith(
        "bdpo: not recorded; iql: `a4b3733`; xql: `5ac73f3` dirty (1 of 2 runs), not recorded "
        "(1 of 2 runs)."
    )
    assert '"not recorded": a summary.json written before runs recorded their provenance' in line
    # every row alike: one phrase for all
    for run in (*xql, *old):
        _set_summary(run, provenance=_provenance(sha_a, False))
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "page.md", reps=50))
    assert "every row: `a4b3733`." in text


def test_each_table_names_the_rows_evaluated_from_legacy_start_states(tmp_path):
    """config.yaml without eval.start_states: the legacy protocol (seed + 100 + i); with
    ``disjoint``: the new one. The key does not split a cell into variants."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root / f"iql{seed}", "iql", HOPPER, seed)  # legacy: no eval.start_states
        write_run(
            root / f"xql{seed}", "xql", HOPPER, seed, config={"eval.start_states": "disjoint"}
        )
    write_run(root / "sql0", "sql", HOPPER, 0)
    write_run(root / "sql1", "sql", HOPPER, 1, config={"eval.start_states": "disjoint"})
    report = rp.build_report([root], out=tmp_path / "page.md", reps=50)
    assert report.variant_keys["sql"] == []  # a key the older runs lack is not a variant
    assert [r.start_states for r in cell(report, HOPPER, "sql").valid] == ["legacy", "disjoint"]
    text = rp.render_markdown(report)
    (line,) = [x for x in text.splitlines() if x.startswith("Evaluation start states")]
    assert (
        "Evaluation start states (`eval.start_states` in config.yaml): iql: legacy; sql: "
        "disjoint (1 of 2 runs), legacy (1 of 2 runs); xql: disjoint." in line
    )
    # seeds 0-2 with 2 episodes each: 102-103, 103-104, 104-105 share no start state
    assert "(seeds 0–2 of this table share 0 of their 2 start states)" in line
    assert "s + 100 + i" in line and "10⁹ + 10⁵·s + i" in line


def test_legacy_start_states_shared_by_neighbouring_seeds(tmp_path):
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root / f"iql{seed}", "iql", HOPPER, seed, config={"eval.episodes": 10})
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "page.md", reps=50))
    assert "every row: legacy. Legacy is the protocol before disjoint start states" in text
    assert "(seeds 0–2 of this table share 8 of their 10 start states)" in text
    assert "Disjoint (every run started since)" in text


# ---------------------------------------------------------------------------------- published


def test_published_numbers_are_in_their_own_labelled_column(page):
    text = page.read_text()
    assert "| published (paper, D4RL -v2) |" in text
    assert "D4RL-style data generated locally by torchrl_sym, not D4RL's data" in text
    assert "on D4RL's own `hopper-medium-v2` data" in text
    assert "on D4RL's own `walker2d-medium-replay-v2` data" in text
    assert row(text, HOPPER, "iql")[9].startswith("66.3 [p")
    assert row(text, WALKER, "iql")[9].startswith("73.9 [p")
    xql = row(text, HOPPER, "xql")[9]
    assert "71.1 XQL-C [p" in xql and "74.2 XQL-T [p" in xql
    assert row(text, HOPPER, "bdpo")[9].startswith("100.6 ± 0.7 [p")
    assert row(text, HOPPER, "sfac", "sfac.divergence=js")[9].startswith("not published [p")
    section = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    assert (
        "IQL: Kostrikov et al., IQL (ICLR 2022), Table 1; transcribed in docs/specs/baselines.md §6"
        in (section)
    )
    assert NOT_PUBLISHED["sfac"] in section
    # our columns never hold a published number: the final-score cells are our means
    assert row(text, HOPPER, "iql")[4] != "66.3"


def test_antmaze_maps_to_the_v0_tables_and_unknown_tasks_say_so(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root / f"a{seed}", "iql", "D4RL/antmaze/umaze-v1", seed)
        write_run(root / f"t{seed}", "iql", "test/hopper/recipe-v0", seed)
    text = rp.render_markdown(rp.build_report([root], out=tmp_path / "r.md", reps=50))
    assert "### antmaze-umaze (`D4RL/antmaze/umaze-v1`)" in text
    assert "| published (paper, D4RL -v0) |" in text
    assert "D4RL's own `antmaze-umaze-v0` data" in text
    assert row(text, "D4RL/antmaze/umaze-v1", "iql")[9].startswith("87.5 [p")
    assert "No paper table we transcribed has `hopper-recipe`." in text
    assert row(text, "test/hopper/recipe-v0", "iql")[9] == "–"


def test_published_data_matches_the_specs():
    def total(column, tasks=None):
        return round(
            sum(p.score for p in PUBLISHED if p.column == column and p.d4rl_version == "v2"), 1
        )

    # the sums the specs recompute (baselines.md §6, srpo.md §7, bdpo.md §7)
    assert total("AWAC") == 450.7
    assert total("TD3+BC") == 677.4
    assert total("IQL") == 692.6
    assert total("SQL") == 749.5
    assert total("XQL-C") == 725.3
    assert total("XQL-T") == 752.9
    assert total("SRPO") == 783.8  # mean 87.09
    assert total("BDPO") == 856.6
    assert (
        round(sum(p.score for p in PUBLISHED if p.column == "BDPO" and p.d4rl_version == "v0"), 1)
        == 519.6
    )
    assert (
        round(sum(p.score for p in PUBLISHED if p.column == "IQL" and p.d4rl_version == "v0"), 1)
        == 378.0
    )
    for p in PUBLISHED:
        assert p.spec.startswith("docs/specs/") and "§" in p.spec and "Table" in p.paper_table
        assert p.unverified == (p.column == "SQL")
    assert [p.score for p in published_for("srpo", "hopper-medium-expert")] == [100.1]
    assert published_for("sfac", "hopper-medium") == []
    keys = [(p.column, p.task) for p in PUBLISHED]
    assert len(keys) == len(set(keys))


# ---------------------------------------------------------------------------------- files, CLI


def test_figures_are_written_and_linked_relatively(page):
    text = page.read_text()
    figures = page.parent / "results"
    for name in (
        "curves_torchrl_sym_hopper_medium-v1.png",
        "curves_torchrl_sym_walker2d_medium-replay-v1.png",
        "performance_profile.png",
    ):
        path = figures / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"](results/{name})" in text


def test_check_passes_on_a_fresh_page_and_fails_on_a_modified_one(tree, page, capsys):
    args = [str(tree), "--out", str(page), "--reps", str(REPS)]
    assert rp.main([*args, "--check"]) == 0
    original = page.read_text()
    try:
        page.write_text(original.replace("| iql |", "| iql (edited) |", 1))
        assert rp.main([*args, "--check"]) == 1
        err = capsys.readouterr().err
        assert "is out of date with the runs (first difference at line" in err
        assert "Regenerate it: python -m torchrl_sym.report" in err
        page.write_text(original)
        profile = page.parent / "results" / "performance_profile.png"
        data = profile.read_bytes()
        profile.unlink()
        assert rp.main([*args, "--check"]) == 1
        assert "figures it links are missing" in capsys.readouterr().err
        profile.write_bytes(data)
        assert rp.main([*args, "--check"]) == 0
    finally:
        page.write_text(original)


def test_command_line_entry_point(tree, tmp_path):
    out = tmp_path / "docs" / "results.md"
    base = [sys.executable, "-m", "torchrl_sym.report", str(tree / "outputs"), "--out", str(out)]
    base += ["--reps", "100", "--figures-dir", str(tmp_path / "figs")]
    proc = subprocess.run(base, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "figs" / "performance_profile.png").is_file()
    assert "](../figs/performance_profile.png)" in out.read_text()
    proc = subprocess.run([*base, "--check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out.write_text(out.read_text() + "typed by hand\n")
    proc = subprocess.run([*base, "--check"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "out of date" in proc.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "torchrl_sym.report", str(empty), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "no run directories under" in proc.stderr


def test_the_public_names_are_importable_from_the_package():
    """The package keeps every name the single module had; its modules are where a reader
    looks for them."""
    import importlib

    for name in ("Aggregate", "Cell", "ClaimRow", "DataStat", "DataStatsError", "Report", "Run",
                 "bootstrap_mean_ci", "build_report", "claim_rows", "find_run_dirs",
                 "load_data_stats", "load_run", "main", "render_markdown", "task_name",
                 "write_figures", "welch_ci", "CSV_COLUMNS", "DEFAULT_LAST_K", "DEFAULT_REPS",
                 "DEFAULT_SEED", "DEFAULT_CLAIM_SEEDS", "IGNORED_KEYS"):  # fmt: skip
        assert hasattr(rp, name), name
    for module, names in (
        ("runs", ("Run", "find_run_dirs", "load_run")),
        ("stats", ("bootstrap_mean_ci", "t_mean_ci", "welch_ci", "holm")),
        ("cells", ("Cell", "Report", "build_report")),
        ("claims", ("ClaimRow", "claim_rows")),
        ("tables", ("render_markdown",)),
        ("figures", ("write_figures",)),
        ("cli", ("main",)),
    ):
        mod = importlib.import_module(f"torchrl_sym.report.{module}")
        assert all(getattr(mod, n) is getattr(rp, n, getattr(mod, n)) for n in names), module


@pytest.mark.parametrize("package", ["rliable", "matplotlib", "pandas", "scipy"])
def test_a_missing_dependency_is_one_line_naming_the_extra(package, tree, tmp_path):
    """``python -m torchrl_sym.report`` without an optional dependency: exit 2 and one line
    naming it and the extra, no traceback; the import itself still works."""
    code = (
        f"import sys; sys.modules[{package!r}] = None\n"
        "import runpy, torchrl_sym.report\n"
        f"sys.argv = ['torchrl_sym.report', {str(tree)!r}, '--out', {str(tmp_path / 'p.md')!r}]\n"
        "runpy.run_module('torchrl_sym.report', run_name='__main__', alter_sys=True)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: torchrl_sym.report needs {package}, which is not installed; install the "
        'report\'s extra: pip install "torchrl_sym[report]"'
    ]
    assert not (tmp_path / "p.md").exists()


def test_a_dependency_missing_below_another_is_named(monkeypatch):
    """rliable imports pandas (through arch): a library call names pandas and rliable."""
    monkeypatch.setitem(sys.modules, "pandas", None)
    for name in [m for m in sys.modules if m == "rliable" or m.startswith(("rliable.", "arch"))]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError) as err:
        rp.bootstrap_mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert str(err.value) == (
        "torchrl_sym.report needs pandas (imported by rliable), which is not installed; install "
        'the report\'s extra: pip install "torchrl_sym[report]"'
    )


def test_import_is_cheap():
    code = (
        "import sys, torchrl_sym.report\n"
        "print([m for m in ('numpy', 'matplotlib', 'rliable', 'torch') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr


def test_page_is_deterministic(tree, page):
    again = rp.render_markdown(rp.build_report([tree], out=page, reps=REPS))
    assert again == page.read_text()
    assert str(tree) not in again  # paths relative to the page: the same from any checkout


def test_preamble_is_shown_before_the_tables_and_checked(tree, tmp_path, capsys):
    preamble = tmp_path / "protocol.md"
    preamble.write_text("## Protocol\n\n`python recipes/iql.py -m experiment=cpu`\n")
    out = tmp_path / "page.md"
    args = [str(tree), "--out", str(out), "--reps", str(REPS), "--preamble", str(preamble)]
    assert rp.main(args) == 0
    text = out.read_text()
    assert text.index("## Protocol") < text.index("## Per dataset")
    assert "`python recipes/iql.py -m experiment=cpu`" in text
    assert rp.main([*args, "--check"]) == 0
    preamble.write_text("## Protocol\n\nchanged\n")
    assert rp.main([*args, "--check"]) == 1
    assert f"--preamble {preamble}" in capsys.readouterr().err  # the regenerate command names it
    missing = [str(tree), "--out", str(out), "--preamble", str(tmp_path / "nope.md")]
    assert rp.main(missing) == 2
    assert "--preamble" in capsys.readouterr().err


def test_preamble_links_are_rebased_onto_the_page(tree, tmp_path):
    """A relative link in the preamble points where it does from the preamble's folder, so it
    works in the file and on the page; URLs, anchors and code blocks stay as written."""
    folder = tmp_path / "results" / "cpu"
    folder.mkdir(parents=True)
    (folder / "HISTORY.md").write_text("# history\n")
    preamble = folder / "PROTOCOL.md"
    preamble.write_text(
        "See [the history](HISTORY.md#sessions), [docs](../../docs/report.md), "
        "[a site](https://example.org/x.md) and [here](#protocol).\n\n"
        "```bash\necho '[not a link](HISTORY.md)'\n```\n"
    )
    out = tmp_path / "docs" / "results.md"
    report = rp.build_report([tree], out=out, reps=REPS, preamble=preamble)
    text = rp.render_markdown(report)
    assert (
        "See [the history](../results/cpu/HISTORY.md#sessions), [docs](report.md), "
        "[a site](https://example.org/x.md) and [here](#protocol)." in text
    )
    assert "echo '[not a link](HISTORY.md)'" in text
    assert Path(os.path.normpath(out.parent / "../results/cpu/HISTORY.md")) == folder / "HISTORY.md"


def test_a_table_without_a_valid_run_names_no_empty_k(tmp_path):
    write_run(tmp_path / "runs" / "a", "iql", "torchrl_sym/hopper/medium-v1", 0, csv=False)
    out = tmp_path / "page.md"
    assert rp.main([str(tmp_path / "runs"), "--out", str(out), "--reps", str(REPS)]) == 0
    text = out.read_text()
    assert "final (last k evaluations): mean" in text and "k ∈ {}" not in text


# ---------------------------------------------------------------------------------- claims


def welch_by_hand(a, b):
    """Welch's interval from its textbook formula (independent of scipy's ttest_ind)."""
    from scipy.stats import t

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = t.ppf(0.975, df) * np.sqrt(va + vb)
    diff = a.mean() - b.mean()
    return diff - half, diff + half


def welch_p_by_hand(a, b):
    """Welch's two-sided p-value from its textbook formula: t = (ā - b̄) / √(va + vb) with
    Welch-Satterthwaite degrees of freedom."""
    from scipy.stats import t

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    return 2 * t.sf(abs(a.mean() - b.mean()) / np.sqrt(va + vb), df)


def test_holm_against_a_hand_example():
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005, 0.01, 0.03, 0.04, multiplied by
    4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; made non-decreasing: 0.02, 0.03, 0.06, 0.06. A None is
    not a test: it stays None and does not count in m."""
    assert rp.stats.holm([0.01, 0.04, None, 0.03, 0.005]) == pytest.approx(
        [0.03, 0.06, None, 0.06, 0.02], abs=1e-15
    )
    # at alpha = 0.05 Holm rejects only the first two (0.005 < 0.05/4, 0.01 < 0.05/3), where the
    # uncorrected tests would reject all four
    assert rp.stats.holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert rp.stats.holm([]) == [] and rp.stats.holm([None]) == [None]
    assert rp.stats.holm([0.02]) == [0.02]  # one test: no correction


def test_holm_turns_a_marginal_contradiction_into_not_contradicted(tmp_path):
    """Two "not below" comparisons: Sf-AC (Jeffreys) below IQL with p ≈ 0.032 (contradicted by
    the uncorrected interval), Sf-AC (JS) level with it (p ≈ 0.91). Holm doubles the smaller
    p-value to ≈ 0.063 > 0.05: not contradicted after the correction; the page says both."""
    runs = tmp_path / "runs"
    _constant_runs(runs, "iql", [60.0, 62.0, 64.0])
    _constant_runs(runs, "sfac", [56.0, 57.0, 58.0], variant="jeffreys")
    _constant_runs(runs, "sfac", [58.0, 66.0, 61.0], variant="js")
    report = rp.build_report([runs], out=tmp_path / "page.md", reps=REPS)
    rows = {r.cell.variant: r for r in report.claims}
    jeffreys, js = rows["sfac.divergence=jeffreys"], rows["sfac.divergence=js"]
    assert jeffreys.p == pytest.approx(welch_p_by_hand([56, 57, 58], [60, 62, 64]), abs=1e-12)
    assert js.p == pytest.approx(welch_p_by_hand([58, 66, 61], [60, 62, 64]), abs=1e-12)
    assert 0.025 < jeffreys.p < 0.05 < js.p
    assert jeffreys.p_holm == pytest.approx(2 * jeffreys.p) and js.p_holm == pytest.approx(js.p)
    assert jeffreys.raw_verdict == "contradicts" and jeffreys.verdict == "not contradicted"
    assert js.raw_verdict == js.verdict == "not contradicted"
    text = rp.render_markdown(report)
    assert "This section makes 2 comparisons, each a Welch test with a verdict." in text
    assert "Holm-corrected over those 2" in text
    assert "No claim is contradicted (Holm-corrected)" in text
    assert (
        "Contradicted by the uncorrected 95% interval only, not after the correction: sfac "
        "(sfac.divergence=jeffreys) below iql on `hopper-medium` (-5.0, p 0.032, Holm p 0.063)"
        in text
    )
    assert (
        f"| 3, 3 | {jeffreys.p:.3f} | {jeffreys.p_holm:.3f} | not contradicted | contradicts |"
        in text
    )


def test_claim_rows_on_the_fixture(report, page):
    rows = {
        (r.dataset, r.cell.label, r.other.label): r for r in report.claims
    }  # every pair where both cells have valid runs, and only those
    assert set(rows) == {
        (HOPPER, "sfac (sfac.divergence=jeffreys)", "iql"),
        (HOPPER, "sfac (sfac.divergence=jeffreys)", "xql"),
        (HOPPER, "sfac (sfac.divergence=js)", "iql"),
        (HOPPER, "sfac (sfac.divergence=js)", "xql"),
        (HOPPER, "bdpo", "iql"),  # published 100.6 vs 66.3
        (HOPPER, "bdpo", "xql"),
        (WALKER, "sfac (sfac.divergence=jeffreys)", "iql"),
        (WALKER, "sfac (sfac.divergence=js)", "iql"),
    }
    sfac = rows[(HOPPER, "sfac (sfac.divergence=jeffreys)", "iql")]
    a = expected_final_and_best("sfac", HOPPER, "jeffreys", range(3))[0]
    b = expected_final_and_best("iql", HOPPER, "", range(3))[0]  # the partial/diverged excluded
    assert sfac.diff == pytest.approx(a.mean() - b.mean(), abs=1e-9)
    assert sfac.ci == pytest.approx(welch_by_hand(a, b), abs=1e-9)
    assert sfac.expected == 0 and sfac.verdict == "not contradicted"  # 3 and 3 seeds, ahead
    assert (
        rows[(HOPPER, "sfac (sfac.divergence=js)", "xql")].verdict == "pending"
    )  # xql has 2 seeds
    assert (
        rows[(HOPPER, "sfac (sfac.divergence=js)", "xql")].ci is not None
    )  # the interval is shown anyway
    bdpo = rows[(HOPPER, "bdpo", "iql")]
    assert bdpo.expected == 1 and bdpo.ci is None and bdpo.verdict == "pending"  # 1 seed
    text = page.read_text()
    section = text.split("## The papers' claims on our runs", 1)[1].split("\n## ", 1)[0]
    assert text.index("## The papers' claims") < text.index("## Aggregates across datasets")
    assert (
        "No claim is contradicted (Holm-corrected) by a comparison with 3 or more seeds per cell."
        in section
    )
    # 8 comparisons; only hopper's Sf-AC vs IQL have 3 valid seeds in both cells (xql has 2, bdpo
    # 1, walker2d's iql 2): a family of 2
    assert (
        "This section makes 8 comparisons, 2 of them Welch tests with a verdict (6 pending)."
        in (section)
    )
    assert sfac.tested and sfac.p == pytest.approx(welch_p_by_hand(a, b), abs=1e-12)
    assert "| hopper-medium | bdpo above iql (published 100.6 vs 66.3) [c" in section
    assert "bdpo above xql (published 100.6 vs 71.1 XQL-C, 74.2 XQL-T)" in section
    assert "Zhu et al., arXiv 2508.04225" in section and "Gao et al., BDPO" in section
    lo, hi = sfac.ci
    assert (
        f"| {sfac.diff:+.1f} | [{lo:.1f}, {hi:.1f}] | 3, 3 | {sfac.p:.3f} | {sfac.p_holm:.3f} "
        "| not contradicted | not contradicted |" in section
    )


def _constant_runs(root, algo, finals, *, dataset=HOPPER, variant=""):
    for seed, value in enumerate(finals):
        scores = np.full((len(STEPS), 2), float(value))
        write_run(root / f"{algo}{variant}_s{seed}", algo, dataset, seed, variant=variant,
                  scores=scores)  # fmt: skip


def test_claim_verdicts_and_the_plain_statement(tmp_path):
    runs = tmp_path / "runs"
    _constant_runs(runs, "iql", [60.0, 62.0, 64.0])
    _constant_runs(runs, "xql", [40.0, 41.0, 43.0])
    _constant_runs(runs, "sql", [50.0, 52.0, 51.0])
    _constant_runs(runs, "sfac", [30.0, 33.0, 31.0], variant="jeffreys")  # below iql and xql
    _constant_runs(runs, "sfac", [58.0, 66.0, 61.0], variant="js")  # level with iql
    _constant_runs(runs, "bdpo", [20.0, 22.0, 25.0])  # published above iql: contradicted
    _constant_runs(runs, "srpo", [70.0, 72.0, 71.0])  # published above iql (95.5 vs 66.3): agrees
    out = tmp_path / "page.md"
    report = rp.build_report([runs], out=out, reps=REPS)
    verdicts = {(r.cell.label, r.other.label): r.verdict for r in report.claims}
    assert verdicts == {
        ("sfac (sfac.divergence=jeffreys)", "iql"): "contradicts",
        ("sfac (sfac.divergence=jeffreys)", "xql"): "contradicts",
        ("sfac (sfac.divergence=js)", "iql"): "not contradicted",
        ("sfac (sfac.divergence=js)", "xql"): "not contradicted",
        ("bdpo", "iql"): "contradicts",
        ("bdpo", "xql"): "contradicts",
        ("bdpo", "srpo"): "contradicts",  # published 100.6 vs 95.5
        ("srpo", "iql"): "agrees",
        ("srpo", "xql"): "agrees",
        ("sfac (sfac.divergence=jeffreys)", "sql"): "contradicts",
        ("sfac (sfac.divergence=js)", "sql"): "not contradicted",
        ("bdpo", "sql"): "contradicts",
        ("srpo", "sql"): "agrees",
    }
    # these differences are large or far from significant: Holm changes none of the 13 verdicts
    assert {(r.cell.label, r.other.label): r.raw_verdict for r in report.claims} == verdicts
    assert sum(r.tested for r in report.claims) == 13
    text = rp.render_markdown(report)
    assert (
        "Contradicted on our runs (Holm-corrected): sfac (sfac.divergence=jeffreys) is below iql "
        "on `hopper-medium`" in text
    )
    assert "bdpo is below srpo on `hopper-medium`" in text
    assert "| **contradicts** |" in text
    assert "(3 agrees, 7 contradicts, 3 not contradicted.)" in text
    assert "srpo above sql (published 95.5 vs 75.5 (unverified))" in text  # the spec's [U] tag

    # an order the papers put the other way: SRPO below BDPO is claimed by BDPO's table only,
    # and a published "below" is checked from the claiming side (srpo has no claim against bdpo)
    level = tmp_path / "level"
    _constant_runs(level, "iql", [60.0, 62.0, 64.0])
    _constant_runs(level, "srpo", [55.0, 66.0, 63.0])
    report = rp.build_report([level], out=out, reps=REPS)
    ((row),) = report.claims
    assert row.verdict == "not resolved" and row.ci[0] < 0 < row.ci[1]
    text = rp.render_markdown(report)
    assert (
        "No claim is contradicted (Holm-corrected) by a comparison with 3 or more seeds per "
        "cell. Not confirmed on our runs (not significant after the correction, or no "
        f"interval): srpo above iql on `hopper-medium` ({row.diff:+.1f})." in text
    )


def test_published_order_needs_every_column_on_one_side():
    from torchrl_sym.published import published_order

    assert published_order("srpo", "iql", "hopper-medium") == 1  # 95.5 vs 66.3
    assert published_order("iql", "srpo", "hopper-medium") == -1
    # SRPO 92.2 vs XQL-C 89.8 and XQL-T 94.2 on halfcheetah-medium-expert: no order
    assert published_order("srpo", "xql", "halfcheetah-medium-expert") == 0
    assert published_order("srpo", "xql", "walker2d-medium-replay") == 1  # 84.6 vs 75.9, 82.2
    assert published_order("sfac", "iql", "hopper-medium") == 0  # Sf-AC publishes no numbers
    assert published_order("bdpo", "iql", "antmaze-umaze") == 1  # the v0 tables
    assert published_order("iql", "iql", "pen-human") == 0  # no table


def test_claim_seeds_option(tree, tmp_path, capsys):
    out = tmp_path / "page.md"
    args = [str(tree), "--out", str(out), "--reps", str(REPS)]
    assert rp.main([*args, "--claim-seeds", "2"]) == 0
    text = out.read_text()
    assert "A verdict needs 2 valid seeds in both cells" in text
    section = text.split("## The papers' claims on our runs", 1)[1].split("\n## ", 1)[0]
    assert section.count("| pending (2 seeds each needed) |") == 2  # bdpo's one seed only
    assert rp.main([*args, "--check"]) == 1  # the default (3) would write another page
    assert "--claim-seeds" not in capsys.readouterr().err
    assert rp.main([*args, "--claim-seeds", "2", "--check"]) == 0
    out.write_text("stale\n")
    assert rp.main([*args, "--claim-seeds", "2", "--check"]) == 1
    assert "--claim-seeds 2" in capsys.readouterr().err  # the regenerate command keeps it
    assert rp.main([*args, "--claim-seeds", "1"]) == 2
    assert "--claim-seeds must be >= 2" in capsys.readouterr().err
    with pytest.raises(ValueError, match="claim_seeds must be >= 2"):
        rp.build_report([tree], out=out, claim_seeds=1)


def test_a_page_without_claim_pairs_has_no_claims_section(tmp_path):
    _constant_runs(tmp_path / "runs", "iql", [60.0, 62.0, 64.0])
    report = rp.build_report([tmp_path / "runs"], out=tmp_path / "page.md", reps=REPS)
    assert report.claims == []
    assert "## The papers' claims" not in rp.render_markdown(report)


# ---------------------------------------------------------------------------------- data stats


def _hopper_stats(sha256: str) -> dict:
    """docs/datasets.json's entry for HOPPER (its data normalized: 28.8)."""
    return {
        "return_mean": 964.7,
        "ref_min_score": 19.8,
        "ref_max_score": 3303.7,
        "sha256": sha256,
    }


def test_data_stats_show_the_datas_own_level(tree, tmp_path, capsys):
    stats = tmp_path / "datasets.json"
    stats.write_text(
        json.dumps(
            {
                HOPPER: _hopper_stats("abc123"),  # the runs' sha256 (write_run's default)
                WALKER: {
                    "return_mean": 500.0,
                    "ref_min_score": 0.0,
                    "ref_max_score": 2000.0,
                    "sha256": "fff999",
                },
                "no/numbers-v0": {"episodes": 3},
                "degenerate-v0": {"return_mean": 1, "ref_min_score": 5, "ref_max_score": 5},
            }
        )
    )
    loaded = rp.load_data_stats(stats)
    assert set(loaded) == {HOPPER, WALKER}
    assert loaded[HOPPER].score == pytest.approx(100 * (964.7 - 19.8) / (3303.7 - 19.8))
    out = tmp_path / "docs" / "page.md"
    args = [str(tree), "--out", str(out), "--reps", str(REPS), "--data-stats", str(stats)]
    assert rp.main(args) == 0
    text = out.read_text()
    hopper = text.split(f"(`{HOPPER}`)", 1)[1].split("\n### ", 1)[0]
    assert (
        "The data itself: its episodes' mean return is 964.7, normalized **28.8** "
        "(`../datasets.json`; the dashed line in the curves)" in hopper
    )
    assert "Caution" not in hopper
    walker = text.split(f"(`{WALKER}`)", 1)[1].split("\n## ", 1)[0]
    assert "normalized **25.0**" in walker
    caution = (
        "Caution: the runs trained on data with sha256 abc123, the statistics describe fff999."
    )
    assert caution in walker
    assert rp.main([*args, "--check"]) == 0
    assert rp.main([*args[:-2], "--check"]) == 1  # without it the page differs ...
    assert f"--data-stats {stats}" not in capsys.readouterr().err
    out.write_text("stale\n")
    assert rp.main([*args, "--check"]) == 1
    assert f"--data-stats {stats}" in capsys.readouterr().err  # ... and the command keeps it

    for bad, message in (
        (tmp_path / "missing.json", "no such file"),
        (tmp_path / "list.json", "expected a JSON object"),
        (tmp_path / "broken.json", "not valid JSON"),
    ):
        if bad.name == "list.json":
            bad.write_text("[1, 2]")
        elif bad.name == "broken.json":
            bad.write_text("{")
        assert rp.main([*args[:-1], str(bad)]) == 2
        err = capsys.readouterr().err
        assert f"--data-stats {bad}" in err and message in err


def test_data_stats_line_is_drawn_in_the_curves(tree, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    stats = tmp_path / "datasets.json"
    stats.write_text(json.dumps({HOPPER: {"return_mean": 50, "ref_min_score": 0,
                                          "ref_max_score": 100}}))  # fmt: skip
    lines = []
    real = Axes.axhline

    def spy(self, y=0, *a, **k):
        lines.append((y, k.get("label")))
        return real(self, y, *a, **k)

    monkeypatch.setattr(Axes, "axhline", spy)
    report = rp.build_report([tree], out=tmp_path / "page.md", reps=REPS, data_stats=stats)
    rp.write_figures(report)
    # one line in each hopper panel (one per row of its table); walker has no statistics
    assert lines == [(50.0, "the data itself (50.0)")] * len(report.cells_of(HOPPER))


@pytest.fixture
def saved_figures(monkeypatch):
    """The matplotlib Figures write_figures saves, by file name."""
    from matplotlib.figure import Figure

    saved = {}
    real = Figure.savefig

    def spy(self, path, *args, **kwargs):
        saved[Path(path).name] = self
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def test_curves_are_small_multiples_with_references_and_an_outside_legend(tmp_path, saved_figures):
    """One panel per row of the table, sharing axes; the data's level and the best baseline in
    every panel (the best baseline not in its own); the legend outside every axes; and a
    diverged (finite, far below) row does not flatten the others' y-range."""
    root = tmp_path / "runs"
    for seed in range(3):
        write_run(root / f"iql{seed}", "iql", HOPPER, seed)
        write_run(root / f"sfac{seed}", "sfac", HOPPER, seed, variant="js")
        low = episode_scores("xql", HOPPER, "", seed)
        low[4:] = -400.0 - 50 * seed  # finite, so a valid run: it collapses after step 4000
        write_run(root / f"xql{seed}", "xql", HOPPER, seed, scores=low)
    write_run(root / "awac0", "awac", HOPPER, 0)
    stats = tmp_path / "datasets.json"
    stats.write_text(json.dumps({HOPPER: {"return_mean": 30, "ref_min_score": 0,
                                          "ref_max_score": 100}}))  # fmt: skip
    report = rp.build_report([root], out=tmp_path / "page.md", reps=REPS, data_stats=stats)
    rp.write_figures(report)
    figure = saved_figures["curves_torchrl_sym_hopper_medium-v1.png"]
    panels = [ax for ax in figure.axes if ax.get_visible()]
    assert [ax.get_title().split("\n")[0] for ax in panels] == [c.label for c in report.cells]
    assert all(ax.get_legend() is None for ax in figure.axes)  # no legend inside an axes ...
    (legend,) = figure.legends  # ... one for the figure, outside the panels
    labels = [t.get_text() for t in legend.get_texts()]
    best = np.mean(expected_final_and_best("iql", HOPPER, "", range(3))[0])
    assert f"best baseline: iql (final {best:.1f})" in labels
    assert "the data itself (30.0)" in labels and "one seed" in labels
    assert any(label.startswith("95% CI of the mean (Student t below 5 seeds") for label in labels)
    # shared y: the collapsed xql row (-400 and below) does not set the limits
    low, high = panels[0].get_ylim()
    assert all(ax.get_ylim() == (low, high) for ax in panels)
    assert -25.0 <= low < 30.0 and high < 125.0
    xql = panels[[c.algo for c in report.cells].index("xql")]
    assert any("mean leaves the axes" in t.get_text() for t in xql.texts)
    # the best baseline (dash-dot) is drawn in the other panels, not in its own
    iql = panels[[c.algo for c in report.cells].index("iql")]
    sfac = panels[[c.algo for c in report.cells].index("sfac")]
    assert not any(line.get_linestyle() == "-." for line in iql.get_lines())
    assert sum(line.get_linestyle() == "-." for line in sfac.get_lines()) == 1
    assert "(best baseline)" in iql.get_title()


def test_curve_bands_follow_the_tables_interval_rule(tree, report):
    """The per-step band of a 3-seed row is the Student t interval of the mean at each step."""
    from scipy.stats import t

    c = cell(report, HOPPER, "sfac", "sfac.divergence=js")
    steps, mean, ci = rp._curve(c, reps=REPS, seed=0)
    evals = np.stack([episode_scores("sfac", HOPPER, "js", s).mean(axis=1) for s in range(3)])
    half = t.ppf(0.975, 2) * evals.std(axis=0, ddof=1) / np.sqrt(3)
    np.testing.assert_allclose(mean, evals.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(ci, np.stack([mean - half, mean + half]), atol=1e-9)
    assert list(steps) == list(STEPS)


def test_a_stacked_seed_counts_its_share_of_the_wall_time(tmp_path):
    from torchrl_sym.report import load_run

    run_dir = tmp_path / "iql" / "seed_0"
    write_run(run_dir, "iql", HOPPER, 0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert load_run(run_dir).wall_seconds == 3600.0
    summary["stacked"] = {"seeds": 3, "index": 0, "seed": 0}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    assert load_run(run_dir).wall_seconds == 1200.0


def _sweep(tmp_path: Path, *, recorded_offset: float = 0.0, unfinished: bool = False) -> Path:
    """results/{cpu,tuning} as scripts/tune.py leaves them: a reporting run of SRPO under cpu/,
    and a beta sweep (0.2 published, 0.02) on tuning seeds 100-102 under tuning/."""
    root = tmp_path / "results"
    write_run(
        root / "cpu" / "hopper-medium" / "srpo" / "0_seed0",
        "srpo",
        HOPPER,
        0,
        scores=episode_scores("iql", HOPPER, "", 0),
    )
    sweep = root / "tuning" / "hopper-medium" / "srpo"
    values = []
    for beta, shift in ((0.2, 0.0), (0.02, 12.0)):
        finals = {}
        for seed in (100, 101, 102):
            scores = episode_scores("iql", HOPPER, "", seed - 100) + shift
            run = write_run(
                sweep / f"srpo.beta_{beta}" / f"seed_{seed}",
                "srpo",
                HOPPER,
                seed,
                scores=scores,
                summary=not (unfinished and beta == 0.02 and seed == 102),
                config={"srpo.beta": beta},
            )
            finals[run.name] = float(scores[-LAST_K:].mean())
        values.append(
            {
                "value": beta,
                "seeds": finals,
                "mean_final": sum(finals.values()) / 3 + recorded_offset,
            }
        )
    (sweep / "selection_srpo.beta.json").write_text(
        json.dumps(
            {
                "protocol": "results/cpu/TUNING.md",
                "algo": "srpo",
                "task": "hopper-medium",
                "key": "srpo.beta",
                "fixed": [],
                "published": 0.2,
                "tuning_seeds": [100, 101, 102],
                "tie": 1.0,
                "values": values,
                "chosen": 0.02,
                "when": "2026-12-07 20:00 UTC",
            }
        )
    )
    return root


def test_tuning_sweeps_get_a_section_of_their_own_read_from_their_logs(tmp_path):
    root = _sweep(tmp_path)
    page = tmp_path / "docs" / "results.md"
    report = rp.build_report([root / "cpu"], out=page, reps=REPS)
    # the sweep's runs are not rows of the tables (they live beside cpu/, not under it)
    assert [len(c.runs) for c in report.cells] == [1]
    (sweep,) = report.sweeps
    assert (sweep.algo, sweep.task, sweep.key, sweep.chosen) == (
        "srpo",
        "hopper-medium",
        "srpo.beta",
        0.02,
    )
    expected = {
        beta: np.mean(
            [(episode_scores("iql", HOPPER, "", s) + shift)[-LAST_K:].mean() for s in range(3)]
        )
        for beta, shift in ((0.2, 0.0), (0.02, 12.0))
    }
    for v in sweep.values:
        assert v.mean_final == pytest.approx(expected[v.value], abs=1e-9)
    assert sweep.remarks == []
    text = rp.render_markdown(report)
    section = text[text.index("## Tuning sweeps") :]
    assert "tuning seeds" in section
    assert "### hopper-medium · srpo · `srpo.beta`" in section
    assert "| 0.2 | " in section and "| published |" in section
    row = next(line for line in section.splitlines() if line.startswith("| 0.02 |"))
    assert row.endswith("| **chosen** |") and f"{expected[0.02]:.1f}" in row
    assert "python scripts/tune.py srpo hopper-medium srpo.beta=0.2,0.02" in section
    assert "`../results/tuning/hopper-medium/srpo`" in section
    # --tuning names the folder; an empty one renders nothing
    other = rp.build_report([root / "cpu"], out=page, reps=REPS, tuning=[tmp_path / "none"])
    assert other.sweeps == [] and "## Tuning sweeps" not in rp.render_markdown(other)
    assert any("no such tuning folder" in reason for _, reason in other.skipped)


def test_a_sweep_whose_selection_disagrees_with_its_logs_is_flagged(tmp_path):
    root = _sweep(tmp_path, recorded_offset=0.5, unfinished=True)
    report = rp.build_report([root / "cpu"], out=tmp_path / "results.md", reps=REPS)
    (sweep,) = report.sweeps
    unfinished = next(v for v in sweep.values if v.value == 0.02)
    assert unfinished.mean_final is None and unfinished.finals["seed_102"] is None
    text = rp.render_markdown(report)
    assert "the logs give a mean final of" in text  # beta 0.2: recorded 0.5 off
    assert "do not hold every tuning seed finished" in text  # beta 0.02: seed 102 unfinished
    assert "the sweep is incomplete (srpo.beta=0.02 without every tuning seed" in text
    assert "its choice is provisional" in text
    bad = root / "tuning" / "walker2d-medium" / "srpo"
    bad.mkdir(parents=True)
    (bad / "selection_srpo.beta.json").write_text('{"algo": "srpo"}')
    report = rp.build_report([root / "cpu"], out=tmp_path / "results.md", reps=REPS)
    assert any(
        path.name == "selection_srpo.beta.json" and "no 'task'" in reason
        for path, reason in report.skipped
    )


def test_a_bf16_or_tuned_cell_is_labelled_even_when_all_its_runs_agree(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root / f"bdpo_{seed}", "bdpo", HOPPER, seed, config={"precision": "bf16"})
        write_run(root / f"iql_{seed}", "iql", HOPPER, seed, config={"precision": "fp32"})
        write_run(root / f"sql_{seed}", "sql", HOPPER, seed, config={"hparams": "tuned"})
        write_run(root / f"sql_p{seed}", "sql", WALKER, seed)  # predates the key: published
    report = rp.build_report([root], out=tmp_path / "results.md", reps=REPS)
    labels = {(c.algo, c.dataset): c.variant for c in report.cells}
    assert labels[("bdpo", HOPPER)] == "precision=bf16"
    assert labels[("iql", HOPPER)] == ""  # fp32: the plain row
    assert labels[("sql", HOPPER)] == "hparams=tuned"
    assert labels[("sql", WALKER)] == "hparams=published"  # older than the key
    ignored = rp.build_report(
        [root], out=tmp_path / "results.md", reps=REPS, ignore_keys=["precision"]
    )
    assert {c.variant for c in ignored.cells if c.algo == "bdpo"} == {""}


def test_a_table_whose_rows_trained_on_other_bits_names_the_rows(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        write_run(root / f"iql_{seed}", "iql", HOPPER, seed, sha256="804fbd60aaaa")
        write_run(
            root / f"bdpo_{seed}",
            "bdpo",
            HOPPER,
            seed,
            sha256="81d92791bbbb",
            config={"precision": "bf16"},
        )
    stats = tmp_path / "datasets.json"
    stats.write_text(json.dumps({HOPPER: _hopper_stats("804fbd60aaaa")}))
    report = rp.build_report([root], out=tmp_path / "page.md", reps=REPS, data_stats=stats)
    text = rp.render_markdown(report)
    assert (
        "Caution: the statistics describe the data with sha256 804fbd60aaaa, and the rows "
        "trained on data with sha256 bdpo (precision=bf16): 81d92791bbbb; iql: 804fbd60aaaa"
    ) in text
