"""Runs the sac recipe from a checkout: ``python recipes/sac.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/sac.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train sac [overrides]``.
"""

from torchrl_sym.recipes.sac import main

if __name__ == "__main__":
    main()
