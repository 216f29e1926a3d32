"""Lineage as a picture: source -> feature job -> view -> service -> model, drawn as an SVG
generated here (no layout library): one column per layer (the sources a feature job writes get
their own column after the jobs, so every edge runs left to right), nodes ordered to avoid
crossings (``layout``), edges as curves.

A planned change (``FeatureStore.plan()``: the YAML files against the registry) marks the
objects it changes and everything downstream of them: what the change would affect.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from html import escape
from itertools import pairwise
from pathlib import Path
from typing import Any

from registry.definitions import Definitions

COLUMNS = ("source", "feature_job", "feature_view", "feature_service", "model")
NODE_W, NODE_H, GAP_X, GAP_Y, TOP = 170, 30, 60, 14, 40


@dataclass(frozen=True)
class Graph:
    nodes: list[tuple[str, str]]  # (kind, name)
    edges: list[tuple[tuple[str, str], tuple[str, str]]]

    def downstream(self, start: set[tuple[str, str]]) -> set[tuple[str, str]]:
        """``start`` and everything reachable from it."""
        seen, todo = set(start), list(start)
        while todo:
            node = todo.pop()
            for a, b in self.edges:
                if a == node and b not in seen:
                    seen.add(b)
                    todo.append(b)
        return seen


def _view_of(ref: str) -> str:
    return ref.split(":", 1)[0]


def graph(defs: Definitions) -> Graph:
    attrs = {"source": "sources", "feature_job": "feature_jobs", "feature_view": "feature_views",
             "feature_service": "feature_services", "model": "models"}
    nodes = [(kind, name) for kind in COLUMNS for name in sorted(getattr(defs, attrs[kind]))]
    present = set(nodes)
    edges: list[tuple[tuple[str, str], tuple[str, str]]] = []

    def add(a: tuple[str, str], b: tuple[str, str]) -> None:
        if a in present and b in present and (a, b) not in edges:
            edges.append((a, b))

    outputs: dict[str, str] = {}
    for name, job in defs.feature_jobs.items():
        add(("source", job.source), ("feature_job", name))
        outputs[str(Path(job.output))] = name
    for name, view in defs.feature_views.items():
        add(("source", view.source), ("feature_view", name))
        src = defs.sources.get(view.source)
        path = getattr(src, "path", None)
        if path is not None and str(Path(path)) in outputs:
            add(("feature_job", outputs[str(Path(path))]), ("source", view.source))
    for name, service in defs.feature_services.items():
        for ref in service.features:
            add(("feature_view", _view_of(ref)), ("feature_service", name))
    for name, model in defs.models.items():
        if model.feature_service:
            add(("feature_service", model.feature_service), ("model", name))
        for ref in [*model.features, *model.user_features]:
            add(("feature_view", _view_of(ref)), ("model", name))
    return Graph(nodes, edges)


# Drawing columns: sources a feature job writes sit after the jobs, so every edge runs left to right.
LAYERS = ("sources", "feature jobs", "job outputs", "feature views", "feature services", "models")


def _layer(g: Graph, node: tuple[str, str]) -> int:
    kind = node[0]
    if kind == "source":
        return 2 if any(b == node and a[0] == "feature_job" for a, b in g.edges) else 0
    return {"feature_job": 1, "feature_view": 3, "feature_service": 4, "model": 5}[kind]


def _centre(node: Any, links: list[tuple[Any, Any]], row: dict[Any, float], last: float) -> tuple[float, str]:
    feeds = [row[a] for a, b in links if b == node and a in row]
    return (sum(feeds) / len(feeds) if feeds else last, str(node[1]))


def layout(g: Graph) -> tuple[dict[tuple[str, str], tuple[int, int]], dict[int, list[tuple[int, int]]], list[str]]:
    """(x, y) of every node, the points each edge passes through (by edge index), and the titles
    of the drawn columns. Empty columns are dropped. An edge that skips columns gets a
    placeholder slot in each column it crosses (as in Sugiyama's layered drawing), so it runs
    between boxes, never under one; within a column, nodes and slots are ordered by the mean row
    of what feeds them (the barycentre heuristic, one pass left to right)."""
    used = sorted({_layer(g, n) for n in g.nodes})
    col_of = {n: used.index(_layer(g, n)) for n in g.nodes}
    columns: dict[int, list[Any]] = {c: [] for c in range(len(used))}
    for node in g.nodes:
        columns[col_of[node]].append(node)
    links: list[tuple[Any, Any]] = []  # edges between adjacent columns, slots included
    chains: dict[int, list[Any]] = {}
    for k, (a, b) in enumerate(g.edges):
        chain: list[Any] = [a]
        for c in range(col_of[a] + 1, col_of[b]):
            slot = ("~", k, c)
            columns[c].append(slot)
            chain.append(slot)
        chain.append(b)
        chains[k] = chain
        links += list(pairwise(chain))
    row: dict[Any, float] = {}
    at: dict[Any, tuple[int, int]] = {}
    for c in range(len(used)):
        items = columns[c]
        if c:
            items = sorted(items, key=partial(_centre, links=links, row=row, last=float(len(items))))
        for r, item in enumerate(items):
            row[item] = r
            at[item] = (20 + c * (NODE_W + GAP_X), TOP + r * (NODE_H + GAP_Y))
    pos = {n: at[n] for n in g.nodes}
    routes = {k: [at[item] for item in chain] for k, chain in chains.items()}
    return pos, routes, [LAYERS[layer] for layer in used]


def svg(g: Graph, *, affected: set[tuple[str, str]] = frozenset(), changed: set[tuple[str, str]] = frozenset(),
        link: str = "") -> str:
    """The graph as inline SVG (presentation attributes only: no inline style, so a strict
    Content-Security-Policy holds). Each node links to ``{link}{kind}/{name}``."""
    pos, routes, titles = layout(g)
    bottom = max((y for pts in routes.values() for _, y in pts), default=TOP)
    bottom = max([bottom, *(y for _, y in pos.values())])
    width = 40 + len(titles) * NODE_W + max(len(titles) - 1, 0) * GAP_X
    height = bottom + NODE_H + GAP_Y + 10
    parts = [(f'<svg xmlns="http://www.w3.org/2000/svg" id="lineage" role="img" aria-label="lineage" '
              f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">')]
    for col, title in enumerate(titles):
        x = 20 + col * (NODE_W + GAP_X)
        parts.append(f'<text x="{x}" y="20" font-weight="bold" fill="#444">{title}</text>')
    for k, (a, b) in enumerate(g.edges):
        points = routes[k]
        x0, y0 = points[0]
        d = f"M{x0 + NODE_W},{y0 + NODE_H / 2}"
        for (x1, y1), (x2, y2) in pairwise(points):
            sx, sy, ex, ey = x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2
            d += f" C{sx + GAP_X / 2},{sy} {ex - GAP_X / 2},{ey} {ex},{ey}"
            if (x2, y2) != points[-1]:  # through a placeholder slot: straight across the column
                d += f" L{ex + NODE_W},{ey}"
        hot = a in affected and b in affected
        parts.append(f'<path class="edge" d="{d}" fill="none" stroke="{"#d9480f" if hot else "#999"}" '
                     f'stroke-width="{2 if hot else 1.2}" marker-end="url(#arrow)"/>')
    parts.append('<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
                 'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="#999"/></marker></defs>')
    for node, (x, y) in pos.items():
        kind, name = node
        fill = "#ffe8cc" if node in changed else "#fff4e6" if node in affected else "#edf2ff"
        stroke = "#d9480f" if node in affected else "#4263eb"
        label = name if len(name) <= 22 else name[:21] + "…"
        flag = ' data-affected="true"' if node in affected else ""
        parts.append(
            f'<a href="{escape(link)}{kind}/{escape(name)}"><g class="node" data-kind="{kind}" data-name="{escape(name)}"'
            f'{flag}>'
            f'<rect x="{x}" y="{y}" width="{NODE_W}" height="{NODE_H}" rx="6" fill="{fill}" stroke="{stroke}"/>'
            f'<text x="{x + 10}" y="{y + 19}" fill="#1a1a1a">{escape(label)}</text><title>{kind} {escape(name)}</title></g></a>'
        )
    parts.append("</svg>")
    return "".join(parts)
