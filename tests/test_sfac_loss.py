"""SfACLoss against hand computations of docs/specs/sfac.md §4–6 and its §10 tests 9–11.

Networks are tiny and the checks run in float64, so every comparison is to 1e-6 or better. Q and
V in the hand checks are single linear layers whose target/online parameters differ, so using the
wrong copy, the wrong head or the wrong sign shows up in the numbers.
"""

from __future__ import annotations

import copy
import doctest
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import IndependentNormal, ProbabilisticActor
from torchrl.objectives import IQLLoss, SoftUpdate

import torchrl_sym.objectives.sfac as sfac_module
from torchrl_sym.models import (
    make_gaussian_actor,
    make_qvalue,
    make_tanh_gaussian_actor,
    make_value,
)
from torchrl_sym.objectives import SfACLoss

OBS, ACT = 3, 2
F64 = torch.float64
GAMMA = 0.99
TAU = 1.0 / 3.0

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")

# §4 table: (κ, h₂, h₃) for the balanced κ mode, written out independently of divergences.py
BALANCED = {
    "jeffreys": (1.0, 1 / 2, -1 / 6),
    "js": (1 / 8, 1 / 16, -1 / 48),
    "gan": (1 / 4, 1 / 8, -1 / 24),
}
C2 = {"jeffreys": 1.0, "js": 1 / 8, "gan": 1 / 4}


# ------------------------------------------------------------------------------------ helpers
class _Linear(nn.Module):
    """``[x₁, x₂, …] -> W [x₁; x₂; …] + b``: Q(s, a) or V(s) as one linear layer."""

    def __init__(self, in_features: int):
        super().__init__()
        self.lin = nn.Linear(in_features, 1, dtype=F64)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat(inputs, -1))


def _linear_q(weight, bias) -> TensorDictModule:
    module = _Linear(OBS + ACT)
    with torch.no_grad():
        module.lin.weight.copy_(torch.tensor([weight], dtype=F64))
        module.lin.bias.fill_(bias)
    return TensorDictModule(
        module, in_keys=["observation", "action"], out_keys=["state_action_value"]
    )


def _linear_v(weight, bias) -> TensorDictModule:
    module = _Linear(OBS)
    with torch.no_grad():
        module.lin.weight.copy_(torch.tensor([weight], dtype=F64))
        module.lin.bias.fill_(bias)
    return TensorDictModule(module, in_keys=["observation"], out_keys=["state_value"])


def _lin(params: TensorDict, x: torch.Tensor) -> torch.Tensor:
    """A ``_Linear``'s output from its parameters, written out."""
    return (x @ params["module", "lin", "weight"].T + params["module", "lin", "bias"]).squeeze(-1)


def _tanh_actor(seed: int) -> ProbabilisticActor:
    torch.manual_seed(seed)
    return make_tanh_gaussian_actor(OBS, ACT, [16], log_std_bounds=(-5.0, 2.0)).to(F64)


def _perturbed_copy(actor: ProbabilisticActor, scale: float, seed: int) -> ProbabilisticActor:
    g = torch.Generator().manual_seed(seed)
    other = copy.deepcopy(actor)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return other


def _loc_scale(loss: SfACLoss, name: str, observation: torch.Tensor):
    """(loc, scale) of the actor or the behavior model, with the loss's parameters."""
    network = getattr(loss, name)
    td = TensorDict({"observation": observation}, [observation.shape[0]])
    with getattr(loss, name + "_params").detach().to_module(network):
        network.module[0](td)
    return td["loc"], td["scale"]


def _tanh_normal_log_prob(loc, scale, action):
    """log density of ``a = tanh(u)``, ``u ~ N(loc, scale²)``: ``log N(atanh a) − log(1 − a²)``."""
    u = torch.atanh(action)
    return (torch.distributions.Normal(loc, scale).log_prob(u) - torch.log1p(-(action**2))).sum(-1)


