"""The recipes' hydra configurations (``pkg://torchrl_sym.configs``), shipped inside the package."""
