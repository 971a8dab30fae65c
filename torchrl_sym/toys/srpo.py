"""SRPO's 2-D bandit (Figure 3 of the paper; ``docs/specs/srpo.md`` §8), run with :class:`SRPOLoss`.

Per dataset (two-moons, 8-Gaussians, checkerboard; :mod:`torchrl_sym.data.toy2d`):

1. fit an unconditional ε-network ``ε_ψ(a_t, t)`` to the points on SRPO's VP-SDE
   (:class:`~torchrl_sym.objectives.DiffusionBehaviorLoss`, ``t ~ U(1e-3, 1)``);
2. for every target ``a_tar`` of the integer grid {−3..3}², hand-made ``Q(a) = −‖a − a_tar‖²``;
3. per target, a free 2-D point ``a`` minimizes (λ = 1/β, the paper's regularization strength)

   .. math::

       \\ell(a) = \\lambda\\, \\omega(t) \\langle \\hat\\varepsilon(\\alpha_t a + \\sigma_t z, t) - z, a\\rangle
           - \\langle \\nabla Q(a), a\\rangle, \\qquad \\nabla Q = -2 (a - a_{tar}),

   ``t ~ U(0.02, 0.98)``, ``z ~ N(0, I)``, ``draws`` pairs ``(t, z)`` per step, Adam. This is
   :class:`SRPOLoss` with ``eps_baseline=True`` and ``beta = 1/λ`` (its loss is ``1/λ`` times
   ``ℓ``; Adam is invariant to that scale), the target carried in the observation. λ sweeps
   0 → 1; each λ starts from the previous λ's solution (λ = 0 from the origin), which traces the
   path of panel (e). λ = 0 needs no behavior calls and runs ``point_steps_unregularized`` steps.

The figure (``toy2d_srpo.png``), one row per dataset: (a) behavior samples, (b) a Gaussian KDE
of samples drawn from the fitted diffusion model (DDPM, ``sampler_steps`` steps) (the paper shows its exact ODE likelihood),
(c) the targets on the data KDE, (d) the solutions at λ = 0 (on the targets) and λ = 1 (pulled onto
the data), (e) the paths as λ goes 0 → 1. The returned numbers include, per dataset and λ, the mean
data-KDE log-density at the solutions against that at the targets, and the largest distance to the
target at λ = 0.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from torchrl_sym.data.toy2d import sample_toy2d
from torchrl_sym.diffusion import DiffusionBehaviorActor, MLPNoisePredictor, VPSDESchedule
from torchrl_sym.objectives import DiffusionBehaviorLoss, SRPOLoss

__all__ = [
    "DEFAULTS",
    "fit_behavior",
    "kde_log_density",
    "regularized_points",
    "run",
]

DEFAULTS = {
    "name": "srpo",
    "datasets": ["moons", "8gaussians", "checkerboard"],
    "num_samples": 100_000,
    "behavior_steps": 5000,
    "behavior_batch": 512,
    "behavior_lr": 2.0e-3,
    "behavior_lr_min": 1.0e-4,
    "fourier_scale": 4.0,
    "hidden": [128, 128, 128],
    "activation": "mish",
    "grid": [-3, -2, -1, 0, 1, 2, 3],
    "inverse_betas": [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
    "point_steps": 500,
    "point_steps_unregularized": 2000,
    "point_lr": 1.0e-2,
    "draws": 16,
    "weight": "vds",
    "kde_points": 20_000,
    "kde_bandwidth": 0.15,
    "model_samples": 20_000,
    "sampler_steps": 50,
}
log = logging.getLogger(__name__)
_ACTIVATIONS = {"mish": nn.Mish, "silu": nn.SiLU, "relu": nn.ReLU}


class _Unconditional(nn.Module):
    """An ε-network of a 1-D dummy state that ignores the observation it is called with (the
    toy's observation carries the Q target, which the behavior does not see)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.action_dim = network.action_dim

    def forward(self, observation, action, time):
        dummy = torch.zeros(*action.shape[:-1], 1, dtype=action.dtype, device=action.device)
        return self.network(dummy, action, time)


class _FreePoints(nn.Module):
    """One free 2-D point per target, repeated over the ``draws`` dim: ``[T, D, 2]``."""

    def __init__(self, init: torch.Tensor, draws: int):
        super().__init__()
        self.points = nn.Parameter(init.clone())
        self.draws = draws

    def forward(self, observation):
        return self.points.unsqueeze(1).expand(-1, self.draws, -1)


class _TargetQ(nn.Module):
    """``Q(s, a) = −‖a − s‖²``: the observation is the target."""

    def forward(self, observation, action):
        return -(action - observation).pow(2).sum(-1, keepdim=True)


def fit_behavior(points: torch.Tensor, cfg, seed: int) -> tuple[DiffusionBehaviorActor, list]:
    """Train the unconditional VP-SDE ε-network on ``points [N, 2]``; returns it and its loss
    curve (mean loss per tenth of the steps)."""
    torch.manual_seed(seed)
    activation = _ACTIVATIONS[cfg.activation]
    net = MLPNoisePredictor(
        1,
        2,
        hidden=tuple(cfg.hidden),
        activation=activation,
        time_embedding="fourier",
        time_hidden=(64, 64),
        fourier_scale=float(cfg.fourier_scale),
        init="default",
    )
    behavior = DiffusionBehaviorActor(
        _Unconditional(net), VPSDESchedule(), num_steps=int(cfg.sampler_steps)
    )
    loss = DiffusionBehaviorLoss(behavior, action_clip=None, action_reduction="sum")
    optim = torch.optim.AdamW(loss.parameters(), lr=float(cfg.behavior_lr))
    steps, batch = int(cfg.behavior_steps), int(cfg.behavior_batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(
        optim, steps, eta_min=float(cfg.behavior_lr_min)
    )
    g = torch.Generator().manual_seed(seed)
    curve, window = [], []
    for step in range(steps):
        idx = torch.randint(0, points.shape[0], (batch,), generator=g)
        td = TensorDict({"observation": torch.zeros(batch, 1), "action": points[idx]}, [batch])
        value = loss(td)["loss_diffusion"]
        optim.zero_grad()
        value.backward()
        optim.step()
        sched.step()
        window.append(value.detach())
        if (step + 1) % max(steps // 10, 1) == 0 or step + 1 == steps:
            curve.append(float(torch.stack(window).mean()))
            window = []
    behavior.eval()
    return behavior, curve


def kde_log_density(query: torch.Tensor, samples: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """Gaussian-KDE ``log p(x) = log mean_j N(x; x_j, h² I)`` of 2-D ``query [*Q, 2]``."""
    flat = query.reshape(-1, 2)
    out = []
    for chunk in flat.split(2048):
        d2 = torch.cdist(chunk.double(), samples.double()).pow(2)
        out.append(
            torch.logsumexp(-0.5 * d2 / bandwidth**2, dim=-1)
            - math.log(samples.shape[0])
            - math.log(2 * math.pi * bandwidth**2)
        )
    return torch.cat(out).reshape(query.shape[:-1])


def regularized_points(
    behavior: DiffusionBehaviorActor, targets: torch.Tensor, cfg, seed: int
) -> torch.Tensor:
    """SRPO's Dirac solution per target for every λ = 1/β of ``cfg.inverse_betas``:
    ``[L, T, 2]`` (see the module docstring)."""
    torch.manual_seed(seed)
    draws = int(cfg.draws)
    observation = targets.unsqueeze(1).expand(-1, draws, -1)
    data = TensorDict({"observation": observation}, batch_size=observation.shape[:2])
    critic = TensorDictModule(
        _TargetQ(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    current = torch.zeros_like(targets)
    solutions = []
    for lam in cfg.inverse_betas:
        lam = float(lam)
        actor = TensorDictModule(
            _FreePoints(current, draws), in_keys=["observation"], out_keys=["action"]
        )
        loss = SRPOLoss(
            actor,
            behavior,
            [critic],
            beta=math.inf if lam == 0 else 1.0 / lam,
            weight=cfg.weight,
            eps_baseline=True,
        )
        (param,) = loss.actor_network_params.values(True, True)
        steps = int(cfg.point_steps if lam > 0 else cfg.point_steps_unregularized)
        optim = torch.optim.Adam([param], lr=float(cfg.point_lr))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
        for _ in range(steps):
            optim.zero_grad()
            loss(data)["loss_actor"].backward()
            optim.step()
            sched.step()
        current = param.detach().clone()
        solutions.append(current)
    return torch.stack(solutions)


def run(cfg, out_dir: Path, seed: int) -> dict:
    """Train, sweep, plot ``out_dir/toy2d_srpo.png``; return the figure's numbers."""
    cfg = OmegaConf.merge(OmegaConf.create(DEFAULTS), cfg)
    lams = [float(x) for x in cfg.inverse_betas]
    if not lams or lams[0] != 0.0 or lams != sorted(lams):
        raise ValueError(
            f"algo.inverse_betas must increase from 0 (the unregularized solution), got {lams}."
        )
    if cfg.activation not in _ACTIVATIONS:
        raise ValueError(
            f"algo.activation must be one of {sorted(_ACTIVATIONS)}, got {cfg.activation!r}."
        )
    grid = torch.tensor([float(v) for v in cfg.grid])
    targets = torch.stack(torch.meshgrid(grid, grid, indexing="xy"), -1).reshape(-1, 2)
    results, panels = {}, {}
    for i, name in enumerate(cfg.datasets):
        start = time.perf_counter()
        points, _ = sample_toy2d(name, int(cfg.num_samples), seed=seed + i)
        behavior, curve = fit_behavior(points, cfg, seed + i)
        log.info(
            "%s: behavior fitted in %.0f s (loss %.3f)",
            name,
            time.perf_counter() - start,
            curve[-1],
        )
        solutions = regularized_points(behavior, targets, cfg, seed + i)
        log.info("%s: 1/β sweep done at %.0f s", name, time.perf_counter() - start)
        kde_ref = points[
            torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))
        ]
        kde_ref = kde_ref[: int(cfg.kde_points)]
        h = float(cfg.kde_bandwidth)
        with torch.no_grad():
            model_samples = behavior.sample(
                torch.zeros(int(cfg.model_samples), 1),
                sampler="ddpm",
                generator=torch.Generator().manual_seed(seed + i),
            )
        logp_targets = kde_log_density(targets, kde_ref, h)
        logp = kde_log_density(solutions, kde_ref, h)  # [L, T]
        distance = (solutions - targets).norm(dim=-1)  # [L, T]
        results[name] = {
            "behavior_loss_curve": curve,
            "inverse_betas": lams,
            "targets": targets.tolist(),
            "solutions": solutions.tolist(),
            "max_distance_at_0": float(distance[0].max()),
            "mean_distance": distance.mean(-1).tolist(),
            "mean_log_density_targets": float(logp_targets.mean()),
            "mean_log_density": logp.mean(-1).tolist(),
            "fraction_denser_than_target_at_1": float((logp[-1] > logp_targets).float().mean()),
            "model_sample_log_density": float(kde_log_density(model_samples, kde_ref, h).mean()),
            "data_log_density": float(kde_log_density(kde_ref[:2000], kde_ref, h).mean()),
            "seconds": time.perf_counter() - start,
        }
        panels[name] = (points, model_samples, kde_ref, solutions)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(panels, targets, lams, float(cfg.kde_bandwidth), out_dir / "toy2d_srpo.png")
    return results


def _plot(panels, targets, lams, bandwidth, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lim = 4.5
    n = len(panels)
    fig, axes = plt.subplots(n, 5, figsize=(17, 3.5 * n), squeeze=False)
    xs = torch.linspace(-lim, lim, 150)
    mesh = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1)
    cmap = plt.get_cmap("viridis")
    for row, (name, (points, model_samples, kde_ref, sol)) in enumerate(panels.items()):
        ax = axes[row]
        sub = points[:5000]
        ax[0].scatter(sub[:, 0], sub[:, 1], s=1, alpha=0.4, color="tab:blue")
        ax[0].set_title(f"(a) {name}: behavior data")
        model_density = kde_log_density(mesh, model_samples[:8000], bandwidth).exp()
        ax[1].imshow(
            model_density.numpy(), origin="lower", extent=(-lim, lim, -lim, lim), cmap="Blues"
        )
        ax[1].set_title("(b) diffusion model (KDE)")
        data_density = kde_log_density(mesh, kde_ref[:8000], bandwidth).exp().numpy()
        for a in ax[2:]:
            a.contourf(xs.numpy(), xs.numpy(), data_density, levels=12, cmap="Greys", alpha=0.5)
        ax[2].scatter(targets[:, 0], targets[:, 1], marker="x", color="tab:red", s=25)
        ax[2].set_title("(c) targets of Q = −‖a − a_tar‖²")
        ax[3].scatter(
            sol[0, :, 0], sol[0, :, 1], marker="x", color="tab:red", s=25, label="1/β = 0"
        )
        ax[3].scatter(
            sol[-1, :, 0], sol[-1, :, 1], color="tab:green", s=14, label=f"1/β = {lams[-1]:g}"
        )
        for t in range(sol.shape[1]):
            ax[3].plot(
                [sol[0, t, 0], sol[-1, t, 0]], [sol[0, t, 1], sol[-1, t, 1]], color="k", lw=0.4
            )
        ax[3].legend(loc="lower left", fontsize=7)
        ax[3].set_title("(d) SRPO solutions")
        for k in range(sol.shape[0] - 1):
            color = cmap(k / max(sol.shape[0] - 2, 1))
            ax[4].plot(
                torch.stack([sol[k, :, 0], sol[k + 1, :, 0]]).numpy(),
                torch.stack([sol[k, :, 1], sol[k + 1, :, 1]]).numpy(),
                color=color,
                lw=1.0,
            )
        ax[4].scatter(sol[-1, :, 0], sol[-1, :, 1], color=cmap(1.0), s=8)
        ax[4].set_title(f"(e) paths, 1/β: 0 → {lams[-1]:g}")
        for a in ax:
            a.set_xlim(-lim, lim)
            a.set_ylim(-lim, lim)
            a.set_aspect("equal")
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
