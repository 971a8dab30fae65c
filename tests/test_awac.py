"""AWACLoss equals the hand-written losses of docs/specs/baselines.md §2.

§7 tests 4 (batch-softmax weights, the BC limits, exp_clip = IQL's actor form with V = Q(s, ã)) and
8 (gradient isolation), plus finiteness at extreme values and target updates. The actions the loss
samples (ã ~ π(·|s), a' ~ π(·|s')) are reproduced exactly by re-seeding torch and drawing from the
hand-built Gaussian in the same order (ã first, then a').
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from loss_harness import (
    ACT,
    GAMMA,
    HIDDEN,
    OBS,
    B,
    HandNetworks,
    check_batch_untouched,
    check_docstring_examples,
    check_finite,
    check_gradient_isolation,
    check_keyword_call,
    check_set_keys,
    check_soft_update,
    check_sum_reduction,
    make_batch,
    perturb_parameters,
)
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import IQLLoss

import torchrl_sym.objectives.awac as awac_module
from torchrl_sym.models import make_gaussian_actor, make_qvalue
from torchrl_sym.objectives import AWACLoss

LAMBDA, W_MAX = 0.5, 100.0
LOG_STD_BOUNDS = (-6.0, 0.0)  # rlkit's AWAC policy
SEED = 1234

pytestmark = pytest.mark.filterwarnings("ignore:No target network updater:UserWarning")


def _make_loss(dtype=torch.float64, seed=0, **kwargs) -> AWACLoss:
    """An AWACLoss with fixed, deliberately non-trivial parameters."""
    torch.manual_seed(seed)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).to(dtype)
    qvalue = make_qvalue(OBS, ACT, HIDDEN).to(dtype)
    # torch.vmap costs ~3× a loop on these tiny critics; the tests of the numbers and of the
    # gradients use it (the default), the others loop
    kwargs = {"lambda_": LAMBDA, "w_max": W_MAX, "deactivate_vmap": True, **kwargs}
    loss = AWACLoss(actor, qvalue, num_qvalue_nets=2, **kwargs)
    loss.make_value_estimator(gamma=GAMMA)
    with torch.no_grad():
        # log σ: one component inside the bounds, one above (clipped to 0)
        perturb_parameters(loss, seed, dtype, log_std=(-0.7, 0.4))
        # a critic that cares about the action, so that A/λ spans several units
        loss.qvalue_network_params["module", "4", "weight"].mul_(30.0)
        loss.target_qvalue_network_params["module", "4", "weight"].mul_(30.0)
    return loss


def _hand_networks(loss: AWACLoss):
    """Q_i (online), Q̄_i (target) and π's (loc, scale), reading the loss's parameters only."""
    net = HandNetworks(loss, LOG_STD_BOUNDS)
    return net.q, net.min_q, net.min_q_bar, net.pi


def _log_prob(pi, s, a):
    loc, scale = pi(s)
    return torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)


def _draw(pi, s):
    loc, scale = pi(s)
    return torch.distributions.Normal(loc, scale).sample()


# ------------------------------------------------------------------------------------------------
# The losses against the spec, on a fixed batch
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("entropy_coef", [0.0, 0.2])
@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_awac_losses_equal_hand_written_spec_losses(weight_mode, entropy_coef):
    loss = _make_loss(weight_mode=weight_mode, entropy_coef=entropy_coef, deactivate_vmap=False)
    data = make_batch()
    torch.manual_seed(SEED)
    with torch.no_grad():
        out = loss(data)

    q, min_q, min_q_bar, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    r = data["next", "reward"].squeeze(-1)
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)
    torch.manual_seed(SEED)
    a_tilde = _draw(pi, s)  # drawn first, by the actor loss
    a_next = _draw(pi, s2)  # then by the critic loss

    # y = r + γ (1 − d) [min Q̄(s', a') − α log π(a'|s')], L_Q = Σ_i mean_B (Q_i − y)²
    y = r + GAMMA * (1 - term) * (min_q_bar(s2, a_next) - entropy_coef * _log_prob(pi, s2, a_next))
    l_q = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()

    # A = min Q(s, a) − min Q(s, ã), online critics
    adv = min_q(s, a) - min_q(s, a_tilde)
    log_pi = _log_prob(pi, s, a)
    if weight_mode == "batch_softmax":
        w = torch.softmax(adv / LAMBDA, 0)
        l_pi = -(B * w * log_pi).mean()
        mult = B * w
        assert mult.max() > 2.0 and mult.min() < 0.1  # far from uniform
    else:
        mult = torch.exp(adv / LAMBDA).clamp(max=W_MAX)
        l_pi = -(mult * log_pi).mean()
        assert (mult == W_MAX).any() and (mult < 1.0).any()  # both sides of the clip

    assert (adv > 0).any() and (adv < 0).any()
    assert not torch.allclose(min_q_bar(s2, a_next), min_q(s2, a_next), atol=1e-3)
    torch.testing.assert_close(out["loss_qvalue"], l_q, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], l_pi, rtol=0, atol=1e-6)
    torch.testing.assert_close(out["entropy"], -log_pi.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["advantage"], adv.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_mean"], mult.mean(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out["weight_max"], mult.max(), rtol=0, atol=1e-6)
    ess = mult.sum() ** 2 / (B * (mult**2).sum())
    torch.testing.assert_close(out["weight_ess"], ess, rtol=0, atol=1e-6)
    # priority: max over the heads of (Q_i − y)²
    td_error = torch.maximum((q(0, s, a) - y) ** 2, (q(1, s, a) - y) ** 2)
    torch.testing.assert_close(data["td_error"], td_error, rtol=0, atol=1e-6)
    assert l_q > 1e-2 and l_pi.abs() > 1e-2


def test_the_loss_does_not_modify_the_batch():
    check_batch_untouched(_make_loss(), make_batch())


def test_delay_qvalue_false_bootstraps_from_the_online_critics():
    loss = _make_loss(delay_qvalue=False)
    assert "target_qvalue_network_params" not in dict(loss.named_children())
    data = make_batch()
    torch.manual_seed(SEED)
    with torch.no_grad():
        got, _ = loss.qvalue_loss(data)
    q, min_q, _, pi = _hand_networks(loss)
    s, a, s2 = data["observation"], data["action"], data["next", "observation"]
    term = data["next", "terminated"].squeeze(-1).to(s.dtype)
    torch.manual_seed(SEED)
    a_next = _draw(pi, s2)
    y = data["next", "reward"].squeeze(-1) + GAMMA * (1 - term) * min_q(s2, a_next)
    expected = ((q(0, s, a) - y) ** 2 + (q(1, s, a) - y) ** 2).mean()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# §7 test 4
# ------------------------------------------------------------------------------------------------


def test_batch_softmax_weights_sum_to_one():
    for seed in range(3):
        loss = _make_loss(seed=seed)
        out = loss(make_batch(seed=seed))
        # the reported multiplier is B·w, so mean_B(B·w) = Σ_B w
        torch.testing.assert_close(out["weight_mean"], torch.tensor(1.0, dtype=torch.float64))
        assert out["weight_max"] > 1.5


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_equal_advantages_give_plain_behavior_cloning(weight_mode):
    loss = _make_loss(weight_mode=weight_mode)
    with torch.no_grad():  # Q_i(s, a) = b_i for every (s, a): A ≡ 0
        loss.qvalue_network_params["module", "4", "weight"].zero_()
    data = make_batch()
    out = loss(data)
    _, _, _, pi = _hand_networks(loss)
    log_pi = _log_prob(pi, data["observation"], data["action"])
    assert out["advantage"] == 0
    torch.testing.assert_close(out["weight_max"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out["weight_ess"], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(out["loss_actor"], -log_pi.mean(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_infinite_temperature_recovers_behavior_cloning(weight_mode):
    data = make_batch()
    loss = _make_loss(weight_mode=weight_mode, lambda_=1e9)
    out = loss(data)
    _, _, _, pi = _hand_networks(loss)
    log_pi = _log_prob(pi, data["observation"], data["action"])
    torch.testing.assert_close(out["loss_actor"], -log_pi.mean(), rtol=0, atol=1e-6)
    # while at λ = LAMBDA the same batch is far from BC
    far = _make_loss(weight_mode=weight_mode)(data)
    assert abs(float(far["loss_actor"].detach() + log_pi.mean())) > 0.1


class _Lookup(nn.Module):
    """V(s) = the value stored in the batch under "v_pi"."""

    def forward(self, v_pi):
        return v_pi


def test_exp_clip_equals_the_iql_actor_with_v_replaced_by_q_of_a_policy_sample():
    loss = _make_loss(weight_mode="exp_clip")
    data = make_batch()
    torch.manual_seed(SEED)
    got, _ = loss.actor_loss(data)

    _, min_q, _, pi = _hand_networks(loss)
    torch.manual_seed(SEED)
    v_pi = min_q(data["observation"], _draw(pi, data["observation"]))

    # TorchRL's IQL actor: −mean min(exp(T (min Q̄(s, a) − V(s))), 100) log π(a|s), with
    # T = 1/λ, Q̄ := AWAC's online critics and V(s) := min_i Q_i(s, ã)
    torch.manual_seed(0)
    actor = make_gaussian_actor(OBS, ACT, HIDDEN, log_std_bounds=LOG_STD_BOUNDS).double()
    value = TensorDictModule(_Lookup(), in_keys=["v_pi"], out_keys=["state_value"])
    iql = IQLLoss(
        actor,
        make_qvalue(OBS, ACT, HIDDEN).double(),
        value,
        num_qvalue_nets=2,
        temperature=1.0 / LAMBDA,
    )
    with torch.no_grad():
        for key, p in iql.actor_network_params.items(True, True):
            p.copy_(loss.actor_network_params[key])
        for key, p in iql.target_qvalue_network_params.items(True, True):
            p.copy_(loss.qvalue_network_params[key])
    data_iql = data.clone()
    data_iql["v_pi"] = v_pi[:, None]
    expected, _ = iql.actor_loss(data_iql)
    assert W_MAX == 100.0  # IQL's clip
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert expected.abs() > 0.1


# ------------------------------------------------------------------------------------------------
# §7 test 8: gradient isolation
# ------------------------------------------------------------------------------------------------

_GROUPS = ("actor_network_params", "qvalue_network_params")


@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
@pytest.mark.parametrize(
    ("loss_key", "owner"),
    [("loss_actor", "actor_network_params"), ("loss_qvalue", "qvalue_network_params")],
)
def test_each_loss_reaches_only_its_own_network(loss_key, owner, weight_mode):
    loss = _make_loss(
        dtype=torch.float32, weight_mode=weight_mode, entropy_coef=0.2, deactivate_vmap=False
    )
    check_gradient_isolation(loss, make_batch(dtype=torch.float32), loss_key, owner, _GROUPS)


# ------------------------------------------------------------------------------------------------
# Finiteness at extreme values
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("q_offset", "reward"), [(1e6, -1e6), (-1e6, 1e6)])
@pytest.mark.parametrize("weight_mode", ["batch_softmax", "exp_clip"])
def test_losses_and_gradients_are_finite_for_extreme_values(weight_mode, q_offset, reward):
    loss = _make_loss(dtype=torch.float32, weight_mode=weight_mode, entropy_coef=0.2, lambda_=0.1)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            # |Q| ≈ 1e6 and advantages of order 1e5: A/λ ≈ 1e6
            params["module", "4", "weight"].mul_(1e4)
            params["module", "4", "bias"].fill_(q_offset)
    data = make_batch(dtype=torch.float32)
    data["next", "reward"].fill_(reward)
    out = loss(data)
    assert out["advantage"].abs() > 100  # A/λ > 1000: exp(A/λ) would overflow
    check_finite(loss, out, _GROUPS)


# ------------------------------------------------------------------------------------------------
# Targets, keys, reductions, docstring
# ------------------------------------------------------------------------------------------------


def test_soft_update_moves_only_the_critic_targets():
    check_soft_update(_make_loss())


def test_keyword_call_returns_the_out_keys_in_order():
    check_keyword_call(_make_loss(), make_batch(), seed=SEED)


def test_set_keys_renames_the_batch_entries():
    loss, ref_loss = _make_loss(), _make_loss()
    check_set_keys(loss, ref_loss, make_batch(), seed=SEED)


def test_sum_reduction_is_batch_size_times_mean():
    check_sum_reduction(_make_loss, make_batch(), ("loss_actor", "loss_qvalue"), seed=SEED)


def test_bad_arguments_are_named():
    actor, qvalue = make_gaussian_actor(OBS, ACT, HIDDEN), make_qvalue(OBS, ACT, HIDDEN)
    with pytest.raises(ValueError, match="weight_mode"):
        AWACLoss(actor, qvalue, weight_mode="softmax")
    with pytest.raises(ValueError, match="lambda_"):
        AWACLoss(actor, qvalue, lambda_=0.0)
    with pytest.raises(ValueError, match="w_max"):
        AWACLoss(actor, qvalue, w_max=math.inf)


def test_docstring_example_runs():
    check_docstring_examples(awac_module)


# ------------------------------------------------------------------------------ the recipe's config
CONFIGS = Path(__file__).resolve().parents[1] / "torchrl_sym" / "configs"
# rail-berkeley/rlkit examples/awac/mujoco/awac1.py, the source torchrl_sym/configs/awac.yaml cites: the sweep's
# trainer_kwargs.beta = 2, reward_scale = 1 (raw rewards), alpha = 0, policy 4x256 with log-std in
# [-6, 0] and weight decay 1e-4, Q 2x256, lr 3e-4, batch 1024, soft_target_tau 5e-3, discount 0.99
RLKIT_MUJOCO = {
    ("awac", "lambda_"): 2.0,
    ("awac", "weight_mode"): "batch_softmax",
    ("awac", "actor_hidden"): [256] * 4,
    ("awac", "log_std_bounds"): [-6.0, 0.0],
    ("awac", "actor_weight_decay"): 1e-4,
    ("awac", "hidden"): [256, 256],
    ("awac", "lr"): 3e-4,
    ("awac", "tau"): 5e-3,
    ("awac", "discount"): 0.99,
    ("data", "batch_size"): 1024,
    ("data", "reward_transform"): "identity",
    ("data", "normalize_observations"): False,
}


@pytest.mark.parametrize(
    "task",
    [None]
    + [
        f"{env}-{kind}"
        for env in ("halfcheetah", "hopper", "walker2d")
        for kind in ("medium", "medium-replay", "medium-expert")
    ],
)
def test_recipe_config_is_rlkits_mujoco_example(task):
    """``torchrl_sym/configs/awac.yaml`` composed (alone and with every task) holds rlkit's values."""
    from hydra import compose, initialize_config_dir

    overrides = [] if task is None else [f"task={task}"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("awac", overrides=overrides)
    assert cfg.task == task
    found = {key: _plain(cfg[key[0]][key[1]]) for key in RLKIT_MUJOCO}
    assert found == RLKIT_MUJOCO
    # the knobs of both choices stay overridable
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        other = compose(
            "awac", overrides=["awac.lambda_=1.0", "data.reward_transform=return_range"]
        )
    assert (other.awac.lambda_, other.data.reward_transform) == (1.0, "return_range")


def _plain(value):
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
