"""Network builders (torchrl_sym.models): the IQL paper's Gaussian actor, Q(s, a) and V(s).

The actor is ``π(a|s) = N(tanh(μ(s)), diag(exp(clip(log σ, −5, 2))²))`` with a state-independent
``log σ`` (docs/specs/baselines.md §1), wrapped as a TorchRL ProbabilisticActor.
"""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from torchrl_sym.models import (
    Mish,
    ReLU,
    TanhMeanGaussian,
    _CatSequential,
    make_gaussian_actor,
    make_qvalue,
    make_value,
)

OBS, ACT = 17, 6


def _gaussian(actor) -> TanhMeanGaussian:
    module = actor.module[0].module
    assert isinstance(module, TanhMeanGaussian)
    return module


def _obs(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, OBS, generator=torch.Generator().manual_seed(seed))


def test_deterministic_action_is_tanh_of_the_mean_network():
    torch.manual_seed(0)
    actor = make_gaussian_actor(OBS, ACT, [64, 64])
    net = _gaussian(actor)
    with torch.no_grad():
        net.mean[-1].weight.mul_(20.0)  # push some means into tanh's saturated range
        net.log_std.fill_(0.5)
    obs = _obs(128)
    expected = torch.tanh(net.mean(obs))
    with torch.no_grad():
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            a1 = actor(TensorDict({"observation": obs}, [128]))["action"]
            a2 = actor(TensorDict({"observation": obs}, [128]))["action"]
        # outside any context the actor's default interaction type is also deterministic (eval)
        a3 = actor(TensorDict({"observation": obs}, [128]))["action"]
    assert torch.equal(a1, expected)
    assert torch.equal(a2, expected) and torch.equal(a3, expected)
    assert a1.shape == (128, ACT)
    assert a1.abs().max() <= 1.0 and a1.abs().max() > 0.99


def test_random_samples_have_mean_tanh_mu_and_std_exp_log_sigma():
    torch.manual_seed(1)
    actor = make_gaussian_actor(OBS, ACT, [32])
    net = _gaussian(actor)
    with torch.no_grad():
        net.log_std.fill_(-1.0)
        net.mean[-1].weight.mul_(5.0)  # |μ| of order 1, where tanh(μ) and μ differ
    n, rows = 20000, 3
    obs = _obs(rows, seed=1)
    td = TensorDict({"observation": obs.expand(n, rows, OBS)}, [n, rows])
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        actions = actor(td)["action"]
    mu = net.mean(obs).detach()
    target_mean = torch.tanh(mu)
    assert (mu - target_mean).abs().max() > 0.1
    sigma = math.exp(-1.0)
    # standard errors: σ/√n ≈ 0.0026 for the mean, σ/√(2n) ≈ 0.0018 for the std; allow ~5 of them
    torch.testing.assert_close(actions.mean(0), target_mean, rtol=0, atol=0.013)
    torch.testing.assert_close(actions.std(0), torch.full((rows, ACT), sigma), rtol=0, atol=0.009)
    # samples are not squashed (a Gaussian around tanh(μ) leaves [−1, 1] now and then), and the
    # draws are independent across the action dimensions
    assert (actions.abs() > 1).any()
    centred = (actions - target_mean).reshape(n * rows, ACT)
    corr = torch.corrcoef(centred.T)
    assert (corr - torch.eye(ACT)).abs().max() < 0.03


@pytest.mark.parametrize(
    ("log_std", "expected"),
    [
        ([10.0, -10.0, 0.0], [2.0, -5.0, 0.0]),
        ([2.0, -5.0, 1.5], [2.0, -5.0, 1.5]),
        ([2.5, -4.5, -5.5], [2.0, -4.5, -5.0]),
    ],
)
def test_log_std_is_clipped_to_bounds(log_std, expected):
    actor = make_gaussian_actor(4, 3, [16])
    with torch.no_grad():
        _gaussian(actor).log_std.copy_(torch.tensor(log_std))
    td = TensorDict({"observation": _obs(5)[:, :4]}, [5])
    with torch.no_grad():
        dist = actor.get_dist(td)
        out = actor(td)
    expected_scale = torch.tensor(expected).exp().expand(5, 3)
    torch.testing.assert_close(dist.base_dist.scale, expected_scale, rtol=1e-7, atol=0)
    torch.testing.assert_close(out["scale"], expected_scale, rtol=1e-7, atol=0)


def test_log_std_bounds_are_configurable_and_state_independent():
    actor = make_gaussian_actor(4, 2, [16], log_std_bounds=(-2.0, 0.5), log_std_init=-0.3)
    net = _gaussian(actor)
    torch.testing.assert_close(net.log_std.detach(), torch.full((2,), -0.3))
    with torch.no_grad():
        net.log_std.copy_(torch.tensor([-3.0, 1.0]))
    td = TensorDict({"observation": torch.randn(7, 4)}, [7])
    with torch.no_grad():
        scale = actor(td)["scale"]
    torch.testing.assert_close(
        scale, torch.tensor([-2.0, 0.5]).exp().expand(7, 2), rtol=1e-7, atol=0
    )