def _batch(observation, action, seed=0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    B = observation.shape[0]
    terminated = torch.zeros(B, 1, dtype=torch.bool)
    terminated[::3] = True
    truncated = torch.zeros(B, 1, dtype=torch.bool)
    truncated[1] = True
    return TensorDict(
        {
            "observation": observation,
            "action": action,
            "next": {
                "observation": torch.randn(B, OBS, generator=g, dtype=F64),
                "reward": torch.randn(B, 1, generator=g, dtype=F64),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        [B],
    )


def _random_batch(B=8, seed=0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS, generator=g, dtype=F64)
    action = 0.95 * (2 * torch.rand(B, ACT, generator=g, dtype=F64) - 1)
    return _batch(obs, action, seed + 1)


# Q̄₁ = s₀ − 0.2 a₀, Q̄₂ = s₀ + 0.3 a₁ + 0.05; V = s₁. The online critics are moved off the targets.
Q1_W, Q2_W, V_W = [1.0, 0.0, 0.0, -0.2, 0.0], [1.0, 0.0, 0.0, 0.0, 0.3], [0.0, 1.0, 0.0]


def _hand_loss(
    divergence="jeffreys", *, behavior_scale=0.02, actor=None, behavior=None, **kwargs
) -> SfACLoss:
    actor = _tanh_actor(0) if actor is None else actor
    behavior = _perturbed_copy(actor, behavior_scale, 1) if behavior is None else behavior
    loss = SfACLoss(
        actor,
        [_linear_q(Q1_W, 0.0), _linear_q(Q2_W, 0.05)],
        _linear_v(V_W, 0.0),
        behavior,
        divergence=divergence,
        **kwargs,
    )
    loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():
        loss.qvalue_network_params["module", "lin", "bias"].add_(torch.tensor([[0.4], [-0.7]]))
    return loss


def _hand_targets(loss: SfACLoss, s, a):
    x = torch.cat([s, a], -1)
    target = loss.target_qvalue_network_params.detach()
    q_bar = torch.minimum(_lin(target[0], x), _lin(target[1], x))
    v = _lin(loss.value_network_params.detach(), s)
    return q_bar, v


def _designed_batch(tau2: float, seed=0) -> TensorDict:
    """B = 8 rows whose advantages sit at chosen multiples of τ₂ (w₂ = 0, < 1, ≈ 1, > 1, capped)."""
    g = torch.Generator().manual_seed(seed)
    k = torch.tensor([-3.0, -1.2, -0.6, 0.0, 0.04, 0.4, 2.5, 60.0], dtype=F64)
    obs = torch.randn(8, OBS, generator=g, dtype=F64)
    action = 0.9 * (2 * torch.rand(8, ACT, generator=g, dtype=F64) - 1)
    # A = min(Q̄₁, Q̄₂) − V = s₀ + min(−0.2 a₀, 0.3 a₁ + 0.05) − s₁ = k τ₂
    obs[:, 0] = obs[:, 1] + k * tau2 - torch.minimum(-0.2 * action[:, 0], 0.3 * action[:, 1] + 0.05)
    return _batch(obs, action, seed + 1)


# -------------------------------------------------------------------- §10 test 9: IQL reduction
def _iql_pair(n_loss: int, seed=0):
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, [32, 32], log_std_bounds=(-5.0, 2.0)).to(F64)
    qvalue = make_qvalue(OBS, ACT, [32, 32]).to(F64)
    value = make_value(OBS, [32, 32]).to(F64)
    iql = IQLLoss(
        actor,
        qvalue,
        value,
        num_qvalue_nets=2,
        expectile=0.7,
        temperature=1 / TAU,
        loss_function="l2",
    )
    sfac = SfACLoss(
        actor,
        qvalue,
        value,
        n_loss=n_loss,
        preset="iql_compatible",
        tau=TAU,
        expectile=0.7,
        loss_function="l2",
        behavior_warmup=0,
    )
    for loss in (iql, sfac):
        loss.make_value_estimator(gamma=GAMMA)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        online, target = iql.qvalue_network_params, iql.target_qvalue_network_params
        for key, p in online.items(True, True):
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=F64))
            target[key].copy_(p + 0.05 * torch.randn(p.shape, generator=g, dtype=F64))
        # spread the advantages: both signs and exp(A/τ) above W_max = 100
        target["module", "4", "weight"].mul_(30.0)
        online["module", "4", "weight"].mul_(5.0)
        iql.value_network_params["module", "4", "weight"].mul_(5.0)
        # the same parameters in both losses (TorchRL re-draws a single Q module's heads)
        for name in (
            "actor_network_params",
            "value_network_params",
            "qvalue_network_params",
            "target_qvalue_network_params",
        ):
            mine, theirs = getattr(sfac, name), getattr(iql, name)
            for key, p in theirs.items(True, True):
                mine[key].data.copy_(p.data)
    return iql, sfac


@pytest.mark.parametrize("n_loss", [0, 1])
def test_no_symmetry_term_is_torchrl_iql(n_loss):
    iql, sfac = _iql_pair(n_loss)
    data = _random_batch(B=64, seed=3)
    before = data.clone()
    with torch.no_grad():
        ours = sfac(data)
        theirs = iql(data.clone())
    assert (data == before).all() and set(data.keys(True)) == set(before.keys(True))
    # the batch exercises the branches: both signs of u, the weight cap, terminated and truncated
    q_bar, v = _hand_targets_mlp(sfac, data)
    u = q_bar - v
    assert (u < 0).any() and (u > 0).any() and (torch.exp(u / TAU) > 100).any()
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        # TorchRL's expectile weights are float32 even for float64 inputs: ~1e-8 relative
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=1e-6, msg=key)
        assert theirs[key].abs() > 1e-2
    assert ours["csym"] == 0 and ours["symmetry_active"] == 0
    torch.testing.assert_close(ours["asym"], ours["loss_actor"], rtol=0, atol=0)


def _hand_targets_mlp(loss, data):
    td = data.select("observation", "action")
    with torch.no_grad():
        q = loss._vmap_qvalue_networkN0(td, loss.target_qvalue_network_params)
        q_bar = q["state_action_value"].min(0)[0].squeeze(-1)
        with loss.value_network_params.to_module(loss.value_network):
            v = loss.value_network(td.clone())["state_value"].squeeze(-1)
    return q_bar, v


