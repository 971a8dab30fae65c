"""Console scripts (``[project.scripts]`` in pyproject.toml).

``torchrl-sym-train <recipe> [hydra overrides]`` runs ``torchrl_sym.recipes.<recipe>.main`` with
the overrides as its command line, exactly as ``python recipes/<recipe>.py [overrides]`` does in
a checkout: ``torchrl-sym-train sfac task=hopper-medium seed=1``, ``torchrl-sym-train iql -m
experiment=cpu hydra/launcher=joblib``, ``torchrl-sym-train bdpo --help``. The dataset generator
and the report tool are ``torchrl-sym-generate`` and ``torchrl-sym-report``.

The recipes need the ``[recipes]`` extra (hydra, TensorBoard); without it ``torchrl-sym-train``
says so in one line and exits with status 2.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from torchrl_sym.recipes import RECIPES, extra_message

__all__ = ["train"]

_USAGE = "usage: torchrl-sym-train <recipe> [hydra overrides | --help | --cfg job | -m ...]"


def _recipes_text() -> str:
    width = max(map(len, RECIPES))
    return "\n".join(f"  {name:<{width}}  {what}" for name, what in RECIPES.items())


def train(argv: list[str] | None = None) -> int:
    """Runs the recipe named by the first argument with the rest as hydra's command line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(f"{_USAGE}\n\nrecipes:\n{_recipes_text()}")
        return 0 if args else 2
    name, overrides = args[0], args[1:]
    if name not in RECIPES:
        print(
            f"torchrl-sym-train: unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}\n"
            f"{_USAGE}",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("hydra") is None:  # the recipes need the [recipes] extra
        print(extra_message("hydra"), file=sys.stderr)
        return 2
    module = importlib.import_module(f"torchrl_sym.recipes.{name}")
    # hydra reads its command line from sys.argv; the program name labels its --help
    sys.argv = [f"torchrl-sym-train {name}", *overrides]
    module.main()
    return 0


if __name__ == "__main__":
    sys.exit(train())
