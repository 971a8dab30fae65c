"""Runs the xql recipe from a checkout: ``python recipes/xql.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/xql.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train xql [overrides]``.
"""

from torchrl_sym.recipes.xql import main

if __name__ == "__main__":
    main()
