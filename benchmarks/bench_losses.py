"""Update speed of every loss beside TorchRL's own IQLLoss, eager and compiled, in one run.

For each loss, one update is: forward on a batch, sum of the ``loss_*`` terms, backward, one Adam
step per network, and the Polyak target update; at D4RL size (Hopper: observation 11, action 3,
batch 256, 2×256 MLPs). Printed per loss:

* updates/s eager and ``torch.compile`` d (inductor, whole update);
* GFLOP per update, counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convs:
  the work the update cannot avoid);
* achieved GFLOP/s (compiled) and its fraction of this machine's large-matmul peak, measured in the
  same run (a 2048³ float32 matmul), so the ratio holds whatever the load.

    python benchmarks/bench_losses.py                  # all losses (several minutes: compiles)
    python benchmarks/bench_losses.py --losses iql sfac --quick
    python benchmarks/bench_losses.py --threads 1 2 --write docs/benchmarks.md   # one table per count
    python benchmarks/bench_losses.py --device cuda --write docs/benchmarks.md    # the GPU section
    python benchmarks/bench_losses.py --stack-seeds 5 --precision bf16 --losses sfac iql --quick

On a GPU (``--device cuda``) the data and networks live on the device, Adam is ``capturable`` (the
CUDA-graph column needs it; every column uses it so they time the same update), and a third column
times the compiled update captured in a CUDA graph (tensordict's ``CudaGraphModule``, as the
training loop's ``cudagraphs=true``). ``--write`` replaces only its device's section of the page
(CPU or GPU) and keeps the other; it rewrites the section after every loss (marked partial until
the run ends), so a run stopped at a time limit keeps the rows it measured. A column that fails
(a compile, a graph capture) shows "—" and is named under the table; the run goes on.

With ``--stack-seeds K`` (and ``--precision fp32|bf16``) it measures stacked seeds instead: per
loss, K seeds in one vmapped update (the training loop's own update step, ``stack_seeds=K``) beside
one fp32 seed, each eager and compiled, in the same run; the figure is seed-updates per second
(K × updates/s), and each loss prints ``<loss>: seed-updates/s ratio vs one fp32 seed: <x>`` (best
of eager and compiled, stacked, over best of eager and compiled, one fp32 seed). Besides the
one-loss updates, ``srpo-behavior`` (SRPO's diffusion behavior cloning, AdamW) and ``bdpo-critic``
(BDPO's Q and V_n losses with per-seed gradient clipping and the critic EMA) stack too.

Besides the losses, ``iql_hand`` is IQL written in plain PyTorch (the reference for how fast an
update of this size can run); ``srpo`` and ``bdpo`` come from ``benchmarks/cases_<algo>.py``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
from tensordict import TensorDict
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry
from torchrl.objectives import IQLLoss, SoftUpdate

from torchrl_sym.models import (
    make_gaussian_actor,
    make_qvalue,
    make_tanh_gaussian_actor,
    make_value,
)


def _batch(n: int, obs_dim: int, act_dim: int, seed: int = 0, device="cpu") -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": (torch.rand(n, act_dim, generator=g) * 2 - 1) * (1 - 1e-5),
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    ).to(device)


def adam(params, lr: float = 3e-4, **kwargs) -> torch.optim.Adam:
    """The benchmarks' Adam: ``capturable`` for parameters on a CUDA device (a CUDA graph can
    step it), PyTorch's defaults elsewhere."""
    params = list(params)
    on_cuda = bool(params) and params[0].device.type == "cuda"
    return torch.optim.Adam(params, lr=lr, capturable=on_cuda, **kwargs)


