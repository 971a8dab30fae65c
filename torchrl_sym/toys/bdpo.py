"""BDPO's 2-D tasks (docs/specs/bdpo.md §8; paper §5.1, Fig. 4/5/9/13): a diffusion policy regularized
toward a diffusion behavior model converges to ``p(x) ∝ p_data(x) exp(E(x)/η)``.

Bandit form: the action is a 2-D point, the observation a constant 0, the reward the point's energy
``E ∈ [0, 1]`` and every transition terminal, so ``y_Q = r`` (:class:`BDPOLoss` with
``bandit=True``). Per value of η: pretrain the behavior ν (ε-MSE, EMA), copy it into the actor, then
train Q and the diffusion values V_n every step and the actor every ``update_ratio`` steps after a
critic warm-up, exactly as the D4RL recipe. The paper runs N = 50, 100k + 100k steps on 1M points,
which is far beyond a 2-core CPU; the defaults (``torchrl_sym/configs/toy2d/algo/bdpo.yaml``) are reduced and
say so.

Numbers returned (and drawn): for the EMA actor's final samples, the behavior EMA's samples and
exact samples of the target (importance resampling of fresh data with weights ``exp(E/η)``):

* ``mmd_policy`` / ``mmd_behavior``: squared MMD to the target samples (Gaussian kernels of
  bandwidths 0.1, 0.3 and 1, summed), lower is closer;
* ``energy_policy`` / ``energy_behavior`` / ``energy_target``: mean energy, the energy of a sample
  being that of its nearest data point;
* on 8gaussians, the cluster frequencies (nearest centre) against ``w_k ∝ exp(k/(7η))``;
* ``value_at_noise``: ``E_{x_N ~ N(0,I)} V̄_N(x_N)`` against ``η log E_data exp(E/η)`` (Thm 4.2's
  soft value; "≤" by Jensen, nearly equal because x_N is almost uninformative).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tensordict import TensorDict

from torchrl_sym.data.toy2d import make_toy2d_dataset, sample_toy2d
from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    VPDiscreteSchedule,
)
from torchrl_sym.objectives.bdpo import BDPOLoss, make_bdpo_qvalue

__all__ = ["eight_gaussian_weights", "mmd2", "run", "target_samples", "train_bdpo_toy"]

_EIGHT_ANGLES = torch.pi / 2 + torch.arange(8, dtype=torch.float64) * torch.pi / 4
EIGHT_CENTRES = (4.0 * torch.stack([_EIGHT_ANGLES.cos(), _EIGHT_ANGLES.sin()], 1) / 1.414).float()


def eight_gaussian_weights(eta: float) -> torch.Tensor:
    """Cluster probabilities of the 8gaussians target: ``w_k ∝ exp(k/(7η))`` (uniform behavior)."""
    logits = torch.arange(8, dtype=torch.float64) / (7.0 * eta)
    return torch.softmax(logits, 0)


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.1, 0.3, 1.0)) -> float:
    """Biased squared MMD between samples ``x [n, 2]`` and ``y [m, 2]``, sum of Gaussian kernels."""
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b).pow(2)
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bandwidths)

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def target_samples(
    name: str, eta: float, n: int, *, seed: int, pool: int = 200_000
) -> torch.Tensor:
    """``n`` exact draws of ``p_data · exp(E/η)`` by resampling ``pool`` fresh data points."""
    points, energy = sample_toy2d(name, pool, seed=seed)
    weights = torch.softmax(energy.double() / eta, 0)
    gen = torch.Generator().manual_seed(seed)
    return points[torch.multinomial(weights, n, replacement=True, generator=gen)]


def _nearest_energy(x: torch.Tensor, points: torch.Tensor, energy: torch.Tensor) -> torch.Tensor:
    out = []
    for chunk in x.split(1024):
        out.append(energy[torch.cdist(chunk, points).argmin(1)])
    return torch.cat(out)


_ACTIVATIONS = {"mish": torch.nn.Mish, "silu": torch.nn.SiLU}


def _make_loss(cfg, eta: float) -> BDPOLoss:
    hidden, steps = list(cfg.actor_hidden), int(cfg.num_steps)
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(
            f"activation must be one of {sorted(_ACTIVATIONS)}, got {cfg.activation!r}."
        )
    act = _ACTIVATIONS[cfg.activation]

    def diffusion():
        net = MLPNoisePredictor(
            1, 2, hidden=hidden, time_hidden=list(cfg.time_hidden), activation=act
        )
        return DiffusionBehaviorActor(net, VPDiscreteSchedule(steps, variance="beta"))

    E = int(cfg.ensemble_size)
    critic = list(cfg.critic_hidden)
    return BDPOLoss(
        diffusion(),
        [make_bdpo_qvalue(1, 2, critic, activation=act) for _ in range(E)],
        NoiseConditionedCritic(
            1, 2, num_members=E, hidden=critic, time_hidden=list(cfg.time_hidden), activation=act
        ),
        diffusion(),
        eta=eta,
        rho=float(cfg.rho),
        gamma=1.0,
        num_samples=int(cfg.num_samples),
        bandit=True,
        action_clip=None,
    )


def _adam(loss, name, lr):
    return torch.optim.Adam(
        getattr(loss, f"{name}_network_params").values(True, True), lr=float(lr)
    )


def _step(optimizer, value, clip=1.0):
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, clip)
    optimizer.step()


def pretrain_behavior(cfg, loss: BDPOLoss, data: TensorDict, gen: torch.Generator) -> None:
    """``behavior_steps`` ε-MSE steps of ν with its EMA, then π, π̄ ← ν̄."""
    opt, ema = _adam(loss, "behavior", cfg.behavior_lr), loss.make_target_updater("behavior")
    steps, batch = int(cfg.behavior_steps), int(cfg.behavior_batch_size)
    # cosine decay to behavior_lr_min: a short pretraining still ends with sharp modes
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        opt, max(steps, 1), eta_min=float(cfg.behavior_lr_min)
    )
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        _step(opt, loss.behavior_loss(data[idx])[0])
        sched.step()
        ema.step()
    loss.prepare_training()


def train_bdpo_toy(cfg, loss: BDPOLoss, data: TensorDict, gen: torch.Generator) -> dict:
    """Critic warm-up and training after pretraining (the recipe's last two stages)."""
    q_opt, v_opt = _adam(loss, "qvalue", cfg.critic_lr), _adam(loss, "value", cfg.critic_lr)
    actor_opt = _adam(loss, "actor", cfg.actor_lr)
    total = int(cfg.warmup_steps) + int(cfg.train_steps)
    scheds = [
        torch.optim.lr_scheduler.CosineAnnealingLR(o, max(total, 1))
        for o in (q_opt, v_opt, actor_opt)
    ]
    critic_ema, actor_ema = loss.make_target_updater("critic"), loss.make_target_updater("actor")
    ratio, batch = int(cfg.update_ratio), int(cfg.batch_size)
    last = {}
    for step in range(total):
        idx = torch.randint(0, data.shape[0], (batch,), generator=gen)
        td = data[idx]
        loss_q, info_q = loss.qvalue_loss(td)
        loss_v, info_v = loss.value_loss(td)
        _step(q_opt, loss_q)
        _step(v_opt, loss_v)
        scheds[0].step()
        scheds[1].step()
        critic_ema.step()
        if step >= int(cfg.warmup_steps) and (step - int(cfg.warmup_steps)) % ratio == ratio - 1:
            loss_a, info_a = loss.actor_loss(td)
            _step(actor_opt, loss_a)
            scheds[2].step()
            actor_ema.step()
            last = {"loss_actor": float(loss_a.detach()), **_floats(info_a)}
    last.update({"loss_qvalue": float(loss_q.detach()), **_floats(info_q)})
    last.update({"loss_value": float(loss_v.detach()), **_floats(info_v)})
    return last


def _floats(metadata: dict[str, torch.Tensor]) -> dict[str, float]:
    return {key: float(value.detach()) for key, value in metadata.items()}


@torch.no_grad()
def _sample(loss: BDPOLoss, which: str, n: int) -> torch.Tensor:
    network = getattr(loss, f"{which}_network")
    with loss._params(f"{which}_network", True).to_module(network):
        return network.sample_chain(torch.zeros(n, 1)).actions


@torch.no_grad()
def _value_map(loss: BDPOLoss, grid: torch.Tensor, n: int) -> torch.Tensor:
    obs = torch.zeros(grid.shape[0], 1)
    if n == 0:
        return loss.q_values(obs, grid, target=True).mean(0).squeeze(-1)
    return loss.values(obs, grid, torch.full((grid.shape[0],), n), target=True).mean(0).squeeze(-1)


def run(cfg, out_dir: Path, seed: int) -> dict:
    """Train BDPO on ``cfg.dataset`` for each η in ``cfg.etas`` (one pretrained behavior shared by
    all); write the figure; return its numbers (see the module docstring)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    name, n_eval = str(cfg.dataset), int(cfg.eval_points)
    data = make_toy2d_dataset(name, int(cfg.num_points), seed=seed)
    pool_points, pool_energy = sample_toy2d(name, 20_000, seed=seed + 1)
    results, panels = {"dataset": name, "etas": {}}, []
    start = time.perf_counter()
    pretrained = None
    for eta in [float(e) for e in cfg.etas]:
        loss = _make_loss(cfg, eta)
        if pretrained is None:  # one behavior model, shared by every η
            pretrain_behavior(cfg, loss, data, gen)
            pretrained = loss
        else:
            for params in ("behavior_network_params", "target_behavior_network_params"):
                getattr(loss, params).data.update_(getattr(pretrained, params).data)
            loss.prepare_training()
        train = train_bdpo_toy(cfg, loss, data, gen)
        chain = _sample(loss, "actor", n_eval)
        policy = chain[-1]
        behavior = _sample(loss, "behavior", n_eval)[-1]
        target = target_samples(name, eta, n_eval, seed=seed + 2)
        x_n = torch.randn(4096, 2)
        v_noise = float(_value_map(loss, x_n, loss.num_steps).mean())
        soft_value = eta * math.log(float(torch.exp(pool_energy.double() / eta).mean()))
        row = {
            "mmd_policy": mmd2(policy[:2000], target[:2000]),
            "mmd_behavior": mmd2(behavior[:2000], target[:2000]),
            "energy_policy": float(_nearest_energy(policy, pool_points, pool_energy).mean()),
            "energy_behavior": float(_nearest_energy(behavior, pool_points, pool_energy).mean()),
            "energy_target": float(_nearest_energy(target, pool_points, pool_energy).mean()),
            "value_at_noise": v_noise,
            "soft_value": soft_value,
            "final_losses": train,
        }
        if name == "8gaussians":
            for label, x in (("policy", policy), ("behavior", behavior), ("target", target)):
                k = torch.cdist(x, EIGHT_CENTRES).argmin(1)
                row[f"clusters_{label}"] = (
                    torch.bincount(k, minlength=8).float() / len(k)
                ).tolist()
            row["clusters_expected"] = eight_gaussian_weights(eta).tolist()
        results["etas"][str(eta)] = row
        panels.append((eta, loss, chain, behavior, target, row))
    results["seconds"] = time.perf_counter() - start
    _figure(out_dir / "toy2d_bdpo.png", name, data, panels)
    return results


def _figure(path: Path, name: str, data: TensorDict, panels) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 4.5
    axis = torch.linspace(-lim, lim, 90)
    gx, gy = torch.meshgrid(axis, axis, indexing="xy")
    grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    n_snap = 5
    cols = 3 + n_snap
    fig, axes = plt.subplots(
        len(panels), cols, figsize=(2.3 * cols, 2.4 * len(panels)), squeeze=False
    )
    pts = data["action"][:5000]
    for r, (eta, loss, chain, behavior, target, row) in enumerate(panels):
        N = loss.num_steps
        ax = axes[r, 0]
        ax.scatter(pts[:, 0], pts[:, 1], c=data["next", "reward"][:5000, 0], s=1, cmap="viridis")
        ax.set_title(f"data (colour: E), {name}", fontsize=7)
        ax = axes[r, 1]
        ax.scatter(behavior[:, 0], behavior[:, 1], s=1, c="tab:gray", label="behavior (EMA)")
        ax.scatter(target[:1500, 0], target[:1500, 1], s=1, c="tab:blue", alpha=0.5, label="target")
        ax.set_title(f"behavior vs target, MMD² {row['mmd_behavior']:.3f}", fontsize=7)
        ax.legend(fontsize=6, markerscale=4, loc="lower left")
        steps = sorted({round(N * (1 - i / (n_snap - 1))) for i in range(n_snap)}, reverse=True)
        paths = chain[:, :25]
        for c, n in enumerate(steps):
            ax = axes[r, 2 + c]
            values = _value_map(loss, grid, n).reshape(len(axis), len(axis))
            ax.imshow(values, extent=(-lim, lim, -lim, lim), origin="lower", cmap="magma")
            i = N - n  # chain index of x_n
            for p in range(paths.shape[1]):
                ax.plot(paths[: i + 1, p, 0], paths[: i + 1, p, 1], lw=0.5, c="w", alpha=0.7)
            ax.scatter(chain[i, :1000, 0], chain[i, :1000, 1], s=0.5, c="tab:cyan")
            over = "EMA Q" if n == 0 else f"EMA V_{n}"
            ax.set_title(f"η={eta}: actor's x_{n} over {over}", fontsize=7)
        ax = axes[r, cols - 1]
        ax.scatter(target[:1500, 0], target[:1500, 1], s=1, c="tab:blue", alpha=0.5, label="target")
        ax.scatter(
            chain[-1, :1500, 0],
            chain[-1, :1500, 1],
            s=1,
            c="tab:red",
            alpha=0.5,
            label="actor (EMA)",
        )
        ax.set_title(f"actor vs target, MMD² {row['mmd_policy']:.3f}", fontsize=7)
        ax.legend(fontsize=6, markerscale=4, loc="lower left")
    for ax in axes.flat:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_aspect("equal")
    fig.suptitle(
        "BDPO 2-D bandit: generation paths over the learned diffusion values, final samples vs "
        "p_data·exp(E/η)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
