"""DiffusionBehaviorActor: TorchRL contract, samplers against the specs' formulas, a learned 2-D law.

Formulas: docs/specs/bdpo.md §1 (DDPM mean, σ_n² = β_n, no noise at n = 1) and §10 test 3;
the 8gaussians data: torchrl_sym/data/toy2d.py (8 centres at radius 4/1.414, σ = 0.5/1.414).
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import InteractionType, set_interaction_type
from torch import nn
from torchrl.data import Bounded
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ValueOperator

from torchrl_sym.data import sample_toy2d
from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    VPDiscreteSchedule,
    VPSDESchedule,
)
from torchrl_sym.objectives import DiffusionBehaviorLoss

S, A = 3, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread avoids OpenMP spin-waits under contention (~2× faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _actor(schedule=None, seed=0, **kwargs) -> DiffusionBehaviorActor:
    torch.manual_seed(seed)
    net = MLPNoisePredictor(S, A, hidden=(32, 32), activation=nn.SiLU)
    schedule = VPDiscreteSchedule(5, variance="beta") if schedule is None else schedule
    return DiffusionBehaviorActor(net, schedule, **kwargs).eval()


def _bdpo_chain(actor, obs, noise, clip=None):
    """BDPO's DDPM chain written from docs/specs/bdpo.md §1, independent of the actor's code."""
    s = actor.schedule
    big_n = s.num_steps
    b, a, abar = s.betas, s.alphas, s.alphas_cumprod
    x = noise[0]
    xs, eps_all = [x], []
    for n in range(big_n, 0, -1):
        eps = actor.network(obs, x, torch.full(x.shape[:-1], float(n)))
        x0 = (x - torch.sqrt(1 - abar[n]) * eps) / torch.sqrt(abar[n])
        if clip is not None:
            x0 = x0.clamp(*clip)
        mean = (torch.sqrt(abar[n - 1]) * b[n] * x0 + torch.sqrt(a[n]) * (1 - abar[n - 1]) * x) / (
            1 - abar[n]
        )
        x = mean + (torch.sqrt(b[n]) * noise[big_n - n + 1] if n > 1 else 0.0)
        xs.append(x)
        eps_all.append(eps)
    return torch.stack(xs), torch.stack(eps_all)


# ------------------------------------------------------------------------------ TorchRL contract
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
@pytest.mark.parametrize("batch", [(), (4,), (2, 3)])
def test_forward_maps_observation_to_action_for_any_batch_shape(sampler, batch):
    actor = _actor(sampler=sampler)
    assert actor.in_keys == ["observation"] and actor.out_keys == ["action"]
    td = TensorDict({"observation": torch.randn(*batch, S)}, batch_size=batch)
    out = actor(td)
    assert out is td and td["action"].shape == (*batch, A)
    assert actor(observation=torch.randn(*batch, S)).shape == (*batch, A)
    chain = actor.sample_chain(torch.randn(*batch, S), steps=3)
    assert chain.actions.shape == (4, *batch, A) and chain.epsilons.shape == (3, *batch, A)


def test_sample_chain_equals_bdpo_ddpm_formulas_with_explicit_noise():
    actor = _actor(action_low=-1.0, action_high=1.0, clip_sample=True)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randn(7, S, generator=gen)
    noise = torch.randn(6, 7, A, generator=gen)
    chain = actor.sample_chain(obs, noise=noise)
    xs, eps = _bdpo_chain(actor, obs, noise, clip=(-1.0, 1.0))
    xs[-1] = xs[-1].clamp(-1, 1)
    torch.testing.assert_close(chain.actions, xs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chain.epsilons, eps, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chain.times, torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0]))
    # the behavior ε at the stored (a_n, n) pairs reproduces the chain's ε (what BDPO's penalty reads)
    torch.testing.assert_close(
        actor.epsilon(obs, chain.actions[:-1], chain.times[:, None]), chain.epsilons
    )
    # the last noise draw is unused (no noise at n = 1): changing it changes nothing
    noise2 = noise.clone()
    noise2[-1] += 1.0
    torch.testing.assert_close(actor.sample_chain(obs, noise=noise2).actions, chain.actions)
    torch.testing.assert_close(actor.sample(obs, noise=noise), chain.actions[-1])


def test_reverse_kernel_mean_is_the_ddpm_posterior_and_the_eps_form():
    """BDPO §10 test 3: posterior-mean form = ε form when clipping is off."""
    actor = _actor()
    s = actor.schedule
    gen = torch.Generator().manual_seed(2)
    obs, x = torch.randn(16, S, generator=gen), 2 * torch.randn(16, A, generator=gen)
    for n in range(1, 6):
        mean, std = actor.reverse_kernel(obs, x, n)
        eps = actor.epsilon(obs, x, n)
        b, a, abar, abar_prev = (
            s.betas[n],
            s.alphas[n],
            s.alphas_cumprod[n],
            s.alphas_cumprod[n - 1],
        )
        x0 = (x - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
        posterior = (torch.sqrt(abar_prev) * b * x0 + torch.sqrt(a) * (1 - abar_prev) * x) / (
            1 - abar
        )
        eps_form = (x - b / torch.sqrt(1 - abar) * eps) / torch.sqrt(a)
        torch.testing.assert_close(mean, posterior, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(mean, eps_form, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(std, torch.sqrt(b).expand_as(x))  # variance="beta"
    # a tensor of steps gives each row its own kernel
    n = torch.randint(1, 6, (16,), generator=gen)
    mean, std = actor.reverse_kernel(obs, x, n)
    for i in range(16):
        m_i, s_i = actor.reverse_kernel(obs[i], x[i], int(n[i]))
        torch.testing.assert_close(mean[i], m_i, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(std[i], s_i)
    # the exact posterior option: std² = β_n (1 − ᾱ_{n−1})/(1 − ᾱ_n), 0 at n = 1
    exact = _actor(schedule=VPDiscreteSchedule(5, variance="posterior"))
    _, std1 = exact.reverse_kernel(obs, x, 1)
    _, std3 = exact.reverse_kernel(obs, x, 3)
    assert std1.abs().max() == 0
    expected = s.betas[3] * (1 - s.alphas_cumprod[2]) / (1 - s.alphas_cumprod[3])
    torch.testing.assert_close(std3, expected.sqrt().expand_as(x))


def test_reverse_step_is_the_chain_step_and_reparameterized():
    actor = _actor()
    gen = torch.Generator().manual_seed(3)
    obs, x = torch.randn(5, S, generator=gen), torch.randn(5, A, generator=gen)
    z = torch.randn(5, A, generator=gen)
    n = torch.tensor([1, 2, 3, 4, 5])
    prev, eps = actor.reverse_step(obs, x, n, noise=z)
    mean, std = actor.reverse_kernel(obs, x, n)
    mask = (n > 1).float().unsqueeze(-1)
    torch.testing.assert_close(prev, mean + mask * std * z)
    torch.testing.assert_close(eps, actor.epsilon(obs, x, n))
    # gradients reach the ε-network through the sampled a_{n−1}
    prev.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.network.parameters())


def test_ddim_with_eta_one_and_exact_posterior_equals_ddpm():
    actor = _actor(schedule=VPDiscreteSchedule(10, variance="posterior"))
    gen = torch.Generator().manual_seed(4)
    obs, noise = torch.randn(9, S, generator=gen), torch.randn(11, 9, A, generator=gen)
    for steps in (10, 4):
        ddpm = actor.sample_chain(obs, noise=noise[: steps + 1], steps=steps, sampler="ddpm")
        ddim = actor.sample_chain(
            obs, noise=noise[: steps + 1], steps=steps, sampler="ddim", eta=1.0
        )
        torch.testing.assert_close(ddim.actions, ddpm.actions, atol=1e-5, rtol=1e-5)


def test_ddim_eta_zero_is_deterministic_given_the_start():
    actor = _actor(sampler="ddim")
    obs = torch.randn(4, S)
    start = torch.randn(1, 4, A)
    a1 = actor.sample(obs, noise=torch.cat([start, torch.randn(5, 4, A)]))
    a2 = actor.sample(obs, noise=torch.cat([start, torch.randn(5, 4, A)]))
    torch.testing.assert_close(a1, a2)


def test_interaction_type_controls_forward_randomness():
    actor = _actor()
    td = TensorDict({"observation": torch.randn(6, S)}, [6])
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        d1 = actor(td.clone())["action"]
        d2 = actor(td.clone())["action"]
    torch.testing.assert_close(d1, d2)
    # DETERMINISTIC = the chain from a_N = 0 with no noise
    torch.testing.assert_close(
        d1, actor.sample_chain(td["observation"], deterministic=True).actions[-1]
    )
    zero = torch.zeros(6, 6, A)
    torch.testing.assert_close(d1, actor.sample(td["observation"], noise=zero))
    with set_interaction_type(InteractionType.MODE):
        torch.testing.assert_close(actor(td.clone())["action"], d1)
    with set_exploration_type(ExplorationType.RANDOM):
        r1, r2 = actor(td.clone())["action"], actor(td.clone())["action"]
    assert not torch.allclose(r1, r2)
    # unset interaction type samples (TorchRL's DiffusionActor semantics)
    assert not torch.allclose(actor(td.clone())["action"], actor(td.clone())["action"])
    # the explicit helpers ignore the interaction type (losses run under DETERMINISTIC)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert not torch.allclose(actor.sample(td["observation"]), actor.sample(td["observation"]))
    sampling = _actor(deterministic_mode="sample")
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert not torch.allclose(sampling(td.clone())["action"], sampling(td.clone())["action"])


def test_generator_makes_sampling_reproducible():
    actor = _actor()
    obs = torch.randn(3, S)
    a = actor.sample(obs, generator=torch.Generator().manual_seed(7))
    b = actor.sample(obs, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_actions_are_clipped_to_the_spec_bounds():
    spec = Bounded(low=-torch.ones(A), high=torch.tensor([1.0, 0.5]), shape=(A,))
    actor = _actor(spec=spec, clip_sample=True)
    with torch.no_grad():
        actor.network.body[-1].bias.fill_(-30.0)  # an ε-net that pushes x̂_0 far out of bounds
    obs = torch.randn(256, S)
    chain = actor.sample_chain(obs)
    act = chain.actions[-1]
    assert (act >= -1).all() and (act[..., 0] <= 1).all() and (act[..., 1] <= 0.5).all()
    assert (act[..., 1] == 0.5).any()
    # without clip_sample the chain runs unclipped and only the returned action is clamped
    free = _actor(spec=spec)
    with torch.no_grad():
        free.network.body[-1].bias.fill_(-30.0)
    free_chain = free.sample_chain(obs)
    assert free_chain.actions[-2].abs().max() > 5 and free_chain.actions[-1][..., 1].max() <= 0.5
    with pytest.raises(ValueError, match="needs action bounds"):
        _actor(clip_sample=True)


def test_add_noise_epsilon_and_score():
    actor = _actor(schedule=VPSDESchedule())
    a0, noise = torch.randn(5, A), torch.randn(5, A)
    t = torch.tensor([0.01, 0.1, 0.5, 0.9, 1.0])
    a_t, returned = actor.add_noise(a0, t, noise)
    alpha, sigma = VPSDESchedule().marginal(t)
    assert returned is noise
    torch.testing.assert_close(a_t, alpha[:, None] * a0 + sigma[:, None] * noise)
    obs = torch.randn(5, S)
    torch.testing.assert_close(
        actor.score(obs, a_t, t), -actor.epsilon(obs, a_t, t) / sigma[:, None]
    )
    # a scalar time broadcasts; fresh noise is drawn when none is given
    a_t2, noise2 = actor.add_noise(a0, 0.5)
    torch.testing.assert_close(a_t2, alpha[2] * a0 + sigma[2] * noise2)
    discrete = _actor()
    a_n, noise3 = discrete.add_noise(a0, torch.tensor([1, 2, 3, 4, 5]))
    abar = discrete.schedule.alphas_cumprod[1:6, None]
    torch.testing.assert_close(a_n, abar.sqrt() * a0 + (1 - abar).sqrt() * noise3)


def test_continuous_model_is_sampled_on_a_derived_grid():
    actor = _actor(schedule=VPSDESchedule(), num_steps=8)
    obs = torch.randn(3, S)
    chain = actor.sample_chain(obs)
    assert chain.actions.shape == (9, 3, A)
    torch.testing.assert_close(chain.times, torch.linspace(1.0, 0.125, 8))
    _, std = actor.reverse_kernel(obs, chain.actions[0], 8)
    g = actor.grid()
    assert std[0, 0].item() == pytest.approx(math.sqrt(g.posterior_var[8]), rel=1e-6)


# ------------------------------------------------------------------------ several samples, critic
def test_num_samples_and_argmax_critic_selection():
    actor = _actor()
    target = torch.tensor([0.3, -0.2])

    def critic(obs, action):
        return -((action - target) ** 2).sum(-1, keepdim=True)

    obs = torch.randn(4, S)
    gen_seed = 11
    all_samples = actor.sample(
        obs, num_samples=8, generator=torch.Generator().manual_seed(gen_seed)
    )
    assert all_samples.shape == (4, 8, A)
    best = actor.sample(
        obs, num_samples=8, critic=critic, generator=torch.Generator().manual_seed(gen_seed)
    )
    expected = all_samples[torch.arange(4), ((all_samples - target) ** 2).sum(-1).argmin(-1)]
    torch.testing.assert_close(best, expected)
    # the forward path with a critic, also for a TensorDict critic (TorchRL ValueOperator)
    actor.num_samples, actor.critic = 8, critic
    td = TensorDict({"observation": obs}, [4])
    assert actor(td)["action"].shape == (4, A)
    q_net = nn.Linear(S + A, 1)
    actor.critic = ValueOperator(
        lambda o, a: q_net(torch.cat([o, a], -1)), in_keys=["observation", "action"]
    )
    assert actor(td)["action"].shape == (4, A)
    assert actor(observation=obs[0]).shape == (A,)  # no batch dim
    # the critic is not part of the actor's parameters
    assert not any(p is q_net.weight for p in actor.parameters())
    assert all("critic" not in name for name, _ in actor.named_parameters())
    actor.critic = None
    with pytest.raises(ValueError, match="needs a critic"):
        actor(td)


def test_critic_with_wrong_output_shape_is_rejected():
    actor = _actor()
    with pytest.raises(ValueError, match="reduce an ensemble"):
        actor.sample(torch.randn(4, S), num_samples=3, critic=lambda o, a: torch.zeros(2, 4, 3, 1))


# ------------------------------------------------------------------------------------ vmap, compile
def test_vmap_over_stacked_actor_parameters_matches_individual_calls():
    actors = [_actor(seed=i) for i in range(3)]
    params = TensorDict.from_modules(*actors, as_module=True)
    base = _actor(seed=99)
    gen = torch.Generator().manual_seed(5)
    obs, x = torch.randn(4, S, generator=gen), torch.randn(4, A, generator=gen)
    n = torch.randint(1, 6, (4,), generator=gen)
    noise = torch.randn(3, 6, 4, A, generator=gen)

    def call(p, obs, x, n, noise):
        with p.to_module(base):
            chain = base.sample_chain(obs, noise=noise)
            return base.epsilon(obs, x, n), base.reverse_kernel(obs, x, n)[0], chain.actions

    eps, mean, chains = torch.vmap(call, (0, None, None, None, 0))(params, obs, x, n, noise)
    for i, actor in enumerate(actors):
        torch.testing.assert_close(eps[i], actor.epsilon(obs, x, n), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(
            mean[i], actor.reverse_kernel(obs, x, n)[0], atol=1e-6, rtol=1e-6
        )
        torch.testing.assert_close(
            chains[i], actor.sample_chain(obs, noise=noise[i]).actions, atol=1e-5, rtol=1e-5
        )

    def draw(p, obs):
        with p.to_module(base):
            return base.sample(obs)

    # the actor is registered as a random module: losses vmap it with randomness="different"
    assert DiffusionBehaviorLoss(actors[0]).vmap_randomness == "different"
    samples = torch.vmap(draw, (0, None), randomness="different")(params, obs)
    assert samples.shape == (3, 4, A) and not torch.allclose(samples[0], samples[1])


def test_sampler_compiles_to_one_graph_and_matches_eager():
    actor = _actor(action_low=-1.0, action_high=1.0, clip_sample=True)
    obs, noise = torch.randn(8, S), torch.randn(6, 8, A)

    def chain(obs, noise):
        return actor.sample_chain(obs, noise=noise)

    torch._dynamo.reset()
    compiled = torch.compile(chain, fullgraph=True)
    with torch.no_grad():
        out, ref = compiled(obs, noise), chain(obs, noise)
    torch.testing.assert_close(out.actions, ref.actions, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.epsilons, ref.epsilons, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------- a learned 2-D law
CENTRES = (
    4.0
    * torch.tensor(
        [
            [math.cos(math.pi / 2 + k * math.pi / 4), math.sin(math.pi / 2 + k * math.pi / 4)]
            for k in range(8)
        ]
    )
    / 1.414
)
# Mean distance of an 8gaussians point to its nearest centre: a Rayleigh mean σ√(π/2) with
# σ = 0.5/1.414, i.e. 0.443. Samples blurred to σ = 0.7/1.414 score about 0.60, so 0.6 rejects a
# visibly too-wide model while leaving the 3000-step model (about 0.45) room.
DATA_MODE_DISTANCE = 0.5 / 1.414 * math.sqrt(math.pi / 2)
MODE_DISTANCE_BOUND = 0.6
# Multi-scale Gaussian-kernel MMD² (bandwidths 0.25..2) between 2000-point sets: two data draws
# give 0 ± 0.0005; the data without one of its 8 modes gives 0.008 to 0.011 and a Gaussian with
# the data's mean and covariance about 0.035, while the trained model scores 0.0005 to 0.002
# (50 steps) and 0.003 (DDIM, 10 steps). 0.004 accepts only models that put mass on every mode in
# the right proportions.
MMD_BOUND = 0.004


def _mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths=(0.25, 0.5, 1.0, 2.0)) -> float:
    """Unbiased MMD² with the mean of Gaussian kernels of the given bandwidths."""
    n, m = len(x), len(y)
    dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    total = 0.0
    for h in bandwidths:
        kxx, kyy, kxy = (torch.exp(-d / (2 * h * h)) for d in (dxx, dyy, dxy))
        total += (kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1)) - 2 * kxy.mean()
    return float(total) / len(bandwidths)


def _modes(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    dist, k = torch.cdist(x, CENTRES).min(-1)
    return torch.bincount(k, minlength=8).float() / len(x), dist.mean().item()


def _train_toy(actor: DiffusionBehaviorActor, steps: int, lr: float = 2e-3) -> None:
    data, _ = sample_toy2d("8gaussians", 20_000, seed=0)
    loss = DiffusionBehaviorLoss(actor, action_clip=None)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps, eta_min=1e-4)
    gen = torch.Generator().manual_seed(0)
    obs = torch.zeros(512, 1)
    actor.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data), (512,), generator=gen)
        out = loss(TensorDict({"observation": obs, "action": data[idx]}, [512]))
        optim.zero_grad()
        out["loss_diffusion"].backward()
        optim.step()
        sched.step()
    actor.eval()


@pytest.fixture(scope="module")
def toy_actor():
    """BDPO's 2-D setting (N = 50 VP steps, unclipped) on 8gaussians; about 10 s on one core."""
    torch.manual_seed(0)
    net = MLPNoisePredictor(1, 2, hidden=(128, 128, 128), activation=nn.SiLU, init="default")
    actor = DiffusionBehaviorActor(net, VPDiscreteSchedule(50))
    _train_toy(actor, 3000)
    return actor


