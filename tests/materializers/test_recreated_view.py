"""A feature view removed and added again with another definition (issue 14, 2c), end to end on
the embedded store with SQLite and on Redis with PostgreSQL: the next ``materialize
--incremental`` is the whole-range backfill the re-creation needs, not a run from the earlier
life's watermark."""

from __future__ import annotations

from pathlib import Path

from materializers import materialize
from registry.evolution import pending_backfills
from tests.materializers.test_schema_evolution import (  # noqa: F401 (the fixture)
    EPOCH,
    V1,
    define,
    offline,
    online,
    open_store,
    repo,
    t,
    write_source,
)

REMOVED = "feature_views: []\n"
READDED = """\
feature_views:
  - name: clicks
    entities: [user]
    source: clicks_src
    features:
      - {name: score, dtype: float64}
"""


def test_incremental_after_re_adding_a_view_is_a_whole_range_run(repo: tuple[Path, dict]) -> None:  # noqa: F811
    rows = write_source(repo[0])
    latest = {r["user_id"]: r for r in rows}
    with open_store(repo) as store:
        define(repo, V1)
        store.apply()
        materialize(store, end="2026-01-04", progress=False)
        assert store.materialization_log.watermark("clicks") == t(4)

        define(repo, REMOVED)
        store.apply(allow_breaking=True)
        define(repo, READDED)
        store.apply()
        assert store.materialization_log.watermark("clicks") is None
        assert pending_backfills(store.registry.engine, store.project, ["clicks"])["clicks"].start == EPOCH

        [run] = materialize(store, end="2026-01-04", incremental=True, progress=False)
        assert run.start == EPOCH and run.rows_offline == 28
        history = offline(store)
        assert len(history) == 28
        assert all("clicks" not in r and r["score"] == float(r["score"]) for r in history.values())
        got = online(store, ["clicks:score"], [1, 2, 3, 4])
        assert got["score"] == [latest[u]["score"] for u in (1, 2, 3, 4)]
        assert set(got["score__status"]) == {"present"}
        assert pending_backfills(store.registry.engine, store.project, ["clicks"]) == {}

        [after] = materialize(store, end="2026-01-04", incremental=True, progress=False)
        assert after.start == t(3)  # incremental again: the watermark minus the lookback
