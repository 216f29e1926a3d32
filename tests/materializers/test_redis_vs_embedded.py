"""The same materialization gives byte-identical online values on Redis and the embedded store."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.online.codec import encode_entity_keys
from featurestore.store import FeatureStore
from materializers import materialize

UTC = timezone.utc
DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
  - name: item
    join_keys: [{name: item, dtype: string}]
sources:
  - name: events
    type: parquet
    path: data/events.parquet
    timestamp_field: ts
    created_timestamp_field: created
  - name: daily
    type: duckdb
    query: "select item, date_trunc('day', ts) + interval 1 day as ts, count(*)::bigint as n,
            avg(score) as mean_score from read_parquet('data/events.parquet') group by all"
    timestamp_field: ts
feature_views:
  - name: user_state
    entities: [user]
    source: events
    ttl: 3650d
    features:
      - {name: score, dtype: float64}
      - {name: emb, dtype: "float32[3]"}
      - {name: tag, dtype: string}
      - {name: flag, dtype: bool}
  - name: item_daily
    entities: [item]
    source: daily
    features:
      - {name: n, dtype: int64}
      - {name: mean_score, dtype: float32}
"""
USERS, ITEMS = 300, 25


def write_repo(path: Path) -> Path:
    (path / "features").mkdir(parents=True)
    (path / "data").mkdir()
    (path / "featurestore.yaml").write_text(
        "project: demo\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: embedded, path: data/online.db}\n"
    )
    (path / "features" / "defs.yaml").write_text(DEFINITIONS)
    n = 3_000
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ts = [start + timedelta(minutes=17 * i) for i in range(n)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([(i * 7) % USERS for i in range(n)], pa.int64()),
                "item": [f"item|{i % ITEMS}" for i in range(n)],  # '|' must be escaped in keys
                "ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
                "created": pa.array(
                    [t + timedelta(seconds=i % 5) for i, t in enumerate(ts)],
                    pa.timestamp("us", tz="UTC"),
                ),
                "score": [None if i % 11 == 0 else i / 3 for i in range(n)],
                "emb": [[float(i), float(-i), 0.5] for i in range(n)],
                "tag": [None if i % 4 == 0 else f"t{i % 9}" for i in range(n)],
                "flag": [i % 2 == 0 for i in range(n)],
            }
        ),
        path / "data" / "events.parquet",
    )
    return path


def online_state(store: FeatureStore) -> dict[str, list]:
    users = encode_entity_keys(["int64"], [pa.array(range(USERS), pa.int64())])
    items = encode_entity_keys(["string"], [pa.array([f"item|{i}" for i in range(ITEMS)])])
    return {
        "user_state": store.online_store.read_latest([("user_state", k) for k in users]),
        "item_daily": store.online_store.read_latest([("item_daily", k) for k in items]),
    }


@pytest.mark.integration
def test_redis_and_embedded_hold_identical_online_values(
    tmp_path: Path, redis_url: str, unique_project: str
) -> None:
    import redis

    repo = write_repo(tmp_path / "repo")
    states = {}
    for name, online in [
        ("embedded", {}),
        ("redis", {"online_store": {"type": "redis", "url": redis_url}}),
    ]:
        with FeatureStore(repo, config_overrides={**online, "project": unique_project}) as store:
            store.apply()
            summaries = materialize(store, end="2026-03-01", progress=False)
            assert [s.rows_online for s in summaries] == [ITEMS, USERS], name
            states[name] = online_state(store)
    try:
        assert states["redis"] == states["embedded"]
        assert all(v is not None for values in states["redis"].values() for v in values)
    finally:
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{unique_project}:*", count=1_000))
        if keys:
            client.delete(*keys)
