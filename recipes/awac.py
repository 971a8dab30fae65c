"""Runs the awac recipe from a checkout: ``python recipes/awac.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/awac.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train awac [overrides]``.
"""

from torchrl_sym.recipes.awac import main

if __name__ == "__main__":
    main()
