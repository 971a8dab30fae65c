"""Runs the srpo recipe from a checkout: ``python recipes/srpo.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/srpo.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train srpo [overrides]``.
"""

from torchrl_sym.recipes.srpo import main

if __name__ == "__main__":
    main()