@pytest.fixture(scope="module")
def held_out():
    return sample_toy2d("8gaussians", 2000, seed=1)[0]


def test_learned_samples_cover_all_eight_modes(toy_actor, held_out):
    with torch.no_grad():
        x = toy_actor.sample(torch.zeros(2000, 1), generator=torch.Generator().manual_seed(3))
    freq, distance = _modes(x)
    assert freq.min() > 0.05 and freq.max() < 0.20, freq
    assert DATA_MODE_DISTANCE == pytest.approx(0.443, abs=1e-3)
    assert distance < MODE_DISTANCE_BOUND
    assert _mmd2(x, held_out) < MMD_BOUND
    # the bounds separate: a fresh data draw passes them, a 7-mode copy of the data does not
    fresh = sample_toy2d("8gaussians", 2000, seed=2)[0]
    assert _mmd2(fresh, held_out) < MMD_BOUND / 5
    seven = fresh[torch.cdist(fresh, CENTRES).argmin(-1) != 0]
    assert _mmd2(seven, held_out) > 1.5 * MMD_BOUND


def test_ddim_and_ddpm_on_all_steps_agree_in_distribution(toy_actor, held_out):
    obs = torch.zeros(4000, 1)
    with torch.no_grad():
        ddpm = toy_actor.sample(obs, sampler="ddpm", generator=torch.Generator().manual_seed(5))
        ddim = toy_actor.sample(obs, sampler="ddim", generator=torch.Generator().manual_seed(6))
    # means: standard error of a difference ≈ 2.9·√(2/4000) = 0.065 per coordinate
    assert (ddpm.mean(0) - ddim.mean(0)).abs().max() < 0.25
    cov_p, cov_i = torch.cov(ddpm.T), torch.cov(ddim.T)
    assert (cov_p - cov_i).abs().max() < 0.1 * cov_p.diagonal().mean()
    # mode frequencies: standard error of a difference ≈ 0.0074
    assert (_modes(ddpm)[0] - _modes(ddim)[0]).abs().max() < 0.04
    assert _mmd2(ddpm[:2000], ddim[:2000]) < MMD_BOUND
    assert _mmd2(ddim[:2000], held_out) < MMD_BOUND


