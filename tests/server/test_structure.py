"""The server's imports run one way: ``app`` includes the route modules' routers; the route modules
use ``online_server.http`` and ``online_server.metrics`` and never import ``app`` back.

Read from the source with ``ast`` (every import, those inside functions included), so a cycle
cannot come back as a lazy import either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import online_server

PACKAGE = "online_server"
ROOT = Path(online_server.__file__).parent
MODULES = {f"{PACKAGE}.{p.stem}" if p.stem != "__init__" else PACKAGE: p for p in sorted(ROOT.glob("*.py"))}


def imported(module: str) -> set[str]:
    """The modules of the package that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    return imports_in(path.read_text(), module, is_package=path.stem == "__init__")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            # `from online_server import app` imports the submodule `app`.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in MODULES)
    return found


def test_only_the_package_entry_imports_the_app() -> None:
    # online_server/__init__.py re-exports create_app; no other module may import app.py.
    assert sorted(module for module in MODULES if f"{PACKAGE}.app" in imported(module)) == [PACKAGE]


def test_route_modules_import_only_the_shared_modules() -> None:
    shared = {f"{PACKAGE}.{name}" for name in ("http", "metrics", "schemas")}
    for name in ("predict", "feedback", "push", "models_admin"):
        module = f"{PACKAGE}.{name}"
        assert imported(module) - shared - {PACKAGE} == set(), module


def test_the_package_has_no_import_cycle() -> None:
    # Edges to the package itself are left out: ``from online_server import metrics`` runs
    # __init__ first, but that is Python's import order, not a dependency on create_app.
    graph = {module: imported(module) - {module, PACKAGE} for module in MODULES}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, " -> ".join((*path, module))
        if module in done:
            return
        for dep in sorted(graph[module]):
            visit(dep, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from online_server.app import create_app\n",
        "import online_server.app\n",
        "from online_server import app\n",
        "from . import app\n",
        "from .app import ERRORS\n",
    ],
)
def test_the_check_sees_every_form_of_import(source: str) -> None:
    assert imports_in(source, f"{PACKAGE}.push") - {PACKAGE} == {f"{PACKAGE}.app"}
