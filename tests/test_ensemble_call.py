"""The batched-matmul critic ensemble equals TorchRL's vmap over stacked parameters."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives.utils import _vmap_func

from torchrl_sym.models import make_qvalue, make_value
from torchrl_sym.objectives._ensemble import ensemble_call
from torchrl_sym.objectives.bdpo import make_bdpo_qvalue


def _stacked(module, n):
    return TensorDict.from_modules(
        *[_reinit(module, seed) for seed in range(n)], as_module=True
    ).requires_grad_()


def _reinit(module, seed):
    import copy

    torch.manual_seed(seed)
    other = copy.deepcopy(module)
    for m in other.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.LayerNorm):  # non-trivial affine parameters
            with torch.no_grad():
                m.weight.normal_()
                m.bias.normal_()
    return other


CASES = {
    "bdpo_q": lambda: make_bdpo_qvalue(5, 2, [16, 16]),
    "bdpo_layer_norm_q": lambda: make_bdpo_qvalue(5, 2, [16, 16], layer_norm=True),
    "torchrl_mlp_q": lambda: make_qvalue(5, 2, [16, 16]),
    "layer_norm_q": lambda: make_qvalue(5, 2, [16, 16], layer_norm=True),
    "mlp_value": lambda: make_value(5, [8]),
    "sequential_tanh": lambda: TensorDictModule(
        nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3, bias=False)),
        in_keys=["observation"],
        out_keys=["out"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch", [(7,), (3, 4)])
def test_matches_vmap_values_and_gradients(name, batch):
    module = CASES[name]()
    params = _stacked(module, 3)
    td = TensorDict(
        {"observation": torch.randn(*batch, 5), "action": torch.randn(*batch, 2)}, batch
    )
    fast = ensemble_call(module)
    assert fast is not None
    key = module.out_keys[0]
    out_fast = fast(td, params).get(key)
    out_vmap = _vmap_func(module, (None, 0))(td.copy(), params).get(key)
    assert out_fast.shape == out_vmap.shape == (3, *batch, out_vmap.shape[-1])
    torch.testing.assert_close(out_fast, out_vmap, rtol=1e-5, atol=1e-6)
    g_fast = torch.autograd.grad(out_fast.square().sum(), list(params.values(True, True)))
    g_vmap = torch.autograd.grad(out_vmap.square().sum(), list(params.values(True, True)))
    for a, b in zip(g_fast, g_vmap, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


class _Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(7, 1)

    def forward(self, obs, act):
        return self.lin(torch.cat([obs, act], -1))


@pytest.mark.parametrize(
    "module",
    [
        TensorDictModule(_Custom(), in_keys=["observation", "action"], out_keys=["q"]),
        TensorDictModule(
            nn.Sequential(nn.Linear(5, 4), nn.Dropout(0.1), nn.Linear(4, 1)),
            in_keys=["observation"],
            out_keys=["q"],
        ),
        TensorDictModule(  # a plain Sequential cannot take two inputs
            nn.Sequential(nn.Linear(7, 1)), in_keys=["observation", "action"], out_keys=["q"]
        ),
    ],
)
def test_other_modules_fall_back_to_vmap(module):
    assert ensemble_call(module) is None


def test_losses_use_the_fast_path_for_mlp_critics():
    from torchrl_sym.models import make_gaussian_actor, make_tanh_gaussian_actor
    from torchrl_sym.objectives import AWACLoss, SfACLoss

    sfac = SfACLoss(make_tanh_gaussian_actor(5, 2, [8]), make_qvalue(5, 2, [8]), make_value(5, [8]))
    awac = AWACLoss(make_gaussian_actor(5, 2, [8]), make_qvalue(5, 2, [8]))
    for loss in (sfac, awac):
        assert loss._vmap_qvalue_networkN0.__qualname__.startswith("ensemble_call")
    off = SfACLoss(
        make_tanh_gaussian_actor(5, 2, [8]),
        make_qvalue(5, 2, [8]),
        make_value(5, [8]),
        deactivate_vmap=True,
    )
    assert not off._vmap_qvalue_networkN0.__qualname__.startswith("ensemble_call")


@pytest.mark.parametrize("layer_norm", [False, True])
def test_bdpo_critic_ensemble_takes_the_batched_matmul_path(layer_norm):
    """BDPO's Q members (TorchRL's MLP, or models._CatSequential with LayerNorm for AntMaze) are
    recognized: ``q_values`` runs as batched matmuls and equals member-by-member evaluation."""
    from torchrl_sym.diffusion import (
        DiffusionBehaviorActor,
        MLPNoisePredictor,
        NoiseConditionedCritic,
        VPDiscreteSchedule,
    )
    from torchrl_sym.models import _CatSequential
    from torchrl_sym.objectives.bdpo import BDPOLoss

    torch.manual_seed(0)
    members = [make_bdpo_qvalue(5, 2, [16, 16], layer_norm=layer_norm) for _ in range(3)]
    if layer_norm:
        assert type(members[0].module) is _CatSequential  # the one class, from models.py
    assert ensemble_call(members[0]) is not None

    def diffusion():
        return DiffusionBehaviorActor(
            MLPNoisePredictor(5, 2, hidden=(8,), time_hidden=(8,)),
            VPDiscreteSchedule(3, variance="beta"),
        )

    loss = BDPOLoss(
        diffusion(), members, NoiseConditionedCritic(5, 2, num_members=3, hidden=(8,)), diffusion()
    )
    assert ensemble_call(loss.qvalue_network) is not None
    assert loss._vmap_q.__qualname__.startswith("ensemble_call")
    obs, act = torch.randn(4, 5), torch.randn(4, 2)
    with torch.no_grad():
        q = loss.q_values(obs, act)
        one_by_one = [
            m(TensorDict({"observation": obs, "action": act}, [4]))["state_action_value"]
            for m in members
        ]
    torch.testing.assert_close(q, torch.stack(one_by_one), rtol=1e-5, atol=1e-6)
