"""Toy problems that reproduce each paper's figures (``recipes/toy2d.py algo=<name>``).

Each submodule exposes ``run(cfg, out_dir, seed) -> dict``: it trains on its toy, writes
``<out_dir>/toy2d_<name>.png`` and returns the numbers the figure shows (JSON-serializable), which
the recipe also writes beside the figure as ``toy2d_<name>.json``.

* :mod:`torchrl_sym.toys.sfac`: Sf-AC's mixture-of-Gaussians fit under each divergence.
* :mod:`torchrl_sym.toys.srpo`: SRPO's 2-D bandit, regularized points as 1/β sweeps 0 → 1.
* :mod:`torchrl_sym.toys.bdpo`: BDPO's 2-D tasks, generation paths against the re-weighted target.
"""

from torchrl_sym.toys.sfac import (
    FIT_OBJECTIVES,
    MoGTarget,
    fit_tanh_normal,
    make_mog_target,
    objective,
    tanh_normal_density,
)

ALGOS = ("sfac", "srpo", "bdpo")

__all__ = [
    "ALGOS",
    "FIT_OBJECTIVES",
    "MoGTarget",
    "fit_tanh_normal",
    "make_mog_target",
    "objective",
    "tanh_normal_density",
]