# ------------------------------------------------------------- §4 actor loss by hand (B = 8)
def _hand_actor_loss(loss: SfACLoss, data: TensorDict, divergence: str, epsilon: float, n_loss=3):
    kappa, h2, h3 = BALANCED[divergence]
    tau2 = 2 * C2[divergence] * TAU
    s, a = data["observation"], data["action"]
    q_bar, v = _hand_targets(loss, s, a)
    adv = q_bar - v
    w_kl = torch.exp(adv / TAU).clamp(max=100.0)
    w2 = (1 + adv / tau2).clamp(min=0)
    log_pi = _tanh_normal_log_prob(*_loc_scale(loss, "actor_network", s), a)
    log_beta = _tanh_normal_log_prob(*_loc_scale(loss, "behavior_network", s), a)
    asym = -(w_kl * log_pi)
    csym = torch.zeros_like(asym)
    clamped = torch.zeros(len(asym), dtype=torch.bool)
    for i in range(len(asym)):  # row by row, as written in the spec
        if w2[i] > 0:
            log_r = log_pi[i] - log_beta[i] - torch.log(w2[i])
            low = math.log(1 - epsilon) if epsilon < 1 else -math.inf
            high = math.log(1 + epsilon)
            clamped[i] = not (low <= log_r <= high)
            d = torch.exp(log_r.clamp(low, high)) - 1
            csym[i] = w2[i] * (h2 * d**2 + h3 * d**3) if n_loss == 3 else 0.0
    return {
        "loss_actor": asym.mean() + csym.mean() / kappa,
        "asym": asym.mean(),
        "csym": csym.mean(),
        "w_kl_mean": w_kl.mean(),
        "w2_nonzero_frac": (w2 > 0).double().mean(),
        "r_clamped_frac": clamped.double().mean(),
    }, (w2, w_kl, clamped)


@pytest.mark.parametrize("divergence", ["jeffreys", "js", "gan"])
def test_actor_loss_equals_hand_computation(divergence):
    loss = _hand_loss(divergence, n_loss=3, kappa="balanced", epsilon=0.2, tau=TAU)
    assert loss.kappa == pytest.approx(BALANCED[divergence][0], abs=1e-15)
    data = _designed_batch(2 * C2[divergence] * TAU)
    with torch.no_grad():
        out = loss(data)
    expected, (w2, w_kl, clamped) = _hand_actor_loss(loss, data, divergence, 0.2)
    # every branch of the estimator is present in the batch
    support = w2 > 0
    assert (~support).any() and (support & clamped).any() and (support & ~clamped).any()
    assert (w_kl == 100.0).any() and (w2 > 1).any() and ((w2 > 0) & (w2 < 1)).any()
    assert out["symmetry_active"] == 1 and expected["csym"].abs() > 1e-4
    for key, value in expected.items():
        torch.testing.assert_close(out[key], value, rtol=0, atol=1e-6, msg=key)


def test_actor_loss_with_wide_clip_and_linear_term_by_hand():
    """ε ≥ 1 has no lower clamp; keep_linear_term adds h₁ (r_c − 1); n_loss = 5 adds h₄, h₅."""
    loss = _hand_loss(
        "jeffreys",
        n_loss=5,
        epsilon=1.5,
        keep_linear_term=True,
        kappa="curvature",
        behavior_scale=0.3,
    )
    data = _designed_batch(2 * TAU)
    with torch.no_grad():
        out = loss(data)
    kappa = 2.0  # Jeffreys curvature: h = (2, 0, 1/6, −1/6, 3/20)
    h = [2.0, 0.0, 1 / 6, -1 / 6, 3 / 20]
    s, a = data["observation"], data["action"]
    q_bar, v = _hand_targets(loss, s, a)
    adv = q_bar - v
    w2 = (1 + adv / (2 * TAU)).clamp(min=0)
    log_pi = _tanh_normal_log_prob(*_loc_scale(loss, "actor_network", s), a)
    log_beta = _tanh_normal_log_prob(*_loc_scale(loss, "behavior_network", s), a)
    safe_w2 = torch.where(w2 > 0, w2, torch.ones_like(w2))
    d = torch.exp((log_pi - log_beta - torch.log(safe_w2)).clamp(max=math.log(2.5))) - 1
    series = sum(h[n - 1] * d**n for n in range(1, 6))
    csym = torch.where(w2 > 0, w2 * series, torch.zeros_like(w2))
    asym = -(torch.exp(adv / TAU).clamp(max=100) * log_pi)
    assert (d < -0.5).any()  # ratios below 1 − ε' for any ε' < 1: no lower clamp was applied
    torch.testing.assert_close(
        out["loss_actor"], asym.mean() + csym.mean() / kappa, rtol=0, atol=1e-6
    )


