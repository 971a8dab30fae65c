"""Shared setup and checks of the loss tests (test_sql, test_xql, test_awac, test_iql_baseline).

A plain module, imported by those tests: the fixed 8-row batch, the parameter perturbation of the
``_make_loss`` builders, the hand-written networks (``Q_i``, ``Q̄_i``, ``V``, ``π``) that read a
loss's parameters and nothing else, the one-number value and critic modules of the minimizer
tests, and the checks every loss passes (gradient isolation, finiteness, target updates, keys,
reductions, docstring). The per-algorithm numbers stay in the test files.
"""

from __future__ import annotations

import doctest
from collections.abc import Callable, Iterable
from types import ModuleType

import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_sym.models import make_gaussian_actor

B, OBS, ACT = 8, 3, 2
HIDDEN = [16, 16]
# TorchRL stores γ as a float32 buffer: 0.75 is exact in float32, so float64 checks stay tight
GAMMA = 0.75
LN_EPS = 1e-5  # nn.LayerNorm's default

# the three networks of an IQL-style loss, and which loss entry each one owns
GROUPS = ("actor_network_params", "value_network_params", "qvalue_network_params")
OWNERS = [
    ("loss_actor", "actor_network_params"),
    ("loss_value", "value_network_params"),
    ("loss_qvalue", "qvalue_network_params"),
]

# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------


def transitions(
    g: torch.Generator,
    terminated: torch.Tensor,
    truncated: torch.Tensor,
    obs_dim: int,
    act_dim: int,
    action: Callable[[torch.Tensor], torch.Tensor],
    dtype: torch.dtype,
) -> TensorDict:
    """A batch of transitions drawn from ``g`` (observation, ``action(U[0, 1))``, next
    observation, reward, in that order), with the given termination and truncation flags."""
    n = len(terminated)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g, dtype=dtype),
            "action": action(torch.rand(n, act_dim, generator=g, dtype=dtype)),
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g, dtype=dtype),
                "reward": torch.randn(n, 1, generator=g, dtype=dtype),
                "terminated": terminated,
                "truncated": truncated,
                "done": terminated | truncated,
            },
        },
        batch_size=[n],
    )


def make_batch(dtype=torch.float64, seed=0) -> TensorDict:
    """``B`` transitions, actions inside ``(−1, 1)``; rows 0 and 3 terminated, row 1 truncated."""
    g = torch.Generator().manual_seed(seed + 2)
    terminated = torch.zeros(B, 1, dtype=torch.bool)
    truncated = torch.zeros(B, 1, dtype=torch.bool)
    terminated[[0, 3]] = True
    truncated[1] = True  # truncated, not terminated: still bootstraps
    return transitions(
        g, terminated, truncated, OBS, ACT, lambda u: (u * 2 - 1) * (1 - 1e-5), dtype
    )


def perturb_parameters(
    loss: LossModule, seed: int, dtype: torch.dtype, log_std: tuple[float, float]
) -> torch.Generator:
    """Sets ``log σ`` and moves every critic off its initialization, with a generator seeded
    ``seed + 1`` (returned, for further draws); call under ``torch.no_grad()``.

    Each online critic parameter moves by ``0.05·N(0, 1)`` and its target is set to the online one
    plus another ``0.05·N(0, 1)``: distinct heads, and target ≠ online, so using the wrong one
    shows up.
    """
    g = torch.Generator().manual_seed(seed + 1)
    loss.actor_network_params["module", "0", "module", "log_std"].copy_(
        torch.tensor(log_std, dtype=dtype)
    )
    online = loss.qvalue_network_params
    target = loss.target_qvalue_network_params
    for key, p in online.items(True, True):
        p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
        target[key].copy_(p + 0.05 * torch.randn(p.shape, generator=g, dtype=dtype))
    return g


def spread_critics(loss: LossModule, target_bias: tuple[float, float], dtype: torch.dtype) -> None:
    """Scales the critics' output weights (targets × 40, online × 10) and sets the two target
    output biases; call under ``torch.no_grad()``."""
    online = loss.qvalue_network_params
    target = loss.target_qvalue_network_params
    target["module", "4", "weight"].mul_(40.0)
    target["module", "4", "bias"].copy_(torch.tensor([[b] for b in target_bias], dtype=dtype))
    online["module", "4", "weight"].mul_(10.0)


