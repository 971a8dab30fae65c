"""Speed of the diffusion behavior model: behavior-cloning updates/s and sampled actions/s.

Two ε-networks at D4RL size (Hopper: observation 11, action 3):

* ``srpo``: SRPO's residual MLP (256 wide, 3 blocks ×4, LayerNorm, dropout 0.1, Mish, Fourier
  time features) on the continuous VP-SDE; BC loss summed over actions, AdamW.
* ``bdpo``: BDPO's MLP ([256]×4, Mish, sinusoidal step features) on the discrete VP schedule;
  trained on N = 5 steps, sampled on an N = 50 schedule so that 20- and 50-step chains exist.

Rows: BC updates/s (loss + backward + optimizer step, batch 256) and actions/s of the DDPM
sampler for 5, 20 and 50 steps (batch 256 states), eager and compiled. "Compiled" means
``torch.compile`` (inductor) of the whole update for BC, and of the ε-network for sampling (one
graph reused by every step, so the compile cost does not grow with the step count).

    python benchmarks/bench_diffusion.py --threads 1  # the table in docs/diffusion.md (~2 min)
    python benchmarks/bench_diffusion.py --quick      # small nets, short timings (~1 min)
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

# On shared cores, OpenMP threads that spin while waiting get descheduled and slow every op by
# orders of magnitude; passive waiting avoids that. Must be set before torch starts OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tensordict import TensorDict

from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    ResidualMLPNoisePredictor,
    VPDiscreteSchedule,
    VPSDESchedule,
)
from torchrl_sym.objectives import DiffusionBehaviorLoss


def _rate(fn: Callable[[], object], min_time: float, warmup: int) -> float:
    """Calls per second of ``fn`` over at least ``min_time`` seconds, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 3:
            return calls / elapsed


def _models(args) -> dict[str, dict]:
    obs_dim, act_dim = args.obs_dim, args.action_dim
    srpo_net = ResidualMLPNoisePredictor(
        obs_dim, act_dim, hidden_dim=args.hidden, num_blocks=args.blocks
    )
    bdpo_net = MLPNoisePredictor(obs_dim, act_dim, hidden=(args.hidden,) * args.layers)
    return {
        "srpo": {
            "name": f"SRPO residual MLP ({args.hidden}, {args.blocks} blocks), VP-SDE",
            "train": DiffusionBehaviorActor(srpo_net, VPSDESchedule()),
            "sample": DiffusionBehaviorActor(srpo_net, VPSDESchedule()),
            "loss_kwargs": {"action_reduction": "sum"},
            "optim": torch.optim.AdamW,
        },
        "bdpo": {
            "name": f"BDPO MLP ([{args.hidden}]x{args.layers}), discrete VP",
            "train": DiffusionBehaviorActor(bdpo_net, VPDiscreteSchedule(5, variance="beta")),
            "sample": DiffusionBehaviorActor(bdpo_net, VPDiscreteSchedule(50, variance="beta")),
            "loss_kwargs": {},
            "optim": torch.optim.Adam,
        },
    }


def _bc_rate(model: dict, args, compiled: bool) -> float:
    actor = model["train"].train()
    loss = DiffusionBehaviorLoss(actor, **model["loss_kwargs"])
    optim = model["optim"](loss.actor_network_params.values(True, True), lr=3e-4)
    batch = TensorDict(
        {
            "observation": torch.randn(args.batch, args.obs_dim),
            "action": torch.rand(args.batch, args.action_dim) * 2 - 1,
        },
        [args.batch],
    )

    def update():
        out = loss(batch)
        out["loss_diffusion"].backward()
        optim.step()
        optim.zero_grad()
        return out["loss_diffusion"].detach()

    step = torch.compile(update) if compiled else update
    return _rate(step, args.min_time, warmup=3 if compiled else 1)


def _sample_rate(model: dict, args, steps: int, compiled: bool) -> float:
    actor = model["sample"].eval()
    eager_net = actor.network
    if compiled:
        actor.network = torch.compile(eager_net)
    obs = torch.randn(args.batch, args.obs_dim)
    try:
        with torch.no_grad():
            rate = _rate(lambda: actor.sample(obs, steps=steps), args.min_time, warmup=2)
    finally:
        actor.network = eager_net
    return rate * args.batch


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--obs-dim", type=int, default=11)
    parser.add_argument("--action-dim", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=3, help="residual blocks (SRPO net)")
    parser.add_argument("--layers", type=int, default=4, help="hidden layers (BDPO net)")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 20, 50])
    parser.add_argument("--min-time", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--models", nargs="+", default=["srpo", "bdpo"], choices=["srpo", "bdpo"])
    parser.add_argument("--no-compile", action="store_true", help="eager rows only")
    parser.add_argument("--quick", action="store_true", help="small nets, short timings")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.blocks, args.layers = 32, 1, 2
        args.batch, args.min_time = 32, 0.2
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = _models(args)
    modes = [False] if args.no_compile else [False, True]

    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads (OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}); obs {args.obs_dim}, action {args.action_dim}, "
        f"batch {args.batch}"
    )
    rows = []
    for key in args.models:
        model = models[key]
        params = sum(p.numel() for p in model["train"].parameters())
        tasks = [("BC updates/s", None)] + [(f"actions/s, {k} steps", k) for k in args.steps]
        for label, steps in tasks:
            row = {"model": f"{model['name']}, {params / 1e6:.2f}M params", "what": label}
            for compiled in modes:
                if steps is None:
                    row["compiled" if compiled else "eager"] = _bc_rate(model, args, compiled)
                else:
                    row["compiled" if compiled else "eager"] = _sample_rate(
                        model, args, steps, compiled
                    )
            rows.append(row)
            print(
                f"  {row['model']:<60} {label:<22} "
                + "  ".join(f"{m}: {row[m]:,.0f}" for m in ("eager", "compiled") if m in row),
                flush=True,
            )

    print()
    header = "| model | measure | eager | compiled |"
    print(header)
    print("|---|---|---|---|")
    for row in rows:
        compiled = f"{row['compiled']:,.0f}" if "compiled" in row else "–"
        print(f"| {row['model']} | {row['what']} | {row['eager']:,.0f} | {compiled} |")
    return rows


if __name__ == "__main__":
    main()
