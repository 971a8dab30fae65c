"""Evaluate the diffusion behavior model of SRPO and BDPO runs alone, as a policy, and record it.

    python scripts/eval_behavior.py runs/results/cpu/hopper-medium/srpo/0_seed0 [RUN_DIR ...]
        [--episodes N] [--sampling-steps K] [--force]
    python scripts/eval_behavior.py runs/results/cpu/walker2d-medium/bdpo/run_stack1

For each run directory (an SRPO run whose behavior stage has finished; its newest checkpoint is
read), :func:`torchrl_sym.recipes.srpo.evaluate_behavior` runs the behavior model μ in the
dataset's env with the run's evaluation seeds, sampled (K-step DDPM chain) and zero-noise, and
this script writes the result to ``RUN_DIR/behavior_eval.json`` (atomically: a temporary file,
then a rename). A run that already has one is skipped unless ``--force``. The report
(``python -m torchrl_sym.report``) names the behavior model's score under the run's table, so a
low SRPO row can be told apart from a behavior model that did not learn the data.

A BDPO run (:func:`torchrl_sym.recipes.bdpo.evaluate_behavior`) scores its EMA behavior model ν̄
with the N-step chain of its diffusion models (``bdpo.num_steps``; ``--sampling-steps`` is refused:
the penalty is summed over those N steps, another chain would score another model), and its
``policy_diagnostics`` (:func:`torchrl_sym.recipes.bdpo.policy_diagnostics`, once the train stage
has begun) also hold ``actor``, one sample of the EMA actor, beside ``policy``, the action the run
is evaluated with (the best of ``bdpo.eval_samples`` samples under the mean Q).

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
        "runs", nargs="+", type=Path, metavar="RUN_DIR", help="SRPO or BDPO run directories"
    )
    parser.add_argument(
        "--episodes", type=int, default=None, help="default: the run's eval.episodes"
    )
    parser.add_argument(
        "--sampling-steps",
        type=int,
        default=None,
        help="SRPO: DDPM steps (default: the model's, 50); BDPO runs use their bdpo.num_steps",
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

    failed = 0
    for run in args.runs:
        out = run / NAME
        if out.exists() and not args.force:
            print(f"{run}: {NAME} exists (--force to evaluate again)")
            continue
        try:
            result = evaluate(run, args)
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
            actor = (  # BDPO: one sample of its actor beside the selected action
                f", actor samples {acts['actor']['distance_to_data']:.3f}"
                if "actor" in acts
                else ""
            )
            print(
                f"{run}: distance to the data's actions: policy "
                f"{acts['policy']['distance_to_data']:.3f}{actor}, behavior samples "
                f"{acts['behavior']['distance_to_data']:.3f}; critic value: policy "
                f"{acts['policy']['q']:.2f}, data {acts['data']['q']:.2f}"
            )
    return 1 if failed else 0


def evaluate(run: Path, args: argparse.Namespace) -> dict:
    """The behavior model (and policy diagnostics) of one run, by the algorithm its config names."""
    config = run / "config.yaml"
    if not config.is_file():
        raise FileNotFoundError(f"{run}: no config.yaml, not a run directory")
    import yaml

    algo = (yaml.safe_load(config.read_text()) or {}).get("algo")
    if algo == "srpo":
        from torchrl_sym.recipes.srpo import evaluate_behavior

        return evaluate_behavior(
            run,
            episodes=args.episodes,
            sampling_steps=args.sampling_steps,
            policy_states=args.num_states,
        )
    if algo == "bdpo":
        if args.sampling_steps is not None:
            raise ValueError(
                f"{run} is a BDPO run: its diffusion models sample with their own N = "
                "bdpo.num_steps steps (the chain its penalty is summed over); drop --sampling-steps"
            )
        from torchrl_sym.recipes.bdpo import evaluate_behavior

        return evaluate_behavior(run, episodes=args.episodes, policy_states=args.num_states)
    raise ValueError(
        f"{run} holds a run of algo={algo!r}; this reads SRPO and BDPO runs (their diffusion "
        "behavior models)"
    )


if __name__ == "__main__":
    sys.exit(main())
