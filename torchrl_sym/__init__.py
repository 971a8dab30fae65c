"""torchrl_sym: behavior-regularized offline RL (Sf-AC, SRPO, BDPO and baselines) on TorchRL."""

__version__ = "0.1.0"

from torchrl_sym.train.rundir import register_resolvers as _register_resolvers

_register_resolvers()  # the recipes' hydra.run.dir follows resume=DIR (torchrl_sym.train.rundir)
