"""Run a sweep of the tuning protocol (results/cpu/TUNING.md) and apply its selection rule.

    python scripts/tune.py srpo halfcheetah-medium srpo.beta=0.2,0.05,0.02,0.005,0.002
    python scripts/tune.py srpo halfcheetah-medium srpo.eps_baseline=false,true srpo.beta=0.005
    python scripts/tune.py srpo halfcheetah-medium srpo.beta=0.2,0.02 --dry-run   # print only
    python scripts/tune.py srpo halfcheetah-medium srpo.beta=0.2,0.02 --select-only --apply

For each value of the swept key, one stacked run of the tuning seeds (``seed=100
stack_seeds=3``: seeds 100, 101, 102) at ``experiment=cpu``, in ``$RUNS/tuning/<task>/<algo>/
<key>=<value>/`` (resumed when it is there and unfinished). Further ``key=value`` arguments with a
single value are fixed for every run of the sweep. For SRPO the behavior model and the critic do
not depend on the swept key: they are trained once per tuning seed (``train.steps=0``, in
``.../shared_stages/``) and every value starts from them (``srpo.init_from``); likewise BDPO's
behavior model (``bdpo.warmup_steps=0 train.steps=0``, then ``bdpo.init_from``: every value of
``bdpo.eta`` runs its own critic warm-up, whose targets carry the η-weighted penalty).

Then the selection rule, fixed in advance: each run's final score is the mean of its last
``eval.last_k`` evaluations (mean normalized score over the evaluation's episodes), a value's
score the mean over the tuning seeds, and the chosen value the highest; a tie (within
``--tie`` = 1 normalized point) goes to the published value if it is among the tied, else to the
tied value nearest the published one (on a log scale for positive numbers). The published value
is read from the task's settings (``torchrl_sym/configs/tasks/<algo>/<task>.yaml``, else the
recipe's default). The runs' logs are mirrored into ``results/tuning/<task>/<algo>/`` with
``selection.json``; ``--apply`` writes the chosen value into the task file's ``tuned:`` block
(with a comment naming the sweep), which ``hparams=tuned`` runs.

A value whose tuning seeds the committed logs (``results/tuning/...``) hold finished is not trained
again, so a sweep longer than a session goes on in the next; ``--train v1,v2`` names the values
this call trains (split a sweep over cores once its shared stages have finished). The selection
reads the committed logs; a grid with an unfinished value gives a provisional choice
(``"complete": false`` in the selection file) that ``--apply`` refuses.

Before any run starts, scripts/check_data.py compares the local dataset's sha256 with the one the
sweep's committed runs (else the task's reporting runs, ``results/cpu/<task>``) recorded, and
stops on a mismatch (``DATA_MISMATCH_OK=1`` goes on).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"
TUNING_SEED, TUNING_SEEDS = 100, 3
# algorithms whose first stages do not depend on the swept key (SRPO's behavior model and critic,
# BDPO's behavior model): the overrides that stop a run after them, and the option that loads them
SHARED_STAGES = {
    "srpo": (["train.steps=0"], "srpo.init_from"),
    "bdpo": (["bdpo.warmup_steps=0", "train.steps=0"], "bdpo.init_from"),
}


def parse_value(text: str):
    """A command-line value as YAML reads it (``0.2`` -> float, ``true`` -> bool)."""
    import yaml

    return yaml.safe_load(text)


def published_value(algo: str, task: str, key: str):
    """The published value of ``key`` for ``algo`` on ``task``: the recipe's config composed with
    ``task=<task>`` (its task file, else the recipe's default)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(algo, overrides=[f"task={task}"])
    value = OmegaConf.select(cfg, key, default=None)
    if value is None:
        raise SystemExit(f"tune: {key} is not a setting of {algo} (task={task}).")
    return value


def final_score(run_dir: Path, last_k: int) -> float | None:
    """Mean of the last ``last_k`` evaluations' mean normalized scores in ``eval_returns.csv``
    (None without any evaluation)."""
    path = run_dir / "eval_returns.csv"
    if not path.is_file():
        return None
    per_step: dict[int, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                per_step.setdefault(int(row["step"]), []).append(float(row["normalized_score"]))
            except (KeyError, ValueError):
                continue
    if not per_step:
        return None
    means = [sum(v) / len(v) for _, v in sorted(per_step.items())][-last_k:]
    return sum(means) / len(means)


def select(scores: dict, published, tie: float = 1.0):
    """The selection rule of results/cpu/TUNING.md: the value of highest mean score; a tie
    (within ``tie``) goes to ``published`` if tied, else to the tied value nearest it (log scale
    for positive numbers). ``scores`` maps each value to its mean score (None: not finished)."""
    finished = {v: s for v, s in scores.items() if s is not None}
    if not finished:
        raise ValueError("no value of the sweep has finished")
    best = max(finished.values())
    tied = [v for v, s in finished.items() if s >= best - tie]
    if published in tied:
        return published

    def distance(value) -> float:
        if isinstance(value, bool) or isinstance(published, bool):
            return 0.0 if value == published else 1.0
        if isinstance(value, (int, float)) and isinstance(published, (int, float)):
            if value > 0 and published > 0:
                return abs(math.log(value) - math.log(published))
            return abs(value - published)
        return 0.0 if value == published else 1.0

    return min(tied, key=lambda v: (distance(v), -finished[v]))


def _label(key: str, value) -> str:
    """A run directory's name for ``key=value`` (the report reads the sweep by the same name)."""
    from torchrl_sym.report.tuning import sweep_run_name

    return sweep_run_name(key, value)


def _launch(cmd: list[str], dry_run: bool) -> None:
    print("python " + " ".join(cmd[1:]) if cmd[0] == sys.executable else " ".join(cmd), flush=True)
    if not dry_run:
        subprocess.run(cmd, cwd=ROOT, check=True)


def _finished(run: Path, seeds: int) -> bool:
    return len(list(run.glob("seed_*/summary.json"))) >= seeds


def run_one(run: Path, overrides: list[str], algo: str, dry_run: bool, seeds: int) -> None:
    """Start, or resume, the stacked run in ``run`` (nothing if it has finished)."""
    recipe = [sys.executable, str(ROOT / "recipes" / f"{algo}.py")]
    if _finished(run, seeds):
        return
    if (run / "stack.yaml").is_file():
        _launch([*recipe, f"resume={run}"], dry_run)
    else:
        _launch([*recipe, *overrides, f"hydra.run.dir={run}"], dry_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("algo")
    parser.add_argument("task")
    parser.add_argument("settings", nargs="+", help="key=v1,v2,... (swept) and key=v (fixed)")
    parser.add_argument("--runs", type=Path, default=Path(os.environ.get("RUNS", "runs/results")))
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "tuning")
    parser.add_argument("--experiment", default="cpu")
    parser.add_argument("--tie", type=float, default=1.0)
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--select-only", action="store_true", help="apply the rule to the runs")
    parser.add_argument("--apply", action="store_true", help="write the choice into the task file")
    parser.add_argument(
        "--extra", nargs="*", default=[], help="more overrides for every run (e.g. train.steps=...)"
    )
    parser.add_argument(
        "--train",
        default=None,
        help="the values (v1,v2,... of the grid) this call trains, the others only read: a sweep "
        "split over cores or sessions (default: every value)",
    )
    args = parser.parse_args(argv)

    swept = [s for s in args.settings if "," in s.partition("=")[2]]
    fixed = [s for s in args.settings if s not in swept]
    if len(swept) != 1:
        parser.error(f"name exactly one swept key (key=v1,v2,...), got {swept or 'none'}")
    key, _, values_text = swept[0].partition("=")
    values = [parse_value(v) for v in values_text.split(",")]
    to_train = values if args.train is None else [parse_value(v) for v in args.train.split(",")]
    unknown = [v for v in to_train if v not in values]
    if unknown:
        parser.error(f"--train {args.train}: {unknown} not in the grid {key}={values_text}")
    published = published_value(args.algo, args.task, key)
    base = args.runs / "tuning" / args.task / args.algo
    out = args.results / args.task / args.algo
    # a value whose tuning seeds the committed logs hold finished is not trained again (a sweep
    # goes on in a later session, on a new machine, from what the last one committed)
    to_train = [v for v in to_train if not _finished(out / _label(key, v), TUNING_SEEDS)]
    common = [
        f"experiment={args.experiment}",
        f"task={args.task}",
        f"seed={TUNING_SEED}",
        f"stack_seeds={TUNING_SEEDS}",
        *fixed,
        *args.extra,
    ]
    if not args.select_only and to_train:
        # the sweep trains on the bits of the task's data its earlier runs (else the reporting
        # table's) trained on: scripts/check_data.py
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "check_data", Path(__file__).with_name("check_data.py")
        )
        check_data = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(check_data)
        ok, message = check_data.check(
            args.task,
            [args.results / args.task / args.algo, args.results.parent / "cpu" / args.task],
            generate=not args.dry_run,
        )
        print(message, file=sys.stderr)
        if not ok and os.environ.get("DATA_MISMATCH_OK") != "1":
            return check_data.MISMATCH
        if args.algo in SHARED_STAGES:  # the stages that do not depend on the swept key, once
            stop, option = SHARED_STAGES[args.algo]
            shared = base / "shared_stages"
            run_one(shared, [*common, *stop], args.algo, args.dry_run, TUNING_SEEDS)
            common.append(f"{option}={shared}")
        for value in to_train:
            run_one(
                base / _label(key, value),
                [*common, f"{key}={json.dumps(value)}"],
                args.algo,
                args.dry_run,
                TUNING_SEEDS,
            )
    if args.dry_run:
        return 0

    from omegaconf import OmegaConf

    out.mkdir(parents=True, exist_ok=True)
    for value in values:  # the finished runs' logs into results/; the selection reads them there
        run = base / _label(key, value)
        if run.is_dir():
            subprocess.run(
                [sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(run),
                 str(out / _label(key, value))],
                cwd=ROOT,
                check=True,
            )  # fmt: skip
    table = {}
    for value in values:
        run = out / _label(key, value)
        seeds = sorted(run.glob("seed_*/config.yaml"))
        finals = []
        for config in seeds:
            last_k = int(OmegaConf.load(config).eval.last_k)
            finals.append(final_score(config.parent, last_k))
        done = [f for f in finals if f is not None] if _finished(run, TUNING_SEEDS) else []
        table[json.dumps(value)] = {
            "value": value,
            "seeds": {c.parent.name: f for c, f in zip(seeds, finals)},
            "mean_final": sum(done) / len(done) if done else None,
        }
    missing = [row["value"] for row in table.values() if row["mean_final"] is None]
    if len(missing) == len(values):
        print(f"tune: no value of {key} has finished yet; nothing to select.", file=sys.stderr)
        return 0
    chosen = select(
        {row["value"]: row["mean_final"] for row in table.values()}, published, args.tie
    )
    selection = {
        "protocol": "results/cpu/TUNING.md",
        "algo": args.algo,
        "task": args.task,
        "key": key,
        "fixed": fixed + list(args.extra),
        "published": published,
        "tuning_seeds": list(range(TUNING_SEED, TUNING_SEED + TUNING_SEEDS)),
        "tie": args.tie,
        "values": list(table.values()),
        "chosen": chosen,
        "complete": not missing,  # every value's tuning seeds finished: the choice is final
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    name = f"selection_{key}.json"
    (out / name).write_text(json.dumps(selection, indent=2) + "\n")
    for row in table.values():
        print(f"{key}={row['value']}: mean final score {row['mean_final']}", flush=True)
    if missing:
        print(
            f"provisional {key}={chosen} (published {published}): {key}={missing} not finished "
            f"yet, so the choice is not final; written {out / name}"
        )
    else:
        print(f"chosen {key}={chosen} (published {published}); written {out / name}")
    if args.apply:
        if missing:
            print(
                f"tune: --apply refused: the sweep is incomplete ({key}={missing} has no finished "
                "tuning seeds); train them first (--train).",
                file=sys.stderr,
            )
            return 2
        apply_choice(args.algo, args.task, key, chosen, out / name)
    return 0


def apply_choice(algo: str, task: str, key: str, value, source: Path) -> Path:
    """Writes ``key: value`` into the ``tuned:`` block of the task file, with a comment naming
    the sweep; the published settings in the file are left as they are."""
    from omegaconf import OmegaConf

    path = CONFIGS / "tasks" / algo / f"{task}.yaml"
    text = path.read_text() if path.exists() else ""
    cfg = OmegaConf.create(text or "{}")
    tuned = cfg.get("tuned") or OmegaConf.create({})
    OmegaConf.update(tuned, key, value, force_add=True)
    lines = [line for line in text.splitlines() if not line.startswith("# tuned:")]
    head, in_tuned = [], False
    for line in lines:  # drop an earlier tuned: block, keep everything else
        if line.startswith("tuned:"):
            in_tuned = True
            continue
        if in_tuned and (line.startswith(" ") or not line.strip()):
            continue
        in_tuned = False
        head.append(line)
    rel = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
    block = OmegaConf.to_yaml(OmegaConf.create({"tuned": tuned})).rstrip("\n")
    path.write_text(
        "\n".join(
            [
                *head,
                f"# tuned: chosen by the tuning protocol (results/cpu/TUNING.md), sweep {rel}",
                block,
            ]
        )
        + "\n"
    )
    return path


if __name__ == "__main__":
    sys.exit(main())
