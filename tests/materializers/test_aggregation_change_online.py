"""An aggregation changed under the same name and dtype (issue 14, 2d), end to end on the
embedded store with SQLite and on Redis with PostgreSQL: a count over 1h becomes a count over
1d; its online values, written under the old aggregation, read ``stale_layout`` until the
backfill the plan announced, while the unchanged aggregation keeps answering.
The writer and the readers give their codecs the features' meanings
(``registry.evolution.feature_meaning``): materializers/online_write.py, featurestore/retrieval.py
and featurestore/feature_cache.py.
"""

from __future__ import annotations

from pathlib import Path

from materializers import materialize
from tests.materializers.test_schema_evolution import (  # noqa: F401 (the fixture)
    EPOCH,
    define,
    online,
    open_store,
    repo,
    write_source,
)

H1 = """\
feature_views:
  - name: clicks
    entities: [user]
    source: clicks_src
    features:
      - {name: n, dtype: int64, aggregation: {function: count, window: 1h}}
      - {name: total, dtype: int64, aggregation: {function: sum, column: clicks, window: 1h}}
"""
D1 = H1.replace("{function: count, window: 1h}", "{function: count, window: 1d, slide: 1h}")


def test_a_changed_aggregation_is_stale_until_the_backfill(repo: tuple[Path, dict]) -> None:  # noqa: F811
    write_source(repo[0])
    with open_store(repo) as store:
        define(repo, H1)
        store.apply()
        materialize(store, end="2026-01-04", progress=False)
        users = [1, 2, 3, 4]
        before = online(store, ["clicks:n", "clicks:total"], users)
        assert set(before["n__status"]) == {"present"}

        define(repo, D1)
        plan = store.plan()
        assert [b.view for b in plan.backfills] == ["clicks"] and plan.breaking
        store.apply(allow_breaking=True)
        got = online(store, ["clicks:n", "clicks:total"], users)
        assert got["total"] == before["total"] and set(got["total__status"]) == {"present"}
        assert got["n"] == [None] * 4 and set(got["n__status"]) == {"stale_layout"}

        [backfill] = materialize(store, end="2026-01-04", incremental=True, progress=False)
        assert backfill.start == EPOCH
        got = online(store, ["clicks:n", "clicks:total"], users)
        assert set(got["n__status"]) == set(got["total__status"]) == {"present"}
