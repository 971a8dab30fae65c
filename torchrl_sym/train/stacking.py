"""Stacked seeds: K independent training runs of one recipe held as one set of modules.

A recipe builds its modules (losses with their networks, target and EMA parameters) once per
seed. :meth:`SeedStack.stack` then turns the first seed's modules into the stack of all K:
every parameter and buffer ``x`` (``[*shape]``) of the first seed becomes, *in place*, the
tensor ``stack(x_0, ..., x_{K-1})`` (``[K, *shape]``) with the same Python identity, so
everything built on the first seed's modules keeps working on the stack unchanged (a
non-persistent buffer equal in every seed, such as a diffusion schedule's tables, is a constant
and stays one shared tensor):

- one optimizer over stacked tensors is K independent optimizers: Adam, AdamW and SGD are
  elementwise, so seed ``k``'s slice of every moment and update depends only on seed ``k``'s
  gradients (``param_groups`` and learning-rate schedules are shared: every seed runs the same
  schedule);
- ``SoftUpdate`` / ``HardUpdate`` are elementwise (``lerp_`` / ``copy_``), so target networks
  stay per seed;
- ``state_dict()`` holds all K seeds (the checkpoint of a stacked run).

A loss is evaluated on all seeds at once by :meth:`SeedStack.call`: ``torch.func.vmap`` over the
leading seed dimension of every stacked tensor and of the batch (``[K, B]``, one batch stream
per seed), with each TorchRL ``TensorDictParams`` and each plain parameter swapped for its
per-seed slice inside the vmapped function and restored after it. Inside, each seed sees
exactly its single-seed computation (a mean over the batch stays a mean over that seed's batch;
nothing reduces over seeds), and the loss values come out with a leading ``[K]``: their *sum*
is minimized, so seed ``k``'s parameters receive exactly ``∇ L_k``. Random draws inside a loss
are independent across seeds (``randomness="different"``) or, for the equivalence tests, the
same draw for every seed (``"same"``: then seed ``k`` gets the numbers an unstacked run of seed
``k`` would draw from the same generator state).

Global gradient-norm clipping would mix seeds; :func:`clip_grad_norm_per_seed` clips each
seed's gradient by its own norm.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase, is_tensor_collection
from tensordict.nn import TensorDictParams
from torch import nn

__all__ = ["SeedStack", "StackedPolicy", "clip_grad_norm_per_seed"]

RANDOMNESS = ("different", "same")


def _stacked_class(cls: type) -> type:
    """``cls`` with a ``__getattr__`` for stacked seeds: a missing ``target_<net>_params`` is the
    detached ``<net>_params`` (TorchRL's LossModule takes ``.data``, not allowed under vmap)."""
    if getattr(cls, "_torchrl_sym_stacked", False):
        return cls
    cached = _STACKED_CLASSES.get(cls)
    if cached is None:
        base_getattr = cls.__getattr__

        def __getattr__(self, item):
            if item.startswith("target_") and item.endswith("_params"):
                modules = self.__dict__.get("_modules", {})
                if modules.get(item) is None and item[7:] in modules:
                    return modules[item[7:]].detach()
            return base_getattr(self, item)

        cached = type(
            cls.__name__, (cls,), {"__getattr__": __getattr__, "_torchrl_sym_stacked": True}
        )
        cached.__qualname__ = cls.__qualname__
        cached.__module__ = cls.__module__
        _STACKED_CLASSES[cls] = cached
    return cached


_STACKED_CLASSES: dict[type, type] = {}


class _Slots:
    """Where the stacked tensors of a module tree live: its ``TensorDictParams`` (swapped whole)
    and the parameters and buffers of its plain modules (swapped one by one)."""

    def __init__(self):
        self.tdps: list[TensorDictParams] = []
        self.loose: list[
            tuple[nn.Module, str, str]
        ] = []  # (module, "_parameters"|"_buffers", name)
        self._seen_tdps: set[int] = set()
        self._seen_loose: set[tuple[int, str, str]] = set()

    def add_tdp(self, tdp: TensorDictParams) -> bool:
        if id(tdp) in self._seen_tdps:
            return False
        self._seen_tdps.add(id(tdp))
        self.tdps.append(tdp)
        return True

    def add_loose(self, module: nn.Module, where: str, name: str) -> None:
        key = (id(module), where, name)
        if key not in self._seen_loose:
            self._seen_loose.add(key)
            self.loose.append((module, where, name))

    def inputs(self) -> tuple[list[TensorDictBase], list[torch.Tensor]]:
        return (
            [t._param_td for t in self.tdps],
            [getattr(m, where)[name] for m, where, name in self.loose],
        )

    def swap(self, tds, tensors):
        """Puts ``tds`` / ``tensors`` in the slots; returns what was there."""
        old = self.inputs()
        for tdp, td in zip(self.tdps, tds):
            tdp._param_td = td
        for (module, where, name), tensor in zip(self.loose, tensors):
            getattr(module, where)[name] = tensor
        return old


class SeedStack:
    """K seeds of the same modules, stacked along a leading seed dimension (module docstring).

    Build it with :meth:`stack`; ``modules`` are then the first seed's modules holding all K.

    Args:
        modules: the stacked modules (name -> module), as passed to :meth:`stack`.
        num_seeds: K.
        slots: where their stacked tensors live (internal).
        randomness: ``"different"`` (independent random draws per seed, the default) or
            ``"same"`` (one draw shared by all seeds; for equivalence tests).
    """

    def __init__(self, modules: Mapping[str, nn.Module], num_seeds: int, slots: _Slots, randomness):
        if randomness not in RANDOMNESS:
            raise ValueError(f"randomness must be one of {RANDOMNESS}, got {randomness!r}")
        self.modules = dict(modules)
        self.num_seeds = int(num_seeds)
        self.randomness = randomness
        self._slots = slots
        self._losses = [
            m
            for root in self.modules.values()
            for m in root.modules()
            if hasattr(m, "_erase_cache")  # TorchRL LossModules cache detached / stacked params
        ]

    # ------------------------------------------------------------------------------ building

    @classmethod
    def stack(
        cls,
        per_seed: Sequence[Mapping[str, nn.Module]],
        *,
        extra: Sequence[Sequence[nn.Module]] = (),
        randomness: str = "different",
    ) -> SeedStack:
        """Stacks ``per_seed[k]`` (the modules seed ``k`` built: name -> module, the same names
        and structure for every seed) into ``per_seed[0]``, in place.

        ``extra[j]`` is a module per seed (for example the policy evaluated) whose tensors are
        stacked too where they are not already part of the stacked modules (an actor whose
        parameters are its loss's is left as it is). Returns the :class:`SeedStack`.

        Raises:
            ValueError: fewer than one seed, or seeds whose modules differ in names, structure
                or shapes.
        """
        if len(per_seed) < 1:
            raise ValueError("SeedStack.stack needs the modules of at least one seed.")
        names = list(per_seed[0])
        for k, modules in enumerate(per_seed):
            if list(modules) != names:
                raise ValueError(
                    f"seed {k} built the modules {list(modules)}, seed 0 built {names}: every "
                    "seed must build the same modules."
                )
        num_seeds = len(per_seed)
        slots = _Slots()
        stacked: set[int] = set()
        for name in names:
            _walk(name, [m[name] for m in per_seed], slots, stacked, num_seeds)
        for j, modules in enumerate(extra):
            if len(modules) != num_seeds:
                raise ValueError(f"extra[{j}] has {len(modules)} modules, expected {num_seeds}.")
            _walk(f"extra[{j}]", list(modules), _Slots(), stacked, num_seeds)
        for name in names:
            for module in per_seed[0][name].modules():
                if hasattr(module, "_erase_cache"):
                    module._erase_cache()
                    module.__class__ = _stacked_class(type(module))
        out = cls(per_seed[0], num_seeds, slots, randomness)
        out._stacked = stacked
        return out

    # ------------------------------------------------------------------------------ calling

    def call(self, fn: Callable[[TensorDictBase], Any], batch: TensorDictBase):
        """``fn(batch_k)`` for every seed ``k`` with seed ``k``'s parameters, in one vmapped call.

        ``batch`` has a leading seed dimension (``[K, B, ...]``); ``fn`` is any callable of the
        stacked modules (a loss, a bound method, a closure). Returns what ``fn`` returns with a
        leading ``[K]`` on every tensor.
        """
        if batch.batch_size[:1] != torch.Size([self.num_seeds]):
            raise ValueError(
                f"a stacked call needs a batch with a leading seed dimension of {self.num_seeds}, "
                f"got batch_size={tuple(batch.batch_size)}"
            )
        slots = self._slots

        def per_seed(tds, tensors, batch):
            old = slots.swap(tds, tensors)
            try:
                return fn(batch)
            finally:
                slots.swap(*old)
                self._erase_caches()

        tds, tensors = slots.inputs()
        self._erase_caches()
        return torch.func.vmap(per_seed, in_dims=(0, 0, 0), randomness=self.randomness)(
            tds, tensors, batch
        )

    def _erase_caches(self) -> None:
        for loss in self._losses:
            loss.__dict__.pop("_cache", None)


def seed_checkpoint(state: Mapping[str, Any], k: int) -> dict[str, Any]:
    """Seed ``k``'s modules in the checkpoint of a stacked run: the checkpoint with every tensor
    of ``state["modules"]`` indexed ``[k]`` (a stacked run stacks every tensor its modules
    register), which a single-seed build of the same recipe loads. Optimizer, sampler and
    evaluator states are dropped (they are per stack)."""
    modules = {
        name: {
            key: value[k].clone(memory_format=torch.contiguous_format)
            if isinstance(value, torch.Tensor)
            else value
            for key, value in module_state.items()
        }
        for name, module_state in state["modules"].items()
    }
    kept = ("version", "stage_index", "stage_name", "stage_step", "global_step", "completed")
    return {**{key: state[key] for key in kept if key in state}, "modules": modules}


def _walk(
    name: str,
    per_seed: list,
    slots: _Slots,
    stacked: set[int],
    num_seeds: int,
    seen: set[int] | None = None,
    held: bool = False,
) -> None:
    """Stacks the tensors of module ``per_seed[0]`` (those not yet stacked) with the matching
    tensors of ``per_seed[1:]`` and records their slots; follows registered submodules and the
    modules held as plain attributes (TorchRL losses hold their networks so).

    In a module reached through a plain attribute (``held``) only ``TensorDictParams`` are
    stacked and swapped: a loss's network is always called with its loss's parameters swapped in
    (TorchRL's functional calls), so the tensors the module itself holds are either those
    parameters or never read (an ensemble's template), or constants such as a diffusion
    schedule's tables, which every seed shares. The equivalence tests (tests/test_stacking.py)
    check each recipe's stacked losses against its single-seed ones."""
    seen = set() if seen is None else seen
    first = per_seed[0]
    if id(first) in seen:
        return
    seen.add(id(first))
    if isinstance(first, TensorDictParams):
        if not slots.add_tdp(first):
            return
        td = first._param_td
        if id(td) in stacked:
            return
        old_batch = td.batch_size
        for key, leaf in td.items(True, True):
            others = [m._param_td.get(key) for m in per_seed]
            _stack_into(f"{name}.{_key(key)}", leaf, others, stacked)
        stacked.add(id(td))
        _set_batch_size(td, torch.Size([num_seeds, *old_batch]))
        return
    for where in ("_parameters", "_buffers"):
        for pname, tensor in getattr(first, where).items():
            if tensor is None:
                continue
            others = [getattr(m, where)[pname] for m in per_seed]
            if held or (where == "_buffers" and _shared_constant(first, pname, others)):
                continue
            _stack_into(f"{name}.{pname}", tensor, others, stacked)
            slots.add_loose(first, where, pname)
    for cname, child in first._modules.items():
        if child is not None:
            _walk(
                f"{name}.{cname}",
                [m._modules[cname] for m in per_seed],
                slots,
                stacked,
                num_seeds,
                seen,
                held,
            )
    for aname, value in list(vars(first).items()):
        if isinstance(value, nn.Module):
            _walk(
                f"{name}.{aname}",
                [vars(m)[aname] for m in per_seed],
                slots,
                stacked,
                num_seeds,
                seen,
                True,
            )


def _shared_constant(module: nn.Module, name: str, per_seed: list) -> bool:
    """A non-persistent buffer with the same value in every seed (a diffusion schedule's
    tables, a loss's KL weights): a constant, not state, so it stays one tensor that every seed
    reads, with no slot to swap. Swapping such a buffer in a module that a TorchRL functional
    call also swaps (a schedule held both by a network and by its loss) leaked a vmapped tensor
    out of ``torch.compile``'s trace ("Cannot access storage of BatchedTensorImpl"); nothing is
    saved of it either way (non-persistent: not in ``state_dict()``)."""
    if name not in module._non_persistent_buffers_set:
        return False
    first = per_seed[0]
    return all(
        t.shape == first.shape and t.dtype == first.dtype and torch.equal(t, first)
        for t in per_seed[1:]
    )


def _stack_into(where: str, tensor: torch.Tensor, per_seed: list, stacked: set[int]) -> None:
    if id(tensor) in stacked:
        return
    shapes = {tuple(t.shape) for t in per_seed}
    if len(shapes) != 1:
        raise ValueError(
            f"{where} has the shapes {sorted(shapes)} across seeds: every seed must build the "
            "same networks."
        )
    with torch.no_grad():
        if (
            tensor.dim() >= 2
            and where.rsplit(".", 1)[-1] == "weight"
            and tensor.is_floating_point()
            and not getattr(tensor, "_stack_contiguous", False)
        ):
            # A weight ([..., out, in], used as x @ W^T by a Linear, alone or in a TorchRL
            # ensemble) is stacked in the layout of its gradient: its last two dims swapped in
            # memory. The vmapped linear's weight gradient is the product x^T @ grad_y
            # ([..., in, out]) seen transposed; autograd hands a gradient to a parameter without
            # a copy only when their strides match, and with the contiguous layout every weight's
            # gradient was copied at every step (about a fifth of a stacked bf16 Sf-AC update).
            # Values and shapes are unchanged. A weight used as x @ W (EnsembleLinear) is marked
            # ``_stack_contiguous`` and stacked as it is.
            tensor.data = torch.stack([t.detach().transpose(-1, -2) for t in per_seed]).transpose(
                -1, -2
            )
        else:
            tensor.data = torch.stack([t.detach() for t in per_seed]).clone()
    stacked.add(id(tensor))


def _set_batch_size(td: TensorDictBase, batch_size: torch.Size) -> None:
    """The batch size of ``td`` and, recursively, of its nested TensorDicts (which keep their
    own trailing dims)."""
    for value in td.values():
        if is_tensor_collection(value):
            _set_batch_size(value, torch.Size([*batch_size[:1], *value.batch_size]))
    td.batch_size = batch_size


def _key(key) -> str:
    return ".".join(key) if isinstance(key, tuple) else str(key)


def clip_grad_norm_per_seed(
    parameters: Sequence[torch.Tensor], max_norm: float, num_seeds: int
) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` applied to each seed on its own.

    With stacked parameters ``p`` (``[K, ...]``) and gradients ``g``, seed ``k``'s norm is
    ``n_k = sqrt(Σ_p ‖g_p[k]‖²)`` and its gradients are scaled by ``min(1, max_norm / (n_k +
    1e-6))`` (PyTorch's formula), so one seed's large gradient never shrinks another's.
    Returns the ``[K]`` norms before clipping.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(num_seeds)
    squares = torch.stack([g.reshape(num_seeds, -1).float().pow(2).sum(1) for g in grads]).sum(0)
    norms = squares.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype).reshape(num_seeds, *([1] * (g.dim() - 1))))
    return norms


class StackedPolicy(nn.Module):
    """The K seeds' policies as one policy of an env with ``K · E`` sub-envs: sub-envs ``k · E``
    to ``k · E + E − 1`` act with seed ``k``'s policy (one vmapped call per step)."""

    def __init__(self, stack: SeedStack, policy: nn.Module):
        super().__init__()
        self.stack = stack
        self.policy = policy
        slots = _Slots()
        _walk_slots(policy, slots, stack._stacked)
        self._slots = slots

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        num = self.stack.num_seeds
        n = td.batch_size[0]
        if n % num:
            raise ValueError(f"{n} sub-envs cannot be split among {num} seeds")
        slots = self._slots
        policy = self.policy

        def per_seed(tds, tensors, td):
            old = slots.swap(tds, tensors)
            try:
                return policy(td)
            finally:
                slots.swap(*old)

        tds, tensors = slots.inputs()
        inner = td.reshape(num, n // num)
        out = torch.func.vmap(per_seed, in_dims=(0, 0, 0), randomness=self.stack.randomness)(
            tds, tensors, inner
        )
        return out.reshape(n)

    def train(self, mode: bool = True):
        self.policy.train(mode)
        return super().train(mode)


def _walk_slots(
    module: nn.Module, slots: _Slots, stacked: set[int], seen: set[int] | None = None, held=False
) -> None:
    """The slots of an already stacked module tree (nothing is stacked here): the TensorDictParams
    and, in its registered submodules, the stacked parameters and buffers; modules held as plain
    attributes (a policy holding its loss) contribute their TensorDictParams only."""
    seen = set() if seen is None else seen
    if id(module) in seen:
        return
    seen.add(id(module))
    if isinstance(module, TensorDictParams):
        slots.add_tdp(module)
        return
    if not held:
        for where in ("_parameters", "_buffers"):
            for name, tensor in getattr(module, where).items():
                if tensor is not None and id(tensor) in stacked:
                    slots.add_loose(module, where, name)
    for child in module._modules.values():
        if child is not None:
            _walk_slots(child, slots, stacked, seen, held)
    for value in vars(module).values():
        if isinstance(value, nn.Module):
            _walk_slots(value, slots, stacked, seen, True)


def stacked_view(td: TensorDictBase, num_seeds: int) -> TensorDict:
    """``td`` (stacked leaves) as a TensorDict whose batch starts with the seed dimension."""
    return TensorDict(
        {k: stacked_view(v, num_seeds) if is_tensor_collection(v) else v for k, v in td.items()},
        batch_size=td.batch_size if len(td.batch_size) else [num_seeds],
    )