def test_chi2_consistent_preset_actor_weight_is_capped_w2():
    loss = _hand_loss("jeffreys", n_loss=0, preset="chi2_consistent", w_max=3.0)
    assert (loss.kl_weight, loss.value_loss_type) == ("sparse", "sparse")
    data = _designed_batch(2 * TAU)
    with torch.no_grad():
        out = loss(data)
    s, a = data["observation"], data["action"]
    q_bar, v = _hand_targets(loss, s, a)
    w = (1 + (q_bar - v) / (2 * TAU)).clamp(min=0).clamp(max=3.0)
    log_pi = _tanh_normal_log_prob(*_loc_scale(loss, "actor_network", s), a)
    assert (w == 3.0).any() and (w == 0).any()
    torch.testing.assert_close(out["loss_actor"], -(w * log_pi).mean(), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------- §5 value/critic losses
def test_sparse_value_and_critic_losses_by_hand():
    loss = _hand_loss("js", value_loss="sparse", tau=0.5)
    data = _designed_batch(2 * C2["js"] * 0.5)
    with torch.no_grad():
        out = loss(data)
    s, a = data["observation"], data["action"]
    q_bar, v = _hand_targets(loss, s, a)
    alpha = 2 * C2["js"] * 0.5 / 2  # α = τ₂/2 = c₂ τ
    z = 1 + (q_bar - v) / (2 * alpha)
    l_v = (torch.where(z > 0, z**2, torch.zeros_like(z)) + v / alpha).mean()
    assert (z < 0).any() and (z > 0).any()
    torch.testing.assert_close(out["loss_value"], l_v, rtol=0, atol=1e-6)
    # critic: y = r + γ (1 − terminated) V(s'), Σ over the two online heads, mean over the batch
    term = data["next", "terminated"].squeeze(-1).double()
    y = data["next", "reward"].squeeze(-1) + GAMMA * (1 - term) * _lin(
        loss.value_network_params.detach(), data["next", "observation"]
    )
    x = torch.cat([s, a], -1)
    online = loss.qvalue_network_params.detach()
    l_q = ((_lin(online[0], x) - y) ** 2 + (_lin(online[1], x) - y) ** 2).mean()
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)


def test_policy_value_and_critic_losses_by_hand():
    """a' ~ π_θ(s), a'' ~ π_θ(s') under RANDOM: N(tanh μ(s), σ) draws reproduced from the seed."""
    torch.manual_seed(0)
    actor = make_gaussian_actor(OBS, ACT, [16], log_std_bounds=(-5.0, 2.0)).to(F64)
    with torch.no_grad():
        actor.module[0].module.log_std.copy_(torch.tensor([-1.0, -0.3]))
    loss = _hand_loss(
        "jeffreys", value_loss="policy", actor=actor, behavior=_perturbed_copy(actor, 0.1, 2)
    )
    data = _random_batch(B=8, seed=5)
    s, s_next = data["observation"], data["next", "observation"]
    target = loss.target_qvalue_network_params.detach()

    def min_q_bar(obs, act):
        x = torch.cat([obs, act], -1)
        return torch.minimum(_lin(target[0], x), _lin(target[1], x))

    def draw(obs):
        loc, scale = _loc_scale(loss, "actor_network", obs)
        return loc + scale * torch.randn(loc.shape, dtype=F64)

    torch.manual_seed(11)
    value_loss, _ = loss.value_loss(data)
    torch.manual_seed(11)
    v = _lin(loss.value_network_params.detach(), s)
    expected_v = 0.5 * ((v - min_q_bar(s, draw(s))) ** 2).mean()
    torch.testing.assert_close(value_loss.detach(), expected_v, rtol=0, atol=1e-6)

    torch.manual_seed(12)
    q_loss, _ = loss.qvalue_loss(data)
    torch.manual_seed(12)
    term = data["next", "terminated"].squeeze(-1).double()
    y = data["next", "reward"].squeeze(-1) + GAMMA * (1 - term) * min_q_bar(s_next, draw(s_next))
    x = torch.cat([s, data["action"]], -1)
    online = loss.qvalue_network_params.detach()
    expected_q = ((_lin(online[0], x) - y) ** 2 + (_lin(online[1], x) - y) ** 2).mean()
    torch.testing.assert_close(q_loss.detach(), expected_q, rtol=0, atol=1e-6)
    # the draws are random (not the mean action): another seed gives another loss
    torch.manual_seed(13)
    assert abs(float(loss.value_loss(data)[0].detach()) - float(value_loss.detach())) > 1e-6


def test_behavior_loss_is_the_negative_log_likelihood_of_clipped_actions():
    loss = _hand_loss("jeffreys")
    data = _random_batch(B=8, seed=2)
    data["action"][0] = torch.tensor([1.0, -1.0], dtype=F64)  # clipped to ±(1 − 1e-5) inside
    before = data.clone()
    with torch.no_grad():
        out = loss(data)
    assert (data == before).all()
    a = data["action"].clamp(-(1 - 1e-5), 1 - 1e-5)
    log_beta = _tanh_normal_log_prob(*_loc_scale(loss, "behavior_network", data["observation"]), a)
    torch.testing.assert_close(out["loss_behavior"], -log_beta.mean(), rtol=0, atol=1e-6)


# ------------------------------------------------------------------------ §10 test 10: stability
def _actor_grads(loss):
    return [p.grad for p in loss.actor_network_params.values(True, True)]


def _all_finite(loss, out):
    values = [v for v in out.values() if isinstance(v, torch.Tensor)]
    grads = [p.grad for p in loss.parameters() if p.grad is not None]
    return all(torch.isfinite(v).all() for v in values + grads)


def _backward_all(loss, data):
    for p in loss.parameters():
        p.grad = None
    out = loss(data)
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    return out.detach()


@pytest.mark.parametrize("shift", [1e6, 3.0])  # every w₂ = 0, or only some
def test_finite_when_w2_vanishes(shift):
    loss = _hand_loss("jeffreys", epsilon=0.2)
    data = _designed_batch(2 * TAU)
    data["observation"][:, 1] += shift  # V(s) = s₁: A shifts down by `shift`
    out = _backward_all(loss, data)
    assert _all_finite(loss, out)
    if shift == 1e6:
        assert out["w2_nonzero_frac"] == 0 and out["csym"] == 0 and out["loss_actor"] == 0
        assert all(g is None or not g.any() for g in _actor_grads(loss))
    else:
        assert 0 < out["w2_nonzero_frac"] < 1


