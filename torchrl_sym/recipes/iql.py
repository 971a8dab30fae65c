"""IQL (Kostrikov, Nair, Levine, ICLR 2022) on an offline dataset, with TorchRL's IQLLoss.

    python recipes/iql.py                                  # short real run on the default dataset
    python recipes/iql.py profile=smoke                    # a few dozen steps: checks an install
    python recipes/iql.py task=hopper-medium-replay        # a task's dataset and settings
    python recipes/iql.py experiment=paper dataset=...     # 1M steps, eval every 5k, 10 episodes
    python recipes/iql.py -m experiment=paper seed=0,1,2,3,4 hydra/launcher=joblib

Per step (TorchRL's IQLLoss, one forward, each network receives only its own gradient)::

    L_V = E |τ − 1(u < 0)| u²,  u = min_i Q̄_i(s, a) − V(s)
    L_Q = Σ_i E (Q_i(s, a) − r − γ (1 − d) V(s'))²
    L_π = −E exp(β · (min_i Q̄_i(s, a) − V(s))) ∧ 100 · log π(a|s)
    Q̄ ← (1 − 0.005) Q̄ + 0.005 Q

One difference from the paper's JAX code: the paper updates V first and then regresses Q on the
new V; TorchRL's IQLLoss computes all three losses from the same parameters (as TorchRL's own IQL
recipe does).
"""

from __future__ import annotations

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
from torchrl.objectives import IQLLoss

from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.train.recipe import Built, Run, in_sample, run_recipe


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="iql", version_base="1.3")
def main(cfg):
    return run_recipe(cfg, build)


def build(run: Run) -> Built:
    """One seed's networks, loss, optimizers and stage."""
    hp = run.cfg.iql
    hidden = list(hp.hidden)
    actor = make_gaussian_actor(
        run.obs_dim, run.action_dim, hidden, log_std_bounds=tuple(hp.log_std_bounds)
    )
    loss = IQLLoss(
        actor,
        make_qvalue(run.obs_dim, run.action_dim, hidden),
        make_value(run.obs_dim, hidden),
        num_qvalue_nets=2,
        expectile=hp.expectile,
        temperature=hp.temperature,
        loss_function="l2",
    ).to(run.device)
    return in_sample(run, loss, policy=actor, hp=hp, name="iql")


if __name__ == "__main__":
    main()
