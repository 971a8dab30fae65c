"""BDPO (Gao et al., ICML 2025): behavior-regularized diffusion policy optimization.

    python recipes/bdpo.py                                  # short real run on the default dataset
    python recipes/bdpo.py profile=smoke                    # 50 steps of every stage, small model
    python recipes/bdpo.py task=walker2d-medium-replay      # a task's dataset and η, ρ, E
    python recipes/bdpo.py -m experiment=paper              # 2M + 2M steps, eval every 50k, five seeds
    python recipes/bdpo.py bdpo.init_from=outputs/bdpo/<run> bdpo.eta=0.05  # reuse its behavior model

Stages (``BDPOLoss``, docs/bdpo.md)::

    behavior       L_ν = E‖ε_ν(s, a^n, n) − ε‖²;  ν̄ ← EMA(ν);  at the end π, π̄ ← ν̄
                   (with no behavior steps, π, π̄ ← ν̄ before the first step of training)
    critic_warmup  every step: L_Q (y_Q = r + γ(1−d)(LCB Q̄(s', a'^0) − η Σ_n ℓ_n), chain at s' by π̄)
                               L_V (y_V = LCB V̄(s, a^{n−1}, n−1) − η ℓ_n, one step of π̄);  Q̄, V̄ ← EMA
    train          the same, and every `update_ratio` steps
                   L_π = −E[LCB V̄(s, a^{n−1}, n−1) − η ℓ_n]  (one reparameterized step of π);  π̄ ← EMA
                   L_ν again;  ν̄ ← EMA                 (`behavior_updates`, the official code)

Evaluation: `eval_samples` actions of π̄ per state, the one of largest mean Q̄ (the EMA critics, as
the official code; the paper's rule).

`bdpo.size_caps` (set by `profile=smoke`, torchrl_sym/configs/profile/bdpo/smoke.yaml) bounds the ensemble
size, the sample counts and the network widths after the task file is merged, so that a smoke run
takes seconds per stage even on a task with a 20-member ensemble.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable
from pathlib import Path

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
import torch
from omegaconf import OmegaConf
from tensordict import TensorDict, TensorDictBase

from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    VPDiscreteSchedule,
)
from torchrl_sym.objectives.bdpo import BDPOLoss, BDPOPolicy, BDPOPrepareTraining, make_bdpo_qvalue
from torchrl_sym.train.loop import Objective, Stage, TargetUpdate
from torchrl_sym.train.recipe import (
    Built,
    Run,
    info_dims,
    load_earlier_run,
    load_run_checkpoint,
    run_recipe,
    score_behavior_model,
    stage_reached,
    stage_steps,
)

log = logging.getLogger(__name__)

# bdpo.size_caps keys: counts capped as they are, and `hidden` capping every hidden width
SIZE_CAPS = ("ensemble_size", "num_samples", "eval_samples", "hidden")


def capped_sizes(hp):
    """``hp`` (the ``bdpo`` config) with ``hp.size_caps`` applied: each of ``ensemble_size``,
    ``num_samples`` and ``eval_samples`` becomes ``min(value, cap)``, every width of
    ``actor_hidden`` and ``critic_hidden`` ``min(width, caps.hidden)`` (depths unchanged). A cap that
    is absent or null leaves its sizes alone; ``size_caps: null`` returns ``hp`` itself.
    """
    caps = hp.get("size_caps")
    if caps is None:
        return hp
    caps = OmegaConf.to_container(caps, resolve=True) if OmegaConf.is_config(caps) else caps
    if not isinstance(caps, dict):
        raise ValueError(
            f"bdpo.size_caps must be a mapping of {list(SIZE_CAPS)} to positive ints (or null), "
            f"got {caps!r}."
        )
    for key, value in caps.items():
        if key not in SIZE_CAPS:
            raise ValueError(
                f"bdpo.size_caps.{key} is not a size cap; known: {list(SIZE_CAPS)}. Remove it, or "
                "set the size itself (bdpo.<key>=...)."
            )
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"bdpo.size_caps.{key} must be a positive int or null, got {value!r}.")
    out = OmegaConf.to_container(hp, resolve=True)
    for key in ("ensemble_size", "num_samples", "eval_samples"):
        if caps.get(key) is not None:
            out[key] = min(int(out[key]), caps[key])
    if caps.get("hidden") is not None:
        for key in ("actor_hidden", "critic_hidden"):
            out[key] = [min(int(width), caps["hidden"]) for width in out[key]]
    return OmegaConf.create(out)


def loss_terms(loss: BDPOLoss, term: str) -> Callable[[TensorDictBase], TensorDict]:
    """``batch -> TensorDict({loss_<term>, <its diagnostics>})``: BDPOLoss's ``<term>_loss``
    method (``term`` one of ``behavior``, ``qvalue``, ``value``, ``actor``), which returns
    ``(loss, metadata)`` as TorchRL's losses do, as an objective of the loop (the ``loss_*``
    entry is minimized, the others logged)."""
    method = getattr(loss, f"{term}_loss")

    def terms(batch: TensorDictBase) -> TensorDict:
        value, metadata = method(batch)
        return TensorDict({f"loss_{term}": value, **metadata}, batch_size=[])

    return terms


def make_diffusion(obs_dim: int, action_dim: int, hp) -> DiffusionBehaviorActor:
    net = MLPNoisePredictor(obs_dim, action_dim, hidden=list(hp.actor_hidden))
    return DiffusionBehaviorActor(
        net,
        VPDiscreteSchedule(int(hp.num_steps), variance="beta"),
        action_low=-1.0,
        action_high=1.0,
        clip_sample=True,
    )


def make_loss(obs_dim: int, action_dim: int, hp) -> BDPOLoss:
    """The BDPOLoss of the ``bdpo`` settings ``hp`` (sizes already capped: :func:`capped_sizes`):
    actor and behavior diffusion models, an ensemble of ``hp.ensemble_size`` Q networks and the
    diffusion value network V_n."""
    S, A, E = obs_dim, action_dim, int(hp.ensemble_size)
    return BDPOLoss(
        make_diffusion(S, A, hp),
        [
            make_bdpo_qvalue(S, A, list(hp.critic_hidden), layer_norm=hp.q_layer_norm)
            for _ in range(E)
        ],
        NoiseConditionedCritic(S, A, num_members=E, hidden=list(hp.critic_hidden)),
        make_diffusion(S, A, hp),
        eta=hp.eta,
        rho=hp.rho,
        gamma=hp.discount,
        num_samples=int(hp.num_samples),
        q_target_form=hp.q_target_form,
        max_q_backup=hp.max_q_backup,
        step_sampling=str(hp.get("step_sampling", "uniform")),  # runs from before the knob: uniform
    )


# the behavior model ν and its EMA ν̄ in BDPOLoss's state dict: what bdpo.init_from loads
BEHAVIOR_KEYS = ("behavior_network_params.", "target_behavior_network_params.")


def load_behavior(path: str, loss: BDPOLoss, device, *, seed: int | None = None) -> None:
    """Load the behavior model ν and its EMA ν̄ of an earlier BDPO run (its run directory, one
    of its checkpoints, or a stacked run: the slice of ``seed``) whose behavior stage finished;
    everything else of ``loss`` keeps its own initialization. The networks must match this
    configuration (dataset, N, ``actor_hidden``)."""
    state = load_earlier_run(path, device, seed=seed, option="bdpo.init_from", algo="bdpo")
    source = state.get("modules", {}).get("loss")
    own = loss.state_dict()
    wanted = [k for k in own if k.startswith(BEHAVIOR_KEYS)]
    if not isinstance(source, dict) or not all(k in source for k in wanted):
        held = sorted(state.get("modules", {}))
        raise ValueError(
            f"bdpo.init_from={str(path)!r} is not a bdpo checkpoint (it holds modules {held}; "
            "expected 'loss' with the behavior model's parameters)."
        )
    if int(state["stage_index"]) < 1:
        raise ValueError(
            f"bdpo.init_from={str(path)!r} stopped in stage '{state['stage_name']}' at step "
            f"{state['stage_step']}: its behavior stage is not finished. Resume that run first "
            "(resume=<its directory>)."
        )
    wrong = [k for k in wanted if source[k].shape != own[k].shape]
    if wrong:
        raise ValueError(
            f"bdpo.init_from={str(path)!r}: its behavior model does not match this configuration "
            f"(dataset, bdpo.num_steps, bdpo.actor_hidden): {wrong[0]} is "
            f"{tuple(source[wrong[0]].shape)} there, {tuple(own[wrong[0]].shape)} here."
        )
    loss.load_state_dict({**own, **{k: source[k] for k in wanted}})
    log.info(
        "Loaded the behavior model of %s (its checkpoint at stage '%s', step %d); the behavior "
        "stage is skipped.",
        path,
        state["stage_name"],
        int(state["stage_step"]),
    )


# stage numbers of a BDPO run (build's stages): after the behavior stage ν, ν̄ are trained; from the
# train stage on the actor π has left ν̄'s copy
BEHAVIOR_DONE, TRAIN_STAGE = 1, 2


def _reading_targets(fn):
    """``fn`` reads a loaded loss's EMA copies without updating them: TorchRL's warning that no
    target updater is associated with the loss does not apply."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="No target network updater")
            return fn(*args, **kwargs)

    return wrapper