def test_fewer_steps_at_inference_without_retraining(toy_actor):
    with torch.no_grad():
        x = toy_actor.sample(
            torch.zeros(2000, 1),
            steps=10,
            sampler="ddim",
            generator=torch.Generator().manual_seed(8),
        )
    freq, distance = _modes(x)
    assert freq.min() > 0.05 and freq.max() < 0.20
    assert distance < MODE_DISTANCE_BOUND


@pytest.mark.slow
def test_continuous_vpsde_model_learns_eight_gaussians(held_out):
    """SRPO's continuous VP-SDE model, sampled on a 50-point DDPM / DDIM grid (~15 s)."""
    torch.manual_seed(0)
    net = MLPNoisePredictor(
        1,
        2,
        hidden=(128, 128, 128),
        activation=nn.SiLU,
        init="default",
        time_embedding="fourier",
        fourier_scale=4.0,
    )
    actor = DiffusionBehaviorActor(net, VPSDESchedule(), num_steps=50)
    _train_toy(actor, 3000)
    for sampler in ("ddpm", "ddim"):
        with torch.no_grad():
            x = actor.sample(
                torch.zeros(2000, 1), sampler=sampler, generator=torch.Generator().manual_seed(9)
            )
        freq, distance = _modes(x)
        assert freq.min() > 0.05 and freq.max() < 0.20
        assert distance < MODE_DISTANCE_BOUND
        assert _mmd2(x, held_out) < MMD_BOUND
