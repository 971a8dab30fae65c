"""The report's optional dependencies: one line naming a missing one, not a traceback.

The report needs rliable (bootstrap CIs, aggregates, the performance profile), matplotlib (the
figures), scipy (t and Welch intervals) and pandas (imported by rliable through arch). They are
the ``[report]`` extra of the package. Every module of the report imports them through
:func:`require`, so a missing one raises :class:`MissingDependency` (an ``ImportError``) whose
message is one line naming the package and the install command, and the command line
(:func:`torchrl_sym.report.cli.main`) checks them all before it starts (:func:`missing`).
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

__all__ = ["EXTRA_INSTALL", "OPTIONAL", "MissingDependency", "missing", "require"]

OPTIONAL = ("rliable", "matplotlib", "pandas", "scipy")
"""The packages of the ``[report]`` extra, by import name."""
EXTRA_INSTALL = 'pip install "torchrl_sym[report]"'


class MissingDependency(ImportError):
    """An optional dependency of the report is not installed (or does not import)."""

    def __init__(
        self,
        package: str,
        *,
        needed_by: str | None = None,
        detail: str | None = None,
        also: tuple[str, ...] | list[str] = (),
    ):
        self.package = package
        via = f" (imported by {needed_by})" if needed_by and needed_by != package else ""
        if detail is not None:
            what = f"{package}{via}, which does not import ({detail})"
        elif also:
            what = f"{', '.join((package, *also))}, which are not installed"
        else:
            what = f"{package}{via}, which is not installed"
        super().__init__(
            f"torchrl_sym.report needs {what}; install the report's extra: {EXTRA_INSTALL}"
        )


def require(module: str) -> ModuleType:
    """``importlib.import_module(module)``, raising :class:`MissingDependency` instead of a bare
    ``ImportError`` (``require("rliable.library")``, ``require("scipy.stats")``)."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        name = (getattr(err, "name", None) or top).split(".")[0]
        if isinstance(err, ModuleNotFoundError):
            raise MissingDependency(name, needed_by=top) from None
        detail = " ".join(f"{type(err).__name__}: {err}".split())[:160]
        raise MissingDependency(name, needed_by=top, detail=detail) from None


def missing(packages: tuple[str, ...] = OPTIONAL) -> list[str]:
    """The packages of ``packages`` that cannot be found (without importing any of them)."""
    absent = []
    for name in packages:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            absent.append(name)
    return absent