# ------------------------------------------------------------------------------------------------
# The networks, written out
# ------------------------------------------------------------------------------------------------


def layers(params: TensorDict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The (weight, bias) pairs of a TorchRL MLP's parameters, in layer order."""
    keys = sorted(params.keys(), key=int)
    return [(params[k, "weight"], params[k, "bias"]) for k in keys]


def mlp(layers, x: torch.Tensor) -> torch.Tensor:
    """Linear → ReLU → … → Linear, written out."""
    for w, b in layers[:-1]:
        x = torch.relu(x @ w.T + b)
    w, b = layers[-1]
    return x @ w.T + b


def ln_mlp(layers, x: torch.Tensor) -> torch.Tensor:
    """(Linear → LayerNorm → ReLU) × k → Linear, written out; ``layers`` alternates Linear, LN."""
    for (w, b), (gain, shift) in zip(layers[:-1:2], layers[1:-1:2], strict=True):
        x = x @ w.T + b
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)  # biased, as LayerNorm
        x = torch.relu((x - mean) / torch.sqrt(var + LN_EPS) * gain + shift)
    w, b = layers[-1]
    return x @ w.T + b


class HandNetworks:
    """``Q_i``, ``Q̄_i``, their minima, ``V`` and π's ``(loc, scale)``, reading the loss's
    parameters only (detached copies taken at construction).

    Args:
        loss: a loss with ``actor``/``qvalue`` (and possibly ``value``) network parameters.
        log_std_bounds: the actor's clamp of ``log σ``.
        value_mlp: the forward of ``V`` (:func:`mlp`, or :func:`ln_mlp` for a LayerNorm ``V``).
    """

    def __init__(self, loss: LossModule, log_std_bounds, value_mlp=mlp):
        self.q_on = loss.qvalue_network_params.detach()["module"]
        self.q_tg = loss.target_qvalue_network_params.detach()["module"]
        self.a_p = loss.actor_network_params.detach()["module", "0", "module"]
        has_value = hasattr(loss, "value_network_params")
        self.v_p = loss.value_network_params.detach()["module"] if has_value else None
        self.log_std_bounds = log_std_bounds
        self.value_mlp = value_mlp

    @staticmethod
    def _q(params, i, s, a):
        return mlp(layers(params[i]), torch.cat([s, a], -1)).squeeze(-1)

    def q(self, i, s, a):
        """``Q_i(s, a)``, online critic ``i``."""
        return self._q(self.q_on, i, s, a)

    def q_bar(self, i, s, a):
        """``Q̄_i(s, a)``, target critic ``i``."""
        return self._q(self.q_tg, i, s, a)

    def min_q(self, s, a):
        return torch.minimum(self.q(0, s, a), self.q(1, s, a))

    def min_q_bar(self, s, a):
        return torch.minimum(self.q_bar(0, s, a), self.q_bar(1, s, a))

    def v(self, s):
        return self.value_mlp(layers(self.v_p), s).squeeze(-1)

    def pi(self, s):
        loc = torch.tanh(mlp(layers(self.a_p["mean"]), s))
        return loc, self.a_p["log_std"].clamp(*self.log_std_bounds).exp().expand_as(loc)


# ------------------------------------------------------------------------------------------------
# One-number networks: the value loss as a function of a scalar v and of stored samples q
# ------------------------------------------------------------------------------------------------


class ScalarValue(nn.Module):
    """V(s) = v for every state: one learnable scalar."""

    def __init__(self):
        super().__init__()
        self.v = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, observation):
        return self.v.expand(*observation.shape[:-1], 1)


