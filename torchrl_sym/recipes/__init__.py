"""The training recipes: one hydra app per algorithm, configured by ``torchrl_sym/configs``.

Run one as ``torchrl-sym-train <algo> [overrides]`` (the console script), ``python -m
torchrl_sym.recipes.<algo> [overrides]``, or from a checkout ``python recipes/<algo>.py
[overrides]``; all three run the same ``main``. :data:`RECIPES` names them.
"""

from __future__ import annotations

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

# module a recipe or console script imports -> (the extra of pyproject.toml that installs it, the
# distribution's name); the base install (``pip install torchrl_sym``) has the losses, data layer,
# models and training loop but none of these
EXTRAS = {
    "hydra": ("recipes", "hydra-core"),
    "hydra_plugins": ("recipes", "hydra-joblib-launcher"),
    "tensorboard": ("recipes", "tensorboard"),
    "matplotlib": ("recipes", "matplotlib"),
    "rliable": ("report", "rliable"),
    "scipy": ("report", "scipy"),
    "pandas": ("report", "pandas"),
}

__all__ = ["EXTRAS", "RECIPES", "extra_message", "missing_extra"]


def extra_message(module: str, extra: str | None = None) -> str:
    """One line naming the extra that installs ``module`` (a key of :data:`EXTRAS`; ``extra``
    overrides its extra, e.g. ``"report"`` for matplotlib in the report)."""
    default, package = EXTRAS.get(module.split(".")[0], ("recipes", module))
    extra = extra or default
    return (
        f"torchrl_sym: {package} is not installed; it comes with the [{extra}] extra: "
        f'pip install "torchrl_sym[{extra}]" (in a checkout: pip install -e ".[{extra}]")'
    )


def missing_extra(err: ModuleNotFoundError) -> BaseException:
    """What a recipe raises when an import fails: for a module of an extra, a ``SystemExit``
    whose message is the one line of :func:`extra_message` (no traceback, exit status 1); for
    any other module, ``err`` itself."""
    if (err.name or "").split(".")[0] in EXTRAS:
        return SystemExit(extra_message(err.name))
    return err
