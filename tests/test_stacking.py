"""Stacked seeds (``stack_seeds=K``): seed k of a stacked run is a single-seed run of seed k.

The equivalence tests build every stackable recipe twice from its own ``build`` function: once
as K single-seed loops, once as one stacked loop, and feed both the same batches (each seed's
own stream) and the same random draws (``randomness="same"`` and one generator state per
step). Every loss value, gradient and parameter of seed k must then agree to float tolerance.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

from torchrl_sym.data import make_offline_replay_buffer
from torchrl_sym.train.loop import OfflineLoop, prepare_optimizers
from torchrl_sym.train.recipe import Run, StackedBuffer
from torchrl_sym.train.rundir import seed_everything
from torchrl_sym.train.stacking import SeedStack, clip_grad_norm_per_seed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "torchrl_sym" / "configs"
SEED, K = 3, 3

TINY = {
    "iql": ["iql.hidden=[32,32]"],
    "sql": ["sql.hidden=[32,32]"],
    "xql": ["xql.hidden=[32,32]"],
    "awac": ["awac.hidden=[32,32]", "awac.actor_hidden=[32,32]"],
    "sfac": ["sfac.hidden=[32,32]", "sfac.behavior_warmup_fraction=0"],
    "td3bc": ["td3bc.hidden=[32,32]"],
    "srpo": [
        "srpo.behavior.hidden_dim=32",
        "srpo.behavior.num_blocks=1",
        "srpo.critic.hidden=[32,32]",
        "srpo.policy.hidden=[32,32]",
    ],
    "bdpo": ["profile=smoke", "bdpo.size_caps.hidden=32", "train.steps=6"],
}
# updates compared per stage: enough for every objective to run at least once (BDPO's actor and
# its behavior updates run every update_ratio = 5 steps of its train stage, first at step 4)
CHECKED_STEPS = {"bdpo": 6}


def _compose(algo: str, dataset: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose(
            algo,
            overrides=[
                f"dataset={dataset}",
                f"seed={SEED}",
                "data.batch_size=16",
                "train.steps=4",
                *TINY[algo],
                *overrides,
            ],
        )


def _run(cfg, tmp_path) -> Run:
    data = cfg.data
    buffer = make_offline_replay_buffer(
        cfg.dataset,
        int(data.batch_size),
        seed=int(cfg.seed),
        reward_transform=data.reward_transform,
        normalize_observations=bool(data.normalize_observations),
    )
    return Run(cfg=cfg, run_dir=tmp_path, device=torch.device("cpu"), buffer=buffer, logger=None)


def _build(algo: str, run: Run, *, stacked: bool, randomness="same"):
    """``(loop, per-seed stage buffers)``: K single-seed loops or one stacked loop."""
    build = importlib.import_module(f"torchrl_sym.recipes.{algo}").build
    views = [run.for_seed(k) for k in range(K)]
    builds = []
    for view in views:
        seed_everything(view.seed)
        builds.append(build(view))
    # each seed's batch stream for each stage (its own buffer, or the run's of that seed)
    streams = [
        [b.stages[i].buffer or views[k].buffer for k, b in enumerate(builds)]
        for i in range(len(builds[0].stages))
    ]
    if not stacked:
        loops = [
            OfflineLoop(b.stages, views[k].buffer, modules=b.modules) for k, b in enumerate(builds)
        ]
        return loops, streams
    policies = [b.policy for b in builds]
    stack = SeedStack.stack(
        [b.modules for b in builds],
        extra=[policies] if policies[0] is not None else [],
        randomness=randomness,
    )
    template = builds[0]
    for i, stage in enumerate(template.stages):
        if stage.buffer is not None:
            stage.buffer = StackedBuffer([b.stages[i].buffer for b in builds])
    loop = OfflineLoop(
        template.stages,
        StackedBuffer([v.buffer for v in views]),
        modules=template.modules,
        stack=stack,
    )
    return loop, streams


def _tensors(loop: OfflineLoop) -> dict[str, torch.Tensor]:
    out = {}
    for name, module in loop.modules.items():
        for key, value in module.state_dict(keep_vars=True).items():
            if isinstance(value, torch.Tensor):
                out[f"{name}.{key}"] = value
    return out


def _assert_close(what, single, stacked, k, rtol=1e-4, atol=1e-5):
    if single is None and stacked is None:
        return
    assert single is not None and stacked is not None, f"{what}: gradient on one side only"
    torch.testing.assert_close(
        stacked[k], single, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}"
    )


@pytest.fixture
def shared_draws(monkeypatch):
    """``Normal.sample`` as ``loc + scale · randn_like(loc)`` (the same distribution), on both
    sides of a comparison: vmap's ``randomness="same"`` cannot draw ``torch.normal`` from batched
    means, but can draw ``randn_like``, so a stacked call and a single-seed call then see the
    same numbers."""

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            loc = self.loc.expand(shape)
            return loc + self.scale.expand(shape) * torch.randn_like(loc)

    monkeypatch.setattr(torch.distributions.Normal, "sample", sample)


@pytest.mark.parametrize("algo", ["iql", "sql", "xql", "awac", "sfac", "td3bc", "srpo", "bdpo"])
def test_seed_k_of_a_stacked_run_is_a_single_run_of_seed_k(
    algo, recipe_dataset, tmp_path, shared_draws
):
    cfg = _compose(algo, recipe_dataset)
    run = _run(cfg, tmp_path)
    singles, streams = _build(algo, run, stacked=False)
    stacked, _ = _build(algo, _run(cfg, tmp_path), stacked=True)
    single_tensors = [_tensors(loop) for loop in singles]
    stacked_tensors = _tensors(stacked)
    assert set(stacked_tensors) == set(single_tensors[0])
    for key, value in stacked_tensors.items():  # the same initialization, seed by seed
        for k in range(K):
            _assert_close(f"init {key}", single_tensors[k][key], value, k, rtol=0, atol=0)

    checked, ran = 0, set()
    for i, stage in enumerate(stacked.stages):
        if stage.steps == 0:
            continue
        update = stacked._update_fn(stage)
        single_updates = [loop._update_fn(loop.stages[i]) for loop in singles]
        for step in range(min(stage.steps, CHECKED_STEPS.get(algo, 3))):
            batches = [stream.sample() for stream in streams[i]]
            stacked.stage_step = step
            torch.manual_seed(1000 + step)
            out, _ = stacked._step(stage, update, torch.stack(batches))
            for k, loop in enumerate(singles):
                loop.stage_step = step
                torch.manual_seed(1000 + step)
                single_out, _ = loop._step(loop.stages[i], single_updates[k], batches[k])
                assert len(single_out) == len(out)
                ran.update(objective.name for objective, _ in out)
                for (objective, td), (_, td_k) in zip(out, single_out):
                    for key in td_k.keys():
                        if key.startswith("loss_"):
                            _assert_close(
                                f"{stage.name}/{objective.name}/{key}", td_k[key], td[key], k
                            )
                            checked += 1
                single_now = _tensors(loop)
                for key, value in stacked_tensors.items():
                    _assert_close(
                        f"{stage.name} step {step} grad {key}", single_now[key].grad, value.grad, k
                    )
                    _assert_close(f"{stage.name} step {step} {key}", single_now[key], value, k)
    assert checked > 0
    every = {o.name for stage in stacked.stages if stage.steps for o in stage.objectives}
    assert ran == every, f"objectives never compared: {sorted(every - ran)}"


def test_randomness_differs_across_seeds_by_default(recipe_dataset, tmp_path, shared_draws):
    """With the default ``randomness="different"``, each seed draws its own noise: AWAC's
    advantage baseline (actions sampled from the policy) then differs between seeds whose
    networks and batches are made identical; with ``"same"`` it does not."""
    cfg = _compose("awac", recipe_dataset)
    loop, _ = _build("awac", _run(cfg, tmp_path), stacked=True, randomness="different")
    loss = loop.modules["loss"]
    with torch.no_grad():
        for leaf in TensorDict.from_module(loss).values(True, True):
            leaf.copy_(leaf[:1].expand_as(leaf))
    batch = loop.buffer.buffers[0].sample()
    stacked_batch = torch.stack([batch] * K)
    out = loop.stack.call(loss, stacked_batch)
    same = loop.stack
    same.randomness = "same"
    again = same.call(loss, stacked_batch)
    assert not torch.equal(out["loss_actor"][0], out["loss_actor"][1])
    assert torch.equal(again["loss_actor"][0], again["loss_actor"][1])


def test_each_seed_keeps_its_own_batch_stream(recipe_dataset, tmp_path):
    cfg = _compose("iql", recipe_dataset)
    run = _run(cfg, tmp_path)
    stacked = StackedBuffer([run.for_seed(k).buffer for k in range(K)])
    singles = [make_offline_replay_buffer(recipe_dataset, 16, seed=SEED + k) for k in range(K)]
    for _ in range(3):
        batch = stacked.sample()
        for k, single in enumerate(singles):
            assert torch.equal(batch[k]["observation"], single.sample()["observation"])
    state = stacked.state_dict()
    after = stacked.sample()
    stacked.load_state_dict(state)
    assert torch.equal(stacked.sample()["observation"], after["observation"])
    with pytest.raises(ValueError, match="stacked seeds"):
        stacked.load_state_dict({"seeds": state["seeds"][:2]})


def test_per_seed_gradient_clipping_leaves_other_seeds_alone():
    big = torch.zeros(3, 4, requires_grad=True)
    small = torch.zeros(3, 2, requires_grad=True)
    big.grad = torch.tensor([[30.0, 40.0, 0, 0], [0.3, 0.4, 0, 0], [0, 0, 0, 0]])
    small.grad = torch.zeros(3, 2)
    norms = clip_grad_norm_per_seed([big, small], 1.0, 3)
    torch.testing.assert_close(norms, torch.tensor([50.0, 0.5, 0.0]))
    # seed 0 is scaled to norm 1 (PyTorch's max_norm / (norm + 1e-6)), seeds 1 and 2 untouched
    torch.testing.assert_close(big.grad[0].norm(), torch.tensor(1.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(big.grad[1], torch.tensor([0.3, 0.4, 0, 0]))
    reference = torch.tensor([30.0, 40.0, 0, 0], requires_grad=True)
    reference.grad = torch.tensor([30.0, 40.0, 0, 0])
    torch.nn.utils.clip_grad_norm_([reference], 1.0)
    torch.testing.assert_close(big.grad[0], reference.grad)


def test_stacking_refuses_seeds_that_built_other_networks():
    a = {"net": torch.nn.Linear(3, 4)}
    b = {"net": torch.nn.Linear(3, 5)}
    with pytest.raises(ValueError, match="shapes"):
        SeedStack.stack([a, b])
    with pytest.raises(ValueError, match="same modules"):
        SeedStack.stack([a, {"other": torch.nn.Linear(3, 4)}])
    with pytest.raises(ValueError, match="at least one seed"):
        SeedStack.stack([])


def test_bf16_update_keeps_fp32_weights_and_outputs(recipe_dataset, tmp_path):
    """``precision=bf16``: the loss forward under autocast (matmuls in bf16), network outputs cast
    back to fp32, so the losses are fp32 and close to the fp32 losses of the same networks and
    batch; parameters, gradients and Adam's moments stay fp32."""
    from torchrl_sym.train.precision import keep_outputs_fp32

    cfg = _compose("iql", recipe_dataset)
    singles, streams = _build("iql", _run(cfg, tmp_path), stacked=False)
    loop = singles[0]
    stage = loop.stages[0]
    loss = loop.modules["loss"]
    batch = streams[0][0].sample()
    reference = loss(batch.copy())
    assert keep_outputs_fp32(loop.modules.values()) > 0
    assert keep_outputs_fp32(loop.modules.values()) == 0  # idempotent
    loop.precision = "bf16"
    out, _ = loop._step(stage, loop._update_fn(stage), batch)
    terms = out[0][1]
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        assert terms[key].dtype == torch.float32
        assert torch.isfinite(terms[key])
        torch.testing.assert_close(terms[key], reference[key].detach(), rtol=0.05, atol=0.05)
    for p in loss.parameters():
        assert p.dtype == torch.float32
        assert p.grad is None or p.grad.dtype == torch.float32
    for opt in stage.objectives[0].optimizers:
        for state in opt.state.values():
            assert state["exp_avg"].dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = loss.qvalue_network(batch.copy())["state_action_value"]
    assert q.dtype == torch.float32  # the hook casts the network's output back