def test_finite_when_behavior_density_vanishes_and_rows_clamp():
    actor = _tanh_actor(0)
    behavior = _tanh_actor(1)
    with torch.no_grad():  # π̂_β: u ~ N(3, e⁻¹⁰) per dimension, so log π̂_β(a) ≈ −1e4…−1e5
        last = behavior.module[0].module[0][-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([3.0, 3.0, -5.0, -5.0]))
    loss = _hand_loss("jeffreys", actor=actor, behavior=behavior)
    data = _designed_batch(2 * TAU)
    log_beta = _tanh_normal_log_prob(
        *_loc_scale(loss, "behavior_network", data["observation"]), data["action"]
    )
    assert (log_beta < -1e4).all()
    out = _backward_all(loss, data)
    assert _all_finite(loss, out)
    # every supported row is clamped at 1 + ε: the symmetry term is constant, without gradient
    assert out["r_clamped_frac"] == out["w2_nonzero_frac"] > 0
    h2, h3 = BALANCED["jeffreys"][1:]
    kappa = BALANCED["jeffreys"][0]
    s, a = data["observation"], data["action"]
    q_bar, v = _hand_targets(loss, s, a)
    w2 = (1 + (q_bar - v) / (2 * TAU)).clamp(min=0)
    torch.testing.assert_close(
        out["csym"], (w2 * (h2 * 0.2**2 + h3 * 0.2**3)).mean(), rtol=0, atol=1e-9
    )
    grads_with = [g.clone() for g in _actor_grads(loss)]
    off = _hand_loss("jeffreys", actor=actor, behavior=behavior, n_loss=0)
    off.load_state_dict(loss.state_dict())
    _backward_all(off, data)
    for g_on, g_off in zip(grads_with, _actor_grads(off)):
        torch.testing.assert_close(g_on, g_off, rtol=0, atol=1e-12)
    assert out["loss_actor"] == pytest.approx(float(out["asym"] + out["csym"] / kappa), abs=1e-9)


def test_finite_with_actions_on_the_bound():
    """Actions at ±(1 − 1e-5) (the data layer's clip) or at ±1 (clipped inside, same numbers)."""
    outs = []
    for bound in (1 - 1e-5, 1.0):
        loss = _hand_loss("gan")
        data = _designed_batch(2 * C2["gan"] * TAU)
        edge = torch.tensor([[bound, -bound], [-bound, 0.0], [bound, bound]], dtype=F64)
        data["action"][:3] = edge
        out = _backward_all(loss, data)
        assert _all_finite(loss, out)
        assert (data["action"][:3] == edge).all()  # the batch keeps its actions
        outs.append(out)
    # log-probs see the clipped action; Q̄ sees the batch's action (A moves by ~1e-6 here)
    torch.testing.assert_close(
        outs[0]["loss_behavior"], outs[1]["loss_behavior"], rtol=0, atol=1e-9
    )
    torch.testing.assert_close(outs[0]["loss_actor"], outs[1]["loss_actor"], rtol=1e-4, atol=0)


def test_finite_with_a_huge_clip():
    loss = _hand_loss("jeffreys", epsilon=100.0, n_loss=6, behavior_scale=1.0)
    data = _designed_batch(2 * TAU)
    out = _backward_all(loss, data)
    assert _all_finite(loss, out)
    assert out["csym"] != 0


def test_clamped_rows_have_zero_symmetry_gradient_per_row():
    """∂(row i of L_csym)/∂θ = 0 exactly when row i's ratio is clamped or w₂ = 0."""
    loss = _hand_loss("jeffreys", epsilon=0.2, behavior_warmup=1, reduction="none")
    data = _designed_batch(2 * TAU)
    params = [p for p in loss.actor_network_params.values(True, True)]
    loss.step_count.fill_(0)
    off, _ = loss.actor_loss(data)  # per row: L_asym only
    loss.step_count.fill_(1)
    on, md = loss.actor_loss(data)  # per row: L_asym + L_csym / κ
    _, (w2, _, clamped) = _hand_actor_loss(loss, data, "jeffreys", 0.2)
    torch.testing.assert_close(
        md["csym"], (on - off).detach() * BALANCED["jeffreys"][0], rtol=0, atol=1e-9
    )
    seen = set()
    for i in range(len(on)):
        grads = torch.autograd.grad(on[i] - off[i], params, retain_graph=True, allow_unused=True)
        norm = sum(float(g.abs().sum()) for g in grads if g is not None)
        if w2[i] == 0 or clamped[i]:
            assert norm == 0.0, i
            seen.add("zero")
        else:
            assert norm > 1e-6, i
            seen.add("live")
    assert seen == {"zero", "live"}


