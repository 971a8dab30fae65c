"""Evaluate the diffusion behavior model of SRPO runs alone, as a policy, and record it.

    python scripts/eval_behavior.py runs/results/cpu/hopper-medium/srpo/0_seed0 [RUN_DIR ...]
        [--episodes N] [--sampling-steps K] [--force]

For each run directory (an SRPO run whose behavior stage has finished; its newest checkpoint is
read), :func:`torchrl_sym.recipes.srpo.evaluate_behavior` runs the behavior model μ in the
dataset's env with the run's evaluation seeds, sampled (K-step DDPM chain) and zero-noise, and
this script writes the result to ``RUN_DIR/behavior_eval.json`` (atomically: a temporary file,
then a rename). A run that already has one is skipped unless ``--force``. The report
(``python -m torchrl_sym.report``) names the behavior model's score under the run's table, so a
low SRPO row can be told apart from a behavior model that did not learn the data.

When the run's policy stage has begun, the file also holds ``policy_diagnostics``
(:func:`torchrl_sym.recipes.srpo.policy_diagnostics` on ``--num-states`` dataset states, the same
DDPM steps): the mean distance of the policy's, the behavior model's and the zero action to the
dataset action, and the frozen critic's value of each. The report prints it beside the
behavior model's score, so a low SRPO row whose policy has left the data (farther from it than
μ's own samples) can be told apart from one that has not.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

NAME = "behavior_eval.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="SRPO run directories"
    )
    parser.add_argument(
        "--episodes", type=int, default=None, help="default: the run's eval.episodes"
    )
    parser.add_argument(
        "--sampling-steps", type=int, default=None, help="DDPM steps (default: the model's, 50)"
    )
    parser.add_argument(
        "--num-states",
        type=int,
        default=4096,
        help="dataset states for the policy diagnostics (default 4096)",
    )
    parser.add_argument(
        "--force", action="store_true", help=f"evaluate again over an existing {NAME}"
    )
    args = parser.parse_args(argv)
    for value, flag in (
        (args.episodes, "--episodes"),
        (args.sampling_steps, "--sampling-steps"),
        (args.num_states, "--num-states"),
    ):
        if value is not None and value < 1:
            parser.error(f"{flag} must be >= 1, got {value}")

    from torchrl_sym.recipes.srpo import evaluate_behavior

    failed = 0
    for run in args.runs:
        out = run / NAME
        if out.exists() and not args.force:
            print(f"{run}: {NAME} exists (--force to evaluate again)")
            continue
        try:
            result = evaluate_behavior(
                run,
                episodes=args.episodes,
                sampling_steps=args.sampling_steps,
                policy_states=args.num_states,
            )
        except (FileNotFoundError, ValueError) as err:
            print(f"eval_behavior: {err}", file=sys.stderr)
            failed += 1
            continue
        tmp = out.with_name(f".{NAME}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        os.replace(tmp, out)
        print(
            f"{run}: behavior model {result['sample']['normalized_score']:.1f} sampled, "
            f"{result['deterministic']['normalized_score']:.1f} zero-noise "
            f"(normalized, {result['episodes']} episodes, {result['sampling_steps']} steps)"
        )
        if "policy_diagnostics" in result:
            acts = result["policy_diagnostics"]["actions"]
            print(
                f"{run}: distance to the data's actions: policy "
                f"{acts['policy']['distance_to_data']:.3f}, behavior samples "
                f"{acts['behavior']['distance_to_data']:.3f}; critic value: policy "
                f"{acts['policy']['q']:.2f}, data {acts['data']['q']:.2f}"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