def _load_run(run_dir: str | Path):
    """``(cfg, capped settings, checkpoint path, state, buffer, loss)`` of a BDPO run directory:
    :func:`~torchrl_sym.train.recipe.load_run_checkpoint`, and the run's BDPOLoss (sizes as
    trained: :func:`capped_sizes`) holding the checkpoint's parameters."""
    cfg, path, state, buffer = load_run_checkpoint(
        run_dir, algo="bdpo", reads="BDPO runs (their diffusion behavior model, actor and critics)"
    )
    hp = capped_sizes(cfg.bdpo)
    loss = make_loss(*info_dims(buffer.info), hp)
    loss.load_state_dict(state["modules"]["loss"])
    return cfg, hp, path, state, buffer, loss.eval()


def ema_behavior(loss: BDPOLoss, hp, obs_dim: int, action_dim: int) -> DiffusionBehaviorActor:
    """A stand-alone copy of the EMA behavior model ν̄ of ``loss`` (the model the penalties and the
    actor's initialization use), as a policy module: sampled under a random exploration type,
    zero-noise under a deterministic one."""
    behavior = make_diffusion(obs_dim, action_dim, hp)
    params = loss.target_behavior_network_params.detach().flatten_keys(".")
    # the state dict's entries (the schedule's constant tables are not persistent buffers)
    behavior.load_state_dict({key: params[key] for key in behavior.state_dict()})
    return behavior.eval()


