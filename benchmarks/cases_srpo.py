"""SRPO cases of ``benchmarks/bench_losses.py``: the policy update, and acting speed against diffusion
sampling of the same behavior model.

* ``updates``: one SRPO policy step (stage 3): the Dirac actor's forward, one no-grad pass of the
  frozen ε-network (IDQL LN-ResNet, 256 wide, 3 blocks, as in the recipe), ``∇_a Q̄`` of the frozen
  twin critic, backward into the actor, one Adam step. Stages 1 and 2 are the diffusion BC update
  (``benchmarks/bench_diffusion.py``) and TorchRL's IQLLoss (the ``iql`` row).
* ``extra_section``: actions per second at evaluation, SRPO's deterministic actor (one MLP
  forward) against a 20-step DDPM sampler of the behavior ε-network the actor was distilled from,
  for one state and a batch of 256; the paper claims SRPO acts far faster than diffusion sampling.
"""

from __future__ import annotations

import time

import torch
from tensordict import TensorDict

from torchrl_sym.diffusion import DiffusionBehaviorActor, ResidualMLPNoisePredictor, VPSDESchedule
from torchrl_sym.models import make_qvalue
from torchrl_sym.objectives import SRPOLoss
from torchrl_sym.objectives.srpo import make_srpo_actor

OBS_DIM, ACT_DIM = 11, 3  # Hopper
SAMPLER_STEPS = 20


def _networks(obs_dim: int, act_dim: int, hidden: list[int]):
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(obs_dim, act_dim),
        VPSDESchedule(),
        action_low=-1.0,
        action_high=1.0,
        num_steps=SAMPLER_STEPS,
    )
    actor = make_srpo_actor(obs_dim, act_dim, hidden)
    critics = [make_qvalue(obs_dim, act_dim, hidden) for _ in range(2)]
    return actor, behavior, critics


def updates(obs_dim: int, act_dim: int, hidden: list[int], batch_size: int):
    """``[("srpo policy", update, batch)]``: the stage-3 step at D4RL size."""
    actor, behavior, critics = _networks(obs_dim, act_dim, hidden)
    loss = SRPOLoss(actor, behavior, critics, beta=0.05)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-4)

    def update(batch: TensorDict) -> TensorDict:
        out = loss(batch)
        optim.zero_grad(set_to_none=True)
        out["loss_actor"].backward()
        optim.step()
        return out.detach()

    g = torch.Generator().manual_seed(0)
    batch = TensorDict({"observation": torch.randn(batch_size, obs_dim, generator=g)}, [batch_size])
    return [("srpo policy", update, batch)]


def _actions_per_second(fn, n: int, min_time: float) -> float:
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 3:
            return calls * n / elapsed


def eval_speed(min_time: float, batches=(1, 256)) -> list[tuple[int, float, float]]:
    """``[(batch, SRPO actions/s, 20-step DDPM actions/s)]`` with the recipe's networks."""
    torch.manual_seed(0)
    actor, behavior, _ = _networks(OBS_DIM, ACT_DIM, [256, 256])
    actor.eval()
    behavior.eval()
    rows = []
    with torch.no_grad():
        for n in batches:
            obs = torch.randn(n, OBS_DIM)
            srpo = _actions_per_second(lambda o=obs: actor(observation=o), n, min_time)
            diffusion = _actions_per_second(
                lambda o=obs: behavior.sample(o, steps=SAMPLER_STEPS, sampler="ddpm"), n, min_time
            )
            rows.append((n, srpo, diffusion))
    return rows


def extra_section(min_time: float, batches=(1, 256)) -> list[str]:
    lines = [
        "### SRPO: acting speed against diffusion sampling",
        "",
        f"Actions per second at evaluation (eager, no grad, torch threads: {torch.get_num_threads()}): SRPO's",
        "deterministic actor (tanh MLP 2×256, one forward) against DDPM sampling with "
        f"{SAMPLER_STEPS} steps",
        "of the behavior ε-network it is distilled from (LN-ResNet 256×3 blocks, 1.6M parameters),",
        f"Hopper sizes (observation {OBS_DIM}, action {ACT_DIM}). `benchmarks/cases_srpo.py`.",
        "",
        f"| states per call | SRPO actions/s | diffusion ({SAMPLER_STEPS} steps) actions/s | SRPO / diffusion |",
        "|---|---|---|---|",
    ]
    for n, srpo, diffusion in eval_speed(min_time, batches):
        lines.append(f"| {n} | {srpo:,.0f} | {diffusion:,.0f} | {srpo / diffusion:,.0f}× |")
    return lines


if __name__ == "__main__":
    print("\n".join(extra_section(1.0)))
