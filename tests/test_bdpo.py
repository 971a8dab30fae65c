"""BDPOLoss: the per-step KL, the path KL, the Q / V_n / actor targets by hand, ensembles, gradients.

Numbered items refer to ``docs/specs/bdpo.md`` §10 (tests 1, 3 and 4 live in
test_diffusion_schedules.py, test_diffusion_actor.py and test_diffusion_bc.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn

import torchrl_sym.objectives.bdpo as bdpo_module
from tests.loss_harness import check_docstring_examples, grads, is_zero
from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    VPDiscreteSchedule,
)
from torchrl_sym.objectives.bdpo import (
    BDPOLoss,
    BDPOPolicy,
    BDPOPrepareTraining,
    ensemble_lcb,
    kl_penalty,
    make_bdpo_qvalue,
)

# the losses here are built without their EMA updaters on purpose
pytestmark = pytest.mark.filterwarnings("ignore:No target network updater")

S, A, B, N, E = 3, 2, 16, 5, 3
GROUPS = (
    "actor_network_params",
    "behavior_network_params",
    "qvalue_network_params",
    "value_network_params",
)
OWNERS = {
    "loss_actor": "actor_network_params",
    "loss_behavior": "behavior_network_params",
    "loss_qvalue": "qvalue_network_params",
    "loss_value": "value_network_params",
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diffusion(seed: int, *, clip: bool = True, steps: int = N, variance="beta"):
    torch.manual_seed(seed)
    net = MLPNoisePredictor(S, A, hidden=(16, 16), time_hidden=(16,), activation=nn.SiLU)
    return DiffusionBehaviorActor(
        net,
        VPDiscreteSchedule(steps, variance=variance),
        action_low=-1.0,
        action_high=1.0,
        clip_sample=clip,
    )


def _make_loss(seed=0, *, num_q=E, num_v=E, **kwargs) -> BDPOLoss:
    actor, behavior = _diffusion(seed), _diffusion(seed + 1)
    torch.manual_seed(seed + 2)
    q = [make_bdpo_qvalue(S, A, (16, 16)) for _ in range(num_q)]
    v = NoiseConditionedCritic(S, A, num_members=num_v, hidden=(16, 16), time_hidden=(16,))
    kwargs.setdefault("eta", 0.3)
    kwargs.setdefault("rho", 0.5)
    kwargs.setdefault("gamma", 0.9)
    kwargs.setdefault("num_samples", 4)
    loss = BDPOLoss(actor, q, v, behavior, **kwargs)
    # distinct online / EMA weights, so that a target computed with the wrong copy is caught
    with torch.no_grad():
        for name in ("actor", "behavior", "qvalue", "value"):
            target = getattr(loss, f"target_{name}_network_params")
            for p in target.values(True, True):
                if p.is_floating_point():
                    p.add_(0.05 * torch.randn_like(p))
    return loss


def _batch(seed=0, n=B, terminated=None) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    if terminated is None:
        terminated = torch.zeros(n, 1, dtype=torch.bool)
        terminated[::4] = True
    return TensorDict(
        {
            "observation": torch.randn(n, S, generator=g),
            "action": torch.rand(n, A, generator=g) * 2.4 - 1.2,  # some outside ±1: clipped
            "next": {
                "observation": torch.randn(n, S, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": terminated.clone(),
                "terminated": terminated,
            },
        },
        [n],
    )


def _eps(loss, name, target, obs, x, n):
    net = getattr(loss, name)
    params = loss._params(name, target)
    with params.to_module(net):
        return net.epsilon(obs, x, n)


def _q(loss, obs, a, target):
    """Per-member Q by looping over the members (no vmap): ``[E, *B, 1]``."""
    params = loss._params("qvalue_network", target)
    out = []
    for i in range(loss.num_qvalue_nets):
        td = TensorDict(
            {"observation": obs.expand(*a.shape[:-1], S), "action": a}, batch_size=a.shape[:-1]
        )
        with params[i].to_module(loss.qvalue_network):
            out.append(loss.qvalue_network(td)["state_action_value"])
    return torch.stack(out)


def _v(loss, obs, a, n, target):
    params = loss._params("value_network", target)
    with params.to_module(loss.value_network):
        return loss.value_network(obs, a, n)


def _lcb(x, rho):
    """mean_E(mean_M x) − ρ · population std over E, written out."""
    m = x.mean(-2)
    mu = m.mean(0)
    return mu - rho * ((m - mu) ** 2).mean(0).sqrt()


# ------------------------------------------------------------------------------ test 2: ℓ_n
@pytest.mark.parametrize("n", range(1, N + 1))
def test_kl_penalty_is_the_gaussian_kl_of_the_two_reverse_kernels(n):
    """ℓ_n(ε_π, ε_ν) = KL(N(μ_π, β_n I) ‖ N(μ_ν, β_n I)) by torch.distributions, with the means
    of two different random ε-networks computed by the actor's reverse_kernel (no clipping)."""
    actor, behavior = _diffusion(0, clip=False), _diffusion(1, clip=False)
    actor, behavior = actor.double(), behavior.double()
    g = torch.Generator().manual_seed(n)
    obs = torch.randn(64, S, generator=g, dtype=torch.float64)
    x = 2 * torch.randn(64, A, generator=g, dtype=torch.float64)
    eps_pi, eps_nu = actor.epsilon(obs, x, n), behavior.epsilon(obs, x, n)
    mu_pi, std = actor.reverse_kernel(obs, x, n)
    mu_nu, std_nu = behavior.reverse_kernel(obs, x, n)
    torch.testing.assert_close(std, std_nu)
    torch.testing.assert_close(std**2, torch.full_like(std, float(actor.schedule.betas[n])))
    kl = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu_pi, std), torch.distributions.Normal(mu_nu, std)
    ).sum(-1)
    loss = BDPOLoss(
        actor, [make_bdpo_qvalue(S, A, (8,))], NoiseConditionedCritic(S, A, num_members=1), behavior
    )
    ell = kl_penalty(eps_pi, eps_nu, loss.kl_weight[n].double())
    torch.testing.assert_close(ell, kl, rtol=2e-6, atol=1e-9)
    assert (kl > 0).all()
    # the N = 5 weights of the spec's table
    expected = [0.6218, 0.7505, 1.0372, 1.6020, 2.5472]
    assert float(loss.kl_weight[n]) == pytest.approx(expected[n - 1], abs=1e-4)


