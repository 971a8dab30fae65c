"""DiffusionBehaviorLoss: the ε-MSE by hand, EMA target, gradient isolation, Gaussian score recovery.

Gaussian tests: docs/specs/srpo.md §10 test 2 and docs/specs/bdpo.md §10 test 4.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from torchrl_sym.diffusion import (
    DiffusionBehaviorActor,
    MLPNoisePredictor,
    ResidualMLPNoisePredictor,
    VPDiscreteSchedule,
    VPSDESchedule,
)
from torchrl_sym.objectives import DiffusionBehaviorLoss

S, A, B = 3, 2, 32
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread avoids OpenMP spin-waits under contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _actor(schedule=None, seed=0, **net_kwargs) -> DiffusionBehaviorActor:
    torch.manual_seed(seed)
    net = MLPNoisePredictor(S, A, hidden=(32, 32), activation=nn.SiLU, **net_kwargs)
    return DiffusionBehaviorActor(net, VPDiscreteSchedule(5) if schedule is None else schedule)


def _batch(seed=0) -> TensorDict:
    gen = torch.Generator().manual_seed(seed)
    action = 1.5 * torch.randn(B, A, generator=gen)  # some |a| > 1: the clip matters
    return TensorDict({"observation": torch.randn(B, S, generator=gen), "action": action}, [B])


# ------------------------------------------------------------------------------ the loss by hand
def test_discrete_loss_equals_the_eps_mse_by_hand():
    actor = _actor()
    loss = DiffusionBehaviorLoss(actor)
    td = _batch()
    torch.manual_seed(3)
    out = loss(td)
    torch.manual_seed(3)
    n = torch.randint(1, 6, (B,))
    noise = torch.randn(B, A)
    a0 = td["action"].clamp(-(1 - 1e-5), 1 - 1e-5)
    abar = actor.schedule.alphas_cumprod[n].unsqueeze(-1)
    a_n = abar.sqrt() * a0 + (1 - abar).sqrt() * noise
    eps = actor.network(td["observation"], a_n, n.float())
    torch.testing.assert_close(out["loss_diffusion"], ((eps - noise) ** 2).mean())
    torch.testing.assert_close(out["eps_rms"], eps.pow(2).mean().sqrt().detach())
    assert not out["eps_rms"].requires_grad and out["loss_diffusion"].requires_grad
    assert set(out.keys()) == set(loss.out_keys) == {"loss_diffusion", "eps_rms"}


def test_continuous_loss_draws_t_uniformly_in_range_and_sums_over_actions():
    actor = _actor(VPSDESchedule(), time_embedding="fourier")
    loss = DiffusionBehaviorLoss(
        actor, t_min=0.02, t_max=0.98, action_clip=None, action_reduction="sum"
    )
    td = _batch()
    torch.manual_seed(4)
    out = loss(td)
    torch.manual_seed(4)
    t = 0.02 + 0.96 * torch.rand(B)
    noise = torch.randn(B, A)
    alpha, sigma = VPSDESchedule().marginal(t)
    a_t = alpha[:, None] * td["action"] + sigma[:, None] * noise
    eps = actor.network(td["observation"], a_t, t)
    torch.testing.assert_close(out["loss_diffusion"], ((eps - noise) ** 2).sum(-1).mean())
    assert loss.time == "continuous" and loss.t_max == 0.98


def test_reductions_keys_and_validation():
    actor = _actor()
    td = _batch()
    per_sample = DiffusionBehaviorLoss(actor, reduction="none")
    torch.manual_seed(0)
    values = per_sample(td)["loss_diffusion"]
    assert values.shape == (B,)
    torch.manual_seed(0)
    summed = DiffusionBehaviorLoss(actor, action_reduction="sum")(td)["loss_diffusion"]
    torch.testing.assert_close(summed, A * values.mean())
    renamed = DiffusionBehaviorLoss(actor)
    renamed.set_keys(observation="obs", action=("data", "act"))
    td2 = TensorDict({"obs": td["observation"], "data": {"act": td["action"]}}, [B])
    torch.manual_seed(0)
    torch.testing.assert_close(renamed(td2)["loss_diffusion"], values.mean())
    assert renamed.in_keys == ["obs", ("data", "act")]
    with pytest.raises(ValueError, match="does not match"):
        DiffusionBehaviorLoss(actor, time="continuous")
    with pytest.raises(TypeError, match="DiffusionBehaviorActor"):
        DiffusionBehaviorLoss(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decay"):
        DiffusionBehaviorLoss(actor, ema=0.005 - 1)
    with pytest.raises(RuntimeError, match="no EMA"):
        DiffusionBehaviorLoss(actor).make_ema_updater()


def test_keyword_tensors_give_the_out_keys_of_the_tensordict_call():
    loss = DiffusionBehaviorLoss(_actor())
    td = _batch()
    assert loss.out_keys == ["loss_diffusion", "eps_rms"]
    torch.manual_seed(0)
    value, eps_rms = loss(observation=td["observation"], action=td["action"])
    torch.manual_seed(0)
    ref = loss(td)
    torch.testing.assert_close(value, ref["loss_diffusion"], rtol=0, atol=0)
    torch.testing.assert_close(eps_rms, ref["eps_rms"], rtol=0, atol=0)
    value.backward()  # the keyword call keeps the graph to the ε-network
    assert all(p.grad is not None for p in loss.actor_network.network.parameters())
    # re-keyed: nested keys become keyword names joined by "_"
    loss.set_keys(observation="obs", action=("data", "act"))
    torch.manual_seed(0)
    renamed, _ = loss(obs=td["observation"], data_act=td["action"])
    torch.testing.assert_close(renamed, ref["loss_diffusion"], rtol=0, atol=0)


# ------------------------------------------------------------------------------ gradients and EMA
def test_only_the_eps_network_receives_gradients():
    actor = _actor(VPSDESchedule(), time_embedding="fourier")
    loss = DiffusionBehaviorLoss(actor, ema=0.99)
    loss.make_ema_updater()
    loss(_batch())["loss_diffusion"].backward()
    trainable = dict(actor.network.named_parameters())
    assert trainable and all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values()
    )
    params = loss.actor_network_params
    for key, value in params.items(True, True):
        if isinstance(value, nn.Parameter):
            assert key[0] == "network"
    for value in loss.target_actor_network_params.values(True, True):
        assert not value.requires_grad and value.grad is None
    # the schedule and the Fourier frequencies are buffers, not parameters
    names = {name for name, _ in loss.named_parameters()}
    assert not any("schedule" in n or "time_embedding.weight" in n for n in names)


def test_ema_target_moves_as_an_exponential_average():
    decay = 0.9
    actor = _actor()
    loss = DiffusionBehaviorLoss(actor, ema=decay)
    updater = loss.make_ema_updater()
    optim = torch.optim.SGD(loss.actor_network_params.values(True, True), lr=0.5)
    key = ("network", "body", "0", "weight")
    target = loss.target_actor_network_params.get(key).clone()
    torch.testing.assert_close(target, loss.actor_network_params.get(key).detach())
    for step in range(3):
        optim.zero_grad()
        loss(_batch(step))["loss_diffusion"].backward()
        optim.step()
        online = loss.actor_network_params.get(key).detach().clone()
        updater.step()
        target = decay * target + (1 - decay) * online
        torch.testing.assert_close(loss.target_actor_network_params.get(key), target)
    assert not torch.allclose(target, online)
    # sampling with the EMA weights uses them; outside the block the online weights are back
    obs, x = torch.randn(4, S), torch.randn(4, A)
    online_eps = actor.epsilon(obs, x, 3)
    with loss.ema_weights() as ema_actor:
        ema_eps = ema_actor.epsilon(obs, x, 3)
        assert torch.equal(
            ema_actor.network.body[0].weight, loss.target_actor_network_params.get(key)
        )
    assert not torch.allclose(ema_eps, online_eps)
    torch.testing.assert_close(actor.epsilon(obs, x, 3), online_eps)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compiled_update_matches_eager(backend):
    """Loss + backward + SGD step + EMA under torch.compile equal eager (same RNG draws).

    ``aot_eager`` checks the graph capture and AOT autograd in a few seconds; ``inductor`` (slow,
    about 35 s cold on two cores) also generates the kernels, with eager RNG for an exact match.
    """
    results = []
    for compile_it in (False, True):
        actor = _actor()
        loss = DiffusionBehaviorLoss(actor, ema=0.99)
        updater = loss.make_ema_updater()
        optim = torch.optim.SGD(loss.actor_network_params.values(True, True), lr=1e-2)

        def update(td, loss=loss, optim=optim, updater=updater):
            out = loss(td)
            out["loss_diffusion"].backward()
            optim.step()
            optim.zero_grad(set_to_none=False)
            updater.step()
            return out.detach()

        if compile_it:
            torch._dynamo.reset()
            update = torch.compile(update, backend=backend)
        torch.manual_seed(0)
        with torch._inductor.config.patch(fallback_random=True):
            losses = [update(_batch(i))["loss_diffusion"] for i in range(3)]
        results.append((torch.stack(losses), loss.target_actor_network_params.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ Gaussian behavior: ε*
M, C = 0.3, 0.5  # behavior N(m, c²)


def _eps_star(x, alpha, sigma):
    """ε*(x_t) = σ (x_t − α m)/(α² c² + σ²): the exact noise predictor of Gaussian data."""
    return sigma * (x - alpha * M) / (alpha**2 * C**2 + sigma**2)


@pytest.mark.parametrize("schedule", [VPSDESchedule(), VPDiscreteSchedule(5)])
def test_exact_eps_is_minus_sigma_times_the_marginal_score(schedule):
    times = [0.001, 0.1, 0.5, 0.9, 1.0] if not schedule.discrete else [1, 2, 3, 4, 5]
    x = torch.linspace(-3, 3, 41, dtype=torch.float64, requires_grad=True)
    for time in times:
        alpha, sigma = (v.double() for v in schedule.marginal(torch.tensor(time)))
        marginal = torch.distributions.Normal(alpha * M, torch.sqrt(alpha**2 * C**2 + sigma**2))
        (score,) = torch.autograd.grad(marginal.log_prob(x).sum(), x)
        torch.testing.assert_close(
            -_eps_star(x, alpha, sigma) / sigma, score, rtol=1e-12, atol=1e-12
        )
    # and ε* minimizes the denoising loss: its excess MSE over a shifted predictor is positive
    alpha, sigma = (v.double() for v in schedule.marginal(torch.tensor(times[2])))
    gen = torch.Generator().manual_seed(0)
    a0 = M + C * torch.randn(200_000, generator=gen, dtype=torch.float64)
    z = torch.randn(200_000, generator=gen, dtype=torch.float64)
    xt = alpha * a0 + sigma * z
    best = ((_eps_star(xt, alpha, sigma) - z) ** 2).mean()
    assert best < ((_eps_star(xt, alpha, sigma) + 0.05 - z) ** 2).mean()
    assert best < ((1.05 * _eps_star(xt, alpha, sigma) - z) ** 2).mean()


def _fit_gaussian(actor: DiffusionBehaviorActor, steps: int = 2000) -> None:
    loss = DiffusionBehaviorLoss(actor, action_clip=None)
    optim = torch.optim.Adam(loss.actor_network_params.values(True, True), lr=3e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps, eta_min=1e-5)
    gen = torch.Generator().manual_seed(1)
    obs = torch.zeros(1024, 1)
    for _ in range(steps):
        action = M + C * torch.randn(1024, 1, generator=gen)
        out = loss(TensorDict({"observation": obs, "action": action}, [1024]))
        optim.zero_grad()
        out["loss_diffusion"].backward()
        optim.step()
        sched.step()
    actor.eval()


def _rms_error(actor, time) -> tuple[float, float]:
    """RMS of (ε̂ − ε*) and the relative RMS error of the score, over x_t from the marginal."""
    alpha, sigma = actor.schedule.marginal(torch.tensor(time))
    gen = torch.Generator().manual_seed(2)
    x = alpha * M + torch.sqrt(alpha**2 * C**2 + sigma**2) * torch.randn(4096, 1, generator=gen)
    obs = torch.zeros(1)
    with torch.no_grad():
        eps_err = actor.epsilon(obs, x, time) - _eps_star(x, alpha, sigma)
        true_score = -_eps_star(x, alpha, sigma) / sigma
        score_err = actor.score(obs, x, time) - true_score
    return eps_err.pow(2).mean().sqrt().item(), (score_err.norm() / true_score.norm()).item()


def test_trained_continuous_model_matches_the_exact_eps():
    """SRPO §10 test 2: within 0.05 RMS at t ∈ {0.1, 0.5, 0.9} (about 6 s)."""
    torch.manual_seed(0)
    net = MLPNoisePredictor(
        1,
        1,
        hidden=(64, 64),
        activation=nn.SiLU,
        init="default",
        time_embedding="fourier",
        fourier_scale=4.0,
    )
    actor = DiffusionBehaviorActor(net, VPSDESchedule())
    _fit_gaussian(actor)
    for t in (0.1, 0.5, 0.9):
        eps_rms, score_rel = _rms_error(actor, t)
        assert eps_rms < 0.05, (t, eps_rms)
        assert score_rel < 0.1, (t, score_rel)


def test_trained_discrete_model_matches_the_exact_eps():
    """BDPO §10 test 4 on the N = 5 VP schedule, every step n (about 6 s)."""
    torch.manual_seed(0)
    net = MLPNoisePredictor(1, 1, hidden=(64, 64), activation=nn.SiLU, init="default")
    actor = DiffusionBehaviorActor(net, VPDiscreteSchedule(5))
    _fit_gaussian(actor)
    for n in range(1, 6):
        eps_rms, score_rel = _rms_error(actor, n)
        assert eps_rms < 0.05, (n, eps_rms)
        assert score_rel < 0.1, (n, score_rel)


@pytest.mark.slow
def test_srpo_residual_network_matches_the_exact_eps():
    """The SRPO architecture itself (LN-ResNet, Mish, dropout 0.1, Fourier scale 30), small width."""
    torch.manual_seed(0)
    net = ResidualMLPNoisePredictor(1, 1, hidden_dim=64, num_blocks=2, expansion=2)
    actor = DiffusionBehaviorActor(net, VPSDESchedule())
    _fit_gaussian(actor, steps=3000)
    for t in (0.1, 0.5, 0.9):
        assert _rms_error(actor, t)[0] < 0.05


# ------------------------------------------------------------------------------ docs example
def test_docs_torchrl_example_runs():
    text = (ROOT / "docs" / "diffusion.md").read_text()
    blocks = [
        b
        for b in re.findall(r"```python\n(.*?)```", text, re.S)
        if "make_offline_replay_buffer" in b
    ]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/diffusion.md", "exec"), namespace)
    assert namespace["actions"].shape == (256, 2)


def test_benchmark_quick_mode_prints_the_table():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_diffusion.py"),
            *("--quick", "--no-compile", "--threads", "1", "--steps", "5", "--min-time", "0.05"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| model | measure | eager | compiled |" and len(rows) == 1 + 2 * 2
    rates = [float(row.split("|")[3].replace(",", "")) for row in rows[1:]]
    assert all(rate > 0 for rate in rates)