def build_loss(name: str, obs_dim: int, act_dim: int, hidden: list[int]):
    """The loss module of ``name`` with the networks its recipe uses."""
    from torchrl_sym.objectives import AWACLoss, SfACLoss, SQLLoss, XQLLoss

    if name == "iql":
        loss = IQLLoss(
            make_gaussian_actor(obs_dim, act_dim, hidden),
            make_qvalue(obs_dim, act_dim, hidden),
            make_value(obs_dim, hidden),
            expectile=0.7,
            temperature=3.0,
            loss_function="l2",
        )
    elif name == "awac":
        loss = AWACLoss(
            make_gaussian_actor(obs_dim, act_dim, hidden), make_qvalue(obs_dim, act_dim, hidden)
        )
    elif name == "sql":
        loss = SQLLoss(
            make_gaussian_actor(obs_dim, act_dim, hidden),
            make_qvalue(obs_dim, act_dim, hidden),
            make_value(obs_dim, hidden),
            alpha=2.0,
        )
    elif name == "xql":
        loss = XQLLoss(
            make_gaussian_actor(obs_dim, act_dim, hidden),
            make_qvalue(obs_dim, act_dim, hidden),
            make_value(obs_dim, hidden, layer_norm=True),
        )
    elif name == "sfac":
        bounds = (-5.0, 2.0)
        loss = SfACLoss(
            make_tanh_gaussian_actor(obs_dim, act_dim, hidden, log_std_bounds=bounds),
            make_qvalue(obs_dim, act_dim, hidden),
            make_value(obs_dim, hidden),
            make_tanh_gaussian_actor(obs_dim, act_dim, hidden, log_std_bounds=bounds),
            behavior_warmup=0,
        )
    else:
        raise ValueError(f"unknown loss {name!r}")
    loss.make_value_estimator(gamma=0.99)
    return loss


# Losses whose update is not "one loss module, one Adam" (staged or split losses) provide their own
# cases from ``benchmarks/cases_<name>.py``:
#   updates(obs_dim, act_dim, hidden, batch_size) -> list[(label, update(batch) -> TensorDict, batch)]
#   extra_section(min_time) -> list[str]   (optional: markdown lines appended to the written page)
EXTERNAL = {"srpo": "cases_srpo", "bdpo": "cases_bdpo"}


def hand_written_iql(obs_dim: int, act_dim: int, hidden: list[int], device="cpu"):
    """IQL written as plain PyTorch (no TensorDict, no LossModule): the reference for how fast
    an update of this size can run. Same networks, losses and optimizer as TorchRL's IQLLoss
    with ``expectile=0.7, temperature=3, loss_function="l2"`` and a Gaussian actor."""
    from torch import nn

    def mlp(i, o):
        layers, d = [], i
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        return nn.Sequential(*layers, nn.Linear(d, o))

    actor, q1, q2, v = (
        mlp(obs_dim, 2 * act_dim).to(device),
        mlp(obs_dim + act_dim, 1).to(device),
        mlp(obs_dim + act_dim, 1).to(device),
        mlp(obs_dim, 1).to(device),
    )
    tq1, tq2 = copy.deepcopy(q1).requires_grad_(False), copy.deepcopy(q2).requires_grad_(False)
    nets = [actor, q1, q2, v]
    optim = adam([p for n in nets for p in n.parameters()])
    online = [p for n in (q1, q2) for p in n.parameters()]
    targets = [p for n in (tq1, tq2) for p in n.parameters()]

    def update(batch: TensorDict) -> TensorDict:
        s, a = batch["observation"], batch["action"]
        s2, r = batch["next", "observation"], batch["next", "reward"].squeeze(-1)
        nd = (~batch["next", "terminated"]).squeeze(-1).float()
        sa = torch.cat([s, a], -1)
        with torch.no_grad():
            min_q = torch.minimum(tq1(sa), tq2(sa)).squeeze(-1)
            y = r + 0.99 * nd * v(s2).squeeze(-1)
        value = v(s).squeeze(-1)
        u = min_q - value
        loss_v = (torch.where(u < 0, 0.3, 0.7) * u.pow(2)).mean()
        loss_q = (q1(sa).squeeze(-1) - y).pow(2).mean() + (q2(sa).squeeze(-1) - y).pow(2).mean()
        loc, log_scale = actor(s).chunk(2, -1)
        scale = nn.functional.softplus(log_scale) + 1e-4
        log_prob = torch.distributions.Normal(loc, scale).log_prob(a).sum(-1)
        w = torch.exp((min_q - value.detach()) * 3.0).clamp(max=100.0)
        loss_actor = -(w * log_prob).mean()
        optim.zero_grad(set_to_none=True)
        (loss_v + loss_q + loss_actor).backward()
        optim.step()
        with torch.no_grad():
            torch._foreach_lerp_(targets, online, 0.005)
        return TensorDict({"loss_actor": loss_actor.detach(), "loss_qvalue": loss_q.detach()}, [])

    return update


def cases(
    name: str,
    obs_dim: int,
    act_dim: int,
    hidden: list[int],
    batch_size: int,
    device: torch.device | str = "cpu",
):
    """``[(label, update, batch)]`` for loss ``name``, networks and batch on ``device``."""
    device = torch.device(device)
    batch = _batch(batch_size, obs_dim, act_dim, device=device)
    if name == "iql_hand":
        return [(name, hand_written_iql(obs_dim, act_dim, hidden, device), batch)]
    if name in EXTERNAL:
        module = importlib.import_module(EXTERNAL[name])
        return module.updates(obs_dim, act_dim, hidden, batch_size, device=device)
    loss = build_loss(name, obs_dim, act_dim, hidden).to(device)
    return [(name, make_update(loss), batch)]