# ------------------------------------------------------------------------------ test 8: path KL
class _LinearEps(nn.Module):
    """1-D linear ε-network ``ε(x, n) = k_n x + c_n`` (observation ignored)."""

    action_dim = 1

    def __init__(self, k, c):
        super().__init__()
        self.k = nn.Parameter(torch.as_tensor(k, dtype=torch.float64))
        self.c = nn.Parameter(torch.as_tensor(c, dtype=torch.float64))

    def forward(self, observation, action, time):
        n = time.long()
        return self.k[n].unsqueeze(-1) * action + self.c[n].unsqueeze(-1)


def _joint_gaussian(k, c, schedule):
    """Mean and covariance of (x_N, …, x_1, x_0) of the chain x_N ~ N(0,1),
    x_{n−1} = (x_n − β_n/√(1−ᾱ_n) ε(x_n, n))/√α_n + √β_n z (noise on every step)."""
    dim = N + 1
    mean = torch.zeros(dim, dtype=torch.float64)
    lin = torch.zeros(dim, dim, dtype=torch.float64)  # x = mean + lin @ z, z ~ N(0, I_{N+1})
    lin[0, 0] = 1.0
    for i, n in enumerate(range(N, 0, -1)):
        b = float(schedule.betas[n].double())
        abar = float(schedule.alphas_cumprod[n].double())
        coef = b / math.sqrt(1 - abar)
        slope = (1 - coef * float(k[n])) / math.sqrt(1 - b)
        offset = -coef * float(c[n]) / math.sqrt(1 - b)
        mean[i + 1] = slope * mean[i] + offset
        lin[i + 1] = slope * lin[i]
        lin[i + 1, i + 1] = math.sqrt(b)
    return mean, lin @ lin.T


def test_summed_penalty_is_a_monte_carlo_estimate_of_the_path_kl():
    """Σ_n ℓ_n averaged over actor chains = KL between the two joint Gaussians (within 3 SE)."""
    torch.manual_seed(0)
    k_pi, c_pi = torch.rand(N + 1) * 0.6 + 0.2, torch.randn(N + 1) * 0.4
    k_nu, c_nu = torch.rand(N + 1) * 0.6 + 0.2, torch.randn(N + 1) * 0.4
    schedule = VPDiscreteSchedule(N, variance="beta")
    actor = DiffusionBehaviorActor(_LinearEps(k_pi, c_pi), VPDiscreteSchedule(N, variance="beta"))
    behavior = DiffusionBehaviorActor(
        _LinearEps(k_nu, c_nu), VPDiscreteSchedule(N, variance="beta")
    )
    q = make_bdpo_qvalue(1, 1, (4,)).double()
    with torch.no_grad():
        for p in q.parameters():
            p.zero_()  # Q ≡ 0: y_Q = −γ η P(s')
    loss = BDPOLoss(
        actor.double(),
        [q],
        NoiseConditionedCritic(1, 1, num_members=1, hidden=(4,), time_hidden=(4,)).double(),
        behavior.double(),
        eta=1.0,
        gamma=1.0,
        num_samples=1,
        action_clip=None,
    )
    rows = 40_000
    td = TensorDict(
        {
            "observation": torch.zeros(rows, 1, dtype=torch.float64),
            "action": torch.zeros(rows, 1, dtype=torch.float64),
            "next": {
                "observation": torch.zeros(rows, 1, dtype=torch.float64),
                "reward": torch.zeros(rows, 1, dtype=torch.float64),
                "done": torch.zeros(rows, 1, dtype=torch.bool),
                "terminated": torch.zeros(rows, 1, dtype=torch.bool),
            },
        },
        [rows],
    )
    target, info = loss.q_target(td)
    penalty = -target.squeeze(-1)
    mc, se = penalty.mean(), penalty.std() / math.sqrt(rows)
    m_pi, cov_pi = _joint_gaussian(k_pi, c_pi, schedule)
    m_nu, cov_nu = _joint_gaussian(k_nu, c_nu, schedule)
    exact = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(m_pi, cov_pi),
        torch.distributions.MultivariateNormal(m_nu, cov_nu),
    )
    assert float(exact) > 0.05
    assert abs(float(mc - exact)) < 3 * float(se), (float(mc), float(exact), float(se))
    torch.testing.assert_close(info["q_penalty"], mc)


