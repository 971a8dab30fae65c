"""BDPO update steps for ``benchmarks/bench_losses.py`` (``--losses bdpo``).

BDPO's updates are split (docs/specs/bdpo.md §4): every step the critics (Q ensemble with its target from
a full N-step chain of the EMA actor at s', and the V_n ensemble with one EMA-actor step), and every
5th step the actor (one reparameterized step). Both are timed at the paper's sizes and N = 5:
ε-networks [256]×4 (Mish), Q and V_n [256]×3, E = 10, M = 10 samples per state. Each case is a full
update: forward, backward, gradient clipping (1.0), Adam, and the EMA update of its networks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict

from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    VPDiscreteSchedule,
)
from torchrl_sym.objectives.bdpo import BDPOLoss, BDPOPolicy, make_bdpo_qvalue

NUM_STEPS, ENSEMBLE, SAMPLES = 5, 10, 10
EPS_HIDDEN, CRITIC_HIDDEN = [256] * 4, [256] * 3


def make_loss(obs_dim: int, act_dim: int, step_sampling: str = "stratified") -> BDPOLoss:
    def diffusion():
        return DiffusionBehaviorActor(
            MLPNoisePredictor(obs_dim, act_dim, hidden=EPS_HIDDEN),
            VPDiscreteSchedule(NUM_STEPS, variance="beta"),
            action_low=-1.0,
            action_high=1.0,
            clip_sample=True,
        )

    return BDPOLoss(
        diffusion(),
        [make_bdpo_qvalue(obs_dim, act_dim, CRITIC_HIDDEN) for _ in range(ENSEMBLE)],
        NoiseConditionedCritic(obs_dim, act_dim, num_members=ENSEMBLE, hidden=CRITIC_HIDDEN),
        diffusion(),
        eta=0.15,
        rho=1.0,
        num_samples=SAMPLES,
        step_sampling=step_sampling,
    )


def terms(loss: BDPOLoss, name: str) -> Callable[[TensorDict], TensorDict]:
    """``batch -> TensorDict({loss_<name>, <diagnostics>})`` of the ``(loss, metadata)`` method
    ``<name>_loss`` (``recipes/bdpo.py``'s ``loss_terms``, without importing hydra): what the
    training loop's objectives take."""
    method = getattr(loss, f"{name}_loss")

    def call(batch: TensorDict) -> TensorDict:
        value, metadata = method(batch)
        return TensorDict({f"loss_{name}": value, **metadata}, batch_size=[])

    return call


def _adam(loss, name):
    from bench_losses import adam  # capturable on a GPU (the CUDA-graph column steps it)

    return adam(getattr(loss, f"{name}_network_params").values(True, True))


def _clipped_step(optimizer, value):
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()


def updates(
    obs_dim: int,
    act_dim: int,
    hidden: list[int],
    batch_size: int,
    step_sampling="stratified",
    device: torch.device | str = "cpu",
) -> list[tuple[str, Callable[[TensorDict], TensorDict], TensorDict]]:
    """``bdpo-critic`` (Q and V_n losses, two Adams, critic EMAs) and ``bdpo-actor`` (actor loss,
    Adam, actor EMA), on ``device``. ``hidden`` is not used: BDPO's networks have their own sizes
    (module doc)."""
    loss = make_loss(obs_dim, act_dim, step_sampling).to(device)
    q_opt, v_opt, actor_opt = _adam(loss, "qvalue"), _adam(loss, "value"), _adam(loss, "actor")
    critic_ema, actor_ema = loss.make_target_updater("critic"), loss.make_target_updater("actor")

    q_terms, v_terms, actor_terms = (terms(loss, name) for name in ("qvalue", "value", "actor"))

    def critic(batch: TensorDict) -> TensorDict:
        out = q_terms(batch)
        out.update(v_terms(batch))
        _clipped_step(q_opt, out["loss_qvalue"])
        _clipped_step(v_opt, out["loss_value"])
        critic_ema.step()
        return out.detach()

    def actor(batch: TensorDict) -> TensorDict:
        out = actor_terms(batch)
        _clipped_step(actor_opt, out["loss_actor"])
        actor_ema.step()
        return out.detach()

    from bench_losses import _batch  # the same synthetic D4RL-size batch as every loss

    batch = _batch(batch_size, obs_dim, act_dim, device=device)
    return [("bdpo-critic", critic, batch), ("bdpo-actor", actor, batch)]


def gflops_by_step_sampling(obs_dim: int = 11, act_dim: int = 3, batch_size: int = 256):
    """``{step_sampling: (critic GFLOP, actor GFLOP)}`` per update at the paper's sizes, counted
    with ``torch.utils.flop_counter``'s formulas (machine-independent)."""
    from bench_losses import flops_per_update

    out = {}
    for mode in ("uniform", "stratified"):
        torch.manual_seed(0)
        (_, critic, batch), (_, actor, _) = updates(obs_dim, act_dim, [], batch_size, mode)
        out[mode] = (flops_per_update(critic, batch) / 1e9, flops_per_update(actor, batch) / 1e9)
    return out


def extra_section(min_time: float) -> list[str]:
    """A markdown table: one BDPO training step (critic + actor/5) and the pieces of the critic."""
    from bench_losses import rate

    torch.manual_seed(0)
    obs_dim, act_dim, batch_size = 11, 3, 256
    (_, critic, batch), (_, actor, _) = updates(obs_dim, act_dim, [], batch_size)
    loss = make_loss(obs_dim, act_dim)
    c = rate(lambda: critic(batch), min_time, warmup=2)
    a = rate(lambda: actor(batch), min_time, warmup=2)
    with torch.no_grad():
        q_target = rate(lambda: loss.q_target(batch), min_time, warmup=2)
    step = 1.0 / (1.0 / c + 1.0 / (5.0 * a))
    policy = BDPOPolicy(loss, num_samples=10)  # evaluation: best of 10 EMA-actor samples
    one = TensorDict({"observation": torch.randn(1, obs_dim)}, [1])
    ten = TensorDict({"observation": torch.randn(10, obs_dim)}, [10])  # a vectorized evaluation
    act_one = rate(lambda: policy(one.clone()), min_time, warmup=2)
    act_ten = rate(lambda: policy(ten.clone()), min_time, warmup=2)
    return [
        "### BDPO (N = 5, E = 10, M = 10, ε-nets [256]×4, critics [256]×3, eager)",
        "",
        "| piece | per second |",
        "|---|---|",
        f"| critic update (Q + V_n, targets, Adam, EMA) | {c:.1f} |",
        f"| of which the Q target alone (N-step chain at s' for B·M states) | {q_target:.1f} |",
        f"| actor update (one reparameterized step, Adam, EMA) | {a:.1f} |",
        f"| training step (critic every step, actor every 5th) | {step:.1f} |",
        f"| evaluation action, 1 state (best of 10 samples, 5 DDPM steps, Q̄ ranking) | {act_one:.1f} |",
        f"| evaluation actions for 10 states at once (one vectorized eval step) | {act_ten:.1f} |",
        "",
        f"The paper reports 80 min for 2M steps on an RTX 4090 in JAX (about 420 steps/s); at the rate "
        f"above 2M steps take {2e6 / step / 3600:.0f} h on this machine. An evaluation of 10 "
        f"episodes of 1,000 steps spends about {1000 / act_ten:.0f} s in the policy with a "
        f"vectorized env ({10000 / act_one:.0f} s one state at a time).",
        "",
        "GFLOP per update by how the diffusion step n of each row is drawn (`step_sampling`; "
        "docs/bdpo.md): `uniform` (the official code) evaluates both V̄ and Q̄ on every row, "
        "`stratified` each on its own rows.",
        "",
        "| step_sampling | critic update GFLOP | actor update GFLOP |",
        "|---|---|---|",
        *(
            f"| {mode} | {critic:.1f} | {actor:.1f} |"
            for mode, (critic, actor) in gflops_by_step_sampling().items()
        ),
    ]
