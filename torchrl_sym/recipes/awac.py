"""AWAC (Nair, Gupta, Dalal, Levine, 2020), advantage-weighted actor-critic, offline.

    python recipes/awac.py                       # short real run on the default dataset
    python recipes/awac.py awac.lambda_=1.0 data.reward_transform=return_range   # IQL-style setup
    python recipes/awac.py awac.weight_mode=exp_clip awac.lambda_=1.0 data.batch_size=256 \
        data.normalize_observations=true          # CORL's offline variant (weights, λ, batch, states)
    python recipes/awac.py -m experiment=paper   # 1M steps, eval every 10k, five seeds

Settings (``torchrl_sym/configs/awac.yaml``): rlkit's MuJoCo example (``examples/awac/mujoco/awac1.py``),
λ = ``beta`` = 2 and raw rewards (``reward_scale=1``).

Per step (``AWACLoss``, baselines.md §2; α = 0)::

    y   = r + γ(1 − d) min_i Q̄_i(s', a'),  a' ~ π(·|s')
    L_Q = Σ_i E (Q_i(s,a) − y)²
    A   = min_i Q_i(s,a) − min_i Q_i(s, ã),  ã ~ π(·|s)
    L_π = −E[B · softmax_B(A/λ) · log π(a|s)]
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None

from torchrl_sym.models import make_gaussian_actor, make_qvalue
from torchrl_sym.objectives import AWACLoss
from torchrl_sym.train.recipe import Built, Run, network_optimizers, one_stage, run_recipe


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="awac", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.awac
    actor = make_gaussian_actor(
        run.obs_dim, run.action_dim, list(hp.actor_hidden), log_std_bounds=tuple(hp.log_std_bounds)
    )
    loss = AWACLoss(
        actor,
        make_qvalue(run.obs_dim, run.action_dim, list(hp.hidden)),
        lambda_=hp.lambda_,
        weight_mode=hp.weight_mode,
        w_max=hp.w_max,
    ).to(run.device)
    loss.make_value_estimator(gamma=hp.discount)
    optimizers = network_optimizers(
        loss, hp.lr, ("actor", "qvalue"), weight_decay={"actor": hp.actor_weight_decay}
    )
    return one_stage(run, loss, optimizers, policy=actor, tau=hp.tau, name="awac")


if __name__ == "__main__":
    main()