# ------------------------------------------------------------------------------ test 5
def test_penalties_vanish_when_the_actor_is_the_behavior():
    loss = _make_loss()
    td = _batch()
    out = loss(td)
    assert out["q_penalty"] > 0 and out["v_penalty"] > 0 and out["actor_penalty"] > 0
    loss.prepare_training()
    for name in ("actor_network_params", "target_actor_network_params"):
        for key, value in getattr(loss, name).items(True, True):
            torch.testing.assert_close(value, loss.target_behavior_network_params[key])
    out = loss(td)
    for key in ("q_penalty", "v_penalty", "actor_penalty"):
        assert float(out[key]) == 0.0, key
    # the prepare step of the recipe's stage does the same
    loss2 = _make_loss(seed=5)
    BDPOPrepareTraining(loss2).step()
    _, info = loss2.actor_loss(td)
    assert float(info["actor_penalty"]) == 0.0


# ------------------------------------------------------------------------------ tests 6, 7
def test_lcb_is_mean_minus_rho_population_std_and_max_over_samples():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 4, 1, generator=g, dtype=torch.float64)
    for rho in (0.0, 0.5, 2.0):
        torch.testing.assert_close(ensemble_lcb(x, rho), _lcb(x, rho))
    torch.testing.assert_close(ensemble_lcb(x, 0.0), x.mean(-2).mean(0))
    # maxQ: the max over M comes before the ensemble reduction
    m = x.amax(-2)
    expected = m.mean(0) - 1.5 * ((m - m.mean(0)) ** 2).mean(0).sqrt()
    torch.testing.assert_close(ensemble_lcb(x, 1.5, sample_reduction="max"), expected)
    # E = 1: the member itself, whatever ρ
    torch.testing.assert_close(ensemble_lcb(x[:1], 3.0), x[0].mean(-2))
    with pytest.raises(ValueError, match="sample_reduction"):
        ensemble_lcb(x, 1.0, sample_reduction="min")


@pytest.mark.parametrize("form", ["eq13", "legacy"])
def test_q_target_by_hand(form):
    """y_Q from the EMA actor's chain at s', the EMA behavior's ε and the target Q ensemble."""
    loss = _make_loss(q_target_form=form)
    td = _batch()
    torch.manual_seed(11)
    target, info = loss.q_target(td)
    torch.manual_seed(11)
    obs = td["next", "observation"].unsqueeze(1).expand(B, 4, S)
    with loss._params("actor_network", True).to_module(loss.actor_network):
        chain = loss.actor_network.sample_chain(obs)
    penalty = torch.zeros(B, 4)
    for i, n in enumerate(range(N, 0, -1)):
        eps_pi = _eps(loss, "actor_network", True, obs, chain.actions[i], n)
        torch.testing.assert_close(eps_pi, chain.epsilons[i])
        eps_nu = _eps(loss, "behavior_network", True, obs, chain.actions[i], n)
        penalty += loss.actor_network.schedule.kl_weight[n] * ((eps_pi - eps_nu) ** 2).sum(-1)
    penalty = penalty.mean(-1, keepdim=True)
    lcb = _lcb(_q(loss, obs, chain.actions[-1], target=True), 0.5)
    r, nd = td["next", "reward"], 1 - td["next", "terminated"].float()
    if form == "eq13":
        expected = r + 0.9 * nd * (lcb - 0.3 * penalty)
    else:
        expected = r + 0.9 * nd * lcb - 0.3 * penalty
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(info["q_penalty"], penalty.mean(), rtol=1e-5, atol=1e-6)
    # terminal rows: y = r under Eq. 13, r − η P under the legacy form
    term = td["next", "terminated"].squeeze(-1)
    if form == "eq13":
        torch.testing.assert_close(target[term], r[term])
    else:
        assert (target[term] < r[term]).all()
    # and the loss is the mean over members and rows of the squared error
    torch.manual_seed(11)
    value, info = loss.qvalue_loss(td)
    q = _q(loss, td["observation"], td["action"], target=False)
    torch.testing.assert_close(value, ((q - expected) ** 2).mean(), rtol=1e-5, atol=0)
    assert set(info) == {"q_target", "q_penalty", "lcb_std"}
    torch.testing.assert_close(info["q_target"], expected.mean(), rtol=1e-5, atol=1e-6)