@_reading_targets
def evaluate_behavior(
    run_dir: str | Path, *, episodes: int | None = None, policy_states: int | None = None
) -> dict:
    """The EMA behavior model ν̄ of a BDPO run, evaluated alone as a policy (the counterpart of
    :func:`torchrl_sym.recipes.srpo.evaluate_behavior`, and the same result's layout).

    Loads ``run_dir``'s newest checkpoint (its behavior stage must be finished), rebuilds the
    run's BDPOLoss from ``run_dir/config.yaml``, and runs ``episodes`` episodes (default: the
    run's ``eval.episodes``) of ν̄ in the dataset's env with the run's evaluation seeds, twice:
    actions sampled by the N-step DDPM chain (``bdpo.num_steps``, the chain every penalty is
    summed over) from a_N ~ N(0, I), and the chain's zero-noise action. Nothing in ``run_dir``
    is changed. ν keeps training on the actor's steps (``bdpo.behavior_updates``), so a
    checkpoint of the train stage scores the behavior model as it is then.

    With ``policy_states`` set and the run's train stage begun, the result also holds
    ``"policy_diagnostics"``: :func:`policy_diagnostics` on that many dataset states.

    Returns:
        ``{"checkpoint", "global_step", "sampling_steps", "episodes", "sample":
        {"return", "normalized_score"}, "deterministic": {...}}`` (means over the episodes).
    """
    cfg, hp, path, state, buffer, loss = _load_run(run_dir)
    if not stage_reached(state, BEHAVIOR_DONE):
        raise ValueError(
            f"{path} is at step {state['stage_step']} of the behavior stage: the behavior model is "
            "not trained yet; evaluate it once the run has reached the critic warm-up"
        )
    info = buffer.info
    behavior = ema_behavior(loss, hp, *info_dims(info))
    result = score_behavior_model(cfg, path, state, info, behavior, episodes)
    if policy_states is not None and stage_reached(state, TRAIN_STAGE):
        result["policy_diagnostics"] = _diagnose_policy(
            cfg, hp, path, state, buffer, loss, num_states=policy_states
        )
    return result


