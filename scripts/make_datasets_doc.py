"""Write docs/datasets.md from the dataset registry, the shipped policy cards and the behavior runs.

    python scripts/make_datasets_doc.py                 # measure local datasets, update, render
    python scripts/make_datasets_doc.py --generate      # first generate the missing ones (1M each)
    python scripts/make_datasets_doc.py --check         # exit 1 if docs/datasets.md is stale

Every number in the page is read from data, never typed:

* ``docs/datasets.json``: one entry per generated dataset id (size, episodes, return statistics,
  reference scores, sha256, the machine and date it was generated on). Each run measures the
  ``torchrl_sym/...`` datasets on this machine and replaces their entries, so the page keeps the
  datasets generated elsewhere (a full set of 1M-transition datasets takes hours to regenerate).
* the policy cards in ``torchrl_sym/data/policies/`` (v0) and ``.../v1/`` (v1);
* ``docs/behavior_runs/*.csv``: the evaluations of the behavior-policy training runs (the
  ``actors/evals.csv`` of ``recipes/sac.py``, with wall seconds), which compare the learners.

Only D4RL's published sizes and reference returns, and the v1 targets, are constants here.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import platform
import sys
from pathlib import Path

from torchrl_sym.data import D4RL_REF_SCORES, load_offline_dataset
from torchrl_sym.data._staging import local_minari_ids
from torchrl_sym.data.generate import (
    DATASET_KINDS,
    ENV_FAMILIES,
    dataset_id_for,
    generate_dataset,
    latest_version,
    parse_generated_id,
    read_provenance,
)
from torchrl_sym.data.policies import CARD_SETS, load_card

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "docs" / "datasets.json"
BEHAVIOR_RUNS = ROOT / "docs" / "behavior_runs"
# D4RL -v2 dataset sizes (transitions), from the D4RL dataset listing.
D4RL_SIZES = {
    "random": {"hopper": 1_000_000, "halfcheetah": 1_000_000, "walker2d": 1_000_000},
    "medium": {"hopper": 1_000_000, "halfcheetah": 1_000_000, "walker2d": 1_000_000},
    "medium-replay": {"hopper": 402_000, "halfcheetah": 202_000, "walker2d": 302_000},
    "expert": {"hopper": 1_000_000, "halfcheetah": 1_000_000, "walker2d": 1_000_000},
    "medium-expert": {"hopper": 2_000_000, "halfcheetah": 2_000_000, "walker2d": 2_000_000},
}
# v1 targets (issue "Datasets v1"): the expert's deterministic return over 20 fresh episodes, about
# 75% of D4RL's expert return, and the medium's sampled return as a share of the expert's.
V1_EXPERT_TARGETS = {"hopper": 2_400.0, "halfcheetah": 9_000.0, "walker2d": 3_400.0}
V1_MEDIUM_SHARE = (0.25, 0.45)
MIN_MEDIUM_REPLAY = 100_000


# ------------------------------------------------------------------------------ registry


def measure(dataset_id: str) -> dict:
    """The registry entry of a local dataset, measured from its arrays and provenance."""
    _, info = load_offline_dataset(dataset_id)
    g = info.episode_returns.numpy()
    prov = read_provenance(dataset_id) or {}
    return {
        "transitions": int(info.num_transitions),
        "episodes": int(info.num_episodes),
        "return_mean": round(float(g.mean()), 3),
        "return_std": round(float(g.std()), 3),
        "return_min": round(float(g.min()), 3),
        "return_max": round(float(g.max()), 3),
        "ref_min_score": info.ref_min_score,
        "ref_max_score": info.ref_max_score,
        "sha256": prov.get("sha256"),
        "seed": prov.get("seed"),
        "command": prov.get("command"),
        "generated_on": f"{platform.machine()} / Python {platform.python_version()}",
        "measured": datetime.date.today().isoformat(),
    }


def load_registry(path: Path = REGISTRY) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def update_registry(registry: dict[str, dict]) -> dict[str, dict]:
    """``registry`` with every local generated dataset measured afresh (the others kept)."""
    out = dict(registry)
    for dataset_id in local_minari_ids():
        if parse_generated_id(dataset_id) is not None:
            out[dataset_id] = measure(dataset_id)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------------------ behavior runs


def read_behavior_runs(folder: Path = BEHAVIOR_RUNS) -> dict[str, list[dict]]:
    """``{run name: [{"frames", "return_mean", "seconds"}, ...]}`` from ``folder/*.csv``."""
    runs = {}
    for path in sorted(folder.glob("*.csv")):
        with open(path) as f:
            rows = [
                {
                    "frames": int(r["frames"]),
                    "return_mean": float(r["return_mean"]),
                    "seconds": float(r["seconds"]) if r.get("seconds") else None,
                }
                for r in csv.DictReader(f)
            ]
        if rows:
            runs[path.stem] = rows
    return runs


def _first(rows: list[dict], threshold: float) -> str:
    for r in rows:
        if r["return_mean"] >= threshold:
            minutes = f", {r['seconds'] / 60:.0f} min" if r["seconds"] is not None else ""
            return f"{r['frames']:,}{minutes}"
    return "–"


def _learner_table(runs: dict[str, list[dict]]) -> list[str]:
    if not runs:
        return ["(no behavior runs recorded in docs/behavior_runs/)"]
    lines = [
        "| run | env steps | wall time | best return (5 ep., deterministic) | first >= 1,000 | first >= 2,400 | return at 30k steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, rows in runs.items():
        last, best = rows[-1], max(rows, key=lambda r: r["return_mean"])
        at30 = next((r["return_mean"] for r in rows if r["frames"] == 30_000), None)
        wall = f"{last['seconds'] / 60:.0f} min" if last["seconds"] is not None else "–"
        lines.append(
            f"| `{name}` | {last['frames']:,} | {wall} | {best['return_mean']:.0f} at {best['frames']:,} "
            f"| {_first(rows, 1000)} | {_first(rows, 2400)} | "
            + (f"{at30:.0f}" if at30 is not None else "–")
            + " |"
        )
    return lines


# ------------------------------------------------------------------------------ page


def _cards(family: str, version: int) -> dict | None:
    try:
        return {k: load_card(family, k, version) for k in ("random", "medium", "expert")}
    except FileNotFoundError:
        return None


def _policy_table(version: int) -> list[str]:
    lines = [
        "| env | policy | learner | env steps | return, deterministic (20 ep.) | return, sampled (20 ep.) | share of our expert | share of D4RL's expert |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family in ENV_FAMILIES:
        cards = _cards(family, version)
        if cards is None:
            lines.append(f"| {family} | (not trained yet) | | | | | | |")
            continue
        expert = cards["expert"]["return_mean"]
        d_hi = D4RL_REF_SCORES[family][1]
        for kind, card in cards.items():
            steps = card.get("training_env_steps")
            sampled = card.get("sampled_return_mean")
            episodes = card["episodes"]
            lines.append(
                f"| {card['env_id']} | {kind} | {card.get('algorithm', '–').split(' (')[0]} "
                f"| {f'{steps:,}' if steps is not None else '–'} "
                f"| {card['return_mean']:.1f} ± {card['return_std']:.1f}"
                + (f" ({episodes} ep.)" if episodes != 20 else "")
                + " | "
                + (
                    f"{sampled:.1f} ± {card['sampled_return_std']:.1f}"
                    if sampled is not None
                    else "–"
                )
                + f" | {card['return_mean'] / expert:.2f} | {card['return_mean'] / d_hi:.2f} |"
            )
    return lines


def _v1_checks(registry: dict[str, dict]) -> list[str]:
    lines = [
        "| env | expert return (target) | medium sampled / expert (target 0.25-0.45) | `medium-v1` dataset mean / expert | medium-replay transitions (target >= 100k) |",
        "|---|---|---|---|---|",
    ]
    from torchrl_sym.data.policies import load_medium_replay

    for family in ENV_FAMILIES:
        cards = _cards(family, 1)
        if cards is None:
            lines.append(f"| {family} | not trained yet ({V1_EXPERT_TARGETS[family]:,.0f}) | | | |")
            continue
        expert = cards["expert"]["return_mean"]
        share = cards["medium"]["sampled_return_mean"] / expert
        replay = sum(len(e["actions"]) for e in load_medium_replay(family, 1))
        data = registry.get(dataset_id_for(family, "medium", 1))
        data_share = (
            f"{data['return_mean'] / expert:.2f}" if data is not None else "not generated yet"
        )
        lines.append(
            f"| {family} | {expert:,.0f} ({V1_EXPERT_TARGETS[family]:,.0f}: "
            f"{'met' if expert >= V1_EXPERT_TARGETS[family] else 'NOT met'}) | {share:.2f} ("
            f"{'met' if V1_MEDIUM_SHARE[0] <= share <= V1_MEDIUM_SHARE[1] else 'NOT met'}) | "
            f"{data_share} | {replay:,} ({'met' if replay >= MIN_MEDIUM_REPLAY else 'NOT met'}) |"
        )
    return lines


def _dataset_table(registry: dict[str, dict], version: int) -> list[str]:
    lines = [
        "| dataset | transitions | episodes | return mean ± std | min / max | norm. (ours) | norm. (D4RL refs) | D4RL namesake size | sha256 | generated on |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    missing = []
    for family in ENV_FAMILIES:
        for kind in DATASET_KINDS:
            dataset_id = dataset_id_for(family, kind, version)
            row = registry.get(dataset_id)
            if row is None:
                missing.append(dataset_id)
                continue
            lo, hi = row.get("ref_min_score"), row.get("ref_max_score")
            if lo is None or hi is None:
                try:
                    lo, hi = (
                        load_card(family, "random", version)["return_mean"],
                        load_card(family, "expert", version)["return_mean"],
                    )
                except FileNotFoundError:
                    lo = hi = None
            ours = 100 * (row["return_mean"] - lo) / (hi - lo) if hi is not None else float("nan")
            d_lo, d_hi = D4RL_REF_SCORES[family]
            d4rl = 100 * (row["return_mean"] - d_lo) / (d_hi - d_lo)
            sha = (row.get("sha256") or row.get("sha256_prefix") or "")[:12]
            lines.append(
                f"| `{dataset_id}` | {row['transitions']:,} | {row['episodes']:,} "
                f"| {row['return_mean']:.1f} ± {row['return_std']:.1f} "
                f"| {row['return_min']:.1f} / {row['return_max']:.1f} | {ours:.1f} | {d4rl:.1f} "
                f"| {D4RL_SIZES[kind][family]:,} | `{sha}` | {row.get('generated_on', '–')} |"
            )
    if missing:
        lines += [
            "",
            "Not generated yet: " + ", ".join(f"`{m}`" for m in missing) + ".",
        ]
    return lines


def render(registry: dict[str, dict], runs: dict[str, list[dict]] | None = None) -> str:
    runs = read_behavior_runs() if runs is None else runs
    newest = {family: latest_version(family) for family in ENV_FAMILIES}
    lines = [
        "# Datasets",
        "",
        "<!-- generated by scripts/make_datasets_doc.py from docs/datasets.json, the policy cards and",
        "docs/behavior_runs/; do not edit by hand -->",
        "",
        "torchrl_sym builds D4RL-style MuJoCo v5 datasets locally (no data hub needed), the way D4RL",
        "built its `-v2` sets: behavior policies shipped in `torchrl_sym/data/policies/`, rolled out",
        "into local Minari datasets `torchrl_sym/<env>/<kind>-v<N>`:",
        "",
        "```bash",
        "python -m torchrl_sym.data.generate hopper medium              # the family's newest version",
        "python -m torchrl_sym.data.generate hopper medium --version 0  # the first release's data",
        "python -m torchrl_sym.data.generate --all                      # every env x kind",
        "```",
        "",
        "A recipe asked for a missing `torchrl_sym/...` id generates it on first use and reuses it; a",
        "dataset id names its version, so a cached v0 set is never taken for a v1 set. Reference",
        "scores: `ref_min_score` is the uniform random policy's mean return over 100 episodes and",
        "`ref_max_score` the version's expert's mean deterministic return over 20 episodes, so",
        "`normalized_score` is 0 for random and 100 for that expert, as in D4RL.",
        "",
        "Newest version per env (what `generate` builds without `--version`): "
        + ", ".join(f"{f} v{v}" for f, v in newest.items())
        + ".",
        "",
        "## v1: CrossQ experts near D4RL's strength",
        "",
        "- **expert**: the best evaluated snapshot of a CrossQ run (`recipes/sac.py algo=crossq`);",
        "- **medium**: a snapshot of a second CrossQ run with one update per ten env steps",
        "  (`sac.utd=0.1`), taken after at least 100k collected transitions, whose *sampled* rollouts",
        "  average closest to a third of the expert's return (checked again on the generated dataset);",
        "- **medium-replay**: every transition that second run collected up to its medium snapshot;",
        "- **medium-expert**: medium followed by expert; **random**: uniform actions.",
        "",
        *_policy_table(1),
        "",
        "Targets of v1 (the expert's deterministic return about 75% of D4RL's; tested by",
        "`tests/test_policy_cards.py`):",
        "",
        *_v1_checks(registry),
        "",
        "### Why CrossQ",
        "",
        "On this 2-core CPU the budget is gradient updates, not env steps (an update of the 256-wide",
        "networks costs about 20 ms on one thread, an env step well under 1 ms). CrossQ (Bhatt et al.,",
        "ICLR 2024; TorchRL's `CrossQLoss`) needs no target networks and reaches a given return in far",
        "fewer updates than SAC. Its paper's 2048-wide critics run about 8x slower per update here, so",
        "the critics are 256 wide. Measured on this machine (one thread per run, both runs at the same",
        "time, so their wall times compare; `docs/behavior_runs/`):",
        "",
        *_learner_table(runs),
        "",
        "## v0: SAC on a CPU budget (the first release)",
        "",
        *_policy_table(0),
        "",
        "## Datasets",
        "",
        "Episode returns are undiscounted sums of the raw rewards. *Norm. (ours)* normalizes the mean",
        "episode return with the dataset's reference scores; *norm. (D4RL refs)* with D4RL's `R_min` /",
        "`R_max` for the same env family, for comparison with D4RL's tables. *sha256* is the digest of",
        "the dataset's arrays, recorded in its `provenance.json` (and in a run's `summary.json`).",
        "",
        "### v1",
        "",
        *_dataset_table(registry, 1),
        "",
        "### v0",
        "",
        *_dataset_table(registry, 0),
        "",
        "## What is reproducible",
        "",
        "- **Bitwise, on one machine and one set of library versions**: generating a dataset twice",
        "  gives the same arrays and sha256 (rollouts are seeded: episode `i` resets with `seed + i`,",
        "  actions are drawn from generators seeded with `seed`; tested).",
        "- **In distribution, across machines**: MuJoCo and torch round floating point differently on",
        "  other CPUs, and the chaotic dynamics amplify the differences over an episode, so another",
        "  machine writes other episodes (`hopper/medium-v0` gave 5,101 episodes and another sha256",
        "  elsewhere, against 5,091 here) with the same return statistics. Training the behavior",
        "  policies is reproducible in distribution only, on any machine (asynchronous env steps and",
        "  floating point). A results row names its data by id and sha256 (`summary.json` → `dataset`).",
        "  Measured for the v1 medium datasets (`python -m torchrl_sym.data.generate <env> medium`, the",
        "  same library versions; the sha256 prefix of the arrays):",
        "",
        "  | processor | hopper | halfcheetah | walker2d |",
        "  |---|---|---|---|",
        "  | Intel Xeon with AMX (the sessions before 2026-12-07) | `804fbd60` | `ce13932c` | `91a91ff1` |",
        "  | AMD EPYC, AVX512-BF16 (2026-12-07, and again on another, family 25 model 17, 32 MiB L3) | `804fbd60` | `ce13932c` | `4c46bbb3` |",
        "  | Intel Xeon with AMX, family 6 model 167, 480 MiB L3 (2026-12-07, later) | `81d92791` | `73883fef` | `91a91ff1` |",
        "  | AMD EPYC, AVX2 only (no AVX512), family 25 model 1, 32 MiB L3 (2026-12-08) | `804fbd60` | `ce13932c` | `4c46bbb3` |",
        "",
        "  The medium-replay datasets are not rolled out: `generate` writes the learner's replay",
        "  shipped in `torchrl_sym/data/policies/` (`<env>_medium_replay.npz`) as it is, so their bits",
        "  do not depend on the processor (hopper `medium-replay-v1`: `fe4281d7` on the last machine",
        "  above). medium-expert joins a medium and an expert rollout, so its bits do.",
        "",
        "  The difference is in the policy's matmuls (oneMKL picks its kernels by processor): on the",
        "  second Intel machine `MKL_CBWR=AVX2` gave hopper `1d31f639` and `MKL_CBWR=COMPATIBLE`",
        "  `b517122c`, neither the first row's, and mujoco 4.0.0 or 4.0.1 gave the same bits. The",
        "  statistics agree (docs/datasets.json), so rows trained on either are comparable in",
        "  distribution; the results page names each row's data and says where a table mixes them.",
        "  `scripts/results_cpu.sh` and `scripts/tune.py` keep new runs from mixing them: before a",
        "  new cell or sweep starts, `scripts/check_data.py` compares the local dataset's sha256 with",
        "  the one the committed runs of that cell (else of that task) recorded, and stops on a",
        "  mismatch with both named (`DATA_MISMATCH_OK=1` goes on; the page then cautions).",
        "",
        "## How they compare with D4RL",
        "",
        "- Same recipe: off-policy behavior learners, medium about a third of the expert's return,",
        "  medium-replay = the learner's replay up to that snapshot, medium-expert = medium + expert,",
        "  random = uniform actions; stochastic policies when rolling out.",
        "- Different: MuJoCo v5 environments (Gymnasium) instead of D4RL's v3; CrossQ instead of SAC",
        "  (v1), trained for a CPU budget. Normalized scores on our datasets use our own reference",
        "  returns; to compare with published D4RL tables, train on D4RL's files (below).",
        "",
        "## Using Minari remote ids or D4RL files instead",
        "",
        "<!-- fragment: needs internet (a Minari download) and a D4RL .hdf5 file of the user's -->",
        "```python",
        "from torchrl_sym.data import make_offline_replay_buffer",
        "",
        'rb = make_offline_replay_buffer("mujoco/hopper/medium-v0", 256)  # Minari, downloaded once',
        'rb = make_offline_replay_buffer("/data/hopper-medium-v2.hdf5", 256, env="Hopper-v5")  # D4RL file',
        "```",
        "",
        "Recipes take the same ids: `python recipes/iql.py dataset=mujoco/hopper/medium-v0`. Minari",
        "hosts simple / medium / expert for the MuJoCo v5 tasks; D4RL's hdf5 files (`-v2`) hold all",
        "five kinds and are scored with D4RL's reference returns (`normalized_score('hopper-medium-v2', R)`).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generate", action="store_true", help="generate missing datasets first")
    parser.add_argument(
        "--version", type=int, default=None, help="with --generate: the version (default: newest)"
    )
    parser.add_argument("--check", action="store_true", help="fail if the page is stale")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "datasets.md")
    args = parser.parse_args(argv)
    if args.check:
        if args.out.read_text() != render(load_registry()):
            print(f"{args.out} is stale: run python scripts/make_datasets_doc.py", file=sys.stderr)
            return 1
        return 0
    if args.generate:
        for family in ENV_FAMILIES:
            version = latest_version(family) if args.version is None else args.version
            if version not in CARD_SETS:
                continue
            for kind in DATASET_KINDS:
                if dataset_id_for(family, kind, version) not in local_minari_ids():
                    generate_dataset(family, kind, version=version)
    registry = update_registry(load_registry())
    REGISTRY.write_text(json.dumps(registry, indent=1) + "\n")
    args.out.write_text(render(registry))
    print(f"wrote {args.out} and {REGISTRY}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
