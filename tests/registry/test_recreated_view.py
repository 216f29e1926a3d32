"""A feature view removed and later added again with another definition (issue 14, 2c): what its
earlier life wrote answers another definition, so its re-creation is a whole-range backfill, and
its old watermark does not count. On SQLite and PostgreSQL.

``SqlRegistry.plan`` does not pass the retired views to ``diff`` yet (registry/sql_registry.py is
outside this change): the plan is checked through ``diff`` with ``retired_views`` here.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from registry.evolution import EPOCH, pending_backfills, retired_views, value_layouts, view_history
from registry.plan import diff
from registry.runs import MaterializationLog
from registry.sql_registry import SqlRegistry
from tests.registry.helpers import BASE, definitions

UTC = timezone.utc
JAN = datetime(2026, 1, 1, tzinfo=UTC)
MAR = datetime(2026, 3, 1, tzinfo=UTC)
COUNTS = {"rows_read": 1, "rows_offline": 1, "rows_online": 1, "rows_rejected": 0}
# The view removed (and the service that read it with it).
REMOVED = BASE[: BASE.index("feature_views:")]
# Added again: same name, other features.
READDED = BASE.replace(
    "      - {name: clicks, dtype: int64}\n      - {name: score, dtype: float32}\n",
    "      - {name: visits, dtype: int64}\n",
)


@pytest.fixture
def registry(registry_url: str) -> SqlRegistry:
    reg = SqlRegistry(registry_url, "demo")
    yield reg
    reg.close()


def test_a_re_added_view_is_a_whole_range_backfill(registry: SqlRegistry, tmp_path: Path) -> None:
    log = MaterializationLog(registry.engine, "demo")
    registry.apply(definitions(tmp_path))  # v1
    log.record("user_stats", EPOCH, MAR, registry_version=1, **COUNTS)
    assert log.watermark("user_stats") == MAR
    registry.apply(definitions(tmp_path, REMOVED), allow_breaking=True)  # v2
    assert retired_views(registry.engine, "demo") == {"user_stats": 2}

    new = definitions(tmp_path, READDED)
    plan = diff(registry.definitions(), new, registry.head_version(), retired=retired_views(registry.engine, "demo"))
    assert [str(b) for b in plan.backfills] == ["user_stats: re-added (removed at version 2): the whole range"]
    assert "backfill: user_stats" in plan.summary()
    assert registry.plan(new).backfills == plan.backfills  # what `featurestore plan` prints
    registry.apply(new)  # v3
    assert retired_views(registry.engine, "demo") == {}
    # Online values of the earlier life answer another definition: its layouts are forgotten.
    assert value_layouts(view_history(registry.engine, "demo", "user_stats")) == [(("visits",), ("int64",), (None,))]

    # The earlier life's watermark does not count: an incremental run covers the whole range.
    assert log.watermark("user_stats") is None
    [pending] = pending_backfills(registry.engine, "demo", ["user_stats"]).values()
    assert (pending.since_version, pending.start) == (3, EPOCH)
    assert pending.reasons == ("re-created at version 3 (removed at version 2)",)

    # A first run of the new life that does not start at the epoch: its own end is the
    # watermark (not the later one of the earlier life), and the backfill stays pending.
    log.record("user_stats", JAN, datetime(2026, 1, 2, tzinfo=UTC), registry_version=3, **COUNTS)
    assert log.watermark("user_stats") == datetime(2026, 1, 2, tzinfo=UTC)
    assert "user_stats" in pending_backfills(registry.engine, "demo", ["user_stats"])
    log.record("user_stats", EPOCH, datetime(2026, 1, 5, tzinfo=UTC), registry_version=3, **COUNTS)
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}
    assert log.watermark("user_stats") == datetime(2026, 1, 5, tzinfo=UTC)


def test_changes_of_an_earlier_life_do_not_matter(registry: SqlRegistry, tmp_path: Path) -> None:
    """A feature added in the earlier life and never backfilled is not the new life's concern,
    and a view re-added before anything was materialized needs nothing."""
    log = MaterializationLog(registry.engine, "demo")
    registry.apply(definitions(tmp_path))  # v1
    added = BASE.replace(
        "      - {name: score, dtype: float32}\n",
        "      - {name: score, dtype: float32}\n      - {name: extra, dtype: float64}\n",
    )
    registry.apply(definitions(tmp_path, added))  # v2: a backfill nobody ran
    registry.apply(definitions(tmp_path, REMOVED), allow_breaking=True)  # v3
    registry.apply(definitions(tmp_path, READDED))  # v4
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}  # nothing was written
    log.record("user_stats", EPOCH, JAN, registry_version=4, **COUNTS)
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}
    assert log.watermark("user_stats") == JAN


def test_a_view_never_removed_keeps_its_watermark(registry: SqlRegistry, tmp_path: Path) -> None:
    log = MaterializationLog(registry.engine, "demo")
    registry.apply(definitions(tmp_path))
    log.record("user_stats", EPOCH, MAR, registry_version=1, **COUNTS)
    log.record("user_stats", EPOCH, JAN, registry_version=1, **COUNTS)  # an earlier end: no move
    assert log.watermark("user_stats") == MAR
    assert retired_views(registry.engine, "demo") == {}
