"""The tuning protocol's pieces: the selection rule, final scores, hparams=tuned, and a sweep."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from torchrl_sym.train.recipe import apply_hparams

ROOT = Path(__file__).resolve().parents[1]


def _tune():
    spec = importlib.util.spec_from_file_location("tune", ROOT / "scripts" / "tune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_selection_rule_best_mean_then_published_then_nearest_on_a_log_scale():
    select = _tune().select
    assert select({0.2: -2.0, 0.02: 11.7, 0.002: 39.8}, published=0.2) == 0.002
    # a tie within one point goes to the published value ...
    assert select({0.2: 39.5, 0.02: 39.8, 0.002: 20.0}, published=0.2) == 0.2
    # ... or, when it is not tied, to the tied value nearest it on a log scale
    assert select({0.2: 10.0, 0.05: 39.0, 0.002: 39.8}, published=0.2) == 0.05
    assert select({0.2: 10.0, 0.005: 39.0, 0.002: 39.9}, published=0.2, tie=0.5) == 0.002
    assert select({False: 30.0, True: 30.5}, published=False) is False
    assert select({0.2: None, 0.02: 5.0}, published=0.2) == 0.02  # unfinished values drop out
    with pytest.raises(ValueError, match="no value"):
        select({0.2: None}, published=0.2)


def test_final_score_is_the_mean_of_the_last_k_evaluation_means(tmp_path):
    rows = ["step,episode,return,normalized_score"]
    for step, scores in ((10, (0.0, 2.0)), (20, (4.0, 6.0)), (30, (8.0, 10.0))):
        rows += [f"{step},{i},0.0,{s}" for i, s in enumerate(scores)]
    (tmp_path / "eval_returns.csv").write_text("\n".join(rows) + "\n")
    final_score = _tune().final_score
    assert final_score(tmp_path, 2) == pytest.approx((5.0 + 9.0) / 2)
    assert final_score(tmp_path, 10) == pytest.approx((1.0 + 5.0 + 9.0) / 3)
    assert final_score(tmp_path / "missing", 2) is None


def test_apply_choice_writes_a_tuned_block_and_keeps_the_published_settings(tmp_path, monkeypatch):
    tune = _tune()
    configs = tmp_path / "configs"
    (configs / "tasks" / "srpo").mkdir(parents=True)
    task_file = configs / "tasks" / "srpo" / "halfcheetah-medium.yaml"
    task_file.write_text("# SRPO on halfcheetah-medium: the official beta.\nsrpo:\n  beta: 0.2\n")
    monkeypatch.setattr(tune, "CONFIGS", configs)
    source = tmp_path / "results" / "selection_srpo.beta.json"
    tune.apply_choice("srpo", "halfcheetah-medium", "srpo.beta", 0.005, source)
    tune.apply_choice("srpo", "halfcheetah-medium", "srpo.eps_baseline", True, source)
    text = task_file.read_text()
    cfg = OmegaConf.create(text)
    assert cfg.srpo.beta == 0.2  # published, unchanged
    assert cfg.tuned.srpo.beta == 0.005 and cfg.tuned.srpo.eps_baseline is True
    assert text.count("tuned:") == 2  # the block once, and its one comment line
    assert "results/cpu/TUNING.md" in text and str(source) in text


def test_hparams_tuned_merges_the_tuned_block_and_names_a_task_without_one():
    cfg = OmegaConf.create(
        {
            "algo": "srpo",
            "task": "halfcheetah-medium",
            "hparams": "tuned",
            "srpo": {"beta": 0.2, "eps_baseline": False},
            "tuned": {"srpo": {"beta": 0.005}},
        }
    )
    merged = apply_hparams(cfg)
    assert merged.srpo.beta == 0.005 and merged.srpo.eps_baseline is False
    published = apply_hparams(OmegaConf.merge(cfg, {"hparams": "published"}))
    assert published.srpo.beta == 0.2
    with pytest.raises(ValueError, match="no tuned settings for task=hopper-medium"):
        apply_hparams(
            OmegaConf.create({"algo": "srpo", "task": "hopper-medium", "hparams": "tuned"})
        )
    with pytest.raises(ValueError, match="hparams='best'"):
        apply_hparams(OmegaConf.create({"hparams": "best"}))


@pytest.mark.slow
def test_a_small_srpo_sweep_shares_its_stages_and_selects(tmp_path, recipe_dataset):
    import subprocess

    small = [
        "profile=smoke",
        f"dataset={recipe_dataset}",
        "srpo.behavior.hidden_dim=32",
        "srpo.behavior.num_blocks=1",
        "srpo.critic.hidden=[32,32]",
        "srpo.policy.hidden=[32,32]",
        "logger.backend=none",
    ]
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "tune.py"),
        "srpo",
        "hopper-medium",
        "srpo.beta=0.05,0.5",
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "results"),
        "--extra",
        *small,
    ]
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=1200)
    base = tmp_path / "runs" / "tuning" / "hopper-medium" / "srpo"
    assert sorted(p.name for p in (base / "shared_stages").glob("seed_*")) == [
        "seed_100",
        "seed_101",
        "seed_102",
    ]
    selection = json.loads(
        (tmp_path / "results" / "hopper-medium" / "srpo" / "selection_srpo.beta.json").read_text()
    )
    assert selection["published"] == 0.05 and selection["chosen"] in (0.05, 0.5)
    assert selection["tuning_seeds"] == [100, 101, 102]
    assert all(v["mean_final"] is not None for v in selection["values"])
    for value in ("0.05", "0.5"):
        run = tmp_path / "results" / "hopper-medium" / "srpo" / f"srpo.beta_{value}"
        assert len(list(run.glob("seed_*/eval_returns.csv"))) == 3


def test_a_sweep_refuses_to_start_on_other_bits_of_the_data(tmp_path, monkeypatch, capsys):
    def record(folder: Path, sha: str) -> None:
        folder.mkdir(parents=True)
        dataset = {"id": "torchrl_sym/hopper/medium-v1", "sha256": sha}
        (folder / "summary.json").write_text(json.dumps({"dataset": dataset}))

    minari = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari))
    (minari / "torchrl_sym/hopper/medium-v1").mkdir(parents=True)
    (minari / "torchrl_sym/hopper/medium-v1/provenance.json").write_text('{"sha256": "bbbb"}')
    # the reporting table (results/cpu/<task>, beside the sweeps' folder) trained on "aaaa"
    record(tmp_path / "results" / "cpu" / "hopper-medium" / "iql" / "seed_0", "aaaa")
    args = [
        "iql", "hopper-medium", "iql.expectile=0.7,0.9", "--dry-run",
        "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results" / "tuning"),
    ]  # fmt: skip
    tune = _tune()
    assert tune.main(args) == 3
    out = capsys.readouterr()
    assert "bbbb" in out.err and "aaaa (1 runs)" in out.err and "python" not in out.out
    # the sweep's own earlier runs decide before the table: they trained on "bbbb"
    record(tmp_path / "results" / "tuning" / "hopper-medium" / "iql" / "x" / "seed_100", "bbbb")
    assert tune.main(args) == 0
    assert capsys.readouterr().out.count("recipes/iql.py") == 2
    monkeypatch.setenv("DATA_MISMATCH_OK", "1")  # asked for: goes on
    (minari / "torchrl_sym/hopper/medium-v1/provenance.json").write_text('{"sha256": "cccc"}')
    assert tune.main(args) == 0


def test_a_bdpo_sweep_trains_the_behavior_model_once_and_every_eta_from_it(tmp_path, capsys):
    runs = tmp_path / "runs"
    args = ["bdpo", "hopper-medium", "bdpo.eta=0.2,0.02", "--dry-run", "--runs", str(runs),
            "--results", str(tmp_path / "results" / "tuning")]  # fmt: skip
    assert _tune().main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    base = runs / "tuning" / "hopper-medium" / "bdpo"
    common = "experiment=cpu task=hopper-medium seed=100 stack_seeds=3"
    assert [line.split("bdpo.py ", 1)[1] for line in lines] == [
        f"{common} bdpo.warmup_steps=0 train.steps=0 hydra.run.dir={base}/shared_stages",
        f"{common} bdpo.init_from={base}/shared_stages bdpo.eta=0.2 "
        f"hydra.run.dir={base}/bdpo.eta_0.2",
        f"{common} bdpo.init_from={base}/shared_stages bdpo.eta=0.02 "
        f"hydra.run.dir={base}/bdpo.eta_0.02",
    ]


def test_a_sweep_goes_on_from_its_committed_logs_and_applies_only_when_complete(
    tmp_path, monkeypatch, capsys
):
    """A value whose tuning seeds the committed logs hold finished is not trained again; the
    selection reads the committed logs, marks a sweep with unfinished values provisional and
    refuses to --apply it; --train picks the values one call trains."""
    tune = _tune()
    results = tmp_path / "results" / "tuning"
    out = results / "hopper-medium" / "iql"

    def finished(value: str, score: float) -> None:  # a committed value, its 3 seeds finished
        for seed in (100, 101, 102):
            seed_dir = out / f"iql.expectile_{value}" / f"seed_{seed}"
            seed_dir.mkdir(parents=True)
            (seed_dir / "config.yaml").write_text("eval:\n  last_k: 1\n")
            (seed_dir / "eval_returns.csv").write_text(
                f"step,episode,return,normalized_score\n10,0,0.0,{score + seed - 101}\n"
            )
            (seed_dir / "summary.json").write_text("{}")

    finished("0.7", 40.0)
    args = ["iql", "hopper-medium", "iql.expectile=0.7,0.9", "--runs", str(tmp_path / "runs"),
            "--results", str(results)]  # fmt: skip
    assert tune.main([*args, "--dry-run"]) == 0
    planned = capsys.readouterr().out
    assert "iql.expectile=0.9" in planned and "iql.expectile=0.7" not in planned  # 0.7 is done
    assert tune.main([*args, "--dry-run", "--train", "0.7"]) == 0
    assert "recipes/iql.py" not in capsys.readouterr().out  # nothing left to train of 0.7
    with pytest.raises(SystemExit):
        tune.main([*args, "--train", "0.8"])  # not in the grid
    assert "not in the grid" in capsys.readouterr().err

    # 0.9 unfinished: the selection is provisional and --apply refuses
    monkeypatch.setattr(tune, "apply_choice", lambda *a: pytest.fail("applied an incomplete sweep"))
    assert tune.main([*args, "--select-only", "--apply"]) == 2
    text = capsys.readouterr()
    assert "provisional iql.expectile=0.7" in text.out and "--apply refused" in text.err
    selection = json.loads((out / "selection_iql.expectile.json").read_text())
    assert selection["complete"] is False and selection["chosen"] == 0.7

    finished("0.9", 50.0)  # now complete: chosen, and applied
    applied = []
    monkeypatch.setattr(tune, "apply_choice", lambda *a: applied.append(a[2:4]))
    assert tune.main([*args, "--select-only", "--apply"]) == 0
    assert applied == [("iql.expectile", 0.9)]
    selection = json.loads((out / "selection_iql.expectile.json").read_text())
    assert selection["complete"] is True and selection["values"][1]["mean_final"] == 50.0
