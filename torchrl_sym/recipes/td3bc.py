"""TD3+BC (Fujimoto and Gu, NeurIPS 2021) on an offline dataset, with TorchRL's TD3BCLoss.

    python recipes/td3bc.py                                  # short real run on the default dataset
    python recipes/td3bc.py profile=smoke                    # a few dozen steps: checks an install
    python recipes/td3bc.py task=hopper-medium-replay        # a task's dataset
    python recipes/td3bc.py experiment=paper dataset=...     # 1M steps, eval every 5k, 10 episodes
    python recipes/td3bc.py -m experiment=paper hydra/launcher=joblib   # five seeds

Set up as the paper's code (``sfujim/TD3_BC``; ``docs/specs/baselines.md`` §5): states standardized
with the dataset's mean and std + 1e-3 (``data.normalize_observations=true``; the evaluation env
applies the same statistics), raw rewards, a deterministic tanh actor and twin critics 2×256, Adam
3e-4, batch 256, γ = 0.99. Per step::

    ã'  = clip(π̄(s') + clip(N(0, 0.2²), −0.5, 0.5), −1, 1)
    L_Q = Σ_i E (Q_i(s, a) − r − γ (1 − d) min_j Q̄_j(s', ã'))²        every step
    λ   = α / E|Q_1(s, π(s))|  (no gradient),  α = 2.5
    L_π = −λ E Q_1(s, π(s)) + E_{B,A} (π(s) − a)²                      every 2nd step, after L_Q
    Q̄ ← (1 − τ) Q̄ + τ Q,  π̄ ← (1 − τ) π̄ + τ π,  τ = 0.005            on actor steps only

The official iteration counter starts at 1 and updates the actor when it is even, so the actor
runs on the 2nd, 4th, ... step (0-based steps 1, 3, ...); logged steps (even multiples of
``train.log_interval``) then carry an actor update.
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import SoftUpdate, TD3BCLoss

from torchrl_sym.models import make_deterministic_actor, make_qvalue
from torchrl_sym.train.loop import Objective, Stage, TargetUpdate
from torchrl_sym.train.recipe import Built, Run, network_optimizers, run_recipe, stage_steps


def make_loss(obs_dim: int, action_dim: int, hp) -> TD3BCLoss:
    """TorchRL's ``TD3BCLoss`` with the ``td3bc`` settings: a ``tanh`` actor and twin critics of
    widths ``hp.hidden``, actions in [−1, 1], MSE critic loss (TorchRL's default is smooth L1),
    target networks for both, and the TD(0) target with ``γ = hp.discount``."""
    hidden = list(hp.hidden)
    loss = TD3BCLoss(
        make_deterministic_actor(obs_dim, action_dim, hidden),
        make_qvalue(obs_dim, action_dim, hidden),
        num_qvalue_nets=2,
        bounds=(-1.0, 1.0),
        alpha=float(hp.alpha),
        policy_noise=float(hp.policy_noise),
        noise_clip=float(hp.noise_clip),
        loss_function="l2",
    )
    loss.make_value_estimator(gamma=float(hp.discount))
    return loss


def critic_terms(loss: TD3BCLoss):
    """``batch -> {loss_qvalue, q_mean, q_target_mean}`` (TD3BCLoss's ``qvalue_loss``)."""

    def terms(batch: TensorDictBase) -> TensorDict:
        value, info = loss.qvalue_loss(batch)
        return TensorDict(
            {
                "loss_qvalue": value,
                "q_mean": info["pred_value"].mean(),
                "q_target_mean": info["target_value"].mean(),
            },
            batch_size=[],
        )

    return terms


def actor_terms(loss: TD3BCLoss):
    """``batch -> {loss_actor, bc_loss, lmbd, q_actor_abs_mean}`` (TD3BCLoss's ``actor_loss``);
    ``lmbd · q_actor_abs_mean = α`` by construction."""

    def terms(batch: TensorDictBase) -> TensorDict:
        value, info = loss.actor_loss(batch)
        return TensorDict(
            {
                "loss_actor": value,
                "bc_loss": info["bc_loss"],
                "lmbd": info["lmbd"].detach(),
                "q_actor_abs_mean": info["state_action_value_actor"].abs().mean(),
            },
            batch_size=[],
        )

    return terms


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="td3bc", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.td3bc
    loss = make_loss(run.obs_dim, run.action_dim, hp).to(run.device)
    actor_opt, critic_opt = network_optimizers(loss, hp.lr, ("actor", "qvalue"))
    delay = int(hp.policy_delay)
    phase = delay - 1  # the 2nd, 4th, ... step (the official counter starts at 1)
    stage = Stage(
        "train",
        stage_steps(run.cfg, run.cfg.train.steps),
        objectives=[
            Objective("qvalue", critic_terms(loss), [critic_opt]),
            Objective("actor", actor_terms(loss), [actor_opt], every=delay, start=phase),
        ],
        targets=[TargetUpdate(SoftUpdate(loss, tau=hp.tau), every=delay, start=phase)],
        evaluate=True,
    )
    # the actor module shares its parameters with the loss: evaluation sees the trained weights
    return Built([stage], {"loss": loss}, loss.actor_network)


if __name__ == "__main__":
    main()
