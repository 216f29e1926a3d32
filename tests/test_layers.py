"""The direction of the house, checked from the code's own imports (``ast``, nothing is run).

    registry/        the bottom: imports nothing of the project above it
    featurestore/    on registry/; only its CLI (the entry points) may import the jobs or the server
    materializers/   the Beam jobs, on both; never the server
    online_server/   the web layer, on both; never the jobs

and no import cycle among the project's modules, counting every import (module level, inside a
function, and under ``TYPE_CHECKING``): a cycle that only a lazy import hides is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "featurestore", "materializers", "online_server")


def _modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The project modules ``name`` imports (the longest known module of each dotted name)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod when there is one.
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            parts = target.split(".")
            while parts and ".".join(parts) not in MODULES:
                parts.pop()
            if parts and ".".join(parts) != name:
                found.add(".".join(parts))
    return found


def _graph() -> dict[str, set[str]]:
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    for name, path in MODULES.items():
        if path.name == "__init__.py":
            # A package's face re-exports its own modules; that is not a dependency of the package
            # on them in the sense of a layer (its modules may import each other through it).
            graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    return graph


GRAPH = _graph()


def test_the_graph_was_read() -> None:
    assert len(GRAPH) > 100
    assert "registry.errors" in GRAPH["featurestore.store"]
    assert "featurestore.models.plan" in GRAPH["featurestore.models.serving"]


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if n.startswith("registry")))
def test_registry_imports_nothing_above_it(name: str) -> None:
    above = sorted(m for m in GRAPH[name] if not m.startswith("registry"))
    assert not above, f"{name} imports {above}: registry/ is the bottom layer"


def test_only_entry_points_import_the_jobs_or_the_server() -> None:
    bad = []
    for name, imported in GRAPH.items():
        for target in imported:
            top, mine = target.split(".")[0], name.split(".")[0]
            if top in ("materializers", "online_server") and top != mine and not name.startswith("featurestore.cli"):
                bad.append(f"{name} -> {target}")
    assert not bad, "only featurestore.cli may import the jobs or the server:\n" + "\n".join(sorted(bad))


def test_nothing_below_the_entry_points_imports_them() -> None:
    bad = sorted(
        f"{name} -> {target}"
        for name, imported in GRAPH.items()
        for target in imported
        if target.startswith("featurestore.cli") and not name.startswith("featurestore.cli")
    )
    assert not bad, "the CLI is the top of the house:\n" + "\n".join(bad)


def test_no_service_imports_the_facade() -> None:
    # The jobs and the server sit above featurestore/ and may be handed the facade; what lives
    # in featurestore/ (the services) takes a ServiceContext instead.
    importers = sorted(
        n for n, imported in GRAPH.items()
        if "featurestore.store" in imported and n.startswith("featurestore.") and not n.startswith("featurestore.cli")
    )
    assert not importers, f"{importers} import featurestore.store; services take a ServiceContext"


def test_no_import_cycle() -> None:
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)