def test_log_prob_is_independent_normal_summed_over_action_dims():
    torch.manual_seed(2)
    actor = make_gaussian_actor(OBS, ACT, [64, 64])
    net = _gaussian(actor)
    with torch.no_grad():
        net.log_std.copy_(torch.linspace(-1.5, 0.7, ACT))
    obs = _obs(50, seed=2)
    # dataset actions, inside and outside [−1, 1]: the distribution is not squashed
    actions = torch.rand(50, ACT, generator=torch.Generator().manual_seed(3)) * 2.4 - 1.2
    td = TensorDict({"observation": obs}, [50])
    dist = actor.get_dist(td)
    log_prob = dist.log_prob(actions)
    loc = torch.tanh(net.mean(obs))
    scale = net.log_std.exp()
    expected = torch.distributions.Normal(loc, scale).log_prob(actions).sum(-1)
    assert log_prob.shape == (50,)
    torch.testing.assert_close(log_prob, expected, rtol=1e-6, atol=1e-6)
    # written out: −½ Σ ((a − loc)/σ)² − Σ log σ − (d/2) log 2π
    z = (actions - loc) / scale
    by_hand = -0.5 * (z**2).sum(-1) - scale.log().sum() - 0.5 * ACT * math.log(2 * math.pi)
    torch.testing.assert_close(log_prob, by_hand, rtol=1e-5, atol=1e-5)
    # and it carries gradient to both the mean network and log σ
    log_prob.sum().backward()
    assert net.log_std.grad is not None and net.log_std.grad.abs().min() > 0
    assert net.mean[0].weight.grad is not None and net.mean[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("layer_norm", [False, True])
def test_qvalue_and_value_shapes(layer_norm):
    q = make_qvalue(OBS, ACT, [32, 32], layer_norm=layer_norm)
    v = make_value(OBS, [32, 32], layer_norm=layer_norm)
    td = TensorDict({"observation": _obs(9), "action": torch.rand(9, ACT) * 2 - 1}, [9])
    td = v(q(td))
    assert td["state_action_value"].shape == (9, 1)
    assert td["state_value"].shape == (9, 1)
    # batched leading dims pass through
    td2 = TensorDict(
        {"observation": torch.randn(3, 4, OBS), "action": torch.randn(3, 4, ACT)}, [3, 4]
    )
    assert q(td2)["state_action_value"].shape == (3, 4, 1)
    assert v(td2)["state_value"].shape == (3, 4, 1)
    # Q depends on the action
    td3 = td.clone()
    td3["action"] = -td["action"]
    assert not torch.allclose(q(td3)["state_action_value"], td["state_action_value"])


def test_layer_norm_option_adds_one_layer_norm_per_hidden_layer():
    for make in (
        lambda ln: make_qvalue(OBS, ACT, [64, 32], layer_norm=ln),
        lambda ln: make_value(OBS, [64, 32], layer_norm=ln),
    ):
        plain = [m for m in make(False).modules() if isinstance(m, nn.LayerNorm)]
        normed = [m for m in make(True).modules() if isinstance(m, nn.LayerNorm)]
        assert plain == []
        assert [m.normalized_shape for m in normed] == [(64,), (32,)]
        # Linear → LayerNorm → ReLU per hidden layer (models.ReLU: nn.ReLU whose compiled form is
        # (x + |x|)/2), then a scalar head, in models._CatSequential (the one BDPO's critics use)
        net = make(True).module
        assert type(net) is _CatSequential
        kinds = [type(m) for m in net.children()]
        assert kinds == [
            nn.Linear,
            nn.LayerNorm,
            ReLU,
            nn.Linear,
            nn.LayerNorm,
            ReLU,
            nn.Linear,
        ]
        assert issubclass(ReLU, nn.ReLU)


def test_layer_norm_normalizes_hidden_features():
    v = make_value(OBS, [64], layer_norm=True)
    lin, ln = v.module[0], v.module[1]
    with torch.no_grad():
        h = ln(lin(_obs(10) * 100.0))
    torch.testing.assert_close(h.mean(-1), torch.zeros(10), rtol=0, atol=1e-5)
    torch.testing.assert_close(h.std(-1, unbiased=False), torch.ones(10), rtol=0, atol=1e-3)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_for_2x256():
    h = 256
    # actor: μ MLP obs→256→256→act, plus the state-independent log σ (one per action dim)
    actor_count = (OBS * h + h) + (h * h + h) + (h * ACT + ACT) + ACT
    q_count = ((OBS + ACT) * h + h) + (h * h + h) + (h + 1)
    v_count = (OBS * h + h) + (h * h + h) + (h + 1)
    assert actor_count == 71_948 and q_count == 72_193 and v_count == 70_657
    assert _count(make_gaussian_actor(OBS, ACT)) == actor_count
    assert _count(make_qvalue(OBS, ACT)) == q_count
    assert _count(make_value(OBS)) == v_count
    # LayerNorm adds a gain and a bias per hidden unit: 2·(256 + 256)
    assert _count(make_qvalue(OBS, ACT, layer_norm=True)) == q_count + 4 * h
    assert _count(make_value(OBS, layer_norm=True)) == v_count + 4 * h


def test_tanh_gaussian_actor_with_clamped_log_scale():
    from torchrl_sym.models import make_tanh_gaussian_actor

    actor = make_tanh_gaussian_actor(4, 2, (8,), log_std_bounds=(-5.0, 2.0))
    net = actor.module[0].module
    with torch.no_grad():
        net[0][-1].bias.zero_()
        net[0][-1].weight.zero_()
        net[0][-1].bias[2:] = torch.tensor([10.0, -10.0])  # log-scales beyond both bounds
    loc, scale = net(torch.randn(3, 4))
    torch.testing.assert_close(scale, torch.tensor([[2.0, -5.0]]).exp().expand(3, 2))
    torch.testing.assert_close(loc, torch.zeros(3, 2))


@pytest.mark.parametrize("module", [Mish(), ReLU()], ids=["mish", "relu"])
def test_compiled_activation_form_matches_torchs_values_and_gradients(module):
    """models.Mish and models.ReLU take another form under torch.compile (one exponential;
    ``(x + |x|) / 2``): same values and gradients as torch's own, extremes included."""
    reference = nn.functional.mish if isinstance(module, Mish) else torch.relu
    x = torch.cat(
        [
            torch.linspace(-120.0, 120.0, 20001, dtype=torch.float64),
            torch.tensor([-1e30, -88.0, -20.0, 19.999, 20.0, 20.001, 88.0, 1e30]),
        ]
    )
    x = x[x != 0]  # ReLU's compiled gradient at exactly 0 is 1/2, another valid subgradient
    compiled = torch.compile(module, backend="eager", fullgraph=True)
    for dtype in (torch.float32, torch.float64):
        a = x.to(dtype).requires_grad_()
        b = x.to(dtype).requires_grad_()
        out, ref = compiled(a), reference(b)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, ref, rtol=2e-6, atol=1e-6)
        (g_out,) = torch.autograd.grad(out.sum(), a)
        (g_ref,) = torch.autograd.grad(ref.sum(), b)
        assert torch.isfinite(g_out).all()
        torch.testing.assert_close(g_out, g_ref, rtol=2e-5, atol=1e-6)
    bf16 = compiled(x.to(torch.bfloat16))  # under autocast the activations are bf16
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.float(), reference(x.float()), rtol=2e-2, atol=1e-2)
    # eager mode is torch's own function, bit for bit
    assert torch.equal(module(x.float()), reference(x.float()))


