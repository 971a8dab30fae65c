"""The training recipes: one hydra app per algorithm, configured by ``torchrl_sym/configs``.

Run one as ``torchrl-sym-train <algo> [overrides]`` (the console script), ``python -m
torchrl_sym.recipes.<algo> [overrides]``, or from a checkout ``python recipes/<algo>.py
[overrides]``; all three run the same ``main``. :data:`RECIPES` names them.
"""

RECIPES = {
    "sfac": "Sf-AC: symmetric f-divergence regularized actor-critic",
    "iql": "IQL (TorchRL's IQLLoss)",
    "awac": "AWAC",
    "sql": "SQL (sparse Q-learning)",
    "xql": "XQL (extreme Q-learning)",
    "td3bc": "TD3+BC (TorchRL's TD3BCLoss)",
    "srpo": "SRPO: score-regularized policy over a diffusion behavior model",
    "bdpo": "BDPO: behavior-regularized diffusion policy",
    "sac": "SAC / CrossQ online behavior policies for the generated datasets",
    "toy2d": "the papers' 2-D toy figures",
}
"""Recipe name -> what it trains; ``torchrl_sym.recipes.<name>.main`` is its hydra app."""

__all__ = ["RECIPES"]
