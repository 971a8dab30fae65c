"""torchrl_sym: behavior-regularized offline RL (Sf-AC, SRPO, BDPO and baselines) on TorchRL."""

__version__ = "0.1.0"
