"""XQL (Garg et al., ICLR 2023), extreme Q-learning, as its official offline code.

    python recipes/xql.py                          # short real run, "consistent" settings
    python recipes/xql.py task=walker2d-medium     # the task's dataset and tuned β, clip, batch
    python recipes/xql.py -m experiment=paper      # 1M steps, eval every 10k, five seeds

Per step (``XQLLoss``, baselines.md §4)::

    z   = (min_i Q̄_i(s,a) − V(s))/β ∧ max_clip,  m = sg(max(max_B z, −1))
    L_V = E[exp(z − m) − z e^{−m} − e^{−m}]          (Gumbel regression, rescaled)
    L_Q = Σ_i E Huber_20(Q_i(s,a) − r − γ(1 − d) V(s'))
    L_π = −E[exp(3 (min_i Q̄_i(s,a) − V(s))) ∧ 100 · log π(a|s)]
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None

from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import XQLLoss
from torchrl_sym.train.recipe import Built, Run, in_sample, run_recipe


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="xql", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.xql
    hidden = list(hp.hidden)
    actor = make_gaussian_actor(
        run.obs_dim, run.action_dim, hidden, log_std_bounds=tuple(hp.log_std_bounds)
    )
    loss = XQLLoss(
        actor,
        make_qvalue(run.obs_dim, run.action_dim, hidden),
        make_value(run.obs_dim, hidden, layer_norm=True),
        beta_loss=hp.beta_loss,
        max_clip=hp.max_clip,
        rescale=hp.rescale,
        q_loss=hp.q_loss,
        huber_delta=hp.huber_delta,
        actor_temperature=hp.actor_temperature,
    ).to(run.device)
    return in_sample(run, loss, policy=actor, hp=hp, name="xql")


if __name__ == "__main__":
    main()
