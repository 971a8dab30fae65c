"""Runs the td3bc recipe from a checkout: ``python recipes/td3bc.py [hydra overrides]``.

The recipe is ``torchrl_sym/recipes/td3bc.py`` (its docstring has the commands and the math); an
installed package runs the same ``main`` as ``torchrl-sym-train td3bc [overrides]``.
"""

from torchrl_sym.recipes.td3bc import main

if __name__ == "__main__":
    main()
