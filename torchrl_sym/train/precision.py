"""``precision=bf16``: matmuls in bfloat16, everything that accumulates in float32.

The loop runs each loss forward under ``torch.autocast(device, dtype=torch.bfloat16)``: linear
layers (and the bmm of stacked seeds) compute in bf16 from fp32 master weights; parameters,
gradients and optimizer states stay fp32. :func:`keep_outputs_fp32` casts every network output
back to fp32 at the network's boundary, so what follows a network is fp32: TD targets,
log-probabilities, advantages and weights, divergences and every reduction of a loss. So the
only bf16 tensors are the activations inside the networks (and the gradients flowing through
them).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase, TensorDictParams
from torch import nn

__all__ = [
    "PRECISIONS",
    "bf16_matmul_hardware",
    "check_precision",
    "emulated_bf16_warning",
    "keep_outputs_fp32",
]

PRECISIONS = ("fp32", "bf16")
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""``/proc/cpuinfo`` flags of x86 CPUs whose matmuls run bf16 in hardware."""


def bf16_matmul_hardware(cpuinfo: str | Path = "/proc/cpuinfo") -> list[str] | None:
    """The bf16 matmul flags (:data:`BF16_CPU_FLAGS`) this CPU's ``cpuinfo`` lists (an empty list:
    none, bf16 is emulated in fp32 arithmetic), or ``None`` where the file cannot be read (not
    Linux: unknown)."""
    try:
        words = set(Path(cpuinfo).read_text().split())
    except OSError:
        return None
    return [flag for flag in BF16_CPU_FLAGS if flag in words]


def emulated_bf16_warning(
    precision: str, device: torch.device | str, cpuinfo: str | Path = "/proc/cpuinfo"
) -> str | None:
    """The warning for ``precision=bf16`` on a CPU without bf16 matmul hardware (logged at the
    start of such a run), else ``None``. On such a CPU bf16 is emulated: slower than fp32, not
    faster (docs/training.md, "Precision")."""
    if precision != "bf16" or torch.device(device).type != "cpu":
        return None
    if bf16_matmul_hardware(cpuinfo) != []:  # has the hardware, or unknown: nothing to say
        return None
    return (
        "precision=bf16 on a CPU without bf16 matmul hardware (neither "
        f"{' nor '.join(BF16_CPU_FLAGS)} in {cpuinfo}): bf16 is emulated here and runs several "
        "times slower than fp32 (5 stacked Sf-AC seeds in bf16: 0.09x the seed-updates/s of one "
        "fp32 seed on an AMD EPYC without AVX512; docs/training.md, 'Precision'). Use "
        "precision=fp32 on this machine."
    )


def check_precision(precision) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a ``ValueError`` naming it."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not a precision; choose one of {PRECISIONS} (bf16: "
            "autocast matmuls in bfloat16 with fp32 weights and optimizer states)."
        )
    return precision


def _to_fp32(value):
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype == torch.bfloat16 else value
    if isinstance(value, TensorDictBase):
        for key, leaf in list(value.items(True, True)):
            if isinstance(leaf, torch.Tensor) and leaf.dtype == torch.bfloat16:
                value.set(key, leaf.float())
        return value
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    return value


def _hook(module, args, output):
    return _to_fp32(output)


def networks_of(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The networks in ``modules`` whose outputs leave a network: every TensorDict module
    (TorchRL actors, critics, their inner ``loc``/``scale`` heads) and every module a TorchRL
    loss holds as a plain attribute (``actor_network``, ``qvalue_network``, a diffusion model);
    searched through registered submodules and such attributes. Inner layers are not
    networks."""
    from torchrl.objectives import LossModule

    found: dict[int, nn.Module] = {}
    seen: set[int] = set()

    def visit(module: nn.Module, held: bool) -> None:
        if isinstance(module, TensorDictParams):
            return
        if held or isinstance(module, TensorDictModuleBase):
            found.setdefault(id(module), module)
        if id(module) in seen:
            return
        seen.add(id(module))
        for child in module.children():
            visit(child, False)
        if isinstance(module, LossModule):
            for value in vars(module).values():
                if isinstance(value, nn.Module):
                    visit(value, True)

    for module in modules:
        visit(module, True)
    return list(found.values())


def keep_outputs_fp32(modules: Iterable[nn.Module]) -> int:
    """Registers on every network of ``modules`` (:func:`networks_of`) a forward hook that casts
    its bf16 outputs (tensors, tuples of tensors, TensorDict entries) to fp32. Idempotent;
    returns the number of modules hooked by this call."""
    count = 0
    for module in networks_of(modules):
        if getattr(module, "_torchrl_sym_fp32_hook", False):
            continue
        module.register_forward_hook(_hook)
        module._torchrl_sym_fp32_hook = True
        count += 1
    return count