def test_reduction_to_plain_td_target_and_next_step_value():
    """η = 0, ρ = 0, E = 1, M = 1: y_Q = r + γ(1−d) Q̄(s', a'^0) and y_V = the next-step value."""
    loss = _make_loss(num_q=1, num_v=1, eta=0.0, rho=0.0, num_samples=1)
    td = _batch()
    torch.manual_seed(3)
    target, _ = loss.q_target(td)
    torch.manual_seed(3)
    with loss._params("actor_network", True).to_module(loss.actor_network):
        a0 = loss.actor_network.sample(td["next", "observation"])
    q_next = _q(loss, td["next", "observation"], a0, target=True)[0]
    expected = td["next", "reward"] + 0.9 * (1 - td["next", "terminated"].float()) * q_next
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-6)

    obs = td["observation"]
    n = torch.tensor([1, 2, 3, 4, 5] * 3 + [1])
    x = torch.randn(B, A)
    torch.manual_seed(4)
    y_v, _ = loss.value_target(obs, n, x)
    torch.manual_seed(4)
    z = torch.randn(B, 1, A)
    with loss._params("actor_network", True).to_module(loss.actor_network):
        mean, std = loss.actor_network.reverse_kernel(obs, x, n)
    prev = mean + (n > 1).unsqueeze(-1) * std * z[:, 0]
    v_next = _v(loss, obs, prev, n - 1, target=True)[0]
    q_at_0 = _q(loss, obs, prev, target=True)[0]
    expected = torch.where((n > 1).unsqueeze(-1), v_next, q_at_0)
    torch.testing.assert_close(y_v, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step_sampling", ["uniform", "stratified"])
def test_value_and_actor_losses_by_hand(step_sampling):
    loss = _make_loss(step_sampling=step_sampling)
    td = _batch()
    a0_all = td["action"].clamp(-(1 - 1e-5), 1 - 1e-5)
    w = loss.actor_network.schedule.kl_weight

    def replay(target_actor: bool):
        if step_sampling == "uniform":
            perm = torch.arange(B)
            n = torch.randint(1, N + 1, (B,))
        else:  # shuffled rows, each n on floor(B/N) rows, distinct random n on the rest
            perm = torch.rand(B).argsort()
            k = B // N
            left = torch.rand(N).argsort()[: B - k * N] + 1
            n = torch.cat([torch.arange(1, N + 1).repeat_interleave(k), left])
        obs, a0 = td["observation"][perm], a0_all[perm]
        obs_m = obs.unsqueeze(1).expand(B, 4, S)
        abar = loss.actor_network.schedule.alphas_cumprod[n].unsqueeze(-1)
        x = abar.sqrt() * a0 + (1 - abar).sqrt() * torch.randn(B, A)
        eps = _eps(loss, "actor_network", target_actor, obs, x, n)
        params = loss._params("actor_network", target_actor)
        with params.to_module(loss.actor_network):
            mean, std = loss.actor_network.reverse_kernel(obs, x, n, eps=eps)
        z = torch.randn(B, 4, A)
        prev = mean.unsqueeze(1) + ((n > 1).unsqueeze(-1) * std).unsqueeze(1) * z
        eps_nu = _eps(loss, "behavior_network", True, obs, x, n)
        ell = w[n] * ((eps - eps_nu) ** 2).sum(-1)
        v = _lcb(_v(loss, obs_m, prev, (n - 1).unsqueeze(-1).expand(B, 4), target=True), 0.5)
        q = _lcb(_q(loss, obs_m, prev, target=True), 0.5)
        boot = torch.where((n > 1).unsqueeze(-1), v, q)
        return obs, n, x, ell, boot

    torch.manual_seed(7)
    value, info = loss.value_loss(td)
    torch.manual_seed(7)
    obs, n, x, ell, boot = replay(target_actor=True)
    y = boot - 0.3 * ell.unsqueeze(-1)
    v_online = _v(loss, obs, x, n, target=False)
    torch.testing.assert_close(value, ((v_online - y) ** 2).mean(), rtol=1e-5, atol=0)
    torch.testing.assert_close(info["v_penalty"], ell.mean(), rtol=1e-5, atol=1e-7)

    torch.manual_seed(8)
    value, info = loss.actor_loss(td)
    torch.manual_seed(8)
    obs, n, x, ell, boot = replay(target_actor=False)
    expected = -(boot.squeeze(-1) - 0.3 * ell).mean()
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(info["actor_penalty"], ell.mean().detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("batch", [10, 13, 3])
def test_stratified_bootstrap_equals_the_unsplit_one_row_by_row(batch):
    """The split evaluation (Q only on the n = 1 rows, V only on the others) gives every row the
    value the per-row where of the uniform path gives it: same expectation, half the work."""
    loss = _make_loss()
    torch.manual_seed(3)
    obs = torch.randn(batch, S)
    prev = torch.randn(batch, 4, A)
    n = loss.stratified_steps(batch)
    split = batch // N
    assert (n[:split] == 1).all() and (n[split : N * split] > 1).all()
    assert sorted(n[: N * split].tolist()) == sorted(list(range(1, N + 1)) * split)
    assert len(set(n[N * split :].tolist())) == batch - N * split  # distinct left-over steps
    with torch.no_grad():
        split_value = loss._bootstrap(obs, prev, n, split)
        unsplit = loss._bootstrap(obs, prev, n, None)
    assert split_value.shape == (batch, 1)
    torch.testing.assert_close(split_value, unsplit, rtol=1e-5, atol=1e-6)


def test_stratified_rows_get_every_step_with_probability_one_over_n():
    """Each data row lands on a uniformly random position of the shuffled batch: P(n = k) = 1/N
    for every row and k, as with n ~ U{1..N}, so the expectation of every target is unchanged."""
    loss = _make_loss()
    batch, draws = 7, 3000  # 7 = 1 x 5 + 2 left-over rows
    td = _batch(n=batch)
    counts = torch.zeros(batch, N)
    torch.manual_seed(0)
    for _ in range(draws):
        _, n, _, split, perm = loss._noisy_dataset_action(td)
        assert split == 1
        counts[perm, n - 1] += 1
    freq = counts / draws
    # binomial std sqrt(0.2 * 0.8 / 3000) = 0.0073; 5 sigma
    assert (freq - 1 / N).abs().max() < 0.037, freq


@pytest.mark.slow
def test_compiled_losses_equal_eager(step_sampling="stratified"):
    """The critic and actor losses compile (torch.compile, inductor) and give the eager values
    and gradients under the same random draws (inductor's RNG replaced by eager's). A row
    shuffle drawn with ``randperm`` broke inductor's pattern matcher in torch 2.13; the
    permutations are argsorts of uniforms."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    td = _batch(n=13)  # 13 = 2 x 5 + 3 left-over rows

    def terms(loss):
        out = {}
        for name in ("qvalue", "value", "actor"):
            value, _ = getattr(loss, f"{name}_loss")(td)
            out[f"loss_{name}"] = value
        total = out["loss_qvalue"] + out["loss_value"] + out["loss_actor"]
        total.backward()
        return {key: value.detach() for key, value in out.items()}

    results = []
    for compiled in (False, True):
        loss = _make_loss(step_sampling=step_sampling)
        fn = torch.compile(terms) if compiled else terms
        torch.manual_seed(4)
        with inductor_config.patch(fallback_random=True):
            out = fn(loss)
        results.append((out, [p.grad.clone() for p in loss.parameters() if p.grad is not None]))
    (eager, eager_grads), (comp, comp_grads) = results
    for key in ("loss_qvalue", "loss_value", "loss_actor"):
        torch.testing.assert_close(comp[key], eager[key], rtol=1e-4, atol=1e-5)
    assert len(comp_grads) == len(eager_grads) > 0
    for a, b in zip(comp_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


def test_stratified_per_row_losses_follow_the_batch_rows():
    """With reduction="none" the shuffled rows are put back in the batch's order (row i of the
    shuffled batch is the batch's row perm[i]), differentiably; the mean is the mean loss."""
    perm = torch.randperm(10)
    per_row = torch.arange(10.0, requires_grad=True)  # the loss of the batch's row j is j
    restored = BDPOLoss._unshuffle(per_row[perm], perm)
    assert torch.equal(restored, per_row.detach())
    restored.sum().backward()
    assert torch.equal(per_row.grad, torch.ones(10))

    td = _batch(n=10)
    for method in ("actor_loss", "value_loss"):
        torch.manual_seed(5)
        rows, _ = getattr(_make_loss(reduction="none"), method)(td)
        torch.manual_seed(5)
        mean, _ = getattr(_make_loss(), method)(td)
        assert rows.shape == (10,)
        torch.testing.assert_close(rows.mean(), mean, rtol=1e-5, atol=1e-6)


def test_bandit_target_is_the_reward_and_max_q_backup():
    loss = _make_loss(bandit=True)
    td = _batch(terminated=torch.ones(B, 1, dtype=torch.bool))
    target, info = loss.q_target(td)
    torch.testing.assert_close(target, td["next", "reward"])
    assert float(info["q_penalty"]) == 0.0  # no chain at s'
    # maxQ: y_Q uses max over the M samples of Q̄ before the LCB
    loss = _make_loss(max_q_backup=True, eta=0.0)
    td = _batch(terminated=torch.zeros(B, 1, dtype=torch.bool))
    torch.manual_seed(2)
    target, _ = loss.q_target(td)
    torch.manual_seed(2)
    obs = td["next", "observation"].unsqueeze(1).expand(B, 4, S)
    with loss._params("actor_network", True).to_module(loss.actor_network):
        a0 = loss.actor_network.sample_chain(obs).actions[-1]
    m = _q(loss, obs, a0, target=True).amax(-2)
    lcb = m.mean(0) - 0.5 * m.std(0, correction=0)
    torch.testing.assert_close(target, td["next", "reward"] + 0.9 * lcb, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ ensembles
def test_q_ensemble_is_vmapped_and_equals_each_member():
    loss = _make_loss()
    obs, act = torch.randn(B, 4, S), torch.rand(B, 4, A) * 2 - 1
    for target in (False, True):
        torch.testing.assert_close(
            loss.q_values(obs, act, target=target), _q(loss, obs, act, target)
        )
    # the members differ (E independently initialized modules)
    q = loss.q_values(obs, act)
    assert q.shape == (E, B, 4, 1) and (q[0] - q[1]).abs().max() > 1e-3
    # the V_n ensemble: batched EnsembleLinear members equal member-by-member MLPs
    v = loss.values(obs, act, torch.randint(0, N + 1, (B, 4)))
    assert v.shape == (E, B, 4, 1) and (v[0] - v[1]).abs().max() > 1e-3


def test_v_ensemble_members_equal_single_member_critics():
    loss = _make_loss()
    obs, act, n = torch.randn(B, S), torch.rand(B, A), torch.randint(0, N + 1, (B,))
    full = loss.values(obs, act, n)
    params = loss.value_network_params
    for k in range(E):
        single = NoiseConditionedCritic(S, A, num_members=1, hidden=(16, 16), time_hidden=(16,))
        flat = params.flatten_keys(".")
        single.load_state_dict({key: flat[key][k : k + 1] for key in single.state_dict()})
        torch.testing.assert_close(single(obs, act, n)[0], full[k])


# ------------------------------------------------------------------------------ test 10
@pytest.mark.parametrize("loss_key", sorted(OWNERS))
def test_each_loss_reaches_only_its_network(loss_key):
    loss = _make_loss()
    td = _batch()
    for p in loss.parameters():
        p.grad = None
    out = loss(td)
    out[loss_key].backward()
    owner = OWNERS[loss_key]
    trainable = [p for p in getattr(loss, owner).values(True, True) if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)
    for other in GROUPS:
        if other != owner:
            assert is_zero(grads(getattr(loss, other))), (loss_key, other)
    for name in ("actor", "behavior", "qvalue", "value"):
        for p in getattr(loss, f"target_{name}_network_params").values(True, True):
            assert not p.requires_grad and p.grad is None
    for key, value in out.items():
        if not key.startswith("loss_"):
            assert not value.requires_grad, key
    ids = {id(p) for g in GROUPS for p in getattr(loss, g).values(True, True)}
    assert all(id(p) in ids for p in loss.parameters())


def test_actor_gradient_vanishes_with_zero_eta_and_a_constant_critic():
    loss = _make_loss(eta=0.0)
    with torch.no_grad():
        for name in ("qvalue", "value"):
            for key, p in loss.__getattr__(f"target_{name}_network_params").items(True, True):
                if "weight" in "".join(key) and p.dim() > 1:
                    p.zero_()
    value, _ = loss.actor_loss(_batch())
    value.backward()
    assert is_zero(grads(loss.actor_network_params))
    # with η > 0 the penalty alone moves the actor
    loss.eta = 0.3
    for p in loss.parameters():
        p.grad = None
    loss.actor_loss(_batch())[0].backward()
    assert not is_zero(grads(loss.actor_network_params))


# ------------------------------------------------------------------------------ bookkeeping
def test_target_updaters_move_only_their_networks():
    loss = _make_loss()
    before = {
        name: getattr(loss, f"target_{name}_network_params").clone()
        for name in ("actor", "behavior", "qvalue", "value")
    }
    critic = loss.make_target_updater("critic")
    critic.step()
    for name in ("qvalue", "value"):
        online = getattr(loss, f"{name}_network_params")
        after = getattr(loss, f"target_{name}_network_params")
        for key, value in after.items(True, True):
            expected = 0.995 * before[name][key] + 0.005 * online[key].detach()
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-6)
    for name in ("actor", "behavior"):
        assert (getattr(loss, f"target_{name}_network_params") == before[name]).all()
    loss.make_target_updater("actor", tau=0.5).step()
    for key, value in loss.target_actor_network_params.items(True, True):
        expected = 0.5 * before["actor"][key] + 0.5 * loss.actor_network_params[key].detach()
        torch.testing.assert_close(value, expected)
    assert (loss.target_behavior_network_params == before["behavior"]).all()
    with pytest.raises(ValueError, match="networks must be one of"):
        loss.make_target_updater("everything")


def test_policy_takes_the_best_of_m_samples_under_the_mean_ema_q():
    """The official ``sample_actions`` ranks the samples with ``q0_target``: the EMA critics."""
    loss = _make_loss()
    rows = 32
    obs = torch.randn(rows, S)
    torch.manual_seed(0)
    with loss._params("actor_network", True).to_module(loss.actor_network):
        samples = loss.actor_network.sample(obs, num_samples=7)
    obs_m = obs.unsqueeze(1).expand(rows, 7, S)
    picked = {}
    for critic in ("ema", "online"):
        policy = BDPOPolicy(loss, num_samples=7, critic=critic)
        torch.manual_seed(0)
        action = policy(TensorDict({"observation": obs}, [rows]))["action"]
        q = _q(loss, obs_m, samples, target=critic == "ema").mean(0).squeeze(-1)
        torch.testing.assert_close(action, samples[torch.arange(rows), q.argmax(-1)])
        picked[critic] = action
    assert BDPOPolicy(loss).critic == "ema"  # the default is the official rule
    # the EMA and online critics differ (_make_loss), and so do some of their picks
    assert not torch.equal(picked["ema"], picked["online"])
    with pytest.raises(ValueError, match="critic must be"):
        BDPOPolicy(loss, critic="target")
    first = BDPOPolicy(loss, selection="first")
    assert first.num_samples == 1
    assert first(TensorDict({"observation": obs}, [rows]))["action"].shape == (rows, A)
    assert list(loss.parameters()) and not list(policy.parameters())  # the loss owns the nets


def test_extreme_inputs_stay_finite():
    loss = _make_loss()
    td = _batch()
    td["observation"] = td["observation"] * 1e4
    td["next", "observation"] = td["next", "observation"] * 1e4
    td["next", "reward"] = td["next", "reward"] * 1e5
    td["action"] = torch.sign(td["action"]) * 50.0
    out = loss(td)
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for group in GROUPS:
        for p in getattr(loss, group).values(True, True):
            if p.requires_grad:
                assert p.grad is not None and torch.isfinite(p.grad).all(), group


def test_keys_reduction_and_set_keys():
    loss = _make_loss()
    td = _batch()
    out = loss(td)
    assert set(out.keys()) == set(loss.out_keys)
    torch.manual_seed(1)
    ref = _make_loss(reduction="none")(td)
    for key in ("loss_qvalue", "loss_value", "loss_actor", "loss_behavior"):
        assert ref[key].shape == (B,), key
    torch.manual_seed(1)
    total = _make_loss(reduction="sum")(td)
    for key in ("loss_qvalue", "loss_value", "loss_actor", "loss_behavior"):
        torch.testing.assert_close(total[key], ref[key].sum(), rtol=1e-5, atol=1e-5)
    renamed = td.clone()
    renamed["next", "r"] = renamed["next"].pop("reward")
    loss.set_keys(reward="r")
    assert ("next", "r") in loss.in_keys
    torch.manual_seed(2)
    a, _ = loss.qvalue_loss(renamed)
    loss.set_keys(reward="reward")
    torch.manual_seed(2)
    b, _ = loss.qvalue_loss(td)
    torch.testing.assert_close(a, b)


def test_per_term_methods_return_loss_and_metadata_and_forward_is_their_union():
    """TorchRL's convention (``IQLLoss.qvalue_loss`` -> ``(loss, metadata)``): each term returns
    its loss tensor and a dict of detached diagnostics; ``forward`` is the TensorDict of all four
    under the same random draws, in the order behavior, qvalue, value, actor."""
    loss = _make_loss()
    td = _batch()
    torch.manual_seed(9)
    out = loss(td)
    torch.manual_seed(9)
    expected = {}
    for name, keys in (
        ("behavior", {"eps_rms"}),
        ("qvalue", {"q_target", "q_penalty", "lcb_std"}),
        ("value", {"v_penalty", "v_target"}),
        ("actor", {"actor_penalty", "actor_value"}),
    ):
        result = getattr(loss, f"{name}_loss")(td)
        assert isinstance(result, tuple) and len(result) == 2
        value, info = result
        assert isinstance(value, torch.Tensor) and value.shape == () and value.requires_grad
        assert type(info) is dict and set(info) == keys
        assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in info.values())
        expected[f"loss_{name}"] = value
        expected.update(info)
    assert list(out.keys()) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=0)


