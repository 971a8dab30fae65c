"""SAC or CrossQ in a MuJoCo v5 env: trains the behavior policies of the datasets.

    python recipes/sac.py env=hopper                      # train, saving actors along the way
    python recipes/sac.py env=hopper algo=crossq          # CrossQ (Bhatt et al., ICLR 2024)
    python recipes/sac.py env=hopper profile=smoke        # a few dozen steps
    python recipes/sac.py env=hopper resume=<run dir>     # continue a killed run

TorchRL's ``SACLoss`` (twin Q, target Q with Polyak 0.005, learned temperature with target entropy
−|A|), a TorchRL ``Collector`` (``frames_per_batch`` env steps, then ``utd`` gradient steps per env
step), and a replay buffer that keeps every transition in the order it was collected.

``algo=crossq`` swaps in TorchRL's ``CrossQLoss`` (Bhatt et al., ICLR 2024): batch-renormalized
critics evaluated on the joint batch of ``(s, a)`` and ``(s', a')``, no target networks, Adam with
``β₁ = 0.5``, the actor and temperature updated every ``policy_delay`` critic steps. The actor is
the same plain MLP as SAC's, so both learners' policies load the same way.

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

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
import torch
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs.utils import ExplorationType
from torchrl.objectives import CrossQLoss, SACLoss, SoftUpdate

from torchrl_sym.envs import make_env, resolve_env_id
from torchrl_sym.models import make_batchrenorm_qvalue, make_qvalue, make_tanh_gaussian_actor
from torchrl_sym.train.checkpoint import CheckpointManager, rng_state, set_rng_state
from torchrl_sym.train.evaluate import evaluate_policy
from torchrl_sym.train.recipe import (
    check_run_options,
    make_logger,
    prepare_run,
    write_resume_record,
)

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


def _truncate_evals(path: Path, frames: int) -> None:
    """Drops the rows of ``actors/evals.csv`` after ``frames`` (written after the checkpoint a
    resumed run continues from), so no frame count appears twice."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[0]) <= frames]
    if len(kept) == len(rows):
        return
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(kept)
    tmp.replace(path)


