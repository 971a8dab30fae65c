"""The papers' toy figures: one command per algorithm, each writing a PNG and its numbers to docs/.

    python recipes/toy2d.py algo=sfac     # Sf-AC: MoG target fitted under each divergence
    python recipes/toy2d.py algo=srpo     # SRPO: 2-D bandit, regularized points as 1/β sweeps 0 → 1
    python recipes/toy2d.py algo=bdpo     # BDPO: 2-D tasks, generation paths against the target
    python recipes/toy2d.py algo=srpo out_dir=/tmp/figs algo.steps=500   # any setting of the toy

Each toy lives in ``torchrl_sym.toys.<algo>`` (``run(cfg, out_dir, seed) -> dict``); this entry
point seeds, calls it, and writes ``<out_dir>/toy2d_<algo>.json`` beside the figure.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

try:
    import hydra
except ModuleNotFoundError as err:  # the [recipes] extra is not installed
    from torchrl_sym.recipes import missing_extra

    raise missing_extra(err) from None
import torch
from omegaconf import OmegaConf

from torchrl_sym.toys import ALGOS


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def run_toy(cfg) -> dict:
    """Run the toy ``cfg.algo.name``; returns its numbers (also written as JSON beside the PNG)."""
    name = cfg.algo.name
    if name not in ALGOS:
        raise ValueError(f"algo={name!r} is not a toy; choose one of {', '.join(ALGOS)}.")
    from torchrl_sym.train.recipe import check_run_options

    check_run_options(cfg, stackable=False, recipe="toy2d")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    torch.manual_seed(int(cfg.seed))
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    module = importlib.import_module(f"torchrl_sym.toys.{name}")
    result = module.run(cfg.algo, out_dir=out_dir, seed=int(cfg.seed))
    record = {
        "algo": name,
        "seed": int(cfg.seed),
        "config": OmegaConf.to_container(cfg.algo, resolve=True),
        "result": _jsonable(result),
    }
    tmp = out_dir / f".toy2d_{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(out_dir / f"toy2d_{name}.json")
    print(f"wrote {out_dir / f'toy2d_{name}.png'} and {out_dir / f'toy2d_{name}.json'}")
    return result


@hydra.main(config_path="pkg://torchrl_sym.configs.toy2d", config_name="toy2d", version_base="1.3")
def main(cfg) -> dict:
    return run_toy(cfg)


if __name__ == "__main__":
    main()
