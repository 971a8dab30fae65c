"""SRPOLoss (docs/specs/srpo.md §1-2, §9-10): the analytic-Gaussian checks of §10 (3-8), the code's
per-sample gradient, gradient isolation, sharing with the IQL critic and input validation.

§10.1 (schedule table, VP identity, log α) is tests/test_diffusion_schedules.py; §10.2 (exact ε* of a
Gaussian against autograd, and a DSM fit within 0.05 RMS) is tests/test_diffusion_bc.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import IQLLoss, SoftUpdate

import torchrl_sym.objectives.srpo as srpo_module
from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    ResidualMLPNoisePredictor,
    VPDiscreteSchedule,
    VPSDESchedule,
)
from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value
from torchrl_sym.objectives import SRPOLoss
from torchrl_sym.objectives.srpo import make_srpo_actor, srpo_time_weight

C = 0.5  # behavior std of the analytic tests
K_QUAD = 0.1849  # E_t[σ³α/(α²c² + σ²)], t ~ U(0.02, 0.98), c = 0.5 (spec §10.3)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # small tensors: one thread is faster and steadier on shared cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------------
# Analytic pieces
# ------------------------------------------------------------------------------------------------


class GaussianEps(nn.Module):
    """The exact ε-predictor of the behavior N(m, c²I): ε*(a_t, t) = σ_t (a_t − α_t m)/(α_t²c² + σ_t²)."""

    def __init__(self, m, c: float, schedule: VPSDESchedule):
        super().__init__()
        self.m = nn.Parameter(torch.as_tensor(m, dtype=torch.float64).clone())
        self.c = c
        self.schedule = schedule
        self.action_dim = self.m.numel()

    def forward(self, observation, action, time):
        alpha, sigma = self.schedule.marginal(time)
        alpha, sigma = alpha.unsqueeze(-1), sigma.unsqueeze(-1)
        return sigma * (action - alpha * self.m) / (alpha**2 * self.c**2 + sigma**2)


class FreeAction(nn.Module):
    """A free action: one parameter ``[A]`` for every state, or one row per state ``[B, A]``."""

    def __init__(self, init):
        super().__init__()
        self.a = nn.Parameter(torch.as_tensor(init, dtype=torch.float64).clone())

    def forward(self, observation):
        if self.a.ndim == 1:
            return self.a.expand(*observation.shape[:-1], self.a.numel())
        return self.a


class QuadraticQ(nn.Module):
    """Q(s, a) = −scale · ‖a − target‖² (scale 0: Q ≡ 0)."""

    def __init__(self, target, scale: float = 1.0):
        super().__init__()
        self.target = nn.Parameter(torch.as_tensor(target, dtype=torch.float64).clone())
        self.scale = scale

    def forward(self, observation, action):
        return -self.scale * (action - self.target).pow(2).sum(-1, keepdim=True)


def free_actor(init):
    return TensorDictModule(FreeAction(init), in_keys=["observation"], out_keys=["action"])


def quadratic_q(target, scale=1.0):
    return TensorDictModule(
        QuadraticQ(target, scale),
        in_keys=["observation", "action"],
        out_keys=["state_action_value"],
    )


def gaussian_behavior(m, c=C):
    schedule = VPSDESchedule()
    return DiffusionBehaviorActor(GaussianEps(m, c, schedule), schedule)


def k_quadrature(c=C, t_min=0.02, t_max=0.98, n=200_001) -> float:
    t = torch.linspace(t_min, t_max, n, dtype=torch.float64)
    alpha, sigma = VPSDESchedule().marginal(t)
    f = sigma**3 * alpha / (alpha**2 * c**2 + sigma**2)
    return float(torch.trapezoid(f, t) / (t_max - t_min))


def obs(n, dim=1, dtype=torch.float64):
    return TensorDict({"observation": torch.zeros(n, dim, dtype=dtype)}, [n])


def action_grad(loss, data, **kwargs):
    """Gradient of ``loss_actor`` (from :meth:`SRPOLoss.actor_loss`) w.r.t. the free action."""
    (param,) = loss.actor_network_params.values(True, True)
    param.grad = None
    value, _ = loss.actor_loss(data, **kwargs)
    value.backward()
    return param.grad.clone()


# ------------------------------------------------------------------------------------------------
# §10.3 expected regularizer, §10.5 surrogate identity
# ------------------------------------------------------------------------------------------------


def test_k_by_quadrature_is_the_spec_value():
    assert k_quadrature() == pytest.approx(K_QUAD, abs=5e-5)


@pytest.mark.parametrize("eps_baseline", [False, True])
def test_expected_regularizer_is_k_times_the_offset(eps_baseline):
    torch.manual_seed(0)
    m = torch.tensor([0.0, 0.5], dtype=torch.float64)
    a = torch.tensor([2.0, -1.5], dtype=torch.float64)
    loss = SRPOLoss(
        free_actor(a), gaussian_behavior(m), quadratic_q([0.0, 0.0], 0.0), beta=1.0,
        eps_baseline=eps_baseline,
    )  # fmt: skip
    # mean over 2·10⁶ draws of (t, z) of ∂ℓ/∂a = ω ε̂ (Q ≡ 0)
    grad = action_grad(loss, obs(2_000_000))
    expected = k_quadrature() * (a - m)
    torch.testing.assert_close(grad, expected, rtol=0.01, atol=0.0)


@pytest.mark.parametrize("weight", ["vds", "stable", "score"])
def test_surrogate_kl_gradient_equals_the_expected_score_term(weight):
    schedule = VPSDESchedule()
    m = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    a0 = torch.tensor([0.9, 0.1, -0.7], dtype=torch.float64)
    z = torch.randn(1, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    noise = torch.cat([z, -z])  # antithetic pair: the mean of the linear ε* over z is exact
    for t in torch.linspace(0.02, 0.98, 13, dtype=torch.float64).tolist():
        alpha, sigma = (v.item() for v in schedule.marginal(torch.tensor(t, dtype=torch.float64)))
        f64 = torch.float64
        omega = float(
            srpo_time_weight(weight, torch.tensor(alpha, dtype=f64), torch.tensor(sigma, dtype=f64))
        )
        a = a0.clone().requires_grad_(True)
        s1, s2 = sigma, math.sqrt(alpha**2 * C**2 + sigma**2)
        kl = (math.log(s2 / s1) + (s1**2 + (alpha * a - alpha * m) ** 2) / (2 * s2**2) - 0.5).sum()
        (kl_grad,) = torch.autograd.grad(omega * sigma / alpha * kl, a)
        loss = SRPOLoss(
            free_actor(a0), gaussian_behavior(m), quadratic_q(m, 0.0), beta=1.0,
            weight=weight, t_min=t, t_max=t,
        )  # fmt: skip
        grad = action_grad(loss, obs(2), time=torch.full((2,), t, dtype=torch.float64), noise=noise)
        torch.testing.assert_close(grad, kl_grad, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------------------
# §10.4 closed-form fixed point, §10.6 reductions
# ------------------------------------------------------------------------------------------------


def train_free_action(loss, steps=500, batch=512, lr=0.02):
    (param,) = loss.actor_network_params.values(True, True)
    optim = torch.optim.Adam([param], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    data = obs(batch)
    for _ in range(steps):
        optim.zero_grad()
        loss(data)["loss_actor"].backward()
        optim.step()
        sched.step()
    return param.detach()


@pytest.mark.parametrize(("beta", "expected"), [(0.2, 0.6839), (1.0, 0.9154)])
def test_free_action_reaches_the_closed_form_fixed_point(beta, expected):
    torch.manual_seed(0)
    k = k_quadrature()
    assert (2 * beta) / (k + 2 * beta) == pytest.approx(expected, abs=1e-4)  # a* with m = 0
    # the ε-baseline leaves the expected gradient unchanged (test above) and cuts its variance,
    # so 500 steps reach the fixed point to about 1e-3
    loss = SRPOLoss(
        free_actor([0.0, 0.0]), gaussian_behavior([0.0, 0.0]), [quadratic_q([1.0, 1.0])] * 2,
        beta=beta, eps_baseline=True,
    )  # fmt: skip
    a = train_free_action(loss)
    torch.testing.assert_close(
        a, torch.full((2,), expected, dtype=torch.float64), atol=0.01, rtol=0
    )


def test_without_q_the_action_converges_to_the_behavior_mode():
    torch.manual_seed(1)
    m = [0.3, -0.6]
    loss = SRPOLoss(
        free_actor([-1.0, 1.0]),
        gaussian_behavior(m),
        quadratic_q(m, 0.0),
        beta=0.5,
        eps_baseline=True,
    )
    a = train_free_action(loss)
    torch.testing.assert_close(a, torch.tensor(m, dtype=torch.float64), atol=0.01, rtol=0)


def test_infinite_beta_is_pure_q_ascent():
    torch.manual_seed(0)
    target = torch.tensor([0.4, -0.8], dtype=torch.float64)
    a0 = torch.tensor([[0.5, 0.5], [-1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    loss = SRPOLoss(
        free_actor(a0), gaussian_behavior([0.0, 0.0]), quadratic_q(target), beta=math.inf,
        reduction="sum",
    )  # fmt: skip
    # ∂ℓ/∂a = −∇_a Q exactly, whatever t and z: no behavior term
    torch.testing.assert_close(action_grad(loss, obs(3)), 2 * (a0 - target))
    # and gradient steps climb Q to its maximum
    a = train_free_action(loss, steps=300, batch=3, lr=0.05)
    torch.testing.assert_close(a, target.expand(3, 2), atol=1e-3, rtol=0)


def test_unregularized_mlp_policy_climbs_a_learned_critic():
    torch.manual_seed(0)
    n_obs, n_act = 4, 2
    critics = [make_qvalue(n_obs, n_act, [32, 32]) for _ in range(2)]
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1), VPSDESchedule()
    )
    loss = SRPOLoss(make_srpo_actor(n_obs, n_act, [32, 32]), behavior, critics, beta=math.inf)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=1e-2)
    data = TensorDict({"observation": torch.randn(256, n_obs)}, [256])
    q_start = float(loss(data)["q_mean"])
    for _ in range(150):
        optim.zero_grad()
        loss(data)["loss_actor"].backward()
        optim.step()
    q_end = float(loss(data)["q_mean"])
    # the best value over a grid of actions per state bounds what a tanh policy can reach
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-1, 1, 41)] * 2, indexing="ij"), -1).reshape(
        -1, 2
    )
    obs_rep = data["observation"][:, None].expand(256, grid.shape[0], n_obs)
    act_rep = grid.expand(256, *grid.shape)
    with torch.no_grad():
        qs = torch.stack([c(observation=obs_rep, action=act_rep) for c in critics]).mean(0)
    q_best = float(qs.squeeze(-1).max(-1).values.mean())
    assert q_end > q_start + 0.5 * (q_best - q_start)
    assert q_end <= q_best + 1e-3


def test_stable_weight_is_one_and_vds_is_sigma_squared():
    sigma = torch.tensor([0.0772, 0.9597], dtype=torch.float64)
    alpha = torch.sqrt(1 - sigma**2)
    torch.testing.assert_close(srpo_time_weight("stable", alpha, sigma), torch.ones(2).double())
    torch.testing.assert_close(srpo_time_weight("vds", alpha, sigma), sigma**2)
    torch.testing.assert_close(srpo_time_weight("score", alpha, sigma), alpha / sigma)
    torch.testing.assert_close(srpo_time_weight("hight", alpha, sigma), sigma**4)
    # in the loss: with ω ≡ 1, ∂ℓ/∂a = ε̂ − β g
    m = torch.tensor([0.2, 0.1], dtype=torch.float64)
    a0 = torch.tensor([[0.5, -0.5], [0.1, 0.9]], dtype=torch.float64)
    t = torch.tensor([0.1, 0.7], dtype=torch.float64)
    z = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=torch.float64)
    loss = SRPOLoss(
        free_actor(a0), gaussian_behavior(m), quadratic_q([1.0, 1.0]), beta=0.3,
        weight="stable", reduction="sum",
    )  # fmt: skip
    al, sg = VPSDESchedule().marginal(t)
    at = al[:, None] * a0 + sg[:, None] * z
    eps = sg[:, None] * (at - al[:, None] * m) / (al[:, None] ** 2 * C**2 + sg[:, None] ** 2)
    expected = eps - 0.3 * (-2 * (a0 - 1.0))
    torch.testing.assert_close(action_grad(loss, obs(2), time=t, noise=z), expected)


# ------------------------------------------------------------------------------------------------
# §10.7 isolation and the exact per-sample gradient; §10.8 normalization
# ------------------------------------------------------------------------------------------------


def real_setup(n_obs=3, n_act=2, rows=6, dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=2, dropout=0.5),
        VPSDESchedule(),
        action_low=-1.0,
        action_high=1.0,
    ).to(dtype)
    critics = [make_qvalue(n_obs, n_act, [16, 16]).to(dtype) for _ in range(2)]
    a0 = (torch.rand(rows, n_act, dtype=dtype) * 2 - 1) * 0.9
    loss = SRPOLoss(free_actor(a0), behavior, critics, reduction="sum", **kwargs)
    data = TensorDict({"observation": torch.randn(rows, n_obs, dtype=dtype)}, [rows])
    return loss, behavior, critics, a0, data


def hand_q_grad(critics, observation, a, reduce="mean"):
    a = a.clone().requires_grad_(True)
    qs = torch.stack([c(observation=observation, action=a) for c in critics]).squeeze(-1)
    q = qs.mean(0) if reduce == "mean" else qs.min(0).values
    (g,) = torch.autograd.grad(q.sum(), a)
    return g


@pytest.mark.parametrize("q_reduce", ["mean", "min"])
def test_action_gradient_is_omega_eps_minus_beta_g(q_reduce):
    beta = 0.7
    loss, behavior, critics, a0, data = real_setup(beta=beta, q_reduce=q_reduce)
    behavior.train()  # dropout on: the loss must still use the eval-mode ε-network
    t = torch.tensor([0.02, 0.1, 0.3, 0.5, 0.8, 0.98], dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    grad = action_grad(loss, data, time=t, noise=z)
    assert behavior.training and all(m.training for m in behavior.modules())  # mode restored
    alpha, sigma = VPSDESchedule().marginal(t)
    with torch.no_grad():
        behavior.eval()
        eps = behavior.epsilon(data["observation"], alpha[:, None] * a0 + sigma[:, None] * z, t)
        behavior.train()
    g = hand_q_grad(critics, data["observation"], a0, q_reduce)
    expected = sigma[:, None] ** 2 * eps - beta * g
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-8)


def test_only_the_actor_receives_gradients():
    torch.manual_seed(0)
    n_obs, n_act = 3, 2
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1), VPSDESchedule()
    )
    critics = [make_qvalue(n_obs, n_act, [16]) for _ in range(2)]
    loss = SRPOLoss(make_srpo_actor(n_obs, n_act, [16]), behavior, critics, beta=0.1)
    out = loss(TensorDict({"observation": torch.randn(32, n_obs)}, [32]))
    out["loss_actor"].backward()
    actor = list(loss.actor_network_params.values(True, True))
    assert actor and all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor)
    for p in loss.behavior_network_params.values(True, True):
        assert p.grad is None
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad and p.grad is None
    for module in (behavior, *critics):  # the modules' own tensors neither
        assert all(p.grad is None for p in module.parameters())
    trainable = {id(p) for p in loss.parameters() if p.requires_grad}
    behavior_ids = {id(p) for p in loss.behavior_network_params.values(True, True)}
    assert trainable - behavior_ids == {id(p) for p in actor}
    for key, value in out.items():
        if key != "loss_actor":
            assert not value.requires_grad, key


def test_normalized_q_gradient_has_unit_rms_per_sample():
    beta = 0.5
    loss, behavior, critics, a0, data = real_setup(beta=beta, normalize_q_grad=True)
    t = torch.full((6,), 0.4, dtype=torch.float64)
    z = torch.randn(6, 2, dtype=torch.float64)
    grad = action_grad(loss, data, time=t, noise=z)
    alpha, sigma = VPSDESchedule().marginal(t)
    with torch.no_grad():
        behavior.eval()
        eps = behavior.epsilon(data["observation"], alpha[:, None] * a0 + sigma[:, None] * z, t)
    g = (sigma[:, None] ** 2 * eps - grad) / beta  # the g the loss used
    torch.testing.assert_close(g.pow(2).mean(-1).sqrt(), torch.ones(6, dtype=torch.float64))
    raw = hand_q_grad(critics, data["observation"], a0)
    torch.testing.assert_close(g, raw / raw.pow(2).mean(-1, keepdim=True).sqrt())


def test_eps_baseline_subtracts_the_noise():
    loss, *_, data = real_setup(beta=0.3)
    base, *_ = real_setup(beta=0.3, eps_baseline=True)
    t = torch.rand(6, dtype=torch.float64) * 0.96 + 0.02
    z = torch.randn(6, 2, dtype=torch.float64)
    _, sigma = VPSDESchedule().marginal(t)
    diff = action_grad(base, data, time=t, noise=z) - action_grad(loss, data, time=t, noise=z)
    torch.testing.assert_close(diff, -(sigma[:, None] ** 2) * z)


# ------------------------------------------------------------------------------------------------
# Diagnostics, sharing, TorchRL conventions
# ------------------------------------------------------------------------------------------------


def test_diagnostics_are_the_documented_quantities():
    beta = 0.25
    loss, behavior, critics, a0, data = real_setup(beta=beta)
    torch.manual_seed(3)
    out = loss(data)
    torch.manual_seed(3)  # same draws inside actor_loss
    t = torch.rand(6, dtype=torch.float64) * 0.96 + 0.02
    z = torch.randn(6, 2, dtype=torch.float64)
    alpha, sigma = VPSDESchedule().marginal(t)
    with torch.no_grad():
        qs = torch.stack([c(observation=data["observation"], action=a0) for c in critics])
        behavior.eval()
        eps = behavior.epsilon(data["observation"], alpha[:, None] * a0 + sigma[:, None] * z, t)
    g = hand_q_grad(critics, data["observation"], a0)
    torch.testing.assert_close(out["q_mean"], qs.mean(0).mean())
    torch.testing.assert_close(
        out["score_term_norm"], (sigma[:, None] ** 2 * eps).norm(dim=-1).mean()
    )
    torch.testing.assert_close(out["q_term_norm"], (beta * g).norm(dim=-1).mean())
    expected_loss = ((sigma[:, None] ** 2 * eps - beta * g) * a0).sum()
    torch.testing.assert_close(out["loss_actor"], expected_loss)


def test_shares_the_iql_target_critic_and_its_polyak_updates():
    torch.manual_seed(0)
    n_obs, n_act = 3, 2
    q = make_qvalue(n_obs, n_act, [16])
    iql = IQLLoss(
        make_gaussian_actor(n_obs, n_act, [16]), q, make_value(n_obs, [16]),
        num_qvalue_nets=2, expectile=0.7, loss_function="l2",
    )  # fmt: skip
    updater = SoftUpdate(iql, tau=0.5)
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1), VPSDESchedule()
    )
    loss = SRPOLoss(
        make_srpo_actor(n_obs, n_act, [16]), behavior, q, beta=0.1,
        qvalue_params=iql.target_qvalue_network_params,
    )  # fmt: skip
    assert loss.num_qvalue_nets == 2
    assert loss.target_qvalue_network_params is iql.target_qvalue_network_params
    with torch.no_grad():
        for p in iql.qvalue_network_params.values(True, True):
            p.add_(1.0)
    data = TensorDict({"observation": torch.randn(8, n_obs)}, [8])
    before = float(loss(data)["q_mean"])
    updater.step()
    after = float(loss(data)["q_mean"])
    assert after != before
    # what the loss reads is the mean of the two IQL target heads
    a = loss.actor_network(data.clone())["action"].detach()
    values = []
    for i in range(2):
        with torch.no_grad(), iql.target_qvalue_network_params[i].to_module(iql.qvalue_network):
            values.append(iql.qvalue_network(observation=data["observation"], action=a))
    assert after == pytest.approx(float(torch.stack(values).mean()), rel=1e-6)
    # a checkpoint round trip keeps both views equal
    state = loss.state_dict()
    key = next(k for k in state if k.startswith("target_qvalue_network_params"))
    assert torch.equal(state[key], iql.state_dict()[key])


def test_copied_critic_is_frozen_and_independent_of_the_modules():
    loss, _, critics, _, data = real_setup(beta=0.3)
    before = loss(data)["q_mean"]
    with torch.no_grad():
        for c in critics:
            for p in c.parameters():
                p.add_(1.0)
    torch.testing.assert_close(loss(data)["q_mean"], before)


def test_set_keys_reads_renamed_entries():
    from torchrl.modules import ValueOperator

    loss, behavior, critics, a0, data = real_setup(beta=0.3)
    renamed_critics = [
        ValueOperator(c.module, in_keys=["state", "action"], out_keys=["q"]) for c in critics
    ]
    actor = TensorDictModule(FreeAction(a0), in_keys=["state"], out_keys=["action"])
    other = SRPOLoss(actor, behavior, renamed_critics, beta=0.3, reduction="sum")
    other.set_keys(observation="state", state_action_value="q")
    assert other.in_keys == ["state"]
    torch.manual_seed(0)
    ref = loss(data)
    torch.manual_seed(0)
    out = other(TensorDict({"state": data["observation"]}, [6]))
    for key in ref.keys():
        torch.testing.assert_close(out[key], ref[key])


def test_keyword_tensors_give_the_out_keys_of_the_tensordict_call():
    loss, *_, data = real_setup(beta=0.3)
    assert loss.in_keys == ["observation"]
    assert loss.out_keys == [
        "loss_actor", "q_mean", "score_term_norm", "q_term_norm", "action_abs_mean",
    ]  # fmt: skip
    torch.manual_seed(0)
    outs = loss(observation=data["observation"])
    torch.manual_seed(0)
    ref = loss(data)
    assert len(outs) == len(loss.out_keys)
    for key, value in zip(loss.out_keys, outs, strict=True):
        torch.testing.assert_close(value, ref[key], rtol=0, atol=0)
    outs[0].backward()  # the keyword call keeps the graph to the actor
    (param,) = loss.actor_network_params.values(True, True)
    assert param.grad is not None and param.grad.abs().sum() > 0
    loss.set_keys(observation="state")  # in_keys (read by keyword calls) follow set_keys
    assert loss.in_keys == ["state", "observation"]


def test_reductions():
    loss, *_, data = real_setup(beta=0.3)
    torch.manual_seed(0)
    total = loss(data)["loss_actor"]
    loss.reduction = "none"
    torch.manual_seed(0)
    rows = loss(data)["loss_actor"]
    assert rows.shape == (6,)
    loss.reduction = "mean"
    torch.manual_seed(0)
    mean = loss(data)["loss_actor"]
    torch.testing.assert_close(rows.sum(), total)
    torch.testing.assert_close(rows.mean(), mean)


def test_finite_on_extreme_inputs():
    torch.manual_seed(0)
    n_obs, n_act = 3, 2
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1), VPSDESchedule()
    )
    for normalize in (False, True):
        loss = SRPOLoss(
            make_srpo_actor(n_obs, n_act, [16]), behavior,
            [make_qvalue(n_obs, n_act, [16]) for _ in range(2)], beta=0.1,
            normalize_q_grad=normalize, t_min=1e-6, t_max=1.0, weight="score",
        )  # fmt: skip
        data = TensorDict(
            {"observation": torch.tensor([[1e6, -1e6, 0.0], [0.0, 0.0, 0.0], [1e-30, 3e4, -3e4]])},
            [3],
        )
        out = loss(data)
        out["loss_actor"].backward()
        assert all(torch.isfinite(v).all() for v in out.values())
        assert all(
            torch.isfinite(p.grad).all() for p in loss.actor_network_params.values(True, True)
        )
    # a flat critic (g = 0) with normalization stays finite
    loss = SRPOLoss(
        free_actor([0.2, 0.3]), gaussian_behavior([0.0, 0.0]), quadratic_q([0.0, 0.0], 0.0),
        beta=1.0, normalize_q_grad=True,
    )  # fmt: skip
    assert torch.isfinite(action_grad(loss, obs(4))).all()


def test_bad_arguments_are_reported():
    loss, behavior, critics, a0, data = real_setup(beta=0.3)
    actor = free_actor(a0)
    with pytest.raises(ValueError, match="beta"):
        SRPOLoss(actor, behavior, critics, beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        SRPOLoss(actor, behavior, critics, beta=-1.0)
    with pytest.raises(ValueError, match="weight"):
        SRPOLoss(actor, behavior, critics, beta=1.0, weight="VDS-noise")
    with pytest.raises(ValueError, match="t_min"):
        SRPOLoss(actor, behavior, critics, beta=1.0, t_min=0.5, t_max=0.2)
    with pytest.raises(ValueError, match="t_min"):
        SRPOLoss(actor, behavior, critics, beta=1.0, t_min=0.0)
    with pytest.raises(ValueError, match="q_reduce"):
        SRPOLoss(actor, behavior, critics, beta=1.0, q_reduce="max")
    with pytest.raises(ValueError, match="reduction"):
        SRPOLoss(actor, behavior, critics, beta=1.0, reduction="avg")
    with pytest.raises(ValueError, match="continuous"):
        discrete = DiffusionBehaviorActor(
            ResidualMLPNoisePredictor(
                3, 2, hidden_dim=8, num_blocks=1, time_embedding="sinusoidal"
            ),
            VPDiscreteSchedule(5),
        )
        SRPOLoss(actor, discrete, critics, beta=1.0)
    with pytest.raises(TypeError, match="DiffusionBehaviorActor"):
        SRPOLoss(actor, critics[0], critics, beta=1.0)
    with pytest.raises(ValueError, match="qvalue_params"):
        other = make_qvalue(3, 2, [8]).double()
        SRPOLoss(
            actor, behavior, critics, beta=1.0,
            qvalue_params=TensorDict.from_modules(other, other, as_module=True),
        )  # fmt: skip
    with pytest.raises(ValueError, match="noise"):
        loss.actor_loss(data, noise=torch.zeros(6, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="time"):
        loss.actor_loss(data, time=torch.zeros(5, dtype=torch.float64))


def test_docs_example_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "srpo.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    exec(compile(code, "docs/srpo.md", "exec"), namespace)
    out = namespace["out"]
    assert set(out.keys()) == {
        "loss_actor", "q_mean", "score_term_norm", "q_term_norm", "action_abs_mean"
    }  # fmt: skip
    assert all(torch.isfinite(v) for v in out.values())


def test_docstring_examples_run():
    import doctest

    result = doctest.testmod(srpo_module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_benchmark_cases_run_and_srpo_acts_faster_than_diffusion_sampling(monkeypatch):
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # cases_srpo imports its sibling bench_losses
    path = benchmarks / "cases_srpo.py"
    spec = importlib.util.spec_from_file_location("cases_srpo", path)
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    *_, (label, update, batch) = cases.updates(11, 3, [32, 32], 16)
    out = update(batch)
    assert label == "srpo policy" and torch.isfinite(out["loss_actor"])
    lines = cases.extra_section(0.01, batches=(4,))
    assert lines[0].startswith("### SRPO") and lines[-1].count("|") == 5
    srpo, diffusion = (float(x.replace(",", "")) for x in lines[-1].split("|")[2:4])
    assert srpo > 3 * diffusion  # one MLP forward against 20 passes of the ε-network


@pytest.mark.slow
def test_compiled_loss_matches_eager():
    """``torch.compile`` of the loss and its backward gives eager's values (about 40 s)."""
    loss, *_, data = real_setup(beta=0.3)
    t = torch.rand(6, dtype=torch.float64) * 0.96 + 0.02
    z = torch.randn(6, 2, dtype=torch.float64)
    (param,) = loss.actor_network_params.values(True, True)

    def step(data, t, z):
        value, meta = loss.actor_loss(data, time=t, noise=z)
        (grad,) = torch.autograd.grad(value, param)
        return value.detach(), grad, meta["q_mean"]

    eager = step(data, t, z)
    compiled = torch.compile(step)(data, t, z)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_compiled_policy_loss_has_no_graph_break_and_equals_eager():
    """The loss traces into one graph (∇_a Q̄ through torch.func.grad, the frozen ε-network through
    functional_call on an eval-mode copy: no autograd.grad, no mode flip, no parameter swap), and
    the compiled loss gives the eager values and actor gradients."""
    torch.manual_seed(0)
    n_obs, n_act, rows = 3, 2, 16
    behavior = DiffusionBehaviorActor(
        ResidualMLPNoisePredictor(n_obs, n_act, hidden_dim=16, num_blocks=1, dropout=0.3),
        VPSDESchedule(),
    )
    behavior.train()  # the loss must still run it without dropout
    critics = [make_qvalue(n_obs, n_act, [16]) for _ in range(2)]
    loss = SRPOLoss(make_srpo_actor(n_obs, n_act, [16]), behavior, critics, beta=0.1)
    data = TensorDict({"observation": torch.randn(rows, n_obs)}, [rows])
    time, noise = torch.rand(rows) * 0.9 + 0.05, torch.randn(rows, n_act)

    def run(fn):
        value, _ = fn(data, time=time, noise=noise)
        params = list(loss.actor_network_params.values(True, True))
        return value.detach(), torch.autograd.grad(value, params)

    torch._dynamo.reset()
    explanation = torch._dynamo.explain(loss.actor_loss)(data, time=time, noise=noise)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    eager_value, eager_grads = run(loss.actor_loss)
    compiled_value, compiled_grads = run(torch.compile(loss.actor_loss))
    torch.testing.assert_close(compiled_value, eager_value, rtol=1e-5, atol=1e-6)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-6)
    assert behavior.training  # the caller's module is left as it was
