"""The GPU path of the training loop: graph-safe optimizers, one CUDA graph per cadence pattern,
no host sync inside an update step, portable checkpoints, clear errors.

What needs a CUDA device is skipped without one (never faked); the rest runs on the CPU: the
optimizer conversion and its round trip through a checkpoint, the per-pattern capture plumbing
(tensordict's CudaGraphModule runs the function unchanged on a machine without CUDA), and a
host-read probe of every loss's update step (a read of a tensor's value on the host is where a
CUDA step would synchronize).
"""

from __future__ import annotations

import collections
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode
from torchrl.objectives import SoftUpdate

from tests.test_loop import _dataset as _loop_dataset
from torchrl_sym.data import make_offline_replay_buffer
from torchrl_sym.train import loop as loop_module
from torchrl_sym.train.loop import (
    Objective,
    OfflineLoop,
    Stage,
    TargetUpdate,
    prepare_optimizers,
)

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _dataset(n=256, device="cpu"):
    """test_loop's synthetic transitions with a ``done`` flag, on ``device``."""
    data = _loop_dataset(n=n)
    data["next", "done"] = torch.zeros(n, 1, dtype=torch.bool)
    return data.to(device)


def _iql_stage(device="cpu", steps=12, hidden=(16, 16)):
    """An IQL stage with two cadence patterns (a second value objective every 3rd step), a
    cosine-scheduled actor learning rate and a Polyak target update."""
    from torchrl.objectives import IQLLoss

    from torchrl_sym.models import make_gaussian_actor, make_qvalue, make_value

    loss = IQLLoss(
        make_gaussian_actor(5, 2, hidden),
        make_qvalue(5, 2, hidden),
        make_value(5, hidden),
        expectile=0.7,
        temperature=3.0,
        loss_function="l2",
    ).to(device)
    loss.make_value_estimator(gamma=0.99)
    opts = [
        torch.optim.Adam(p.values(True, True), lr=1e-3)
        for p in (loss.value_network_params, loss.actor_network_params, loss.qvalue_network_params)
    ]
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opts[1], T_max=steps)
    stage = Stage(
        "train",
        steps,
        objectives=[
            Objective("iql", loss, opts, schedulers=[sched], max_grad_norm=10.0),
            Objective(
                "v",
                lambda td, loss=loss: TensorDict({"loss_v2": loss.value_loss(td)[0]}, []),
                [opts[0]],
                every=3,
            ),
        ],
        targets=[TargetUpdate(SoftUpdate(loss, tau=0.1))],
    )
    return loss, opts, stage


# ------------------------------------------------------------------------------------------------
# Graph-safe optimizers
# ------------------------------------------------------------------------------------------------


def _adam_trajectory(opt_factory, steps=5, round_trip=False):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4))
    opt = opt_factory([p])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for i in range(steps):
        opt.zero_grad()
        (p * torch.arange(4.0)).pow(2).sum().backward()
        opt.step()
        sched.step()
        if (
            round_trip and i == 1
        ):  # a checkpoint round trip in the middle (graph-kind state -> plain optimizer)
            state = loop_module._portable(opt.state_dict())
            opt = opt_factory([p])
            opt.load_state_dict(state)
            prepare_optimizers([opt], graphs=True)
            sched.optimizer = opt
    return p.detach().clone(), opt


def test_prepare_optimizers_on_cpu_keeps_pytorch_defaults_and_values():
    plain, _ = _adam_trajectory(lambda ps: torch.optim.Adam(ps, lr=1e-2))
    # a state as a CUDA-graph run leaves it (tensor lr, capturable) loaded on the CPU: prepare
    # turns it back into a plain optimizer whose steps are the same
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([p], lr=torch.tensor(1e-2), capturable=False, foreach=False)
    opt.param_groups[0]["capturable"] = True
    p.grad = torch.ones(2)
    opt.param_groups[0]["capturable"] = False
    opt.step()
    opt.param_groups[0]["capturable"] = True
    prepare_optimizers([opt], graphs=True)  # CPU parameters: no graphs possible, defaults back
    group = opt.param_groups[0]
    assert group["capturable"] is False and isinstance(group["lr"], float)
    assert group["lr"] == pytest.approx(1e-2) and opt.state[p]["step"].device.type == "cpu"
    opt.step()  # a plain Adam step works
    # the trajectory with a mid-run round trip equals the plain one
    again, opt2 = _adam_trajectory(lambda ps: torch.optim.Adam(ps, lr=1e-2), round_trip=True)
    torch.testing.assert_close(again, plain, rtol=0, atol=0)
    assert isinstance(opt2.param_groups[0]["lr"], float)


