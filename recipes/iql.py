"""Runs the iql recipe from a checkout: ``python recipes/iql.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/iql.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train iql [overrides]``.
"""

from torchrl_sym.recipes.iql import main

if __name__ == "__main__":
    main()
