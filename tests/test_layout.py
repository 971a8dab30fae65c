"""The package's layering, checked on the source: the data layer neither imports the training
layer nor the recipes, and its modules import each other without a cycle (every import counts,
also those inside functions)."""

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
