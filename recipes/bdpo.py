"""Runs the bdpo recipe from a checkout: ``python recipes/bdpo.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/bdpo.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train bdpo [overrides]``.
"""

from torchrl_sym.recipes.bdpo import main

if __name__ == "__main__":
    main()