def make_update(loss) -> Callable[[TensorDict], TensorDict]:
    params = [p for p in loss.parameters() if p.requires_grad]
    optim = adam(params)
    target = SoftUpdate(loss, tau=0.005)

    def update(batch: TensorDict) -> TensorDict:
        # a shallow copy: TorchRL's IQLLoss writes its actor's outputs (which require grad) into
        # the batch it is given; the training loop gives each step a fresh batch, so must this
        out = loss(batch.copy())
        total = sum(v for k, v in out.items() if k.startswith("loss_"))
        optim.zero_grad(set_to_none=True)
        total.backward()
        optim.step()
        target.step()
        return out.detach()

    return update


def _sync(device: torch.device | str | None) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rate(
    fn: Callable[[], object], min_time: float, warmup: int, device: torch.device | None = None
) -> float:
    """Calls per second of ``fn``; on a CUDA ``device`` the clock is read after the device has
    finished (one synchronize per timing window, none between calls)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    calls, start, batch = 0, time.perf_counter(), 1
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        _sync(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 5:
            return calls / elapsed
        if device is not None and torch.device(device).type == "cuda":
            batch = min(batch * 2, 256)  # fewer synchronizations as the window grows


def matmul_peak(n: int = 2048, min_time: float = 3.0, device: torch.device | None = None) -> float:
    """Large float32 matmul throughput in GFLOP/s (the machine's practical peak); float32 also on
    a GPU (TF32 off, PyTorch's default for matmuls)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    return rate(lambda: a @ b, min_time, warmup=2, device=device) * 2 * n**3 / 1e9


class FlopCount(TorchDispatchMode):
    """Counts FLOPs with ``torch.utils.flop_counter``'s formulas (matmuls, convolutions, attention).

    ``FlopCounterMode`` itself also tracks modules, which fails on TensorDict modules (their
    ``__bool__`` raises); the formulas are the same.
    """

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def flops_per_update(update, batch) -> float:
    with FlopCount() as counter:
        update(batch)
    return counter.total


def _graphed(update, warmup: int = 3):
    """``update`` captured in a CUDA graph after ``warmup`` calls (the training loop's
    ``cudagraphs=true``)."""
    from tensordict.nn import CudaGraphModule

    return CudaGraphModule(update, warmup=warmup)


LABELS = {"iql": "TorchRL IQLLoss", "iql_hand": "IQL, hand-written PyTorch"}


def _attempt(what: str, failures: list[str], fn: Callable[[], float]) -> float:
    """``fn()``, or NaN with ``what`` and the error recorded in ``failures`` (one column that
    fails, say a CUDA graph capture, must not cost the rows already measured)."""
    try:
        return fn()
    except Exception as err:  # recorded in the page and printed, not swallowed
        first = (str(err).strip().splitlines() or [""])[0][:200]
        failures.append(f"{what}: failed ({type(err).__name__}: {first})")
        print(f"{what}: FAILED {type(err).__name__}: {first}", flush=True)
        return float("nan")


def measure(
    args,
    min_time: float,
    *,
    extras: bool,
    progress: Callable[[list[str]], None] | None = None,
) -> tuple[list[str], list[str]]:
    """Time every case at the current thread count (or on the GPU); the markdown table and the
    extra sections. ``progress``, if given, gets the table of the rows measured so far after each
    case (so a run stopped at a time limit still leaves them)."""
    device = torch.device(args.device)
    on_gpu = device.type == "cuda"
    peak_n = 8192 if on_gpu else 2048
    peak_before = matmul_peak(peak_n, min_time=min_time, device=device)
    rows, extra, failures = [], [], []
    for name in args.losses:
        torch.manual_seed(0)
        for label, update, batch in cases(
            name, args.obs_dim, args.action_dim, args.hidden, args.batch, device
        ):
            flops = flops_per_update(update, batch)
            eager = rate(lambda u=update, b=batch: u(b), min_time, warmup=5, device=device)
            compiled = graphed = compile_s = float("nan")
            if not args.no_compile:
                cupdate = torch.compile(update)

                def first_call(u=cupdate, b=batch) -> float:
                    t0 = time.perf_counter()
                    u(b)
                    _sync(device)
                    return time.perf_counter() - t0

                compile_s = _attempt(f"{label}, compile", failures, first_call)
                if compile_s == compile_s:  # compiled: time it, and on a GPU its CUDA graph
                    compiled = rate(
                        lambda u=cupdate, b=batch: u(b), min_time, warmup=5, device=device
                    )
                    if on_gpu:

                        def graph_rate(u=cupdate, b=batch) -> float:
                            gupdate = _graphed(u)
                            return rate(lambda: gupdate(b), min_time, warmup=5, device=device)

                        graphed = _attempt(f"{label}, compiled + CUDA graph", failures, graph_rate)
            rows.append((label, eager, compiled, graphed, flops / 1e9, compile_s))
            if progress is not None:
                progress([*table_lines(rows, peak_before, on_gpu), *_failure_lines(failures)])
            print(
                f"{label:14s} eager {eager:7.1f}/s  compiled {compiled:7.1f}/s  "
                + (f"graphs {graphed:7.1f}/s  " if on_gpu else "")
                + f"{flops / 1e9:.3f} GFLOP/update  (compile {compile_s:.0f} s)",
                flush=True,
            )
        if extras and name in EXTERNAL and not on_gpu:
            module = importlib.import_module(EXTERNAL[name])
            if hasattr(module, "extra_section"):
                section = module.extra_section(min_time)
                print("\n".join(section), flush=True)
                extra += [*section, ""]
    peak = max(peak_before, matmul_peak(peak_n, min_time=min_time, device=device))
    lines = table_lines(rows, peak, on_gpu)
    if on_gpu:
        lines = [
            f"{torch.cuda.get_device_name(device)}; large float32 matmul peak measured in this "
            f"run: {peak / 1000:.1f} TFLOP/s (TF32 off).",
            "",
            *lines[2:],
        ]
        lines += ["", *gpu_targets(rows)]
    lines += _failure_lines(failures)
    print()
    print("\n".join(lines), flush=True)
    return lines, extra


def _best(row) -> float:
    speeds = [v for v in row[1:4] if v == v]  # drop NaN (a column not measured)
    return max(speeds)


def _failure_lines(failures: list[str]) -> list[str]:
    """The columns that failed (shown as "—" in the table), one line each."""
    return (
        ["", "Not measured (the column shows —):", *[f"- {f}" for f in failures]]
        if failures
        else []
    )


def _num(value: float, spec: str) -> str:
    """``value`` formatted, or "—" for a column not measured (NaN)."""
    return "—" if value != value else format(value, spec)


def table_lines(rows, peak: float, on_gpu: bool) -> list[str]:
    """The markdown table of ``rows`` = ``(label, eager, compiled, graphed, GFLOP, compile s)``."""
    iql = next((r for r in rows if r[0] == "iql"), None)
    lines = [
        f"**{torch.get_num_threads()} thread(s)**; large-matmul peak measured in this run: "
        f"{peak:.0f} GFLOP/s.",
        "",
    ]
    if on_gpu:
        lines += [
            "| loss | updates/s eager | updates/s compiled | updates/s compiled + CUDA graph | best / eager | GFLOP per update | GFLOP/s best | fraction of peak | vs IQLLoss (best) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            name, eager, compiled, graphed, gflop, _ = row
            best = _best(row)
            rel = best / _best(iql) if iql else float("nan")
            lines.append(
                f"| {LABELS.get(name, name)} | {eager:,.1f} | {_num(compiled, ',.1f')} | "
                f"{_num(graphed, ',.1f')} | {best / eager:.2f} | {gflop:.3f} | "
                f"{best * gflop:,.0f} | {best * gflop / peak:.1%} | {_num(rel, '.2f')} |"
            )
        return lines
    lines += [
        "| loss | updates/s eager | updates/s compiled | compiled / eager | GFLOP per update | GFLOP/s compiled | fraction of peak | vs IQLLoss (compiled) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, eager, compiled, _, gflop, _ in rows:
        achieved = compiled * gflop
        rel = compiled / iql[2] if iql else float("nan")
        lines.append(
            f"| {LABELS.get(name, name)} | {eager:.1f} | {_num(compiled, '.1f')} | "
            f"{_num(compiled / eager, '.2f')} | {gflop:.3f} | {_num(achieved, '.1f')} | "
            f"{_num(achieved / peak, '.0%')} | {_num(rel, '.2f')} |"
        )
    return lines


# the GPU targets of issue #16: an IQL-size update and one BDPO training step (critic every step,
# actor every 5th; the paper's JAX figure on an RTX 4090 is about 420 steps/s)
GPU_TARGETS = {"iql": 5000.0, "bdpo step": 400.0}


def gpu_targets(rows) -> list[str]:
    """Lines comparing the best GPU rates with the targets (only for the rows measured)."""
    by = {r[0]: _best(r) for r in rows}
    out = []
    for name in ("iql", "iql_hand"):
        if name in by:
            out.append(
                f"- {LABELS[name]}: {by[name]:,.0f} updates/s (target ≥ {GPU_TARGETS['iql']:,.0f}: "
                f"{'met' if by[name] >= GPU_TARGETS['iql'] else 'not met'})."
            )
    if "bdpo-critic" in by and "bdpo-actor" in by:
        step = 1.0 / (1.0 / by["bdpo-critic"] + 1.0 / (5.0 * by["bdpo-actor"]))
        target = GPU_TARGETS["bdpo step"]
        out.append(
            f"- BDPO training step (critic every step, actor every 5th): {step:,.0f} steps/s "
            f"(target ≥ {target:,.0f}: {'met' if step >= target else 'not met'}); 2M steps in "
            f"{2e6 / step / 60:,.0f} min (paper, JAX on an RTX 4090: 80 min)."
        )
    return out


SECTIONS = {
    "cpu": "## Loss updates",
    "cuda": "## Loss updates on a GPU",
    "stacked": "## Stacked seeds",
    "stacked-cuda": "## Stacked seeds on a GPU",
    "profile": "## Where a run's wall time goes",
    "kernels": "## CPU kernels behind the choices",
}
HEADER = [
    "# Benchmarks",
    "",
    "<!-- generated by benchmarks/bench_losses.py --write; do not edit by hand -->",
    "",
    "One update = forward, sum of the `loss_*` terms, backward, Adam on every network, Polyak",
    "target update (`benchmarks/bench_losses.py`). FLOPs are counted with",
    "`torch.utils.flop_counter`'s formulas; the peak is a large float32 matmul timed in the same",
    "run, so the fraction holds whatever else the machine is doing. With `--threads` one table",
    "per thread count, each against the peak at that count: at batch 256 an update need not",
    "scale with threads, so compare rows within a table. `--device cuda` writes the GPU section",
    "and keeps the CPU one (and the other way round).",
    "",
    "Sections: one update per loss, eager and compiled (`bench_losses.py`); the same on a GPU;",
    "stacked seeds, seed-updates/s of K seeds in one vmapped update beside one fp32 seed",
    "(`bench_losses.py --stack-seeds K`); where a whole `experiment=cpu` run's wall time goes",
    "(`scripts/time_breakdown.py`); and the CPU facts behind four choices",
    "(`benchmarks/bench_cpu_kernels.py`): `precision=bf16` is a default nowhere (it pays only",
    "on CPUs with bf16 matmul hardware, AMX or AVX512-BF16, and GPUs); the networks' ReLU is",
    "computed as `(x + |x|) / 2` under `torch.compile` (inductor's saved boolean masks for",
    "ReLU's backward are slow on x86 CPUs; `torchrl_sym.models.ReLU`), and their Mish with one",
    "exponential (`torchrl_sym.models.Mish`); batches are gathered from a packed copy of the",
    "dataset (`OfflineReplayBuffer`), not by TorchRL's per-key storage indexing.",
    "",
    "IQL end to end against CORL's single-file iql.py (same data, steps and evaluations, wall",
    "clock from process start to exit): see [benchmarks_corl_iql.md](benchmarks_corl_iql.md)",
    "(20k updates, 2 rounds), [benchmarks_corl_iql_100k.md](benchmarks_corl_iql_100k.md)",
    "(the `experiment=cpu` budget of 100k updates, 1 round, Intel Xeon with AMX, before the",
    "compiled-update learning-rate fix) and [benchmarks_corl_iql_100k_amd.md](benchmarks_corl_iql_100k_amd.md)",
    "(the same on an AMD EPYC, after it: one fp32 seed 1.16x CORL end to end, 5 stacked bf16",
    "seeds 2.59x its seed-updates/s).",
    "",
    "Diffusion behavior model (BC updates/s, sampled actions/s): see [diffusion.md](diffusion.md).",
    "SRPO's policy update beside the official thu-ml/SRPO code: see "
    "[benchmarks_srpo_official.md](benchmarks_srpo_official.md).",
    "",
]


def _sections(text: str) -> dict[str, list[str]]:
    """The device sections of a page written by :func:`write_page` (``<!-- section KIND -->`` ...
    ``<!-- end section KIND -->``); a page from before the markers counts as its CPU section."""
    lines = text.splitlines()
    found, current = {}, None
    for line in lines:
        if line.startswith("<!-- section ") and line.endswith(" -->"):
            current = line[len("<!-- section ") : -len(" -->")]
            found[current] = []
        elif line.startswith("<!-- end section "):
            current = None
        elif current is not None:
            found[current].append(line)
    if not found and SECTIONS["cpu"] in lines:
        found["cpu"] = lines[lines.index(SECTIONS["cpu"]) + 1 :]
        found["cpu"] = [line for line in found["cpu"] if not line.startswith("Diffusion behavior")]
    return found


def write_page(path: str | Path, kind: str, body: list[str]) -> None:
    """Write ``body`` as the ``kind`` (``cpu`` or ``cuda``) section of the page at ``path``,
    keeping the page's other section; atomically (a temporary file renamed over it)."""
    path = Path(path)
    sections = _sections(path.read_text()) if path.exists() else {}
    sections[kind] = body
    page = list(HEADER)
    for name in ("cpu", "cuda", "stacked", "stacked-cuda", "profile", "kernels"):
        if name in sections:
            page += [SECTIONS[name], f"<!-- section {name} -->", *sections[name]]
            page += [f"<!-- end section {name} -->", ""]
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(page).rstrip("\n") + "\n")
    tmp.replace(path)


def _write_partial(path, kind: str, head: list[str], done: list[str], partial: list[str]) -> None:
    """The page of a run still measuring: the tables finished so far and the rows of this one."""
    note = "*Partial: the run was still measuring when this was written.*"
    write_page(path, kind, [*head, note, "", *done, *partial, ""])


# ---------------------------------------------------------------------------------- stacked seeds

STACKABLE = ("iql", "awac", "sql", "xql", "sfac", "srpo-behavior", "bdpo-critic")


def _seed_case(name: str, obs_dim: int, act_dim: int, hidden: list[int], device):
    """``(modules, stage)`` of one seed of loss ``name``: the stage holds its objectives with
    their own optimizers and its target updates, as a recipe builds them."""
    from torchrl_sym.train.loop import Objective, Stage, TargetUpdate

    if name == "srpo-behavior":
        from cases_srpo import make_behavior

        from torchrl_sym.objectives import DiffusionBehaviorLoss

        loss = DiffusionBehaviorLoss(make_behavior(obs_dim, act_dim), action_reduction="sum")
        loss = loss.to(device)
        opt = torch.optim.AdamW(loss.actor_network_params.values(True, True), lr=3e-4)
        stage = Stage("behavior", 1, [Objective("bc", loss, [opt])])
        return {"loss": loss}, stage
    if name == "bdpo-critic":
        from cases_bdpo import make_loss, terms

        loss = make_loss(obs_dim, act_dim).to(device)
        q_opt, v_opt = (
            adam(getattr(loss, f"{n}_network_params").values(True, True))
            for n in ("qvalue", "value")
        )
        stage = Stage(
            "train",
            1,
            [
                Objective("qvalue", terms(loss, "qvalue"), [q_opt], max_grad_norm=1.0),
                Objective("value", terms(loss, "value"), [v_opt], max_grad_norm=1.0),
            ],
            [TargetUpdate(loss.make_target_updater("critic"))],
        )
        return {"loss": loss}, stage
    loss = build_loss(name, obs_dim, act_dim, hidden).to(device)
    params = [p for p in loss.parameters() if p.requires_grad]
    stage = Stage(
        "train",
        1,
        [Objective(name, loss, [adam(params)])],
        [TargetUpdate(SoftUpdate(loss, tau=0.005))],
    )
    return {"loss": loss}, stage


def stacked_update(
    name: str, num_seeds: int, precision: str, compiled: bool, args, device, graphs: bool = False
):
    """``(update(batch), batch)``: the training loop's update step for ``num_seeds`` seeds of
    ``name`` (one seed: the ordinary unstacked update), eager or compiled, in ``precision``;
    ``graphs``: compiled and captured in CUDA graphs (the loop's ``cudagraphs=true``)."""
    from torchrl_sym.train.loop import OfflineLoop
    from torchrl_sym.train.precision import keep_outputs_fp32
    from torchrl_sym.train.stacking import SeedStack

    seeds = []
    for k in range(num_seeds):
        torch.manual_seed(k)
        seeds.append(_seed_case(name, args.obs_dim, args.action_dim, args.hidden, device))
    modules, stage = seeds[0]
    stack = None
    if num_seeds > 1:
        stack = SeedStack.stack([m for m, _ in seeds])
    if precision == "bf16":
        keep_outputs_fp32(modules.values())
    loop = OfflineLoop(
        [stage],
        None,
        modules=modules,
        stack=stack,
        precision=precision,
        compile=compiled,
        cudagraphs=graphs,
    )
    update = loop._update_fn(stage)
    active = tuple(True for _ in stage.objectives)
    targets = tuple(True for _ in stage.targets)
    batches = [
        _batch(args.batch, args.obs_dim, args.action_dim, seed=k, device=device)
        for k in range(num_seeds)
    ]
    batch = batches[0] if num_seeds == 1 else torch.stack(batches)

    def step(b):
        return update(b.copy(), active, targets)

    return step, batch


def measure_stacked(args, min_time: float) -> list[str]:
    """Seed-updates/s of ``--stack-seeds K`` seeds in ``--precision`` beside one fp32 seed, per
    loss, eager and compiled; prints the ratio line of each loss; returns the markdown table."""
    device = torch.device(args.device)
    k, precision = args.stack_seeds, args.precision
    # (column, compiled, CUDA graphs): on a GPU also the compiled update in CUDA graphs
    modes = [("eager", False, False)]
    if not args.no_compile:
        modes.append(("compiled", True, False))
        if device.type == "cuda":
            modes.append(("CUDA graph", True, True))
    rows, failures = [], []
    for name in args.losses:
        if name not in STACKABLE:
            print(f"{name}: not a stackable case (choose from {', '.join(STACKABLE)}); skipped")
            continue
        # Build (and compile) the four updates first, then time them in interleaved rounds and
        # keep each one's best round: a load that comes and goes on a shared machine slows one
        # round of every update alike instead of one update's only measurement.
        steps = {}
        for label, seeds, prec in (
            ("one fp32 seed", 1, "fp32"),
            (f"{k} seeds {precision}", k, precision),
        ):
            for mode, compiled, graphs in modes:
                try:
                    step, batch = stacked_update(
                        name, seeds, prec, compiled, args, device, graphs=graphs
                    )
                    # the first call compiles; with graphs, the loop's cudagraph_warmup (5) eager
                    # calls and the capture come first, then replays
                    for _ in range(8 if graphs else 1):
                        step(batch)
                except Exception as err:  # a failing column is recorded, the run goes on
                    failures.append(f"{name}, {label}, {mode}: {type(err).__name__}: {err}"[:300])
                    print(f"{name} {label} {mode}: failed ({failures[-1]})", flush=True)
                    continue
                steps[(label, mode)] = (step, batch, seeds)
        speeds: dict = {}
        for _ in range(args.rounds):
            for key, (step, batch, seeds) in steps.items():
                per_s = rate(lambda s=step, b=batch: s(b), min_time, warmup=3, device=device)
                speeds[key] = max(speeds.get(key, 0.0), per_s * seeds)
        for (label, mode), (_, _, seeds) in steps.items():
            per_s = speeds[(label, mode)] / seeds
            print(
                f"{name:14s} {label:16s} {mode:10s} "
                f"{per_s:8.1f} updates/s = {per_s * seeds:8.1f} seed-updates/s",
                flush=True,
            )
        del steps
        torch._dynamo.reset()
        single = max((v for (lb, _), v in speeds.items() if lb == "one fp32 seed"), default=0.0)
        stacked = max((v for (lb, _), v in speeds.items() if lb != "one fp32 seed"), default=0.0)
        if not (single and stacked):
            print(f"{name}: no ratio (a side failed to run)", flush=True)
            continue
        ratio = stacked / single
        print(f"{name}: seed-updates/s ratio vs one fp32 seed: {ratio:.2f}", flush=True)
        rows.append((name, speeds, ratio))
    cols = [m for m, _, _ in modes] if len(modes) > 1 else ["eager", "compiled"]  # — if skipped
    lines = [
        f"**{torch.get_num_threads()} thread(s), {k} stacked seeds in {precision}** "
        "(seed-updates/s = seeds × updates/s, each update's best of "
        f"{args.rounds} interleaved timing rounds; ratio: best stacked over best single fp32 "
        "seed).",
        "",
        "| loss | "
        + " | ".join(f"{h} {c}" for h in ("1 fp32 seed", f"{k} seeds {precision}") for c in cols)
        + " | ratio |",
        "|---|" + "---|" * (2 * len(cols) + 1),
    ]
    for name, speeds, ratio in rows:
        cells = []
        for label in ("one fp32 seed", f"{k} seeds {precision}"):
            for mode in cols:
                value = speeds.get((label, mode))
                cells.append("—" if value is None else f"{value:.1f}")
        lines.append(f"| {LABELS.get(name, name)} | {' | '.join(cells)} | {ratio:.2f} |")
    if failures:
        lines += ["", "Columns that failed (—):", *(f"- {f}" for f in failures)]
    return lines


def write_stacked(path: str | Path, lines: list[str], device: str = "cpu") -> None:
    """``lines`` as the stacked-seeds section of the page at ``path`` (``stacked-cuda`` for a CUDA
    ``device``; the other sections kept)."""
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        machine = (
            f"Machine: {torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}."
        )
    else:
        machine = (
            f"Machine: {_cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}; "
            f"bf16 matmuls {'in hardware (AMX or AVX512-BF16)' if _has_bf16() else 'emulated (no AMX or AVX512-BF16 on this CPU)'}."
        )
    body = [
        "",
        f"Command: `python benchmarks/bench_losses.py {' '.join(sys.argv[1:])}`",
        "",
        machine,
        "",
        *lines,
        "",
    ]
    write_page(path, "stacked-cuda" if on_gpu else "stacked", body)


def _cpu_model() -> str:
    from torchrl_sym.train.provenance import cpu_model

    return cpu_model()


def _has_bf16() -> bool:
    from torchrl_sym.train.precision import bf16_matmul_hardware

    return bool(bf16_matmul_hardware())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--losses",
        nargs="+",
        default=["iql", "iql_hand", "awac", "sql", "xql", "sfac"]
        + [n for n, m in EXTERNAL.items() if (Path(__file__).parent / f"{m}.py").exists()],
    )
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--obs-dim", type=int, default=11)
    parser.add_argument("--action-dim", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=None, help="one table per thread count (CPU)"
    )
    parser.add_argument("--min-time", type=float, default=5.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 s timings")
    parser.add_argument("--write", default=None, help="write the table (markdown) to this file")
    parser.add_argument(
        "--stack-seeds",
        type=int,
        default=None,
        help="measure K stacked seeds per loss beside one fp32 seed (seed-updates/s)",
    )
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="--stack-seeds: interleaved timing rounds per update (each keeps its best)",
    )
    args = parser.parse_args()
    if args.stack_seeds is not None and args.stack_seeds < 1:
        parser.error(f"--stack-seeds {args.stack_seeds}: pass K >= 1 seeds.")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: pass at least 1 round.")
    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device!r}: use cpu or cuda[:N].")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: CUDA is not available on this machine; use --device cpu."
        )
    min_time = 1.0 if args.quick else args.min_time
    if args.stack_seeds is not None:
        if args.threads:
            torch.set_num_threads(args.threads[0])
        lines = measure_stacked(args, min_time)
        print("\n".join(["", *lines]), flush=True)
        if args.write:
            write_stacked(args.write, lines, args.device)
        return
    if args.write:
        kind = "cuda" if device.type == "cuda" else "cpu"
        if device.type == "cuda":
            machine = (
                f"Machine: {torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores, "
                f"torch {torch.__version__}, CUDA {torch.version.cuda}."
            )
        else:
            machine = (
                f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                f"torch {torch.__version__}."
            )
        head = [
            "",
            f"Command: `python benchmarks/bench_losses.py {' '.join(sys.argv[1:])}`",
            "",
            f"{machine} Batch {args.batch}, MLPs {args.hidden}, observation {args.obs_dim}, "
            f"action {args.action_dim}.",
            "",
        ]
    tables, extra = [], []
    counts = [None] if device.type == "cuda" else (args.threads or [torch.get_num_threads()])
    for i, threads in enumerate(counts):
        if threads is not None:
            torch.set_num_threads(threads)
        torch._dynamo.reset()  # fresh compile caches: the same update code is compiled per loss
        progress = None
        if args.write:  # the page as far as the run got: a run stopped at a limit keeps its rows
            progress = functools.partial(_write_partial, args.write, kind, head, list(tables))

        table, section = measure(args, min_time, extras=i == 0, progress=progress)
        tables += [*table, ""]
        extra += section
    if args.write:
        write_page(args.write, kind, [*head, *tables, *extra])


if __name__ == "__main__":
    main()