def test_the_diffusion_networks_and_bdpo_critics_use_the_fast_mish():
    from torchrl_sym.diffusion.networks import (
        MLPNoisePredictor,
        NoiseConditionedCritic,
        ResidualMLPNoisePredictor,
    )
    from torchrl_sym.objectives.bdpo import make_bdpo_qvalue

    for net in (
        ResidualMLPNoisePredictor(3, 2, hidden_dim=8, num_blocks=1),
        MLPNoisePredictor(3, 2),
        NoiseConditionedCritic(3, 2, num_members=2, hidden=[8]),
        make_bdpo_qvalue(3, 2, hidden=[8]),
    ):
        assert any(isinstance(m, Mish) for m in net.modules()), type(net).__name__
        assert not any(type(m) is nn.Mish for m in net.modules()), type(net).__name__


def test_compiled_mish_under_vmap_matches_torchs_gradients_and_skips_the_slope_without_grad():
    """Stacked seeds call the networks under torch.func.vmap: the compiled form's gradient (the
    slope computed off the graph) is torch's there too; with gradients off it is the value."""
    x = torch.randn(3, 64, dtype=torch.float64) * 8
    x[0, :4] = torch.tensor([-1e30, 1e30, 20.0, -88.0], dtype=torch.float64)
    compiled = torch.compile(torch.vmap(Mish(), randomness="different"), backend="eager")
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, ref = compiled(a), torch.vmap(nn.functional.mish)(b)
    torch.testing.assert_close(out, ref)
    (g_out,) = torch.autograd.grad((out * torch.arange(64.0, dtype=x.dtype)).sum(), a)
    (g_ref,) = torch.autograd.grad((ref * torch.arange(64.0, dtype=x.dtype)).sum(), b)
    assert torch.isfinite(g_out).all()
    torch.testing.assert_close(g_out, g_ref)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref.detach())
