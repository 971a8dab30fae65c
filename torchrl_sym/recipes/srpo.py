"""SRPO (Chen et al., ICLR 2024): score-regularized policy extraction from a diffusion behavior model.

    python recipes/srpo.py                                   # short real run on the default dataset
    python recipes/srpo.py profile=smoke                     # a few dozen steps of each stage
    python recipes/srpo.py task=walker2d-medium-replay       # the task's dataset and β
    python recipes/srpo.py experiment=paper                  # 2M behavior, 1.5M critic, 1M policy steps
    python recipes/srpo.py experiment=cpu                    # the CPU budget (docs/results.md)
    python recipes/srpo.py srpo.init_from=outputs/srpo/<run> # reuse that run's behavior model and
                                                             # critic: stages 1 and 2 are skipped
    python recipes/srpo.py resume=outputs/srpo/<run>         # continue a killed run (any stage)

Three decoupled stages in one run (docs/srpo.md), each checkpointed (``ckpt_*.pt`` at every
``checkpoint.interval`` and at the end of each stage) and resumable:

1. ``behavior``: ε-prediction behavior cloning of a VP-SDE diffusion model (IDQL's LN-ResNet)::

       L(ψ) = E_{t~U(1e-3,1), z, (s,a)~D} ‖ε_ψ(α_t a + σ_t z, t, s) − z‖²      (summed over A; AdamW)

2. ``critic``: IQL with TorchRL's IQLLoss (expectile τ = 0.7, l2), V and Q from one forward (so
   ``V(s')`` in the Q target is read before the V step, as the official code), Polyak 0.005::

       L_V = E |τ − 1(u<0)| u²,  u = min_i Q̄_i(s,a) − V(s);   L_Q = Σ_i E (Q_i(s,a) − r − γ(1−d) V(s'))²

3. ``policy``: SRPOLoss with both frozen; the Dirac actor tanh(MLP(s)) is evaluated::

       ∂ℓ/∂a = ω(t) ε_ψ(α_t a + σ_t z, t, s) − β ∇_a ½(Q̄₁ + Q̄₂)(s, a),   a = π_θ(s),  ω = σ_t²

Stage budgets: ``srpo.behavior.steps``, ``srpo.critic.steps`` and ``train.steps`` (policy);
``experiment=paper`` takes ``paper.behavior_steps``, ``paper.critic_steps``, ``paper.steps`` and
the behavior batch ``paper.behavior_batch_size`` instead, ``experiment=cpu`` the same keys of ``cpu``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
import torch
from tensordict import TensorDict
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_sym.diffusion import DiffusionBehaviorActor, ResidualMLPNoisePredictor, VPSDESchedule
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import DiffusionBehaviorLoss, SRPOLoss
from torchrl_sym.objectives.srpo import make_srpo_actor
from torchrl_sym.train import Objective, Stage, TargetUpdate
from torchrl_sym.train.recipe import (
    Built,
    Run,
    info_dims,
    load_earlier_run,
    load_run_checkpoint,
    network_optimizers,
    run_recipe,
    score_behavior_model,
    stage_reached,
    stage_steps,
)

log = logging.getLogger(__name__)


BUDGET_PRESETS = ("paper", "cpu")
"""Experiments whose stage budgets come from the config block of the same name."""


def budgets(cfg) -> dict[str, int]:
    """Steps of the three stages (the profile's cap applies) and the behavior batch size:
    ``experiment=paper`` and ``experiment=cpu`` take them from ``paper.*`` / ``cpu.*``
    (``behavior_steps``, ``critic_steps``, ``behavior_batch_size``; the policy stage is
    ``train.steps``), the short default run from ``srpo.behavior.*`` and ``srpo.critic.*``."""
    experiment = cfg.get("experiment_name")
    hp = cfg.srpo
    preset = cfg[experiment] if experiment in BUDGET_PRESETS else None
    return {
        "behavior": stage_steps(
            cfg, preset.behavior_steps if preset is not None else hp.behavior.steps
        ),
        "critic": stage_steps(cfg, preset.critic_steps if preset is not None else hp.critic.steps),
        "policy": stage_steps(cfg, cfg.train.steps),
        "behavior_batch_size": int(
            preset.behavior_batch_size if preset is not None else hp.behavior.batch_size
        ),
    }


def iql_critic(iql: IQLLoss):
    """Stage 2's objective: IQL's value and Q losses from one forward (its actor term is unused)."""

    def critic(batch):
        td = batch.copy()
        loss_qvalue, meta = iql.qvalue_loss(td)
        loss_value, _ = iql.value_loss(td)
        return TensorDict(
            {
                "loss_qvalue": loss_qvalue,
                "loss_value": loss_value,
                "td_error": meta["td_error"].detach().mean(),
            },
            batch_size=[],
        )

    return critic


def load_earlier_stages(path: str, bc_loss, iql, device, *, seed: int | None = None) -> None:
    """Load the behavior model and critic of an earlier SRPO run (its run directory or one of
    its checkpoints), which must have finished both stages. From a stacked run (``stack_seeds``)
    the slice of ``seed`` is loaded (or of the seed whose ``seed_<s>/`` directory ``path`` is),
    so a stacked run can reuse the stages of a stacked run of the same seeds."""
    state = load_earlier_run(path, device, seed=seed, option="srpo.init_from", algo="srpo")
    modules = state.get("modules", {})
    if "behavior" not in modules or "critic" not in modules:
        raise ValueError(
            f"srpo.init_from={str(path)!r} is not an srpo checkpoint (it holds {sorted(modules)}; "
            "expected 'behavior' and 'critic')."
        )
    if int(state["stage_index"]) < 2:
        raise ValueError(
            f"srpo.init_from={str(path)!r} stopped in stage '{state['stage_name']}' at step "
            f"{state['stage_step']}: its behavior and critic stages are not finished. Resume that "
            "run first (resume=<its directory>)."
        )
    try:
        bc_loss.load_state_dict(modules["behavior"])
        iql.load_state_dict(modules["critic"])
    except RuntimeError as err:
        raise ValueError(
            f"srpo.init_from={str(path)!r}: its networks do not match this configuration "
            f"(dataset, srpo.behavior.*, srpo.critic.hidden): {err}"
        ) from err
    log.info("Loaded the behavior model and critic of %s; stages 1 and 2 are skipped.", path)


def make_srpo_loss(actor, behavior, qvalue, hp, **kwargs) -> SRPOLoss:
    """Stage 3's SRPOLoss with the ``srpo`` settings ``hp`` (β, weighting, t range, ε baseline, Q
    reduction and its normalization); ``kwargs`` go to SRPOLoss (shared parameters, or ``beta=``
    in place of ``hp.beta``)."""
    kwargs.setdefault("beta", float(hp.beta))
    return SRPOLoss(
        actor,
        behavior,
        qvalue,
        weight=hp.weight,
        t_min=hp.t_min,
        t_max=hp.t_max,
        eps_baseline=hp.eps_baseline,
        q_reduce=hp.q_reduce,
        normalize_q_grad=hp.normalize_q_grad,
        **kwargs,
    )


def make_behavior_loss(b, obs_dim: int, act_dim: int) -> DiffusionBehaviorLoss:
    """Stage 1's loss around the behavior model μ (``srpo.behavior``: IDQL's LN-ResNet on the VP
    SDE, actions in [-1, 1]); its ``actor_network`` is the :class:`DiffusionBehaviorActor`."""
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(
            obs_dim, act_dim, hidden_dim=b.hidden_dim, num_blocks=b.num_blocks, dropout=b.dropout
        ),
        VPSDESchedule(),
        action_low=-1.0,
        action_high=1.0,
    )
    return DiffusionBehaviorLoss(behavior, t_min=b.t_min, action_reduction="sum")


def _load_run(run_dir: str | Path):
    """``(cfg, checkpoint path, checkpoint state, buffer)`` of an SRPO run directory
    (:func:`~torchrl_sym.train.recipe.load_run_checkpoint`)."""
    return load_run_checkpoint(
        run_dir,
        algo="srpo",
        reads="SRPO runs (their stage-1 diffusion behavior model and stage-3 policy)",
    )


def evaluate_behavior(
    run_dir: str | Path,
    *,
    episodes: int | None = None,
    sampling_steps: int | None = None,
    policy_states: int | None = None,
) -> dict:
    """The diffusion behavior model of a finished SRPO behavior stage, evaluated alone as a policy.

    Loads ``run_dir``'s newest checkpoint (its behavior stage must be finished), rebuilds μ from
    ``run_dir/config.yaml``, and runs ``episodes`` episodes (default: the run's ``eval.episodes``)
    in the dataset's env with the run's evaluation seeds, twice: actions sampled by the
    ``sampling_steps``-step DDPM chain (default: the model's 50) from a_K ~ N(0, I), and the
    chain's zero-noise ("deterministic") action. Nothing in ``run_dir`` is changed. A low SRPO
    score beside a behavior model that scores like the data says the policy stage, not the
    behavior model, is what the budget limits.

    With ``policy_states`` set and the run's policy stage begun, the result also holds
    ``"policy_diagnostics"``: :func:`policy_diagnostics` on that many dataset states with the same
    DDPM steps, from the same checkpoint and the same loaded dataset.

    Returns:
        ``{"checkpoint", "global_step", "sampling_steps", "episodes", "sample":
        {"return", "normalized_score"}, "deterministic": {...}}`` (means over the episodes).
    """
    cfg, path, state, buffer = _load_run(run_dir)
    if not stage_reached(state, 1):
        raise ValueError(
            f"{path} is at step {state['stage_step']} of the behavior stage: the behavior model is "
            "not trained yet; evaluate it once the run has reached the critic stage"
        )
    info = buffer.info
    loss = make_behavior_loss(cfg.srpo.behavior, *info_dims(info))
    loss.load_state_dict(state["modules"]["behavior"])
    behavior = loss.actor_network.eval()
    if sampling_steps is not None:
        behavior.num_steps = int(sampling_steps)
    result = score_behavior_model(cfg, path, state, info, behavior, episodes)
    if policy_states is not None and stage_reached(state, 2):
        result["policy_diagnostics"] = _diagnose_policy(
            cfg, path, state, buffer, num_states=policy_states, sampling_steps=behavior.num_steps
        )
    return result


def policy_diagnostics(
    run_dir: str | Path,
    *,
    num_states: int = 4096,
    sampling_steps: int | None = None,
    seed: int = 0,
) -> dict:
    """Where an SRPO run's policy puts its actions, against the data and the behavior model.

    Loads ``run_dir``'s newest checkpoint (its policy stage must have begun), draws
    ``num_states`` distinct dataset transitions ``(s, a)`` (sampler seed ``seed``; all of them
    for a smaller dataset, in random order) and, for four actions
    per state (``data``: the dataset's a; ``policy``: π(s); ``behavior``: a sample of μ(·|s),
    ``sampling_steps`` DDPM steps, generator seeded by ``seed``; ``zeros``: the zero action),
    reports the mean critic value ``Q̄(s, ·)`` exactly as the policy loss sees it (the frozen
    target heads reduced by ``srpo.q_reduce``) and the mean Euclidean distance ``‖· − a‖`` to
    the dataset action. Nothing in ``run_dir`` is changed; no episode is run.

    Read it beside the run's score: a policy much further from the data than the behavior
    model's own samples, at a critic value no higher than the data's, says the Q-term of the
    policy loss has pulled π off the data's support onto the critic's extrapolation (β too
    large for that critic); a policy near the data that still scores low points elsewhere.

    Returns:
        ``{"checkpoint", "global_step", "num_states", "sampling_steps", "seed", "q_reduce",
        "actions": {name: {"q", "distance_to_data", "saturated_fraction"}}}`` for name in data,
        policy, behavior, zeros (``saturated_fraction``: the share of action dimensions with
        ``|a| > 0.99``).
    """
    cfg, path, state, buffer = _load_run(run_dir)
    return _diagnose_policy(
        cfg, path, state, buffer, num_states=num_states, sampling_steps=sampling_steps, seed=seed
    )


@torch.no_grad()
def _diagnose_policy(
    cfg, path: Path, state: dict, buffer, *, num_states: int, sampling_steps: int | None, seed=0
) -> dict:
    """:func:`policy_diagnostics` on a run already loaded by :func:`_load_run`."""
    buffer = buffer.with_batch_size(min(num_states, buffer.info.num_transitions), seed=seed)
    if not stage_reached(state, 2):
        raise ValueError(
            f"{path} is in stage {int(state['stage_index'])} (step {state['stage_step']}): the "
            "policy stage has not begun; diagnose the policy once the run has reached it"
        )
    hp = cfg.srpo
    obs_dim, act_dim = info_dims(buffer.info)
    bc_loss = make_behavior_loss(hp.behavior, obs_dim, act_dim)
    bc_loss.load_state_dict(state["modules"]["behavior"])
    c = hp.critic
    qvalue = make_qvalue(obs_dim, act_dim, list(c.hidden))
    iql = IQLLoss(
        make_gaussian_actor(obs_dim, act_dim, list(c.hidden)),
        qvalue,
        make_value(obs_dim, list(c.hidden)),
        num_qvalue_nets=2,
        expectile=c.expectile,
        loss_function="l2",
    )
    iql.make_value_estimator(gamma=c.discount)
    iql.load_state_dict(state["modules"]["critic"])
    with warnings.catch_warnings():  # TorchRL: "no target network updater" (none is needed)
        warnings.simplefilter("ignore", UserWarning)
        target_params = iql.target_qvalue_network_params
    actor = make_srpo_actor(obs_dim, act_dim, list(hp.policy.hidden))
    srpo = make_srpo_loss(
        actor,
        bc_loss.actor_network,
        qvalue,
        hp,
        qvalue_params=target_params,
        behavior_params=bc_loss.actor_network_params,
    )
    srpo.load_state_dict(state["modules"]["policy"])
    batch = buffer.sample()
    obs, data_action = batch["observation"], batch["action"]
    num_states = len(obs)
    td = TensorDict({"observation": obs}, batch_size=[num_states])
    behavior = bc_loss.actor_network.eval()
    steps = int(behavior.num_steps if sampling_steps is None else sampling_steps)
    generator = torch.Generator().manual_seed(seed)
    actions = {
        "data": data_action,
        "policy": actor.eval()(td)["action"],
        "behavior": behavior.sample(obs, steps=steps, generator=generator),
        "zeros": torch.zeros_like(data_action),
    }
    with torch.enable_grad():  # q_gradient differentiates in the action
        values = {name: srpo.q_gradient(obs, a)[0] for name, a in actions.items()}
    return {
        "checkpoint": path.name,
        "global_step": int(state["global_step"]),
        "num_states": num_states,
        "sampling_steps": steps,
        "seed": seed,
        "q_reduce": str(srpo.q_reduce),
        "actions": {
            name: {
                "q": float(values[name].mean()),
                "distance_to_data": float((a - data_action).norm(dim=-1).mean()),
                # action dimensions at the box's edge (|a| > 0.99): a policy pushed there by the
                # critic's gradient while the data rarely is
                "saturated_fraction": float((a.abs() > 0.99).float().mean()),
            }
            for name, a in actions.items()
        },
    }


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="srpo", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's behavior model, critic, policy, their optimizers and the three stages."""
    cfg, hp = run.cfg, run.cfg.srpo
    steps = budgets(cfg)
    obs_dim, act_dim = run.obs_dim, run.action_dim

    # ---- stage 1: the diffusion behavior model μ (ε-network on the continuous VP-SDE)
    b = hp.behavior
    bc_loss = make_behavior_loss(b, obs_dim, act_dim).to(run.device)
    behavior = bc_loss.actor_network
    bc_opt = torch.optim.AdamW(
        bc_loss.actor_network_params.values(True, True), lr=b.lr, weight_decay=b.weight_decay
    )
    # the same tensors, another batch size and sampler
    behavior_buffer = run.buffer.with_batch_size(
        steps["behavior_batch_size"], seed=int(cfg.seed) + 1
    )

    # ---- stage 2: the IQL critic (twin Q, V, Polyak target)
    c = hp.critic
    qvalue = make_qvalue(obs_dim, act_dim, list(c.hidden))
    iql = IQLLoss(
        make_gaussian_actor(obs_dim, act_dim, list(c.hidden)),  # unused: SRPO extracts its own
        qvalue,
        make_value(obs_dim, list(c.hidden)),
        num_qvalue_nets=2,
        expectile=c.expectile,
        loss_function="l2",
    ).to(run.device)
    iql.make_value_estimator(gamma=c.discount)
    v_opt, q_opt = network_optimizers(iql, c.lr, ("value", "qvalue"))
    critic_target = SoftUpdate(iql, tau=c.tau)

    if hp.init_from:
        load_earlier_stages(str(hp.init_from), bc_loss, iql, run.device, seed=run.seed)
        steps["behavior"] = steps["critic"] = 0

    # ---- stage 3: the Dirac policy, regularized by the frozen behavior score
    p = hp.policy
    actor = make_srpo_actor(obs_dim, act_dim, list(p.hidden))
    srpo = make_srpo_loss(
        actor,
        behavior,
        qvalue,
        hp,
        qvalue_params=iql.target_qvalue_network_params,  # shared: the critic as stage 2 left it
        behavior_params=bc_loss.actor_network_params,  # shared: the model stage 1 trained
    ).to(run.device)
    (actor_opt,) = network_optimizers(srpo, p.lr, ("actor",))
    schedulers = (
        [torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, T_max=max(steps["policy"], 1))]
        if p.cosine_schedule
        else []
    )

    stages = [
        Stage(
            "behavior",
            steps["behavior"],
            objectives=[Objective("bc", bc_loss, [bc_opt])],
            buffer=behavior_buffer,
        ),
        Stage(
            "critic",
            steps["critic"],
            objectives=[Objective("iql", iql_critic(iql), [v_opt, q_opt])],
            targets=[TargetUpdate(critic_target)],
        ),
        Stage(
            "policy",
            steps["policy"],
            objectives=[Objective("srpo", srpo, [actor_opt], schedulers=schedulers)],
            evaluate=True,
        ),
    ]
    log.info("SRPO stages: %s", {k: v for k, v in steps.items()})
    return Built(stages, {"behavior": bc_loss, "critic": iql, "policy": srpo}, actor)


if __name__ == "__main__":
    main()
