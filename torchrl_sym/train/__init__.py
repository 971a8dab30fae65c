"""Machinery every recipe shares: the offline loop, evaluation, checkpoints, TorchRL Trainer adapter.

Names are imported on first access (PEP 562), so ``torchrl_sym.train.checkpoint`` can be used
(e.g. by a script that inspects checkpoints) without importing TorchRL.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torchrl_sym.train.checkpoint import (
        CheckpointManager,
        load_checkpoint,
        rng_state,
        save_checkpoint,
        set_rng_state,
    )
    from torchrl_sym.train.evaluate import (
        CSV_COLUMNS,
        EVAL_MODES,
        Evaluator,
        evaluate_policy,
        exploration_type_of,
    )
    from torchrl_sym.train.loop import Objective, OfflineLoop, Stage, TargetUpdate
    from torchrl_sym.train.trainer import OfflineTicker, SamplingState, make_offline_trainer

_EXPORTS = {
    "CSV_COLUMNS": "evaluate",
    "EVAL_MODES": "evaluate",
    "exploration_type_of": "evaluate",
    "SamplingState": "trainer",
    "CheckpointManager": "checkpoint",
    "Evaluator": "evaluate",
    "evaluate_policy": "evaluate",
    "load_checkpoint": "checkpoint",
    "rng_state": "checkpoint",
    "save_checkpoint": "checkpoint",
    "set_rng_state": "checkpoint",
    "Objective": "loop",
    "OfflineLoop": "loop",
    "Stage": "loop",
    "TargetUpdate": "loop",
    "OfflineTicker": "trainer",
    "make_offline_trainer": "trainer",
}

__all__ = [
    "CSV_COLUMNS",
    "EVAL_MODES",
    "CheckpointManager",
    "Evaluator",
    "Objective",
    "OfflineLoop",
    "OfflineTicker",
    "SamplingState",
    "Stage",
    "TargetUpdate",
    "evaluate_policy",
    "exploration_type_of",
    "load_checkpoint",
    "make_offline_trainer",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
