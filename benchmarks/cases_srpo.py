"""SRPO cases of ``benchmarks/bench_losses.py``: one update of each of SRPO's three training stages,
and acting speed against diffusion sampling of the same behavior model.

Every network, loss, optimizer and target update is built as ``torchrl_sym/recipes/srpo.py`` builds
it, with the recipe's default hyperparameters read from ``torchrl_sym/configs/srpo.yaml``
(``srpo.*``); ``bench_losses`` gives the sizes ``(obs_dim, act_dim, hidden, batch_size)``.

* ``updates`` (one row per stage, in the recipe's order):

  - ``srpo behavior`` (stage 1): one ``DiffusionBehaviorLoss`` step (ε-MSE summed over the action
    dims, ``t ~ U(1e-3, 1)``) of the IDQL LN-ResNet ε-network (``srpo.behavior``: 256 wide,
    3 blocks of 256 → 1024 → 256, dropout 0.1, Mish; 1.6M parameters, whatever ``hidden`` is),
    forward, backward, one AdamW step (weight decay 0.01); the recipe keeps no EMA. Its batch is
    the recipe's ``srpo.behavior.batch_size`` (256), a knob of its own: when ``batch_size``
    differs, the row is labelled ``srpo behavior (batch 256)``.
  - ``srpo critic`` (stage 2): one step of the recipe's ``iql_critic`` objective (TorchRL's
    ``IQLLoss`` Q and V losses from one forward, expectile 0.7, ``l2``, γ = 0.99; twin Q and V
    MLPs of ``hidden``), backward, one Adam per network (value, qvalue), Polyak 0.005 on Q.
  - ``srpo policy`` (stage 3): one ``SRPOLoss`` step: the Dirac actor's forward (tanh MLP of
    ``hidden``), one no-grad pass of the frozen ε-network, ``∇_a Q̄`` of the frozen twin critic,
    backward into the actor, one Adam step (the recipe's cosine LR schedule steps outside the
    update and is not timed here; ``benchmarks/bench_srpo_official.py`` times it too).

  ``device`` (default CPU) places the networks and the batches; on a CUDA device the optimizers
  are ``capturable`` (as ``bench_losses.adam``: its CUDA-graph column steps them in a graph).
* ``extra_section``: actions per second at evaluation, SRPO's deterministic actor (one MLP
  forward) against a 20-step DDPM sampler of the behavior ε-network the actor was distilled from,
  for one state and a batch of 256; the paper claims SRPO acts far faster than diffusion sampling.

``stage_cases`` returns the same three updates with their loss modules and optimizers (for tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import NamedTuple

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_sym.diffusion import DiffusionBehaviorActor, ResidualMLPNoisePredictor, VPSDESchedule
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import DiffusionBehaviorLoss
from torchrl_sym.objectives.srpo import make_srpo_actor
from torchrl_sym.recipes.srpo import iql_critic, make_srpo_loss
from torchrl_sym.train.recipe import network_optimizers

OBS_DIM, ACT_DIM = 11, 3  # Hopper
SAMPLER_STEPS = 20
CPU = torch.device("cpu")


@cache
def recipe_config():
    """The ``srpo`` block of the recipe's default config (``torchrl_sym/configs/srpo.yaml``)."""
    return OmegaConf.load(files("torchrl_sym.configs") / "srpo.yaml").srpo


def make_behavior(obs_dim: int, act_dim: int, **actor_kwargs) -> DiffusionBehaviorActor:
    """The recipe's stage-1 behavior model: ``ResidualMLPNoisePredictor`` (``srpo.behavior``) on
    the VP-SDE, actions in [-1, 1]."""
    b = recipe_config().behavior
    return DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(
            obs_dim, act_dim, hidden_dim=b.hidden_dim, num_blocks=b.num_blocks, dropout=b.dropout
        ),
        VPSDESchedule(),
        action_low=-1.0,
        action_high=1.0,
        **actor_kwargs,
    )


def _networks(obs_dim: int, act_dim: int, hidden: list[int]):
    behavior = make_behavior(obs_dim, act_dim, num_steps=SAMPLER_STEPS)
    actor = make_srpo_actor(obs_dim, act_dim, hidden)
    critics = [make_qvalue(obs_dim, act_dim, hidden) for _ in range(2)]
    return actor, behavior, critics


def make_batch(
    n: int, obs_dim: int, act_dim: int, device: torch.device = CPU, seed: int = 0
) -> TensorDict:
    """The synthetic D4RL-size transition batch every benchmark uses (``bench_losses._batch``:
    drawn on the CPU, so every device sees the same numbers)."""
    from bench_losses import _batch

    return _batch(n, obs_dim, act_dim, seed=seed, device=device)


class Case(NamedTuple):
    label: str
    update: Callable[[TensorDict], TensorDict]
    batch: TensorDict
    loss: torch.nn.Module  # DiffusionBehaviorLoss, IQLLoss or SRPOLoss
    optimizers: list[torch.optim.Optimizer]

    @property
    def trained(self) -> list[torch.nn.Parameter]:
        """The trainable tensors the update's optimizers hold (the recipe also hands stage 1's
        AdamW the behavior's buffers, action bounds and Fourier frequencies, which get no
        gradient and are never stepped)."""
        return [
            p
            for opt in self.optimizers
            for g in opt.param_groups
            for p in g["params"]
            if p.requires_grad
        ]


