"""TorchRL LossModules of torchrl_sym, one per file."""

from torchrl_sym.objectives.awac import AWACLoss
from torchrl_sym.objectives.bdpo import BDPOLoss
from torchrl_sym.objectives.diffusion_bc import DiffusionBehaviorLoss
from torchrl_sym.objectives.sfac import SfACLoss
from torchrl_sym.objectives.sql import SQLLoss
from torchrl_sym.objectives.srpo import SRPOLoss
from torchrl_sym.objectives.xql import XQLLoss

__all__ = [
    "AWACLoss",
    "BDPOLoss",
    "DiffusionBehaviorLoss",
    "SQLLoss",
    "SRPOLoss",
    "SfACLoss",
    "XQLLoss",
]
