"""Runs the sfac recipe from a checkout: ``python recipes/sfac.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/sfac.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train sfac [overrides]``.
"""

from torchrl_sym.recipes.sfac import main

if __name__ == "__main__":
    main()