def test_bf16_matmul_hardware_is_read_from_cpuinfo_and_its_absence_warned(tmp_path):
    """precision=bf16 on a CPU whose cpuinfo lists neither amx_bf16 nor avx512_bf16 gets a warning
    naming the file and the way out; with the hardware, an unreadable cpuinfo, fp32 or a GPU, none."""
    from torchrl_sym.train.precision import bf16_matmul_hardware, emulated_bf16_warning

    files = {
        "amx": "flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile\n",
        "avx512": "flags\t\t: fpu avx2 avx512f avx512_bf16\n",
        "none": "flags\t\t: fpu avx2 avx512f avx512_vnni\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    assert bf16_matmul_hardware(tmp_path / "amx") == ["amx_bf16"]
    assert bf16_matmul_hardware(tmp_path / "avx512") == ["avx512_bf16"]
    assert bf16_matmul_hardware(tmp_path / "none") == []
    assert bf16_matmul_hardware(tmp_path / "missing") is None
    warning = emulated_bf16_warning("bf16", "cpu", tmp_path / "none")
    assert warning.startswith("precision=bf16 on a CPU without bf16 matmul hardware")
    assert str(tmp_path / "none") in warning and "Use precision=fp32" in warning
    for precision, device, name in (
        ("fp32", "cpu", "none"),
        ("bf16", "cpu", "amx"),
        ("bf16", "cpu", "avx512"),
        ("bf16", "cpu", "missing"),
        ("bf16", "cuda", "none"),
    ):
        assert emulated_bf16_warning(precision, device, tmp_path / name) is None


def test_precision_must_be_fp32_or_bf16():
    from torchrl_sym.train.loop import Objective, Stage

    stage = Stage("train", 1, [Objective("x", lambda b: b, [])])
    with pytest.raises(ValueError, match="precision='fp16' is not a precision"):
        OfflineLoop([stage], None, modules={}, precision="fp16")


@pytest.mark.parametrize("algo", ["sfac", "bdpo"])
def test_weight_gradients_arrive_in_their_parameters_layout(algo, recipe_dataset, tmp_path):
    """Stacked weights are laid out as their gradients come (docs/design.md "Stacked seeds"):
    autograd then hands each gradient over without a copy. Checked on the gradient as it reaches
    the parameter, before accumulation, for every parameter of two or more dims (Linear weights,
    TorchRL's Q ensembles, BDPO's EnsembleLinear)."""
    cfg = _compose(algo, recipe_dataset)
    loop, _ = _build(algo, _run(cfg, tmp_path), stacked=True)
    stage = loop.stages[-1]
    objective = stage.objectives[0]
    params = [p for p in objective._params if p.dim() >= 3]
    assert params
    arrived = {}
    handles = [
        p.register_hook(lambda g, i=i: arrived.__setitem__(i, g.stride()))
        for i, p in enumerate(params)
    ]
    batch = loop.buffer.sample()
    out = loop.stack.call(objective.loss, batch)
    sum(v.sum() for k, v in out.items() if k.startswith("loss_")).backward()
    for h in handles:
        h.remove()
    assert arrived
    for i, strides in arrived.items():
        p = params[i]
        # autograd's layout contract compares the strides of the dims of size > 1
        mine = [st for st, n in zip(p.stride(), p.shape) if n > 1]
        theirs = [st for st, n in zip(strides, p.shape) if n > 1]
        assert mine == theirs, (tuple(p.shape), p.stride(), strides)


def test_constant_buffers_stay_shared_and_state_is_stacked():
    """A non-persistent buffer equal in every seed (a schedule's tables) stays one tensor with no
    slot; a persistent buffer, or a non-persistent one that differs by seed, is stacked."""

    class Net(torch.nn.Module):
        def __init__(self, seed: int):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)
            self.register_buffer("table", torch.arange(4.0), persistent=False)
            self.register_buffer("noise", torch.full((3,), float(seed)), persistent=False)
            self.register_buffer("count", torch.zeros(()))

    nets = [Net(k) for k in range(K)]
    table = nets[0].table
    stack = SeedStack.stack([{"net": n} for n in nets])
    net = stack.modules["net"]
    assert net.table is table and net.table.shape == (4,)
    assert net.noise.shape == (K, 3) and net.noise[:, 0].tolist() == [0.0, 1.0, 2.0]
    assert net.count.shape == (K,)
    assert net.lin.weight.shape == (K, 2, 2)
    swapped = {(name, where) for _, where, name in stack._slots.loose}
    assert ("table", "_buffers") not in swapped and ("noise", "_buffers") in swapped
    out = stack.call(
        lambda td: TensorDict({"y": net.lin(td["x"]) + net.table[:2] + net.noise[:2]}, []),
        TensorDict({"x": torch.ones(K, 5, 2)}, [K, 5]),
    )
    assert out["y"].shape == (K, 5, 2)
    with torch.no_grad():
        for k in range(K):
            expected = torch.ones(5, 2) @ net.lin.weight[k].T + net.lin.bias[k]
            expected = expected + torch.arange(2.0) + k
            torch.testing.assert_close(out["y"][k].detach(), expected)