def _whole_batches(interval: int, frames_per_batch: int) -> int:
    return -(-interval // frames_per_batch) * frames_per_batch


@hydra.main(config_path="pkg://torchrl_sym.configs", config_name="sac", version_base="1.3")
def main(cfg) -> dict:
    check_run_options(cfg, stackable=False, recipe="sac")
    # the run directory and configuration (resume=DIR continues DIR's run), seeds, writer lock
    cfg, run_dir, lock, resume_record = prepare_run(cfg)
    try:
        return _train(cfg, run_dir, resume_record)
    finally:
        lock.release()


def _train(cfg, run_dir: Path, resume_record) -> dict:
    (run_dir / "actors").mkdir(parents=True, exist_ok=True)
    hp = cfg.sac
    env_id = resolve_env_id(cfg.env)
    total = (
        int(cfg.frames)
        if cfg.train.max_steps_per_stage is None
        else min(int(cfg.frames), int(cfg.train.max_steps_per_stage))
    )

    device = torch.device(str(cfg.get("device", "cpu")))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was requested but CUDA is not available; use device=cpu.")
    # on a GPU the env's tensors, the networks and the replay buffer all live on the device
    train_env = make_env(env_id, seed=int(cfg.seed), device=device)
    eval_env = make_env(env_id, seed=int(cfg.seed) + 1000, device=device)
    obs_dim = train_env.observation_spec["observation"].shape[-1]
    act_dim = train_env.action_spec.shape[-1]

    algo = str(cfg.algo)
    if algo not in ("sac", "crossq"):
        raise ValueError(f"algo={algo!r}: recipes/sac.py trains 'sac' or 'crossq'")
    actor = make_tanh_gaussian_actor(obs_dim, act_dim, list(hp.hidden)).to(device)
    if algo == "sac":
        loss = SACLoss(
            actor,
            make_qvalue(obs_dim, act_dim, list(hp.hidden)).to(device),
            num_qvalue_nets=2,
            loss_function="l2",
            delay_qvalue=True,
            alpha_init=float(hp.alpha_init),
            action_spec=train_env.action_spec,
        )
        target = SoftUpdate(loss, tau=float(hp.tau))
        betas, policy_delay = (0.9, 0.999), 1
    else:
        cq = cfg.crossq
        loss = CrossQLoss(
            actor,
            make_batchrenorm_qvalue(
                obs_dim,
                act_dim,
                list(cq.critic_hidden),
                momentum=float(cq.bn_momentum),
                warmup_steps=int(cq.bn_warmup_steps),
            ).to(device),
            num_qvalue_nets=2,
            loss_function="l2",
            alpha_init=float(hp.alpha_init),
            action_spec=train_env.action_spec,
        )
        target = None
        betas, policy_delay = (float(cq.adam_beta1), 0.999), int(cq.policy_delay)
    loss.make_value_estimator(gamma=float(hp.discount))
    lr = float(hp.lr) if algo == "sac" else float(cfg.crossq.lr)
    critic_optim = torch.optim.Adam(
        list(loss.qvalue_network_params.values(True, True)), lr=lr, betas=betas
    )
    actor_optim = torch.optim.Adam(
        [
            {"params": list(loss.actor_network_params.values(True, True))},
            {"params": [loss.log_alpha]},
        ],
        lr=lr,
        betas=betas,
    )
    optims = {"critic": critic_optim, "actor": actor_optim}
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(total, device=device), batch_size=int(hp.batch_size)
    )

    def update_critic(batch):
        loss_q, _ = loss.qvalue_loss(batch)
        critic_optim.zero_grad(set_to_none=True)
        loss_q.backward()
        critic_optim.step()
        if target is not None:
            target.step()
        return loss_q.detach()

    def update(batch):
        # SAC: one step of every loss; CrossQ: the critic step, then the delayed actor step.
        if algo == "sac":
            out = loss(batch)
            critic_optim.zero_grad(set_to_none=True)
            actor_optim.zero_grad(set_to_none=True)
            (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
            critic_optim.step()
            actor_optim.step()
            target.step()
            return out.detach()
        loss_q = update_critic(batch)
        loss_actor, meta = loss.actor_loss(batch)
        loss_alpha = loss.alpha_loss(meta["log_prob"])
        actor_optim.zero_grad(set_to_none=True)
        (loss_actor + loss_alpha).backward()
        actor_optim.step()
        return TensorDict(
            {
                "loss_qvalue": loss_q,
                "loss_actor": loss_actor.detach(),
                "loss_alpha": loss_alpha.detach(),
                "alpha": loss.log_alpha.detach().exp(),
                "entropy": -meta["log_prob"].mean(),
            }
        )

    update_fn = torch.compile(update) if cfg.compile else update
    critic_fn = torch.compile(update_critic) if cfg.compile else update_critic

    ckpts = CheckpointManager(run_dir / "checkpoints", keep=2)
    frames, updates, seconds = 0, 0, 0.0  # seconds: wall time of the earlier segments
    state = ckpts.load_latest(map_location=device)
    if state is not None:
        loss.load_state_dict(state["loss"])
        if "optim" in state:  # checkpoints before the split into critic and actor optimizers
            raise RuntimeError(
                f"{ckpts.directory}: this checkpoint holds one optimizer for every network (an "
                "older recipes/sac.py); resume it with that version or start a new run"
            )
        for name, opt in optims.items():
            opt.load_state_dict(state["optims"][name])
        buffer.extend(state["buffer"])
        frames, updates = int(state["frames"]), int(state["updates"])
        seconds = float(state.get("seconds", 0.0))
        set_rng_state(state["rng"])
        log.info("Resumed at %d frames (%d updates)", frames, updates)
    elif resume_record is not None:
        log.warning(
            "resume=%s: no loadable checkpoint in %s; the run restarts from frame 0.",
            run_dir,
            run_dir / "checkpoints",
        )
    if state is None:
        # a restart writes every evaluation again: drop an earlier attempt's rows and actors
        (run_dir / "actors" / "evals.csv").unlink(missing_ok=True)
    else:
        _truncate_evals(run_dir / "actors" / "evals.csv", frames)
    if resume_record is not None:  # this recipe's step is the frame count
        write_resume_record(run_dir, cfg, {**resume_record, "at_step": frames})

    logger = make_logger(
        cfg.logger.backend,
        run_dir,
        project=cfg.logger.project,
        run_name=f"{algo}-{env_id}-s{cfg.seed}",
        config=cfg,
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
            # utd < 1 (e.g. 0.1: one update per 10 env steps) is a slower learner per env step,
            # whose medium snapshot comes after a D4RL-sized medium-replay buffer
            owed = round(float(hp.utd) * (frames - init_random + fpb)) - updates
            for _ in range(max(int(owed), 0)):
                if updates % policy_delay == policy_delay - 1 or policy_delay == 1:
                    last_out = update_fn(buffer.sample())
                else:
                    critic_fn(buffer.sample())
                updates += 1
        collector.update_policy_weights_()
        if frames % save_interval == 0 or frames >= total:
            returns = evaluate_policy(
                eval_env, actor, num_episodes=int(cfg.eval.episodes), seed=int(cfg.seed) + 1000
            )
            torch.save(
                {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
                run_dir / "actors" / f"actor_{frames:08d}.pt",
            )
            new = not evals_path.exists()
            with open(evals_path, "a", newline="") as f:
                writer = csv.writer(f)
                if new:
                    writer.writerow(["frames", "return_mean", "return_std", "updates", "seconds"])
                writer.writerow(
                    [
                        frames,
                        float(returns.mean()),
                        float(returns.std(unbiased=False)),
                        updates,
                        round(seconds + time.perf_counter() - start, 1),
                    ]
                )
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
                    "optims": {name: opt.state_dict() for name, opt in optims.items()},
                    "buffer": buffer[: len(buffer)].cpu(),
                    "frames": frames,
                    "updates": updates,
                    "seconds": seconds + time.perf_counter() - start,
                    "rng": rng_state(),
                },
            )
    collector.shutdown()
    data = buffer[: len(buffer)].cpu()
    torch.save(data, run_dir / "replay_buffer.pt")
    summary = {
        "algo": algo,
        "env_id": env_id,
        "frames": frames,
        "updates": updates,
        "seconds": seconds + time.perf_counter() - start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