class ReadQ(nn.Module):
    """Q(s, a) = w·s + b with s the stored sample q; w = 1, b = 0 are set by :func:`samples_loss`."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(1, 1, dtype=torch.float64)

    def forward(self, observation, action):
        return self.lin(observation)


def samples_loss(
    loss_cls: type[LossModule], value_module: nn.Module, actor_hidden=(4,), **kwargs
) -> LossModule:
    """``loss_cls`` with two critics (online and target) ``Q(s, a) = s`` and ``V = value_module``."""
    qvalue = TensorDictModule(
        ReadQ(), in_keys=["observation", "action"], out_keys=["state_action_value"]
    )
    value = TensorDictModule(value_module, in_keys=["observation"], out_keys=["state_value"])
    actor = make_gaussian_actor(1, 1, list(actor_hidden)).double()
    loss = loss_cls(actor, qvalue, value, num_qvalue_nets=2, **kwargs)
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "lin", "weight"].fill_(1.0)
            params["module", "lin", "bias"].fill_(0.0)
    return loss


def samples_batch(q: torch.Tensor, reward: torch.Tensor | None = None) -> TensorDict:
    """One row per sample: ``s = s' = q``, ``a = 0``, terminated (so ``y = r``, 0 by default)."""
    n = len(q)
    return TensorDict(
        {
            "observation": q[:, None],
            "action": torch.zeros(n, 1, dtype=q.dtype),
            "next": {
                "observation": q[:, None],
                "reward": torch.zeros(n, 1, dtype=q.dtype) if reward is None else reward[:, None],
                "terminated": torch.ones(n, 1, dtype=torch.bool),  # y = r
                "done": torch.ones(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def bisect_value_minimizer(
    loss: LossModule,
    data: TensorDict,
    lo: float,
    hi: float,
    check_metadata: Callable[[dict], None] | None = None,
) -> float:
    """argmin_v of ``loss.value_loss`` by bisection on its autograd derivative (L_V is convex)."""
    (v_param,) = loss.value_network_params.values(True, True)

    def slope(v: float) -> float:
        with torch.no_grad():
            v_param.fill_(v)
        v_param.grad = None
        value_loss, meta = loss.value_loss(data)
        value_loss.backward()
        if check_metadata is not None:
            check_metadata(meta)
        return float(v_param.grad)

    assert slope(lo) < 0 < slope(hi)
    for _ in range(48):  # (hi − lo) · 2⁻⁴⁸ < 1e-12
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def grads(params: TensorDict) -> list[torch.Tensor | None]:
    return [p.grad for p in params.values(True, True)]


def is_zero(grads) -> bool:
    return all(g is None or not g.any() for g in grads)


def check_gradient_isolation(
    loss: LossModule,
    data: TensorDict,
    loss_key: str,
    owner: str,
    groups: Iterable[str],
    diagnostics: bool = True,
) -> None:
    """``out[loss_key]`` reaches every tensor of ``owner`` and nothing else; targets get none;
    with ``diagnostics``, the non-loss outputs carry no graph."""
    for p in loss.parameters():
        p.grad = None
    out = loss(data)
    out[loss_key].backward()
    # every tensor of the owning network gets a gradient, and it is not zero
    assert all(g is not None and g.any() for g in grads(getattr(loss, owner))), owner
    for other in groups:
        if other != owner:
            assert is_zero(grads(getattr(loss, other))), (loss_key, other)
    # target critics are buffers: never trainable, never any gradient
    for p in loss.target_qvalue_network_params.values(True, True):
        assert not p.requires_grad and p.grad is None
    # nothing else in the module holds a gradient either
    param_ids = {id(p) for g in groups for p in getattr(loss, g).values(True, True)}
    assert all(id(p) in param_ids for p in loss.parameters())
    if diagnostics:
        for key, value in out.items():
            if not key.startswith("loss_"):
                assert not value.requires_grad, key


def check_value_bootstrap_carries_no_value_gradient(
    loss: LossModule, make_data: Callable[[], TensorDict], value_bias: tuple[str, ...]
) -> None:
    """``V(s')`` inside ``y`` uses detached parameters, yet ``L_Q`` depends on ``V``."""
    loss_q, _ = loss.qvalue_loss(make_data())
    loss_q.backward()
    assert is_zero(grads(loss.value_network_params))
    with torch.no_grad():  # yet y depends on V
        loss.value_network_params[value_bias].add_(1.0)
        loss_q2, _ = loss.qvalue_loss(make_data())
    assert abs(float(loss_q2) - float(loss_q.detach())) > 1e-3


def offset_outputs(loss: LossModule, q_offset: float, v_offset: float, value_layer: str) -> None:
    """Output biases of all critics (online and target) := ``q_offset``, of ``V`` := ``v_offset``."""
    with torch.no_grad():
        for params in (loss.qvalue_network_params, loss.target_qvalue_network_params):
            params["module", "4", "bias"].fill_(q_offset)
        loss.value_network_params["module", value_layer, "bias"].fill_(v_offset)


def check_finite(loss: LossModule, out: TensorDict, groups: Iterable[str]) -> None:
    """Every output is finite, and so is every gradient of the summed ``loss_*`` entries."""
    for key, value in out.items():
        assert torch.isfinite(value).all(), key
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for group in groups:
        for g in grads(getattr(loss, group)):
            assert g is not None and torch.isfinite(g).all(), group


def check_batch_untouched(loss: LossModule, data: TensorDict) -> None:
    """With an out-of-range action, the loss adds the priority entry and changes nothing else."""
    data["action"][0] = torch.tensor([1.5, -2.0], dtype=data["action"].dtype)  # out of range
    before = data.clone()
    loss(data)
    assert set(data.keys(True, True)) - set(before.keys(True, True)) == {"td_error"}
    assert (data.exclude("td_error") == before).all()


def check_soft_update(loss: LossModule, untouched: Iterable[str] = ()) -> None:
    """``SoftUpdate`` moves the critics' targets, the only targets, and leaves ``untouched``."""
    targets = [name for name, _ in loss.named_children() if "target" in name]
    assert targets == ["target_qvalue_network_params"]
    updater = SoftUpdate(loss, tau=0.005)
    before = loss.target_qvalue_network_params.clone()
    untouched_before = {name: getattr(loss, name).clone() for name in untouched}
    with torch.no_grad():
        for p in loss.qvalue_network_params.values(True, True):
            p.add_(1.0)
    updater.step()
    after = loss.target_qvalue_network_params
    for key, online in loss.qvalue_network_params.items(True, True):
        expected = 0.995 * before[key] + 0.005 * online.detach()
        torch.testing.assert_close(after[key], expected, rtol=0, atol=1e-12)
        assert (after[key] != before[key]).all()
    for name, value_before in untouched_before.items():
        assert (getattr(loss, name) == value_before).all()


def check_keyword_call(loss: LossModule, data: TensorDict, seed: int | None = None) -> None:
    """``loss(**entries)`` returns the ``out_keys`` in order, equal to ``loss(data)``; with
    ``seed``, torch is re-seeded before each call (for losses that sample)."""
    kwargs = {"_".join(k) if isinstance(k, tuple) else k: data.get(k) for k in loss.in_keys}
    assert set(kwargs) == {
        "action",
        "observation",
        "next_observation",
        "next_reward",
        "next_done",
        "next_terminated",
    }
    _maybe_seed(seed)
    outs = loss(**kwargs)
    _maybe_seed(seed)
    ref = loss(data)
    assert len(outs) == len(loss.out_keys)
    for key, value in zip(loss.out_keys, outs, strict=True):
        torch.testing.assert_close(value, ref[key])


def check_set_keys(
    loss: LossModule, ref_loss: LossModule, data: TensorDict, seed: int | None = None
) -> None:
    """After ``set_keys(reward="r", terminated="term")`` the loss reads the renamed entries."""
    renamed = data.clone()
    renamed["next", "r"] = renamed["next"].pop("reward")
    renamed["next", "term"] = renamed["next"].pop("terminated")
    loss.set_keys(reward="r", terminated="term")
    assert ("next", "r") in loss.in_keys and ("next", "reward") not in loss.in_keys
    _maybe_seed(seed)
    out = loss(renamed)
    _maybe_seed(seed)
    ref = ref_loss(data)
    for key in ref.keys():
        torch.testing.assert_close(out[key], ref[key])


def check_sum_reduction(
    make_loss: Callable[..., LossModule],
    data: TensorDict,
    loss_keys: Iterable[str],
    seed: int | None = None,
) -> None:
    """``reduction="sum"`` gives ``B`` times the mean."""
    _maybe_seed(seed)
    mean = make_loss()(data.clone())
    _maybe_seed(seed)
    total = make_loss(reduction="sum")(data.clone())
    for key in loss_keys:
        torch.testing.assert_close(total[key], B * mean[key])


def check_docstring_examples(module: ModuleType) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def _maybe_seed(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)
