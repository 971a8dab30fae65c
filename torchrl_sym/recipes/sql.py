"""SQL (Xu et al., ICLR 2023), sparse Q-learning, in the form of its official code.

    python recipes/sql.py                           # short real run on the default dataset
    python recipes/sql.py task=hopper-medium-expert # the task's dataset and α
    python recipes/sql.py -m experiment=paper       # 1M steps, eval every 10k, five seeds

Per step (``SQLLoss``, form="code", baselines.md §3)::

    z   = (min_i Q̄_i(s,a) − V(s))/α + ½,   L_V = E[1(z > 0) z² + V(s)/α]
    L_Q = Σ_i E (Q_i(s,a) − r − γ(1 − d) V(s'))²
    L_π = −E[(min_i Q̄_i(s,a) − V(s))₊ ∧ 100 · log π(a|s)]
    Q̄ ← 0.995 Q̄ + 0.005 Q
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None

from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import SQLLoss
from torchrl_sym.train.recipe import Built, Run, in_sample, run_recipe


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="sql", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.sql
    hidden = list(hp.hidden)
    actor = make_gaussian_actor(
        run.obs_dim, run.action_dim, hidden, log_std_bounds=tuple(hp.log_std_bounds)
    )
    loss = SQLLoss(
        actor,
        make_qvalue(run.obs_dim, run.action_dim, hidden),
        make_value(run.obs_dim, hidden),
        alpha=hp.alpha,
        form=hp.form,
    ).to(run.device)
    return in_sample(run, loss, policy=actor, hp=hp, name="sql")


if __name__ == "__main__":
    main()