def test_bad_arguments_are_reported():
    actor, behavior = _diffusion(0), _diffusion(1)
    q, v = [make_bdpo_qvalue(S, A, (8,))], NoiseConditionedCritic(S, A, num_members=1)
    with pytest.raises(ValueError, match="variance='beta'"):
        BDPOLoss(_diffusion(0, variance="posterior"), q, v)
    with pytest.raises(ValueError, match="eta"):
        BDPOLoss(actor, q, v, behavior, eta=-1.0)
    with pytest.raises(ValueError, match="rho"):
        BDPOLoss(actor, q, v, behavior, rho=float("nan"))
    with pytest.raises(ValueError, match="num_samples"):
        BDPOLoss(actor, q, v, behavior, num_samples=0)
    with pytest.raises(ValueError, match="q_target_form"):
        BDPOLoss(actor, q, v, behavior, q_target_form="eq12")
    with pytest.raises(ValueError, match="step_sampling must be one of"):
        BDPOLoss(actor, q, v, behavior, step_sampling="sorted")
    with pytest.raises(ValueError, match="bandit=True"):
        BDPOLoss(actor, q, v, behavior, bandit=True, q_target_form="legacy")
    with pytest.raises(ValueError, match="schedule"):
        BDPOLoss(actor, q, v, _diffusion(1, steps=4))
    with pytest.raises(ValueError, match="architecture"):
        other = DiffusionBehaviorActor(
            MLPNoisePredictor(S, A, hidden=(8,)), VPDiscreteSchedule(N, variance="beta")
        )
        BDPOLoss(actor, q, v, other)
    with pytest.raises(ValueError, match="shares parameters"):
        BDPOLoss(actor, q, v, actor)
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        BDPOLoss(actor, q[0], v, behavior)
    with pytest.raises(ValueError, match="gamma"):
        BDPOLoss(actor, q, v, behavior, gamma=1.5)


