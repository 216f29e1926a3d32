"""Schema evolution end to end (issue 14): a feature added, then a breaking change, on the embedded
store with a SQLite registry and on Redis with a PostgreSQL registry.

* Adding a feature never breaks a run: a mid-day ``--start`` run rewrites part of a partition
  written without the feature (its kept rows get the feature as null), and the next incremental
  run is the backfill the plan announced, which fills every row in.
* A breaking change (a feature removed, one retyped) never makes the view unreadable: values
  written under the old layout still answer the unchanged features; the retyped one is
  ``stale_layout`` until the backfill, over the SDK and over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.offline import layout
from featurestore.store import FeatureStore
from materializers import materialize
from registry.evolution import pending_backfills
from tests.online.conftest import delete_redis_project

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ENTITIES = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
"""
SOURCE = """\
sources:
  - name: clicks_src
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
    created_timestamp_field: created
"""
V1 = """\
feature_views:
  - name: clicks
    entities: [user]
    source: clicks_src
    features:
      - {name: clicks, dtype: int32}
      - {name: score, dtype: float32}
      - {name: tag, dtype: string}
feature_services:
  - name: everything
    features: [clicks]
"""
ADDED = V1.replace(
    "      - {name: tag, dtype: string}\n",
    "      - {name: tag, dtype: string}\n      - {name: bonus, dtype: float64}\n",
)
# Breaking: tag removed, score float32 -> float64.
BROKEN = V1.replace("      - {name: tag, dtype: string}\n", "").replace(
    "{name: score, dtype: float32}", "{name: score, dtype: float64}"
)


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


def write_source(repo: Path) -> list[dict]:
    """Users 1-3 at 03:00, 09:00 and 15:00 of Jan 1-3; user 4 once, on Jan 1."""
    rows = [(u, t(d, h)) for d in (1, 2, 3) for h in (3, 9, 15) for u in (1, 2, 3)]
    rows.append((4, t(1, 5)))
    table = [
        {
            "user_id": u,
            "ts": ts,
            "created": ts,
            "clicks": i,
            "score": i + 0.5,
            "tag": f"t{i}",
            "bonus": i * 10.0,
        }
        for i, (u, ts) in enumerate(rows)
    ]
    (repo / "data" / "src").mkdir(parents=True)
    schema = pa.schema(
        [("user_id", pa.int64()), ("ts", TS), ("created", TS), ("clicks", pa.int64()),
         ("score", pa.float64()), ("tag", pa.string()), ("bonus", pa.float64())]
    )
    pq.write_table(pa.Table.from_pylist(table, schema), repo / "data" / "src" / "a.parquet")
    return table


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.integration)])
def repo(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[tuple[Path, dict]]:
    root = tmp_path / "repo"
    (root / "features").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "featurestore.yaml").write_text(
        "project: demo\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: embedded, path: data/online.db}\n"
        "materialization: {lookback: 1d}\n"
    )
    (root / "features" / "entities.yaml").write_text(ENTITIES + SOURCE)
    (root / "features" / "views.yaml").write_text(V1)
    overrides: dict = {"project": unique_project}
    if request.param == "redis":
        overrides["online_store"] = {"type": "redis", "url": request.getfixturevalue("redis_url")}
        overrides["registry"] = request.getfixturevalue("postgres_url")
    yield root, overrides
    if request.param == "redis":
        delete_redis_project(overrides["online_store"]["url"], unique_project)


def open_store(repo: tuple[Path, dict]) -> FeatureStore:
    root, overrides = repo
    return FeatureStore(root, config_overrides=overrides, registry_refresh_seconds=0)


def define(repo: tuple[Path, dict], views: str) -> None:
    (repo[0] / "features" / "views.yaml").write_text(views)


def offline(store: FeatureStore) -> dict[tuple[int, datetime], dict]:
    """Every offline row of the view by (user, event time), read as readers do (by name)."""
    root = layout.view_dir(store.config.offline_path, store.project, "clicks")
    out = {}
    for path in sorted(root.glob("date=*/*.parquet")):
        for row in pq.read_table(path).to_pylist():
            out[(row["user_id"], row["event_timestamp"])] = row
    return out


def online(store: FeatureStore, features: list[str], users: list[int]) -> dict[str, list]:
    response = store.get_online_features(features, [{"user_id": u} for u in users])
    return response.to_dict(include_status=True)