class _ColumnGaussian(nn.Module):
    """π̂_β(·|s) = N(s₁, exp(s₂)²) per action dimension: the test controls log π̂_β row by row."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones((), dtype=F64))

    def forward(self, observation):
        loc = (self.gain * observation[..., 1:2]).expand(*observation.shape[:-1], ACT)
        scale = observation[..., 2:3].exp().expand(*observation.shape[:-1], ACT)
        return loc, scale


def _column_behavior() -> ProbabilisticActor:
    return ProbabilisticActor(
        TensorDictModule(_ColumnGaussian(), in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        out_keys=["action"],
        distribution_class=IndependentNormal,
    )


_ACTOR = make_gaussian_actor(OBS, ACT, [8], log_std_bounds=(-5.0, 2.0)).to(F64)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(
    advantages=st.lists(
        st.sampled_from([-1e6, -10.0, -0.5, 0.0, 1e-3, 0.5, 10.0, 1e6]), min_size=6, max_size=6
    ),
    behavior_loc=st.lists(st.floats(-3.0, 3.0), min_size=6, max_size=6),
    behavior_log_scale=st.lists(st.sampled_from([-5.0, -2.0, 0.0, 2.0]), min_size=6, max_size=6),
    actions=st.lists(
        st.sampled_from([-1.0, -(1 - 1e-5), -0.3, 0.0, 0.7, 1.0]), min_size=12, max_size=12
    ),
    divergence=st.sampled_from(["jeffreys", "js", "gan"]),
    epsilon=st.sampled_from([0.2, 0.9, 1.0, 100.0]),
    n_loss=st.integers(2, 6),
    kl_weight=st.sampled_from(["exp", "sparse"]),
    policy_order=st.sampled_from([2, 3]),
)
def test_extreme_advantages_and_ratios_stay_finite(
    advantages,
    behavior_loc,
    behavior_log_scale,
    actions,
    divergence,
    epsilon,
    n_loss,
    kl_weight,
    policy_order,
):
    loss = SfACLoss(
        _ACTOR,
        [_linear_q([1.0, 0, 0, 0, 0], 0.0), _linear_q([1.0, 0, 0, 0, 0], 0.0)],
        _linear_v([0.0, 0.0, 0.0], 0.0),
        _column_behavior(),
        divergence=divergence,
        epsilon=epsilon,
        n_loss=n_loss,
        kl_weight=kl_weight,
        policy_order=policy_order,
        behavior_warmup=0,
    )
    obs = torch.tensor(
        [list(row) for row in zip(advantages, behavior_loc, behavior_log_scale)], dtype=F64
    )
    data = _batch(obs, torch.tensor(actions, dtype=F64).reshape(6, ACT))
    out = _backward_all(loss, data)
    assert _all_finite(loss, out)
    assert out["loss_actor"] == pytest.approx(
        float(out["asym"] + out["csym"] / loss.kappa), rel=1e-9, abs=1e-9
    )
    adv = torch.tensor(advantages, dtype=F64)
    assert out["w2_nonzero_frac"] == pytest.approx(
        float((loss.policy_weight(adv) > 0).double().mean())
    )


def test_order3_policy_weight_solves_its_stationarity_condition():
    loss = _hand_loss("jeffreys", policy_order=3)
    c2, c3 = 1.0, -0.5  # root real iff A/τ ≤ c₂²/(−3c₃) = 2/3; vertex x = −c₂/(3c₃) = 2/3
    y = torch.tensor([-5.0, -1.0, -0.3, 0.0, 0.2, 0.6, 2 / 3, 1.0, 1e6], dtype=F64)
    w = loss.policy_weight(y * TAU)
    x = w - 1
    inside = (y <= 2 / 3) & (w > 0)
    torch.testing.assert_close((2 * c2 * x + 3 * c3 * x**2)[inside], y[inside], rtol=0, atol=1e-12)
    assert (w[y < -1.2] == 0).all()  # no root x ≥ −1: π* = 0
    torch.testing.assert_close(
        w[y >= 2 / 3], torch.full_like(w[y >= 2 / 3], 5 / 3), rtol=0, atol=1e-7
    )
    assert (w.diff() >= 0).all()


# ----------------------------------------------------------------- §10 test 11: gradient isolation
GROUPS = (
    "actor_network_params",
    "behavior_network_params",
    "value_network_params",
    "qvalue_network_params",
)


@pytest.mark.parametrize("value_loss", ["expectile", "sparse", "policy"])
@pytest.mark.parametrize(
    ("loss_key", "owner"),
    [
        ("loss_actor", "actor_network_params"),
        ("loss_behavior", "behavior_network_params"),
        ("loss_value", "value_network_params"),
        ("loss_qvalue", "qvalue_network_params"),
    ],
)
def test_each_loss_reaches_only_its_own_network(value_loss, loss_key, owner):
    torch.manual_seed(0)
    loss = SfACLoss(
        make_tanh_gaussian_actor(OBS, ACT, [16], log_std_bounds=(-5.0, 2.0)).to(F64),
        make_qvalue(OBS, ACT, [16]).to(F64),
        make_value(OBS, [16]).to(F64),
        value_loss=value_loss,
        behavior_warmup=0,
        epsilon=100.0,  # no row clamped: the symmetry term carries gradient to the actor
    )
    for p in loss.parameters():
        p.grad = None
    out = loss(_random_batch(B=16, seed=4))
    assert out["csym"] != 0
    out[loss_key].backward()
    for p in getattr(loss, owner).values(True, True):
        assert p.grad is not None and p.grad.abs().sum() > 0, owner
    for other in GROUPS:
        if other != owner:
            for p in getattr(loss, other).values(True, True):
                assert p.grad is None or not p.grad.any(), (loss_key, other)
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad and p.grad is None
    owned = {id(p) for g in GROUPS for p in getattr(loss, g).values(True, True)}
    assert all(id(p) in owned for p in loss.parameters())


def test_default_behavior_model_is_a_fresh_copy_of_the_actor():
    actor = _tanh_actor(0)
    loss = SfACLoss(actor, make_qvalue(OBS, ACT, [8]), make_value(OBS, [8]))
    mine = loss.actor_network_params.flatten_keys()
    theirs = loss.behavior_network_params.flatten_keys()
    assert set(mine.keys()) == set(theirs.keys())
    assert all(mine[k].data_ptr() != theirs[k].data_ptr() for k in mine.keys())
    assert all(not torch.equal(mine[k], theirs[k]) for k in mine.keys())
    with pytest.raises(ValueError, match="shares parameters"):
        SfACLoss(actor, make_qvalue(OBS, ACT, [8]), make_value(OBS, [8]), actor)


# ----------------------------------------------------------------------------- warm-up counter
def test_without_a_warmup_the_symmetry_term_is_on_everywhere_from_the_start():
    """The default (behavior_warmup=0): a new loss has the symmetry term in forward and in the
    per-term methods, which never advance the counter."""
    loss = _hand_loss("jeffreys")  # no behavior_warmup given
    assert loss.behavior_warmup == 0 and int(loss.step_count) == 0
    assert bool(loss.symmetry_active())
    data = _designed_batch(2 * TAU)
    expected, _ = _hand_actor_loss(loss, data, "jeffreys", 0.2)
    kappa = BALANCED["jeffreys"][0]
    with torch.no_grad():
        value, md = loss.actor_loss(data)
        assert int(loss.step_count) == 0  # the per-term methods read it, never advance it
        for method in (loss.qvalue_loss, loss.value_loss, loss.behavior_loss):
            method(data)
        assert int(loss.step_count) == 0
        out = loss(data)
    assert md["symmetry_active"] == 1 and md["csym"] != 0
    torch.testing.assert_close(
        value, expected["asym"] + expected["csym"] / kappa, rtol=0, atol=1e-6
    )
    assert out["symmetry_active"] == 1
    torch.testing.assert_close(out["loss_actor"], value, rtol=0, atol=1e-12)
    assert int(loss.step_count) == 1


def test_a_checkpoint_of_a_warmup_run_loads_into_a_default_loss():
    """step_count is in every checkpoint: one saved by a loss with a warm-up loads into a loss
    built with the default, counter included (the warm-up itself is a constructor argument)."""
    old = _hand_loss("jeffreys", behavior_warmup=100_000)
    old.step_count.fill_(42)
    new = _hand_loss("jeffreys")
    new.load_state_dict(old.state_dict())
    assert int(new.step_count) == 42 and new.behavior_warmup == 0
    assert bool(new.symmetry_active()) and not bool(old.symmetry_active())


def test_symmetry_term_switches_on_after_the_warmup_and_the_counter_is_saved():
    loss = _hand_loss("jeffreys", behavior_warmup=2)
    data = _designed_batch(2 * TAU)
    kappa = BALANCED["jeffreys"][0]
    expected, _ = _hand_actor_loss(loss, data, "jeffreys", 0.2)
    with torch.no_grad():
        for step in range(2):  # forwards 0 and 1: asymmetric term only
            assert int(loss.step_count) == step
            out = loss(data)
            assert out["symmetry_active"] == 0 and out["csym"] == 0
            torch.testing.assert_close(out["loss_actor"], expected["asym"], rtol=0, atol=1e-6)
        out = loss(data)
    assert out["symmetry_active"] == 1
    torch.testing.assert_close(
        out["loss_actor"], expected["asym"] + expected["csym"] / kappa, rtol=0, atol=1e-6
    )
    assert int(loss.step_count) == 3
    # eval mode does not count
    loss.eval()
    loss(data)
    assert int(loss.step_count) == 3
    loss.train()
    # checkpoint / resume: the counter travels in the state_dict
    state = loss.state_dict()
    assert int(state["step_count"]) == 3
    resumed = _hand_loss("jeffreys", behavior_warmup=2)
    assert int(resumed.step_count) == 0
    resumed.load_state_dict(state)
    assert int(resumed.step_count) == 3
    with torch.no_grad():
        again = resumed(data)
    torch.testing.assert_close(again["loss_actor"], out["loss_actor"], rtol=0, atol=1e-12)


# ------------------------------------------------------------------------- targets and knobs
def test_soft_update_moves_only_the_target_critics():
    loss = _hand_loss("jeffreys")
    updater = SoftUpdate(loss, tau=0.005)  # initializes the targets to the online critics
    target = loss.target_qvalue_network_params.detach().clone()
    out = _backward_all(loss, _random_batch(seed=6))
    assert _all_finite(loss, out)
    torch.optim.SGD(loss.parameters(), lr=0.1).step()
    online = loss.qvalue_network_params.detach().clone()
    assert not (online == target).all()
    updater.step()
    expected = target.apply(lambda t, o: 0.995 * t + 0.005 * o, online)
    for key, value in expected.items(True, True):
        torch.testing.assert_close(
            loss.target_qvalue_network_params[key], value, rtol=0, atol=1e-12
        )
    assert not (loss.target_qvalue_network_params == target).all()


def test_knob_validation_names_the_bad_input():
    args = (_tanh_actor(0), make_qvalue(OBS, ACT, [8]), make_value(OBS, [8]))
    with pytest.raises(ValueError, match="contradicts preset"):
        SfACLoss(*args, preset="iql_compatible", value_loss="sparse")
    with pytest.raises(ValueError, match="policy_order"):
        SfACLoss(*args, policy_order=4)
    with pytest.raises(ValueError, match="epsilon"):
        SfACLoss(*args, epsilon=0.0)
    with pytest.raises(ValueError, match="divergence"):
        SfACLoss(*args, divergence="hellinger")
    loss = SfACLoss(*args, preset="chi2_consistent", divergence="gan", tau=0.4)
    assert loss.tau2 == pytest.approx(2 * C2["gan"] * 0.4)
    assert SfACLoss(*args, tau2=0.3).tau2 == 0.3


def test_docstring_example_runs():
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    (test,) = [t for t in finder.find(sfac_module) if t.name.endswith("SfACLoss") and t.examples]
    result = runner.run(test)
    assert result.failed == 0 and result.attempted > 5


@pytest.mark.parametrize("value_loss", ["expectile", "sparse", "policy"])
def test_forward_shares_work_and_equals_the_individual_terms(value_loss):
    """``forward`` computes each network once and gives what the ``*_loss`` methods give."""
    torch.manual_seed(0)
    loss = SfACLoss(
        make_tanh_gaussian_actor(OBS, ACT, [16], log_std_bounds=(-5.0, 2.0)).to(F64),
        make_qvalue(OBS, ACT, [16]).to(F64),
        make_value(OBS, [16]).to(F64),
        value_loss=value_loss,
        behavior_warmup=0,
        epsilon=0.5,
    )
    loss.make_value_estimator(gamma=GAMMA)
    data = _random_batch(B=16, seed=5)
    calls = {"actor_network": 0, "behavior_network": 0, "value_network": 0}
    hooks = [
        getattr(loss, name)
        .module[0]
        .register_forward_hook(lambda *_, name=name: calls.__setitem__(name, calls[name] + 1))
        if name != "value_network"
        else loss.value_network.module.register_forward_hook(
            lambda *_, name=name: calls.__setitem__(name, calls[name] + 1)
        )
        for name in calls
    ]
    torch.manual_seed(1)
    out = loss(data)
    for h in hooks:
        h.remove()
    # log π_θ once, log π̂_β once, V(s) once and V(s') once for the critic target; the policy
    # value loss samples π_θ at s (value target) and at s' (critic target, instead of V(s'))
    policy = value_loss == "policy"
    assert calls == {
        "actor_network": 3 if policy else 1,
        "behavior_network": 1,
        "value_network": 1 if policy else 2,
    }
    torch.manual_seed(1)
    actor, meta = loss.actor_loss(data)
    value, _ = loss.value_loss(data)
    torch.manual_seed(1)
    qvalue, _ = loss.qvalue_loss(data)
    behavior, _ = loss.behavior_loss(data)
    if value_loss == "policy":  # the sampled actions differ in order of draws: compare actor, q
        torch.testing.assert_close(out["loss_actor"], actor, rtol=1e-12, atol=1e-12)
    else:
        torch.testing.assert_close(out["loss_value"], value, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out["loss_qvalue"], qvalue, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["loss_actor"], actor, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out["loss_behavior"], behavior, rtol=1e-12, atol=1e-12)
    for key in ("asym", "csym", "w_kl_mean", "w2_nonzero_frac", "r_clamped_frac"):
        torch.testing.assert_close(out[key], meta[key], rtol=1e-12, atol=1e-12)


def test_the_critic_plumbing_is_the_shared_in_sample_base():
    """Sf-AC's critics, TD target and keys come from WeightedActorCriticLoss (AWAC, SQL, XQL)."""
    from torchrl_sym.objectives.in_sample import WeightedActorCriticLoss

    assert issubclass(SfACLoss, WeightedActorCriticLoss)
    for name in ("qvalue_loss", "_q_ensemble", "_min_q", "_make_vmap", "make_value_estimator"):
        assert getattr(SfACLoss, name) is getattr(WeightedActorCriticLoss, name), name


def test_single_critic_checkpoints_without_the_ensemble_dim_still_load():
    """Before the shared base a single critic was stored without the leading ensemble dim; such
    a state dict loads into today's loss (the dim is added), and today's loads as well."""
    from torchrl_sym.models import make_qvalue, make_tanh_gaussian_actor, make_value

    def build(seed):
        torch.manual_seed(seed)
        return SfACLoss(
            make_tanh_gaussian_actor(3, 2, [8], log_std_bounds=(-5.0, 2.0)),
            make_qvalue(3, 2, [8]),
            make_value(3, [8]),
            num_qvalue_nets=1,
        )

    source = build(0).state_dict()
    assert source["qvalue_network_params.module.0.weight"].shape == (1, 8, 5)
    old_format = {
        k: (v.squeeze(0) if "qvalue_network_params" in k else v) for k, v in source.items()
    }
    for state in (old_format, source):
        loaded = build(1)
        loaded.load_state_dict(state)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in source.items())