@_reading_targets
def policy_diagnostics(run_dir: str | Path, *, num_states: int = 4096, seed: int = 0) -> dict:
    """Where a BDPO run puts its actions, against the data and its behavior model.

    Loads ``run_dir``'s newest checkpoint (its train stage must have begun), draws ``num_states``
    distinct dataset transitions ``(s, a)`` (sampler seed ``seed``; all of them for a smaller
    dataset, in random order) and, for five actions per state (``data``: the dataset's a;
    ``policy``: the action the run is evaluated with, the best of ``eval_samples`` samples of the
    EMA actor π̄ under the mean Q̄ (:class:`BDPOPolicy` as the run's ``bdpo.eval_selection`` and
    ``bdpo.eval_critic``); ``actor``: one sample of π̄; ``behavior``: one sample of ν̄;
    ``zeros``: the zero action), reports the mean critic value (the mean of the Q ensemble that
    ranks the samples) and the mean Euclidean distance to the dataset action. Sampling draws
    from torch's global generator, seeded with ``seed`` first. Nothing in ``run_dir`` is
    changed; no episode is run.

    Read it beside the run's score: an actor whose own samples sit much further from the data
    than ν̄'s, at a critic value the data's actions do not reach, has followed the critics'
    extrapolation off the data's support (too weak a penalty ``η`` for those critics, or critics
    still far from their fixed point); an actor near ν̄ that still scores low points elsewhere.

    Returns:
        ``{"checkpoint", "global_step", "num_states", "sampling_steps", "seed", "q_reduce",
        "actions": {name: {"q", "distance_to_data", "saturated_fraction"}}}`` for name in data,
        policy, actor, behavior, zeros (``saturated_fraction``: the share of action dimensions
        with ``|a| > 0.99``).
    """
    cfg, hp, path, state, buffer, loss = _load_run(run_dir)
    return _diagnose_policy(cfg, hp, path, state, buffer, loss, num_states=num_states, seed=seed)