def test_adding_a_feature_never_breaks_a_run(repo: tuple[Path, dict]) -> None:
    rows = write_source(repo[0])
    latest = {r["user_id"]: r for r in rows}  # rows are in time order: the last one wins
    with open_store(repo) as store:
        store.apply()
        [first] = materialize(store, end="2026-01-03T12:00:00", progress=False)
        assert first.rows_offline == 25 and first.rows_online == 4

        define(repo, ADDED)
        plan = store.plan()
        assert not plan.breaking
        assert [str(b) for b in plan.backfills] == ["clicks: feature bonus added (float64)"]
        assert "backfill: clicks" in plan.render()
        _, info = store.apply()
        assert info is not None and "backfill: clicks" in info.summary
        assert store.registry_versions()[-1].summary == info.summary  # apply recorded it
        pending = pending_backfills(store.registry.engine, store.project, ["clicks"])
        assert pending["clicks"].start == EPOCH and pending["clicks"].since_version == 2

        # A run that starts mid-day rewrites part of Jan 3, whose kept rows lack `bonus`.
        [mid] = materialize(store, start="2026-01-03T06:00:00", end="2026-01-03T12:00:00", progress=False)
        assert (mid.rows_offline, mid.rows_online) == (3, 3)
        history = offline(store)
        assert len(history) == 25
        assert history[(1, t(3, 3))]["bonus"] is None  # kept, written before the feature
        assert history[(1, t(3, 9))]["bonus"] == 210.0  # rewritten by this run
        assert "bonus" not in history[(1, t(1, 3))]  # an untouched older partition
        # The point-in-time export reads old and new partitions together: null before.
        ds = store.get_training_dataset(
            pa.table({"user_id": [1, 1], "event_timestamp": pa.array([t(2, 10), t(3, 10)], TS)}),
            ["clicks:clicks", "clicks:bonus"],
        ).to_arrow().to_pylist()
        assert [(r["clicks"], r["bonus"]) for r in ds] == [(12, None), (21, 210.0)]
        # Online: user 4's value predates the feature; its other features still answer.
        got = online(store, ["clicks:clicks", "clicks:bonus"], [1, 4])
        assert got["clicks"] == [21, 27] and got["clicks__status"] == ["present", "present"]
        assert got["bonus"] == [210.0, None]
        assert got["bonus__status"] == ["present", "stale_layout"]
        # The backfill is still pending: that run did not start at the beginning.
        assert "clicks" in pending_backfills(store.registry.engine, store.project, ["clicks"])

        # The incremental run is the backfill: the whole history, every row filled in.
        [backfill] = materialize(store, end="2026-01-04", incremental=True, progress=False)
        assert backfill.start == EPOCH and backfill.rows_offline == 28
        history = offline(store)
        assert len(history) == 28
        assert all(r["bonus"] == float(r["clicks"]) * 10 for r in history.values())
        got = online(store, ["clicks:clicks", "clicks:score", "clicks:bonus"], [1, 2, 3, 4])
        assert got["clicks"] == [latest[u]["clicks"] for u in (1, 2, 3, 4)]
        assert got["bonus"] == [latest[u]["bonus"] for u in (1, 2, 3, 4)]
        assert set(got["bonus__status"]) == {"present"}
        assert pending_backfills(store.registry.engine, store.project, ["clicks"]) == {}
        # And incremental runs are incremental again.
        [after] = materialize(store, end="2026-01-04", incremental=True, progress=False)
        assert after.start == t(3)


def test_a_breaking_change_never_makes_the_view_unreadable(repo: tuple[Path, dict]) -> None:
    from fastapi.testclient import TestClient

    from online_server import create_app

    write_source(repo[0])
    with open_store(repo) as store:
        store.apply()
        materialize(store, end="2026-01-04", progress=False)
        before = online(store, ["clicks:clicks", "clicks:score"], [1, 4])
        assert before["score"] == [24.5, 27.5]

        define(repo, BROKEN)
        plan = store.plan()
        assert [c.name for c in plan.breaking] == ["clicks"]
        assert [str(b) for b in plan.backfills] == ["clicks: feature score dtype float32 -> float64"]
        assert [str(x) for x in plan.losses] == [
            "feature_service everything: loses clicks:tag; clicks:score becomes float64 (was float32)"
        ]
        store.apply(allow_breaking=True)

        got = online(store, ["clicks:clicks", "clicks:score"], [1, 4, 99])
        assert got["clicks"] == [24, 27, None]
        assert got["clicks__status"] == ["present", "present", "not_found"]
        assert got["score"] == [None, None, None]
        assert got["score__status"] == ["stale_layout", "stale_layout", "not_found"]
        service = store.get_online_features("everything", [{"user_id": 1}]).to_dict(include_status=True)
        assert service == {
            "user_id": [1], "clicks": [24], "score": [None],
            "clicks__status": ["present"], "score__status": ["stale_layout"],
        }

        with TestClient(create_app(store)) as client:
            r = client.post("/features", json={"feature_service": "everything", "entity_rows": [{"user_id": 1}]})
            assert r.status_code == 200, r.text
            assert r.json()["features"] == {
                "clicks": {"values": [24], "statuses": ["present"]},
                "score": {"values": [None], "statuses": ["stale_layout"]},
            }

        [backfill] = materialize(store, end="2026-01-05", incremental=True, progress=False)
        assert backfill.start == EPOCH
        got = online(store, ["clicks:clicks", "clicks:score"], [1, 4])
        assert got["score"] == [24.5, 27.5] and got["score__status"] == ["present", "present"]
        history = offline(store)
        assert all("tag" not in r and r["score"] == r["clicks"] + 0.5 for r in history.values())