@pytest.mark.slow
def test_a_stacked_bdpo_update_compiles(recipe_dataset, tmp_path):
    """Regression: with the diffusion schedules' tables swapped as per-seed slots, compiling a
    stacked BDPO update failed (BackendCompilerFailed: Cannot access storage of
    BatchedTensorImpl): the schedule the loss holds is the one its network's functional call
    swaps too."""
    cfg = _compose("bdpo", recipe_dataset)
    loop, streams = _build("bdpo", _run(cfg, tmp_path), stacked=True, randomness="different")
    loop.compile = True
    for i, stage in enumerate(loop.stages):
        if stage.steps == 0:
            continue
        prepare_optimizers(
            [o for obj in stage.objectives for o in obj.optimizers], graphs=False, compiled=True
        )
        update = loop._update_fn(stage)
        for step in range(2):
            loop.stage_step = step
            batch = torch.stack([stream.sample() for stream in streams[i]])
            out, _ = loop._step(stage, update, batch)
            for _, td in out:
                for key, value in td.items():
                    if isinstance(key, str) and key.startswith("loss_"):
                        assert value.shape[:1] == (K,) and torch.isfinite(value).all(), key


def test_compiling_an_update_raises_dynamos_recompile_limit(monkeypatch):
    """Each objective's loss is a variant of the frames a stacked update shares (SeedStack.call,
    the per-seed clipping, an optimizer's step): at torch's default of 8 variants per frame a
    stacked BDPO run's train stage fell back to eager steps (0.23 -> 0.68 s a step)."""
    import torch._dynamo

    from torchrl_sym.train.loop import RECOMPILE_LIMIT, Objective, Stage

    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 8)
    monkeypatch.setattr(torch._dynamo.config, "accumulated_recompile_limit", 256)
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters())
    stage = Stage(
        "s",
        1,
        [Objective("o", lambda td: TensorDict({"loss_o": net(td["x"]).sum()}, []), [opt])],
    )
    buffer = None  # never sampled: only the update is built
    eager = OfflineLoop([stage], buffer, modules={"net": net})
    eager._update_fn(stage)
    assert torch._dynamo.config.recompile_limit == 8  # nothing compiled, nothing raised
    compiled = OfflineLoop([stage], buffer, modules={"net": net}, compile=True)
    compiled._update_fn(stage)
    assert torch._dynamo.config.recompile_limit == RECOMPILE_LIMIT >= 32
    assert torch._dynamo.config.accumulated_recompile_limit >= RECOMPILE_LIMIT