@torch.no_grad()
def _diagnose_policy(cfg, hp, path, state, buffer, loss, *, num_states: int, seed: int = 0):
    """:func:`policy_diagnostics` on a run already loaded by :func:`_load_run`."""
    if not stage_reached(state, TRAIN_STAGE):
        raise ValueError(
            f"{path} is in stage '{state['stage_name']}' (step {state['stage_step']}): the train "
            "stage has not begun, so the actor is still the behavior model's copy; diagnose the "
            "policy once the run has reached it"
        )
    buffer = buffer.with_batch_size(min(num_states, buffer.info.num_transitions), seed=seed)
    batch = buffer.sample()
    obs, data_action = batch["observation"], batch["action"]
    if loss.action_clip is not None:  # the actions the losses see
        data_action = data_action.clamp(-loss.action_clip, loss.action_clip)
    behavior = ema_behavior(loss, hp, *info_dims(buffer.info))  # built before the draws are seeded
    torch.manual_seed(seed)
    ema = hp.eval_critic == "ema"
    policy = BDPOPolicy(
        loss, num_samples=int(hp.eval_samples), selection=hp.eval_selection, critic=hp.eval_critic
    )
    first = BDPOPolicy(loss, selection="first")
    td = TensorDict({"observation": obs}, batch_size=[len(obs)])
    actions = {
        "data": data_action,
        "policy": policy(td.clone())["action"],
        "actor": first(td.clone())["action"],
        "behavior": behavior.sample(obs),
        "zeros": torch.zeros_like(data_action),
    }
    return {
        "checkpoint": path.name,
        "global_step": int(state["global_step"]),
        "num_states": len(obs),
        "sampling_steps": int(loss.num_steps),
        "seed": seed,
        "q_reduce": f"mean of the {int(hp.ensemble_size)} {'EMA' if ema else 'online'} Q heads",
        "actions": {
            name: {
                "q": float(loss.q_values(obs, a, target=ema).mean(0).mean()),
                "distance_to_data": float((a - data_action).norm(dim=-1).mean()),
                "saturated_fraction": float((a.abs() > 0.99).float().mean()),
            }
            for name, a in actions.items()
        },
    }


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="bdpo", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's diffusion models, critics, loss, optimizers and three stages."""
    hp = capped_sizes(run.cfg.bdpo)
    if hp is not run.cfg.bdpo:  # config.yaml holds the uncapped sizes: say what is trained
        sized = OmegaConf.to_container(hp)
        keys = ("ensemble_size", "num_samples", "eval_samples", "actor_hidden", "critic_hidden")
        log.info(
            "bdpo.size_caps=%s: %s",
            OmegaConf.to_container(run.cfg.bdpo.size_caps),
            ", ".join(f"{key}={sized[key]}" for key in keys),
        )
    loss = make_loss(run.obs_dim, run.action_dim, hp).to(run.device)

    def adam(name: str, lr: float) -> torch.optim.Adam:
        return torch.optim.Adam(getattr(loss, f"{name}_network_params").values(True, True), lr=lr)

    behavior_opt = adam("behavior", hp.behavior_lr)
    q_opt, v_opt, actor_opt = (
        adam("qvalue", hp.critic_lr),
        adam("value", hp.critic_lr),
        adam("actor", hp.actor_lr),
    )
    behavior_steps = stage_steps(run.cfg, hp.behavior_steps)
    if hp.get("init_from"):  # an earlier run's ν, ν̄ (then π, π̄ ← ν̄ below): no behavior stage
        load_behavior(str(hp.init_from), loss, run.device, seed=run.seed)
        behavior_steps = 0
    warmup_steps = stage_steps(run.cfg, hp.warmup_steps)
    train_steps = stage_steps(run.cfg, run.cfg.train.steps)
    # cosine over the whole actor-critic budget (warm-up + train), as optax's schedule in the official
    # code: the critics reach 0, the actor (stepped only on actor updates) ends near 0.91x
    horizon = max(warmup_steps + train_steps, 1)
    critic_sched = [
        torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=horizon) for o in (q_opt, v_opt)
    ]
    actor_sched = [torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, T_max=horizon)]
    clip, ratio, tau = float(hp.max_grad_norm), int(hp.update_ratio), float(hp.ema_tau)

    def critic_objectives() -> list[Objective]:
        return [
            Objective(
                "qvalue",
                loss_terms(loss, "qvalue"),
                [q_opt],
                [critic_sched[0]],
                max_grad_norm=clip,
            ),
            Objective(
                "value", loss_terms(loss, "value"), [v_opt], [critic_sched[1]], max_grad_norm=clip
            ),
        ]

    critic_ema = TargetUpdate(loss.make_target_updater("critic", tau=tau))
    behavior_ema = loss.make_target_updater("behavior", tau=tau)
    behavior_targets = [TargetUpdate(behavior_ema)]
    if behavior_steps:  # π, π̄ ← ν̄ after the last behavior step
        behavior_targets.append(TargetUpdate(BDPOPrepareTraining(loss), start=behavior_steps - 1))
    else:  # no pretraining: π, π̄ ← ν̄ (its initial weights) now (a resumed run then loads its own)
        loss.prepare_training()
    behavior_stage = Stage(
        "behavior",
        behavior_steps,
        objectives=[
            Objective("behavior", loss_terms(loss, "behavior"), [behavior_opt], max_grad_norm=clip)
        ],
        targets=behavior_targets,
    )
    warmup_stage = Stage(
        "critic_warmup", warmup_steps, objectives=critic_objectives(), targets=[critic_ema]
    )
    # the actor runs on stage steps ratio-1, 2·ratio-1, ...: the steps the loop logs (multiples of
    # log_interval, counted from 1) then include an actor update
    phase = ratio - 1
    actor_objective = Objective(
        "actor",
        loss_terms(loss, "actor"),
        [actor_opt],
        actor_sched,
        every=ratio,
        start=phase,
        max_grad_norm=clip,
    )
    train_objectives = [*critic_objectives(), actor_objective]
    actor_ema = loss.make_target_updater("actor", tau=tau)
    train_targets = [critic_ema, TargetUpdate(actor_ema, every=ratio, start=phase)]
    if hp.behavior_updates:  # the official code keeps training ν (and ν̄) on the actor's steps
        train_objectives.append(
            Objective(
                "behavior",
                loss_terms(loss, "behavior"),
                [behavior_opt],
                every=ratio,
                start=phase,
                max_grad_norm=clip,
            )
        )
        train_targets.append(TargetUpdate(behavior_ema, every=ratio, start=phase))
    train_stage = Stage("train", train_steps, train_objectives, train_targets, evaluate=True)
    policy = BDPOPolicy(
        loss,
        num_samples=int(hp.eval_samples),
        selection=hp.eval_selection,
        critic=hp.eval_critic,
    )
    return Built([behavior_stage, warmup_stage, train_stage], {"loss": loss}, policy)


if __name__ == "__main__":
    main()
