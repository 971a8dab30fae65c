"""The CPU facts behind this library's speed choices, measured in one run on one thread.

    python benchmarks/bench_cpu_kernels.py [--min-time 1] [--write docs/benchmarks.md]

Prints:

1. **bf16 against fp32 matmuls** (256×256×256 and 2048×256×256, GFLOP/s), and whether the CPU
   has bf16 matmul hardware (AMX-BF16 or AVX512-BF16 in ``/proc/cpuinfo``): ``precision=bf16``
   pays only where it has.
2. **ReLU under torch.compile**: forward + backward of ``relu(2x + 1)`` on ``5×256×256``,
   eager, compiled, and compiled in the form :class:`torchrl_sym.models.ReLU` uses when
   compiling (``(x + |x|) / 2``): inductor saves a boolean mask for ReLU's backward whose
   vectorized store and load are slow on some x86 CPUs.
3. **Mish under torch.compile**: forward + backward of ``mish`` on ``256×1024`` (SRPO's
   behavior network's widest activations), eager, compiled, and compiled in the one-exponential
   form :class:`torchrl_sym.models.Mish` uses when compiling (``x · n / (n + 2)``,
   ``n = e^x (e^x + 2)``): torch's ``tanh(softplus(x))`` costs several SiLUs.
4. **Batch sampling**: one 256-transition batch from a Hopper-sized dataset (1M transitions)
   with TorchRL's storage indexing (the ``TensorDictReplayBuffer``'s own ``sample``) against
   the packed sampler of :class:`torchrl_sym.data.OfflineReplayBuffer`.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch


def _rate(fn, min_time: float) -> float:
    """Seconds per call of ``fn`` (after warm-up calls), over at least ``min_time`` seconds."""
    for _ in range(3):
        fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time and calls >= 5:
            return elapsed / calls


def bf16_hardware() -> str:
    from torchrl_sym.train.precision import bf16_matmul_hardware

    found = bf16_matmul_hardware()
    if found is None:
        return "unknown"
    return ", ".join(found) if found else "none (bf16 is emulated)"


def matmuls(min_time: float) -> list[str]:
    lines = ["| shape (m×k×n) | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |", "|---|---|---|---|"]
    for m, k, n in ((256, 256, 256), (2048, 256, 256)):
        speeds = []
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            speeds.append(2 * m * k * n / _rate(lambda a=a, b=b: a @ b, min_time) / 1e9)
        lines.append(
            f"| {m}×{k}×{n} | {speeds[0]:.0f} | {speeds[1]:.0f} | {speeds[1] / speeds[0]:.2f} |"
        )
    return lines


def _ms_table(title: str, rows, min_time: float) -> list[str]:
    """A markdown table of milliseconds per call, one row per ``(label, fn)``."""
    lines = [f"| {title} | ms |", "|---|---|"]
    for label, fn in rows:
        lines.append(f"| {label} | {_rate(fn, min_time) * 1e3:.2f} |")
    return lines


def relu(min_time: float) -> list[str]:
    x = torch.randn(5, 256, 256, requires_grad=True)

    def plain():
        torch.relu(x * 2 + 1).sum().backward()

    def abs_form():
        y = x * 2 + 1
        ((y + y.abs()) * 0.5).sum().backward()

    rows = [
        ("eager, torch.relu", plain),
        ("compiled, torch.relu", torch.compile(plain)),
        ("compiled, (x + |x|) / 2", torch.compile(abs_form)),
    ]
    return _ms_table("5×256×256 ReLU, forward + backward", rows, min_time)


def mish(min_time: float) -> list[str]:
    from torchrl_sym.models import Mish

    x = torch.randn(256, 1024, requires_grad=True)
    fast = Mish()

    def plain():
        torch.nn.functional.mish(x * 2 + 1).sum().backward()

    def one_exp():
        fast(x * 2 + 1).sum().backward()

    def silu():
        torch.nn.functional.silu(x * 2 + 1).sum().backward()

    rows = [
        ("eager, torch's mish", plain),
        ("compiled, torch's mish", torch.compile(plain)),
        ("compiled, one exponential (`models.Mish`)", torch.compile(one_exp)),
        ("compiled, silu (for scale)", torch.compile(silu)),
    ]
    return _ms_table("256×1024 Mish, forward + backward", rows, min_time)


def sampling(min_time: float) -> list[str]:
    from tensordict import TensorDict

    from torchrl_sym.data import make_offline_replay_buffer

    n = 1_000_000
    g = torch.Generator().manual_seed(0)
    data = TensorDict(
        {
            "observation": torch.randn(n, 11, generator=g),
            "action": torch.rand(n, 3, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, 11, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.zeros(n, 1, dtype=torch.bool),
                "truncated": torch.zeros(n, 1, dtype=torch.bool),
            },
        },
        [n],
    )
    rb = make_offline_replay_buffer(data, 256, seed=0, env=None)
    packed = _rate(rb.sample, min_time)
    legacy = make_offline_replay_buffer(data, 256, seed=0, env=None)
    legacy._legacy = True  # TorchRL's sampler and storage indexing
    torchrl = _rate(legacy.sample, min_time)
    return [
        "| 256-transition batch of 1M (Hopper-sized) | ms |",
        "|---|---|",
        f"| TorchRL storage indexing (`TensorDictReplayBuffer.sample`) | {torchrl * 1e3:.2f} |",
        f"| packed (`OfflineReplayBuffer.sample`) | {packed * 1e3:.2f} |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-time", type=float, default=1.0)
    parser.add_argument("--write", default=None, help="write the tables as the page's section")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import sys

    from torchrl_sym.train.provenance import cpu_model

    head = f"CPU: {cpu_model()}; bf16 matmul hardware: {bf16_hardware()}; torch {torch.__version__}"
    print(head)
    body = ["", f"Command: `python benchmarks/bench_cpu_kernels.py {' '.join(sys.argv[1:])}`", ""]
    body += [f"{head}; one thread.", ""]
    for section in (matmuls, relu, mish, sampling):
        lines = section(args.min_time)
        print()
        print("\n".join(lines), flush=True)
        body += [*lines, ""]
    if args.write:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_losses import write_page

        write_page(args.write, "kernels", body)


if __name__ == "__main__":
    main()
