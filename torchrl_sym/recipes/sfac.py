"""Sf-AC (Zhu et al., arXiv 2508.04225): actor-critic with symmetric f-divergence regularization.

    python recipes/sfac.py                                   # short real run on the default dataset
    python recipes/sfac.py sfac.divergence=js sfac.n_loss=5  # any knob of the reconstruction
    python recipes/sfac.py task=walker2d-medium-replay
    python recipes/sfac.py -m experiment=paper               # 1M steps, eval every 10k, five seeds

Per step (``SfACLoss``, docs/sfac.md; iql_compatible preset)::

    A_v   = min_i Q̄_i(s,a) − V(s);  w_kl = exp(A_v/τ) ∧ W_max;  w₂ = [1 + A_v/τ₂]₊
    r     = π_θ(a|s) / (π̂_β(a|s) w₂),  r_c = clip(r, 1 − ε, 1 + ε)
    L_π   = −E[w_kl log π_θ(a|s)] + E[w₂ Σ_{n=2}^{N} h_n (r_c − 1)ⁿ] / κ     (symmetry term after warm-up)
    L_V   = E |τ_e − 1(u < 0)| u²,  L_Q = Σ_i E (Q_i − r − γ(1 − d) V(s'))²,  L_β = −E log π̂_β(a|s)
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None

from torchrl_sym.models import make_qvalue, make_tanh_gaussian_actor, make_value
from torchrl_sym.objectives import SfACLoss
from torchrl_sym.train.recipe import (
    Built,
    Run,
    network_optimizers,
    one_stage,
    run_recipe,
    stage_steps,
)


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="sfac", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.sfac
    hidden, bounds = list(hp.hidden), tuple(hp.log_std_bounds)
    actor = make_tanh_gaussian_actor(run.obs_dim, run.action_dim, hidden, log_std_bounds=bounds)
    behavior = make_tanh_gaussian_actor(run.obs_dim, run.action_dim, hidden, log_std_bounds=bounds)
    steps = stage_steps(run.cfg, run.cfg.train.steps)
    loss = SfACLoss(
        actor,
        make_qvalue(run.obs_dim, run.action_dim, hidden),
        make_value(run.obs_dim, hidden),
        behavior,
        divergence=hp.divergence,
        kappa=hp.kappa,
        n_loss=hp.n_loss,
        policy_order=hp.policy_order,
        epsilon=hp.epsilon,
        tau=hp.tau,
        tau2=hp.tau2,
        w_max=hp.w_max,
        preset=hp.preset,
        expectile=hp.expectile,
        keep_linear_term=hp.keep_linear_term,
        behavior_warmup=int(hp.behavior_warmup_fraction * steps),
    ).to(run.device)
    loss.make_value_estimator(gamma=hp.discount)
    optimizers = network_optimizers(loss, hp.lr, ("value", "actor", "qvalue", "behavior"))
    return one_stage(run, loss, optimizers, policy=actor, tau=hp.target_tau, name="sfac")


if __name__ == "__main__":
    main()