def test_docstring_example():
    check_docstring_examples(bdpo_module)


def test_docs_example_runs():
    import re
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "bdpo.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", page, re.S)
    namespace: dict = {}
    exec(code, namespace)
    assert namespace["action"].shape == (3,) and namespace["action"].abs().max() <= 1.0


def test_stratified_steps_halve_the_bootstrap_flops():
    """V̄ and Q̄ each run on their own rows: the bootstrap's FLOPs are 1/N of Q̄'s plus (N−1)/N of
    V̄'s on all rows, instead of both on all rows (flop_counter's matmul formulas)."""
    from torch.utils.flop_counter import FlopCounterMode

    def flops(fn):
        with FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops()

    loss = _make_loss()
    batch = 10 * N
    torch.manual_seed(0)
    obs, prev = torch.randn(batch, S), torch.randn(batch, 4, A)
    n = loss.stratified_steps(batch)
    with torch.no_grad():
        q_all = flops(lambda: loss.q_values(loss._repeat(obs), prev, target=True))
        v_all = flops(
            lambda: loss.values(
                loss._repeat(obs), prev, (n - 1).unsqueeze(-1).expand(batch, 4), target=True
            )
        )
        uniform = flops(lambda: loss._bootstrap(obs, prev, n, None))
        stratified = flops(lambda: loss._bootstrap(obs, prev, n, batch // N))
    assert uniform == q_all + v_all
    assert stratified == q_all // N + v_all * (N - 1) // N


def test_the_noise_tables_follow_the_loss_to_its_device_and_dtype():
    """The forward process (``add_noise``) runs on the networks themselves, outside the swapped-in
    parameter copies: ``loss.to(...)`` must move their schedules too. On a GPU the value and
    behavior losses failed with "cuda:0 and cpu" before this (found on the H200); dtype is the
    CPU-visible trace of the same move."""
    loss = _make_loss().to(torch.float64)
    for net in (loss.actor_network, loss.behavior_network):
        tables = dict(net.schedule.named_buffers())
        assert tables and all(t.dtype == torch.float64 for t in tables.values()), net
    batch = _batch().apply(lambda t: t.double() if t.is_floating_point() else t)
    for part in (loss.value_loss, loss.behavior_loss, loss.qvalue_loss, loss.actor_loss):
        value, info = part(batch)
        assert value.dtype == torch.float64
        assert all(v.dtype == torch.float64 for v in info.values())
    # registering the schedules adds nothing to a checkpoint (their tables are not persistent)
    assert not [k for k in loss.state_dict() if "_schedule" in k]
