"""TorchRL LossModules of torchrl_sym, one per file."""

from torchrl_sym.objectives.diffusion_bc import DiffusionBehaviorLoss

__all__ = ["DiffusionBehaviorLoss"]
