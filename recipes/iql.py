"""IQL (Kostrikov, Nair, Levine, ICLR 2022) on an offline dataset, with TorchRL's IQLLoss.

    python recipes/iql.py                                  # short real run on the default dataset
    python recipes/iql.py profile=smoke                    # a few dozen steps: checks an install
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

import hydra
import torch
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.train.loop import Objective, Stage, TargetUpdate
from torchrl_sym.train.recipe import setup_run, stage_steps


@hydra.main(config_path="../configs", config_name="iql", version_base="1.3")
def main(cfg) -> dict:
    run = setup_run(cfg)
    cfg = run.cfg  # with the task file's per-dataset settings
    hp = cfg.iql
    hidden = list(hp.hidden)

    actor = make_gaussian_actor(
        run.obs_dim, run.action_dim, hidden, log_std_bounds=tuple(hp.log_std_bounds)
    )
    qvalue = make_qvalue(run.obs_dim, run.action_dim, hidden)
    value = make_value(run.obs_dim, hidden)
    loss = IQLLoss(
        actor,
        qvalue,
        value,
        num_qvalue_nets=2,
        expectile=hp.expectile,
        temperature=hp.temperature,
        loss_function="l2",
    ).to(run.device)
    loss.make_value_estimator(gamma=hp.discount)

    steps = stage_steps(cfg, cfg.train.steps)
    actor_opt = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=hp.lr)
    q_opt = torch.optim.Adam(loss.qvalue_network_params.values(True, True), lr=hp.lr)
    v_opt = torch.optim.Adam(loss.value_network_params.values(True, True), lr=hp.lr)
    schedulers = (
        [torch.optim.lr_scheduler.CosineAnnealingLR(actor_opt, T_max=max(steps, 1))]
        if hp.actor_cosine_schedule
        else []
    )

    train = Stage(
        "train",
        steps,
        objectives=[Objective("iql", loss, [v_opt, actor_opt, q_opt], schedulers=schedulers)],
        targets=[TargetUpdate(SoftUpdate(loss, tau=hp.tau))],
        evaluate=True,
    )
    loop = run.make_loop([train], modules={"loss": loss}, policy=loss.actor_network)
    return run.execute(loop)


if __name__ == "__main__":
    main()