def test_checkpoints_hold_portable_optimizer_states(tmp_path):
    buffer = make_offline_replay_buffer(_dataset(), 32, seed=0)
    loss, opts, stage = _iql_stage(steps=4)
    loop = OfflineLoop([stage], buffer, modules={"loss": loss}, progress=False)
    loop.run()
    # as prepare_optimizers leaves a CUDA optimizer (faked on the CPU: only the state dict is read)
    opts[1].param_groups[0]["lr"] = torch.tensor(opts[1].param_groups[0]["lr"])
    opts[1].param_groups[0]["capturable"] = True
    saved = loop.state_dict()["optimizers"]
    for state in saved.values():
        for group in state["param_groups"]:
            assert isinstance(group["lr"], float) and not group["capturable"]
    # the live optimizer is untouched by saving
    assert isinstance(opts[1].param_groups[0]["lr"], torch.Tensor)


# ------------------------------------------------------------------------------------------------
# CUDA graphs, one per cadence pattern
# ------------------------------------------------------------------------------------------------


def test_cudagraphs_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(loop_module, "_cuda_available", lambda: False)
    loss, _, stage = _iql_stage()
    with pytest.raises(ValueError, match=r"cudagraphs=True .*CUDA is not available"):
        OfflineLoop([stage], object(), modules={"loss": loss}, cudagraphs=True)
    with pytest.raises(ValueError, match="cudagraph_warmup"):
        OfflineLoop([stage], object(), modules={"loss": loss}, cudagraph_warmup=0)


def test_cudagraphs_with_a_batch_off_the_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(loop_module, "_cuda_available", lambda: True)
    buffer = make_offline_replay_buffer(_dataset(), 32, seed=0)
    loss, _, stage = _iql_stage()
    loop = OfflineLoop([stage], buffer, modules={"loss": loss}, cudagraphs=True, progress=False)
    with (
        warnings.catch_warnings(),
        pytest.raises(ValueError, match=r"needs the batch on a CUDA device.*device=cuda"),
    ):
        warnings.simplefilter("ignore")
        loop.run()


def test_one_graph_per_cadence_pattern_and_the_same_training(monkeypatch):
    """The capture plumbing on the CPU (CudaGraphModule runs the function as is without CUDA):
    one graph object per cadence pattern, training identical to the uncaptured loop."""
    results = []
    for graphs in (False, True):
        torch.manual_seed(0)
        buffer = make_offline_replay_buffer(_dataset(), 32, seed=0)
        loss, _, stage = _iql_stage(steps=9)
        if graphs:
            monkeypatch.setattr(loop_module, "_cuda_available", lambda: True)
            monkeypatch.setattr(loop_module, "_on_cuda", lambda batch: True)
        loop = OfflineLoop(
            [stage], buffer, modules={"loss": loss}, cudagraphs=graphs, progress=False
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # CudaGraphModule: "instantiated without CUDA"
            loop.run()
        if graphs:
            update = stage._compiled[False]
            assert isinstance(update, loop_module._GraphPerPattern)
            assert set(update.graphs) == {((True, True), (True,)), ((True, False), (True,))}
        assert loop.uses_cuda_graphs is graphs
        results.append({k: v.clone() for k, v in loss.state_dict().items()})
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=0, atol=0)


def test_reduce_overhead_counts_as_cuda_graphs():
    loss, _, stage = _iql_stage()
    for compile_arg, expected in (
        (False, False),
        (True, False),
        ({"mode": "reduce-overhead"}, True),
        ({"mode": "max-autotune"}, True),
        ({"mode": "max-autotune-no-cudagraphs"}, False),
    ):
        loop = OfflineLoop([stage], object(), modules={"loss": loss}, compile=compile_arg)
        assert loop.uses_cuda_graphs is expected, compile_arg


