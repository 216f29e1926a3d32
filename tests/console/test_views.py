"""The console's pure parts, without a browser: the field-level diff and the lineage layout."""

from __future__ import annotations

import uuid

from online_server.console import lineage, registry_view
from registry.definitions import Definitions
from tests.velox.conftest import DEFS


def _defs(text: str, tmp_path) -> Definitions:
    from tests.velox.conftest import make_store

    store = make_store(tmp_path, {"type": "memory"}, "cv" + uuid.uuid4().hex[:8], text)
    try:
        return store.definitions()
    finally:
        store.close()


def test_flatten_names_list_items_by_their_name() -> None:
    flat = registry_view.flatten({"features": [{"name": "pop", "dtype": "float64"}], "entities": ["item"], "ttl": "1h"})
    assert flat == {"entities[0]": "item", "features[pop].dtype": "float64", "features[pop].name": "pop", "ttl": "1h"}


def test_diff_lists_objects_and_fields(tmp_path) -> None:
    old = _defs(DEFS, tmp_path / "a")
    new_text = DEFS.replace("    ttl: 1h\n    features:\n      - {name: pop, dtype: float64}",
                            "    ttl: 2h\n    features:\n      - {name: pop, dtype: float32}")
    new_text = new_text.replace("  - name: explore\n", "  - name: explorer\n")
    new = _defs(new_text, tmp_path / "b")
    changes = {(c.kind, c.name): c for c in registry_view.diff(old, new)}
    assert set(changes) == {("feature_view", "item_pop"), ("model", "explore"), ("model", "explorer")}
    assert (changes[("model", "explore")].action, changes[("model", "explorer")].action) == ("removed", "added")
    fields = {(f.path, f.old, f.new) for f in changes[("feature_view", "item_pop")].fields}
    assert fields == {("ttl", "1h", "2h"), ("features[pop].dtype", "float64", "float32")}
    assert registry_view.diff(old, old) == []


def test_lineage_layout_runs_left_to_right_and_never_under_a_box(tmp_path) -> None:
    text = DEFS.replace("sources:\n", "sources:\n  - {name: ratings, type: parquet, path: data/r.parquet, timestamp_field: ts}\n")
    text = text.replace("  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}",
                        "  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}\n"
                        "  - {name: factors, type: parquet, path: data/factors.parquet, timestamp_field: ts}")
    text = text.replace("  - name: item_vec\n    entities: [item]\n    source: src\n",
                        "  - name: item_vec\n    entities: [item]\n    source: factors\n")
    text += ("feature_jobs:\n  - {name: als, source: ratings, user_column: user_id, item_column: item_id,\n"
             "     rating_column: rating, factors: 3, output: data/factors.parquet}\n")
    g = lineage.graph(_defs(text, tmp_path))
    assert (("feature_job", "als"), ("source", "factors")) in g.edges
    pos, routes, titles = lineage.layout(g)
    assert titles == ["sources", "feature jobs", "job outputs", "feature views", "models"]
    assert pos[("source", "factors")][0] > pos[("feature_job", "als")][0] > pos[("source", "ratings")][0]
    boxes = set(pos.values())
    for k, (a, b) in enumerate(g.edges):
        points = routes[k]
        assert points[0] == pos[a] and points[-1] == pos[b]
        assert all(p not in boxes for p in points[1:-1]), (a, b)  # crosses columns through free slots
        assert [x for x, _ in points] == sorted(x for x, _ in points)
    # src now feeds item_pop and user_stats only: explore (item_vec alone) is not downstream of it.
    affected = g.downstream({("source", "src")})
    assert {n for k, n in affected if k == "model"} == {"taste", "ctx"}
    svg = lineage.svg(g, affected=affected, changed={("source", "src")})
    assert svg.count('class="node"') == len(g.nodes) and svg.count('class="edge"') == len(g.edges)
    assert 'data-name="taste" data-affected="true"' in svg and 'data-name="explore" data-affected' not in svg
