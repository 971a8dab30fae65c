"""Runs the toy2d recipe from a checkout: ``python recipes/toy2d.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/toy2d.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train toy2d [overrides]``.
"""

from torchrl_sym.recipes.toy2d import main

if __name__ == "__main__":
    main()
