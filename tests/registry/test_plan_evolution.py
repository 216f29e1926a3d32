"""What a plan says a change asks of the data (backfills) and of its consumers (losses); that
apply records it; and when a backfill is pending, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from registry.evolution import pending_backfills
from registry.runs import MaterializationLog
from registry.sql_registry import SqlRegistry
from tests.registry.helpers import BASE, definitions

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ITEMS = """\
  - name: item
    join_keys: [{name: item_id, dtype: int64}]
"""
WITH_MODEL = BASE.replace("entities:\n", "entities:\n" + ITEMS).replace(
    "feature_services:\n",
    """\
  - name: item_stats
    entities: [item]
    source: events
    features:
      - {name: pop, dtype: float64}
      - {name: emb, dtype: "float32[2]"}
feature_services:
  - name: svc_items
    features: [item_stats]
  - name: picked
    features: ["user_stats:clicks"]
""",
) + """\
models:
  - name: taste
    user_entity: user
    item_entity: item
    feature_service: svc_items
    user_features: [user_stats]
    label: rating
"""


@pytest.fixture
def registry(registry_url: str) -> SqlRegistry:
    reg = SqlRegistry(registry_url, "demo")
    yield reg
    reg.close()


def test_plan_lists_backfills_and_the_consumers_that_lose_features(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path, WITH_MODEL))
    changed = WITH_MODEL.replace(
        "      - {name: emb, dtype: \"float32[2]\"}\n", "      - {name: emb, dtype: \"float32[3]\"}\n"
    ).replace("      - {name: score, dtype: float32}\n", "      - {name: extra, dtype: int64}\n")
    plan = registry.plan(definitions(tmp_path, changed))
    assert [str(b) for b in plan.backfills] == [
        "item_stats: feature emb dtype float32[2] -> float32[3]",
        "user_stats: feature extra added (int64)",
    ]
    assert [str(x) for x in plan.losses] == [
        "feature_service svc: loses user_stats:score",
        "feature_service svc_items: item_stats:emb becomes float32[3] (was float32[2])",
        "model taste: loses user_stats:score; item_stats:emb becomes float32[3] (was float32[2]); "
        "its trained versions cannot serve until it is trained again",
    ]
    text = plan.render()
    assert "Backfill needed" in text and "Feature services and models that lose features:" in text
    assert plan.summary() == (
        "0 added, 2 changed, 0 removed; 2 breaking; backfill: item_stats, user_stats; "
        "features lost by: feature_service svc, feature_service svc_items, model taste"
    )
    _, info = registry.apply(definitions(tmp_path, changed), allow_breaking=True)
    assert info is not None and registry.versions()[-1].summary == plan.summary()


def test_removing_a_feature_or_changing_a_ttl_needs_no_backfill(registry: SqlRegistry, tmp_path: Path) -> None:
    registry.apply(definitions(tmp_path))
    changed = BASE.replace("      - {name: score, dtype: float32}\n", "").replace("ttl: 1d", "ttl: 2d")
    plan = registry.plan(definitions(tmp_path, changed))
    assert plan.backfills == []
    assert [str(x) for x in plan.losses] == ["feature_service svc: loses user_stats:score"]


def test_a_backfill_is_pending_until_a_run_covers_the_older_data(registry: SqlRegistry, tmp_path: Path) -> None:
    log = MaterializationLog(registry.engine, "demo")
    counts = {"rows_read": 1, "rows_offline": 1, "rows_online": 1, "rows_rejected": 0}
    start, mid, end = EPOCH, datetime(2026, 1, 3, 6, tzinfo=UTC), datetime(2026, 1, 4, tzinfo=UTC)
    registry.apply(definitions(tmp_path))
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}
    added = BASE.replace(
        "      - {name: score, dtype: float32}\n",
        "      - {name: score, dtype: float32}\n      - {name: extra, dtype: float64}\n",
    )
    registry.apply(definitions(tmp_path, added))
    # Nothing was materialized under version 1: the first run writes everything anyway.
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}

    log.record("user_stats", start, mid, registry_version=1, **counts)
    [pending] = pending_backfills(registry.engine, "demo", ["user_stats"]).values()
    assert (pending.view, pending.since_version, pending.start) == ("user_stats", 2, EPOCH)
    assert pending.reasons == ("feature extra added (float64)",)
    log.record("user_stats", mid, end, registry_version=2, **counts)  # a later start: not a backfill
    assert "user_stats" in pending_backfills(registry.engine, "demo", ["user_stats"])
    log.record("user_stats", start, end, registry_version=2, **counts)
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}
    # A ttl change needs none; a later added feature needs one again.
    registry.apply(definitions(tmp_path, added.replace("ttl: 1d", "ttl: 3d")))
    assert pending_backfills(registry.engine, "demo", ["user_stats"]) == {}
    registry.apply(definitions(tmp_path, added.replace("ttl: 1d", "ttl: 3d").replace(
        "{name: extra, dtype: float64}", "{name: extra, dtype: float32}")), allow_breaking=True)
    assert pending_backfills(registry.engine, "demo", ["user_stats"])["user_stats"].since_version == 4
