"""Backbones (torchrl_sym.diffusion.networks): embeddings, ε-networks, the noise-conditioned critic.

Architectures: docs/specs/srpo.md §4 (IDQL LN-ResNet) and docs/specs/bdpo.md §5.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchrl_sym.diffusion.networks import (
    EnsembleLinear,
    GaussianFourierTimeEmbedding,
    MLPNoisePredictor,
    NoiseConditionedCritic,
    ResidualMLPNoisePredictor,
    SinusoidalTimeEmbedding,
)

S, A = 11, 3


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Two shared cores: one intra-op thread avoids OpenMP spin-waits under contention.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_sinusoidal_embedding_values():
    emb = SinusoidalTimeEmbedding(8, max_period=10000.0)
    t = torch.tensor([0.0, 3.0])
    out = emb(t)
    freqs = torch.tensor([10000.0 ** (-i / 4) for i in range(4)])
    torch.testing.assert_close(out[1], torch.cat([torch.sin(3 * freqs), torch.cos(3 * freqs)]))
    torch.testing.assert_close(out[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    assert emb(torch.zeros(2, 5)).shape == (2, 5, 8)
    with pytest.raises(ValueError, match="even"):
        SinusoidalTimeEmbedding(7)


def test_fourier_embedding_is_fixed_saved_and_loaded():
    emb = GaussianFourierTimeEmbedding(64, scale=30.0)
    assert "weight" in emb.state_dict() and not list(emb.parameters())
    t = torch.rand(5)
    w = emb.weight
    torch.testing.assert_close(
        emb(t),
        torch.cat(
            [torch.sin(2 * math.pi * t[:, None] * w), torch.cos(2 * math.pi * t[:, None] * w)], -1
        ),
    )
    # frequencies ~ N(0, 30²): their sample std over 32 draws is within a factor 2 of 30
    assert 15 < w.std().item() < 60
    other = GaussianFourierTimeEmbedding(64, scale=30.0)
    assert not torch.equal(other(t), emb(t))
    other.load_state_dict(emb.state_dict())
    torch.testing.assert_close(other(t), emb(t))


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_residual_mlp_has_srpo_architecture():
    net = ResidualMLPNoisePredictor(S, A)
    # time: 64 -> 128 -> 128; input: (A + S + 128) -> 256; 3 × (LN 256, 256 -> 1024 -> 256); head 256 -> A
    time = (64 * 128 + 128) + (128 * 128 + 128)
    inp = (A + S + 128) * 256 + 256
    block = 2 * 256 + (256 * 1024 + 1024) + (1024 * 256 + 256)
    head = 256 * A + A
    assert _count(net) == time + inp + 3 * block + head
    assert len(net.blocks) == 3 and isinstance(net.time_embedding, GaussianFourierTimeEmbedding)
    assert net.blocks[0].dropout.p == 0.1 and isinstance(net.blocks[0].activation, nn.Mish)


def test_residual_mlp_forward_is_the_documented_composition():
    net = ResidualMLPNoisePredictor(S, A, hidden_dim=16, num_blocks=2, dropout=0.0).eval()
    obs, act, t = torch.randn(4, S), torch.randn(4, A), torch.rand(4)
    e = net.time_mlp(net.time_embedding(t))
    h = net.input(torch.cat([act, obs, e], -1))
    for block in net.blocks:
        h = h + block.fc2(F.mish(block.fc1(block.norm(h))))
    torch.testing.assert_close(net(obs, act, t), net.head(F.mish(h)))


def test_dropout_is_active_in_train_mode_only():
    net = ResidualMLPNoisePredictor(S, A, hidden_dim=32, num_blocks=1, dropout=0.5)
    obs, act, t = torch.randn(8, S), torch.randn(8, A), torch.rand(8)
    assert not torch.equal(net(obs, act, t), net(obs, act, t))
    net.eval()
    assert torch.equal(net(obs, act, t), net(obs, act, t))


def test_bdpo_mlp_architecture_and_orthogonal_init():
    net = MLPNoisePredictor(S, A)
    linears = [m for m in net.body if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [256, 256, 256, 256, A]
    assert linears[0].in_features == A + 64 + S
    assert sum(isinstance(m, nn.Mish) for m in net.body) == 4
    assert not any(isinstance(m, (nn.LayerNorm, nn.Dropout)) for m in net.body)
    assert isinstance(net.time_embedding, SinusoidalTimeEmbedding)
    for m in net.modules():
        if isinstance(m, nn.Linear):
            assert torch.count_nonzero(m.bias) == 0
            w = m.weight
            small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
            torch.testing.assert_close(small, 2.0 * torch.eye(small.shape[0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "net",
    [
        ResidualMLPNoisePredictor(S, A, hidden_dim=16, num_blocks=1),
        MLPNoisePredictor(S, A, hidden=(16, 16)),
    ],
)
@pytest.mark.parametrize("batch", [(), (5,), (2, 5)])
def test_eps_networks_take_any_batch_shape(net, batch):
    net.eval()
    obs, act = torch.randn(*batch, S), torch.randn(*batch, A)
    t = torch.randint(1, 6, batch)
    out = net(obs, act, t)
    assert out.shape == (*batch, A)
    # the time may carry a trailing singleton; a shared observation broadcasts
    torch.testing.assert_close(net(obs, act, t.unsqueeze(-1)), out)
    if batch:
        shared = net(obs[(0,) * len(batch)], act, t)
        rows = net(obs[(0,) * len(batch)].expand(*batch, S), act, t)
        torch.testing.assert_close(shared, rows)
    # rows are independent: a row's output does not depend on the others
    if batch == (5,):
        torch.testing.assert_close(net(obs[:2], act[:2], t[:2]), out[:2])


def test_time_conditioning_changes_the_output():
    net = MLPNoisePredictor(S, A, hidden=(32,))
    obs, act = torch.randn(4, S), torch.randn(4, A)
    assert not torch.allclose(
        net(obs, act, torch.full((4,), 1)), net(obs, act, torch.full((4,), 4))
    )


def test_ensemble_linear_matches_member_matmuls():
    layer = EnsembleLinear(3, 5, 4, gain=1.0)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(7, 5)
    shared = layer(x, shared=True)
    per = layer(x.expand(3, 7, 5))
    for e in range(3):
        expected = x @ layer.weight[e] + layer.bias[e]
        torch.testing.assert_close(shared[e], expected)
        torch.testing.assert_close(per[e], expected)
    assert not torch.allclose(layer.weight[0], layer.weight[1])


def test_noise_conditioned_critic_members_are_independent_mlps():
    v = NoiseConditionedCritic(S, A, num_members=4, hidden=(32, 32), time_hidden=(16, 8))
    with torch.no_grad():
        for p in v.parameters():
            if p.dim() == 3 and p.shape[1] == 1:  # LayerNorm affine
                p.add_(0.1 * torch.randn_like(p))
    obs, act, n = torch.randn(6, 5, S), torch.randn(6, 5, A), torch.randint(0, 6, (6, 5))
    out = v(obs, act, n)
    assert out.shape == (4, 6, 5, 1)

    def member(k):
        e = v.time_embedding(n.float().reshape(-1))
        e = F.mish(e @ v.time_layers[0].weight[k] + v.time_layers[0].bias[k])
        e = e @ v.time_layers[1].weight[k] + v.time_layers[1].bias[k]
        h = torch.cat([obs.reshape(-1, S), act.reshape(-1, A), e], -1)
        for layer, norm in zip(v.layers, v.norms):
            h = h @ layer.weight[k] + layer.bias[k]
            h = F.layer_norm(h, (h.shape[-1],)) * norm.weight[k, 0] + norm.bias[k, 0]
            h = F.mish(h)
        return (h @ v.head.weight[k] + v.head.bias[k]).reshape(6, 5, 1)

    for k in range(4):
        torch.testing.assert_close(out[k], member(k), atol=1e-5, rtol=1e-5)
    # a member's value only moves its own weights
    out[2].sum().backward()
    for p in v.parameters():
        if p.grad is not None and p.dim() >= 2 and p.shape[0] == 4:
            assert p.grad[[0, 1, 3]].abs().max() == 0 and p.grad[2].abs().max() > 0
    # the step n is an input: V differs across n
    assert not torch.allclose(v(obs, act, torch.zeros_like(n)), v(obs, act, torch.full_like(n, 5)))


def test_noise_conditioned_critic_shapes_and_defaults():
    v = NoiseConditionedCritic(S, A)
    assert v.num_members == 10
    assert [layer.out_features for layer in v.layers] == [256, 256, 256]
    assert v(torch.randn(S), torch.randn(A), torch.tensor(3)).shape == (10, 1)
    assert v(torch.randn(2, S), torch.randn(2, A), torch.tensor(3)).shape == (10, 2, 1)