def _on_device(optimizers: list[torch.optim.Optimizer]) -> list[torch.optim.Optimizer]:
    """``capturable=True`` for parameter groups on a CUDA device, as ``bench_losses.adam`` (the
    CUDA-graph column of ``bench_losses --device cuda`` steps them inside a graph; every column
    uses them, so all time the same update); the CPU keeps PyTorch's defaults. Set before the
    first step, this equals passing ``capturable=True`` to the constructor."""
    for opt in optimizers:
        for group in opt.param_groups:
            if group["params"] and group["params"][0].device.type == "cuda":
                group["capturable"] = True
    return optimizers


def _step(optimizers, total: torch.Tensor) -> None:
    """The offline loop's update of one objective (``torchrl_sym/train/loop.py``)."""
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    total.backward()
    for opt in optimizers:
        opt.step()


def behavior_case(obs_dim: int, act_dim: int, batch_size: int, device: torch.device = CPU) -> Case:
    """Stage 1 as the recipe runs it: DiffusionBehaviorLoss + AdamW, no EMA."""
    b = recipe_config().behavior
    loss = DiffusionBehaviorLoss(
        make_behavior(obs_dim, act_dim), t_min=b.t_min, action_reduction="sum"
    ).to(device)
    optimizers = _on_device(
        [
            torch.optim.AdamW(
                loss.actor_network_params.values(True, True), lr=b.lr, weight_decay=b.weight_decay
            )
        ]
    )

    def update(batch: TensorDict) -> TensorDict:
        out = loss(batch)
        _step(optimizers, out["loss_diffusion"])
        return out.detach()

    label = "srpo behavior"
    n = int(b.batch_size)
    if n != batch_size:  # the recipe samples stage 1 with a batch size of its own
        label += f" (batch {n})"
    return Case(label, update, make_batch(n, obs_dim, act_dim, device), loss, optimizers)


def critic_case(
    obs_dim: int, act_dim: int, hidden: list[int], batch_size: int, device: torch.device = CPU
) -> Case:
    """Stage 2 as the recipe runs it: ``iql_critic(IQLLoss)``, Adam on V and on Q, Polyak on Q."""
    c = recipe_config().critic
    iql = IQLLoss(
        make_gaussian_actor(obs_dim, act_dim, hidden),  # unused by stage 2, as in the recipe
        make_qvalue(obs_dim, act_dim, hidden),
        make_value(obs_dim, hidden),
        num_qvalue_nets=2,
        expectile=c.expectile,
        loss_function="l2",
    ).to(device)
    iql.make_value_estimator(gamma=c.discount)
    optimizers = _on_device(network_optimizers(iql, c.lr, ("value", "qvalue")))
    target = SoftUpdate(iql, tau=c.tau)
    objective = iql_critic(iql)

    def update(batch: TensorDict) -> TensorDict:
        out = objective(batch)
        _step(optimizers, out["loss_qvalue"] + out["loss_value"])
        target.step()
        return out.detach()

    batch = make_batch(batch_size, obs_dim, act_dim, device)
    return Case("srpo critic", update, batch, iql, optimizers)


def policy_case(
    obs_dim: int, act_dim: int, hidden: list[int], batch_size: int, device: torch.device = CPU
) -> Case:
    """Stage 3: SRPOLoss with the frozen behavior and twin critic, Adam on the actor."""
    cfg = recipe_config()
    actor, behavior, critics = _networks(obs_dim, act_dim, hidden)
    loss = make_srpo_loss(actor, behavior, critics, cfg).to(device)
    optimizers = _on_device(network_optimizers(loss, cfg.policy.lr, ("actor",)))

    def update(batch: TensorDict) -> TensorDict:
        out = loss(batch)
        _step(optimizers, out["loss_actor"])
        return out.detach()

    g = torch.Generator().manual_seed(0)
    batch = TensorDict(
        {"observation": torch.randn(batch_size, obs_dim, generator=g)}, [batch_size]
    ).to(device)
    return Case("srpo policy", update, batch, loss, optimizers)


def stage_cases(
    obs_dim: int, act_dim: int, hidden: list[int], batch_size: int, device: torch.device = CPU
) -> list[Case]:
    """The three stages' updates, in the recipe's order, with their losses and optimizers."""
    device = torch.device(device)
    return [
        behavior_case(obs_dim, act_dim, batch_size, device),
        critic_case(obs_dim, act_dim, hidden, batch_size, device),
        policy_case(obs_dim, act_dim, hidden, batch_size, device),
    ]


def updates(
    obs_dim: int,
    act_dim: int,
    hidden: list[int],
    batch_size: int,
    device: torch.device = CPU,
) -> list[tuple[str, Callable[[TensorDict], TensorDict], TensorDict]]:
    """``[("srpo behavior", ...), ("srpo critic", ...), ("srpo policy", ...)]``: one update of
    each stage, ``(label, update(batch) -> TensorDict, batch)``, on ``device``."""
    return [
        (c.label, c.update, c.batch)
        for c in stage_cases(obs_dim, act_dim, hidden, batch_size, device)
    ]


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
