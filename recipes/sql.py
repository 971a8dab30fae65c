"""Runs the sql recipe from a checkout: ``python recipes/sql.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/sql.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train sql [overrides]``.
"""

from torchrl_sym.recipes.sql import main

if __name__ == "__main__":
    main()
