"""The package's layering, checked on the source: the data layer neither imports the training
layer nor the recipes, and its modules import each other without a cycle (every import counts,
also those inside functions). And the base install: the losses, data layer and loop work without
the optional extras, and a recipe without its extra says so in one line."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "torchrl_sym"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The torchrl_sym modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("torchrl_sym"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torchrl_sym"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return found


def _graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(p) for p in paths}
    return {_module_name(p): _imports(p, modules) - {_module_name(p)} for p in paths}


def test_the_data_layer_imports_neither_training_nor_recipes():
    offenders = {
        module: sorted(
            i for i in imports if i.startswith(("torchrl_sym.train", "torchrl_sym.recipes"))
        )
        for module, imports in _graph().items()
        if module.startswith("torchrl_sym.data")
    }
    assert {m: i for m, i in offenders.items() if i} == {}


def test_the_data_modules_import_each_other_without_a_cycle():
    graph = {
        module: {i for i in imports if i.startswith("torchrl_sym.data.")}
        for module, imports in _graph().items()
        if module.startswith("torchrl_sym.data.")
    }
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_the_graph_sees_function_level_imports():
    graph = _graph()
    # offline.py builds missing datasets with generate.py, from inside a function
    assert "torchrl_sym.data.generate" in graph["torchrl_sym.data.offline"]
    assert "torchrl_sym.train.evaluate" in graph["torchrl_sym.recipes.build_policies"]


# ------------------------------------------------------------------------ the base install
# what the extras of pyproject.toml install; the base install has none of it
_EXTRA_MODULES = (
    "hydra",
    "hydra_plugins",
    "tensorboard",
    "matplotlib",
    "rliable",
    "scipy",
    "pandas",
)
# prepended to the code run by _python: the extras' modules cannot be imported (None in sys.modules)
_BLOCK = (
    "import sys\n_EXTRAS = {names!r}\n"
    "for _name in _EXTRAS:\n    sys.modules[_name] = None  # as if not installed\n"
)


def _python(code: str, timeout: int = 300):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", _BLOCK.format(names=_EXTRA_MODULES) + code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PACKAGE.parent,
    )


def test_the_base_install_trains_a_loss_without_any_extra():
    """Without hydra, TensorBoard, matplotlib or the report's packages, the losses, models, data
    layer and training loop import, and a loss trains in the loop (pyproject's base install)."""
    proc = _python(
        """
import torch
from torchrl.objectives import SoftUpdate
import torchrl_sym.data, torchrl_sym.envs, torchrl_sym.diffusion, torchrl_sym.objectives.bdpo
from torchrl_sym.models import make_qvalue, make_tanh_gaussian_actor, make_value
from torchrl_sym.objectives import SfACLoss
from torchrl_sym.train import Objective, OfflineLoop, Stage, TargetUpdate

rb = torchrl_sym.data.make_offline_replay_buffer("toy2d/8gaussians", 32, seed=0, toy2d_size=1000)
loss = SfACLoss(make_tanh_gaussian_actor(1, 2, [8]), make_qvalue(1, 2, [8]), make_value(1, [8]))
loss.make_value_estimator(gamma=0.99)
opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
stage = Stage("train", 5, [Objective("sfac", loss, [opt])], [TargetUpdate(SoftUpdate(loss, tau=0.005))])
OfflineLoop([stage], rb, modules={"loss": loss}, progress=False).run()
blocked = [m for m in _EXTRAS if sys.modules.get(m) is not None]
print("trained", int(loss.step_count), blocked)
"""
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "trained 5 []"


def test_a_recipe_without_its_extra_says_so_in_one_line():
    """``python -m torchrl_sym.recipes.<algo>`` and ``torchrl-sym-train <algo>`` without hydra:
    one line naming the [recipes] extra, no traceback."""
    for code in (
        "import runpy\nsys.argv = ['sfac']\nrunpy.run_module('torchrl_sym.recipes.sfac', run_name='__main__')",
        "from torchrl_sym.cli import train\nsys.exit(train(['bdpo']))",
    ):
        proc = _python(code)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-3000:]
        assert "[recipes] extra" in lines[0] and 'pip install "torchrl_sym[recipes]"' in lines[0]
