"""SAC (Haarnoja et al., 2018) in a MuJoCo v5 env: trains the behavior policies of the datasets.

    python recipes/sac.py env=hopper                      # train, saving actors along the way
    python recipes/sac.py env=hopper profile=smoke        # a few dozen steps
    python recipes/sac.py env=hopper resume=<run dir>     # continue a killed run

TorchRL's ``SACLoss`` (twin Q, target Q with Polyak 0.005, learned temperature with target entropy
−|A|), a TorchRL ``Collector`` (``frames_per_batch`` env steps, then ``utd`` gradient steps per env
step), and a replay buffer that keeps every transition in the order it was collected.

The run directory holds:

* ``actors/actor_<frames>.pt``: the actor's weights every ``save_interval`` env steps, with
  ``actors/evals.csv`` (frames, mean and std of the deterministic return over ``eval.episodes``);
  :mod:`torchrl_sym.data.policies` picks the expert and medium policies from these;
* ``replay_buffer.pt``: every collected transition in collection order (with trajectory ids): the
  source of the medium-replay dataset;
* ``checkpoints/``: atomic checkpoints (networks, targets, optimizers, temperature, replay buffer,
  counters, RNG states). A resumed run continues from the last one; the interrupted episode restarts.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import hydra
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import SACLoss, SoftUpdate

from torchrl_sym.envs import make_env, resolve_env_id
from torchrl_sym.models import make_qvalue, make_tanh_gaussian_actor
from torchrl_sym.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from torchrl_sym.train.evaluate import evaluate_policy
from torchrl_sym.train.recipe import make_logger

log = logging.getLogger(__name__)

# The collected transition fields kept in the replay buffer (and saved for medium-replay).
KEEP = [
    "observation",
    "action",
    ("next", "observation"),
    ("next", "reward"),
    ("next", "terminated"),
    ("next", "truncated"),
    ("next", "done"),
    ("collector", "traj_ids"),
]


def _run_dir(cfg) -> Path:
    if cfg.get("resume"):
        return Path(str(cfg.resume))
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _whole_batches(interval: int, frames_per_batch: int) -> int:
    return -(-interval // frames_per_batch) * frames_per_batch


@hydra.main(config_path="../configs", config_name="sac", version_base="1.3")
def main(cfg) -> dict:
    from omegaconf import OmegaConf

    run_dir = _run_dir(cfg)
    (run_dir / "actors").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    torch.manual_seed(int(cfg.seed))
    hp = cfg.sac
    env_id = resolve_env_id(cfg.env)
    total = (
        int(cfg.frames)
        if cfg.train.max_steps_per_stage is None
        else min(int(cfg.frames), int(cfg.train.max_steps_per_stage))
    )

    train_env = make_env(env_id, seed=int(cfg.seed))
    eval_env = make_env(env_id, seed=int(cfg.seed) + 1000)
    obs_dim = train_env.observation_spec["observation"].shape[-1]
    act_dim = train_env.action_spec.shape[-1]

    actor = make_tanh_gaussian_actor(obs_dim, act_dim, list(hp.hidden))
    loss = SACLoss(
        actor,
        make_qvalue(obs_dim, act_dim, list(hp.hidden)),
        num_qvalue_nets=2,
        loss_function="l2",
        delay_qvalue=True,
        alpha_init=float(hp.alpha_init),
        action_spec=train_env.action_spec,
    )
    loss.make_value_estimator(gamma=float(hp.discount))
    target = SoftUpdate(loss, tau=float(hp.tau))
    optim = torch.optim.Adam(
        [
            {"params": list(loss.actor_network_params.values(True, True))},
            {"params": list(loss.qvalue_network_params.values(True, True))},
            {"params": [loss.log_alpha]},
        ],
        lr=float(hp.lr),
    )
    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(total), batch_size=int(hp.batch_size))

    def update(batch):
        out = loss(batch)
        optim.zero_grad(set_to_none=True)
        (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
        optim.step()
        target.step()
        return out.detach()

    update_fn = torch.compile(update) if cfg.compile else update

    ckpts = CheckpointManager(run_dir / "checkpoints", keep=2)
    frames, updates = 0, 0
    state = ckpts.load_latest()
    if state is not None:
        loss.load_state_dict(state["loss"])
        optim.load_state_dict(state["optim"])
        buffer.extend(state["buffer"])
        frames, updates = int(state["frames"]), int(state["updates"])
        set_rng_state(state["rng"])
        log.info("Resumed at %d frames (%d updates)", frames, updates)

    logger = make_logger(
        cfg.logger.backend,
        run_dir,
        project=cfg.logger.project,
        run_name=f"sac-{env_id}-s{cfg.seed}",
    )
    evals_path = run_dir / "actors" / "evals.csv"
    # env steps per collector batch; save/checkpoint intervals are rounded up to whole batches
    fpb = min(int(hp.frames_per_batch), total)
    init_random = min(int(hp.init_random_frames), total // 2) // fpb * fpb
    save_interval = _whole_batches(min(int(cfg.save_interval), total), fpb)
    checkpoint_interval = _whole_batches(min(int(cfg.checkpoint.interval), total), fpb)
    collector = Collector(
        train_env,
        actor,
        frames_per_batch=fpb,
        total_frames=max(total - frames, fpb),
        init_random_frames=max(init_random - frames, 0),
        exploration_type=ExplorationType.RANDOM,
        auto_register_policy_transforms=False,
    )
    start, last_out = time.perf_counter(), None
    for batch in collector:
        if frames >= total:
            break
        batch = batch.reshape(-1)
        buffer.extend(batch.select(*KEEP))
        frames += batch.numel()
        if frames >= init_random:
            for _ in range(int(hp.utd) * batch.numel()):
                last_out = update_fn(buffer.sample())
                updates += 1
        collector.update_policy_weights_()
        if frames % save_interval == 0 or frames >= total:
            returns = evaluate_policy(
                eval_env, actor, num_episodes=int(cfg.eval.episodes), seed=int(cfg.seed) + 1000
            )
            torch.save(
                {k: v.detach().clone() for k, v in actor.state_dict().items()},
                run_dir / "actors" / f"actor_{frames:08d}.pt",
            )
            new = not evals_path.exists()
            with open(evals_path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["frames", "return_mean", "return_std"])
                writer.writerow([frames, float(returns.mean()), float(returns.std(unbiased=False))])
            scalars = {
                "eval/return": float(returns.mean()),
                "time/frames_per_second": frames / max(time.perf_counter() - start, 1e-9),
            }
            if last_out is not None:
                scalars.update(
                    {f"train/{k}": float(v) for k, v in last_out.items() if v.numel() == 1}
                )
            if logger is not None:
                for k, v in scalars.items():
                    logger.log_scalar(k, v, step=frames)
            log.info(
                "frames %d updates %d: return %.1f ± %.1f",
                frames,
                updates,
                returns.mean(),
                returns.std(unbiased=False),
            )
        if frames % checkpoint_interval == 0 or frames >= total:
            ckpts.save(
                frames,
                {
                    "loss": loss.state_dict(),
                    "optim": optim.state_dict(),
                    "buffer": buffer[: len(buffer)],
                    "frames": frames,
                    "updates": updates,
                    "rng": rng_state(),
                },
            )
    collector.shutdown()
    data = buffer[: len(buffer)]
    torch.save(data, run_dir / "replay_buffer.pt")
    summary = {
        "env_id": env_id,
        "frames": frames,
        "updates": updates,
        "seconds": time.perf_counter() - start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