def test_recipe_refuses_cudagraphs_off_the_gpu(tmp_path, recipe_dataset):
    cmd = [
        sys.executable,
        str(ROOT / "recipes" / "iql.py"),
        "cudagraphs=true",
        "device=cpu",
        f"dataset={recipe_dataset}",
        "logger.backend=none",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "cudagraphs=true captures the update in CUDA graphs and needs device=cuda" in (
        proc.stderr + proc.stdout
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------------
# No host sync inside a step
# ------------------------------------------------------------------------------------------------

# Ops that read a tensor's value on the host (a device->host copy and a sync on CUDA) or whose
# output shape depends on the data (nonzero and friends also sync).
_HOST_READS = {
    torch.ops.aten._local_scalar_dense.default,
    torch.ops.aten.is_nonzero.default,
    torch.ops.aten.nonzero.default,
    torch.ops.aten.masked_select.default,
    torch.ops.aten.unique_dim.default,
    torch.ops.aten._unique2.default,
}
# Reads that are not device syncs, named by (file, function) anywhere in the stack:
_ALLOWED = {
    # a non-capturable optimizer's step counter lives on the CPU also in a CUDA run (a capturable
    # one, the CUDA-graph path, keeps it on the device and never reads it)
    ("optimizer.py", "_get_value"),
    # TorchRL's TanhNormal checks its bounds in eager mode only; it skips the check when compiling
    # or capturing a CUDA graph, the GPU path's two modes
    ("continuous.py", "__init__"),
}


class HostReads(TorchDispatchMode):
    """Records every host read of a tensor value that no entry of ``_ALLOWED`` explains."""

    def __init__(self):
        super().__init__()
        self.found = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            stack = traceback.extract_stack()
            if not any((Path(f.filename).name, f.name) in _ALLOWED for f in stack):
                ours = [f for f in stack if "site-packages/torch/" not in f.filename][-4:]
                where = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in reversed(ours))
                self.found[f"{func} at {where}"] += 1
        return func(*args, **(kwargs or {}))


def test_the_host_read_probe_finds_a_read():
    p = torch.nn.Parameter(torch.ones(3))
    with HostReads() as probe:
        if (p * 2).sum() > 0:  # bool() of a tensor
            p.detach().max().item()
        torch.nonzero(p)
    assert len(probe.found) == 3, dict(probe.found)
    assert all("test_gpu_path.py" in k for k in probe.found)


def _in_loop(loss, batch, *, opts=None):
    """The loop's update function of one stage training every parameter of ``loss``, and the
    cadence arguments of its step."""
    opts = opts or [torch.optim.Adam([p for p in loss.parameters() if p.requires_grad], lr=3e-4)]
    stage = Stage(
        "train",
        1,
        objectives=[Objective("all", loss, opts, max_grad_norm=1.0)],
        targets=[TargetUpdate(SoftUpdate(loss, tau=0.005))],
    )
    loop = OfflineLoop([stage], object(), modules={"loss": loss}, progress=False)
    return lambda: loop._update_fn(stage)(batch, (True,), (True,))


def _td3bc():
    from omegaconf import OmegaConf

    from torchrl_sym.recipes.td3bc import make_loss

    hp = OmegaConf.load(ROOT / "torchrl_sym" / "configs" / "td3bc.yaml").td3bc
    hp.hidden = [32, 32]
    return make_loss(11, 3, hp)


@pytest.mark.parametrize("name", ["iql", "awac", "sql", "xql", "sfac", "td3bc"])
def test_no_host_sync_in_an_update_of_the_in_sample_losses(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_losses

    torch.manual_seed(0)
    loss = _td3bc() if name == "td3bc" else bench_losses.build_loss(name, 11, 3, [32, 32])
    step = _in_loop(loss, bench_losses._batch(16, 11, 3))
    step()  # lazy state (Adam moments) is created outside the probe
    with HostReads() as probe:
        step()
    assert not probe.found, dict(probe.found)


@pytest.mark.parametrize("name", ["srpo", "bdpo"])
def test_no_host_sync_in_the_diffusion_updates(name, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # bench_losses imports cases_<name>
    import bench_losses

    torch.manual_seed(0)
    for label, update, batch in bench_losses.cases(name, 11, 3, [32, 32], 8):
        update(batch)
        with HostReads() as probe:
            update(batch)
        assert not probe.found, (label, dict(probe.found))


def test_no_host_sync_in_sampling_a_batch(hopper_minari_id):
    buffer = make_offline_replay_buffer(hopper_minari_id, 64, seed=0)
    buffer.sample()
    with HostReads() as probe:
        batch = buffer.sample()
    assert batch.batch_size == torch.Size([64])
    assert not probe.found, dict(probe.found)


# ------------------------------------------------------------------------------------------------
# On a CUDA device (skipped without one)
# ------------------------------------------------------------------------------------------------


def _cuda_run(cudagraphs: bool, compile_arg=False, steps=30):
    torch.manual_seed(0)
    buffer = make_offline_replay_buffer(_dataset(device="cuda"), 32, seed=0, device="cuda")
    loss, opts, stage = _iql_stage(device="cuda", steps=steps)
    loop = OfflineLoop(
        [stage],
        buffer,
        modules={"loss": loss},
        cudagraphs=cudagraphs,
        compile=compile_arg,
        progress=False,
    )
    loop.run()
    torch.cuda.synchronize()
    return loss, opts, stage, loop


@cuda
def test_cuda_graphs_train_like_eager_on_the_gpu():
    eager, *_ = _cuda_run(cudagraphs=False)
    graphed, opts, stage, loop = _cuda_run(cudagraphs=True)
    assert loop.uses_cuda_graphs
    assert len(stage._compiled[False].graphs) == 2
    for opt in opts:
        group = opt.param_groups[0]
        assert group["capturable"] and group["lr"].device.type == "cuda"
    # the scheduled learning rate reached the captured graph: at the end of the cosine it is 0
    assert float(opts[1].param_groups[0]["lr"]) == pytest.approx(0.0, abs=1e-9)
    a, b = eager.state_dict(), graphed.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)


@cuda
def test_reduce_overhead_compile_trains_like_eager_on_the_gpu():
    eager, *_ = _cuda_run(cudagraphs=False)
    compiled, opts, _, loop = _cuda_run(cudagraphs=False, compile_arg={"mode": "reduce-overhead"})
    assert loop.uses_cuda_graphs and opts[0].param_groups[0]["capturable"]
    a, b = eager.state_dict(), compiled.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-4)


@cuda
def test_no_synchronizing_call_in_a_compiled_gpu_step():
    """On the device itself: CUDA's sync debug mode raises on any synchronizing call."""
    torch.manual_seed(0)
    buffer = make_offline_replay_buffer(_dataset(device="cuda"), 32, seed=0, device="cuda")
    loss, _, stage = _iql_stage(device="cuda", steps=4)
    loop = OfflineLoop([stage], buffer, modules={"loss": loss}, compile=True, progress=False)
    update = loop._update_fn(stage)
    for _ in range(3):  # compile and warm up both cadence patterns
        update(buffer.sample(), (True, True), (True,))
        update(buffer.sample(), (True, False), (True,))
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        update(buffer.sample(), (True, False), (True,))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@cuda
def test_a_dataset_given_on_the_gpu_loads_with_its_statistics_on_the_cpu():
    """A TensorDict already on the GPU is a valid dataset: its statistics (episode returns,
    observation loc/scale) are computed on the CPU as documented, and the buffer samples on the
    device asked for (this failed with "cuda:0 ... cpu" in torch.cat before; found on the H200)."""
    buffer = make_offline_replay_buffer(_dataset(device="cuda"), 32, seed=0, device="cuda")
    info = buffer.info
    assert info.episode_returns.device.type == "cpu"
    assert info.observation_loc.device.type == "cpu"
    assert buffer.sample().device.type == "cuda"


@cuda
def test_bdpo_updates_run_on_the_gpu(monkeypatch):
    """The BDPO critic and actor updates at the paper's sizes, on the device (add_noise read its
    schedule from the CPU before the loss registered the networks' schedules)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_losses

    torch.manual_seed(0)
    for label, update, batch in bench_losses.cases("bdpo", 11, 3, [256, 256], 64, "cuda"):
        for _ in range(2):
            out = update(batch)
        assert all(torch.isfinite(v).all() for v in out.values()), label


@cuda
def test_torchrl_iql_update_captures_in_a_cuda_graph(monkeypatch):
    """TorchRL's IQLLoss writes grad-requiring actor outputs into its input; the benchmark's
    update gives it a shallow copy (as the loop gives each step a fresh batch), so the update
    can be captured (it could not: "CudaGraphModule cannot be part of a graph")."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_losses

    torch.manual_seed(0)
    ((_, update, batch),) = bench_losses.cases("iql", 11, 3, [64, 64], 32, "cuda")
    graphed = bench_losses._graphed(torch.compile(update))
    for _ in range(6):  # warmup, capture, replays
        out = graphed(batch)
    torch.cuda.synchronize()
    assert torch.isfinite(out["loss_qvalue"]).all()
