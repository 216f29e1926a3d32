"""A tiny repository with a scalar view, a vector view and a composite-key view, whose online
store is filled directly through the codecs (materialization is tested elsewhere)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from featurestore import FeatureStore
from featurestore.online.codec import ValueCodec, encode_entity_key

DEFS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
  - name: item
    join_keys: [{name: item_id, dtype: int64}]
  - name: pair
    join_keys: [{name: user_id, dtype: int64}, {name: region, dtype: string}]
sources:
  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}
feature_views:
  - name: user_stats
    entities: [user]
    source: src
    ttl: 1h
    features:
      - {name: clicks, dtype: int64}
      - {name: score, dtype: float64}
  - name: item_vec
    entities: [item]
    source: src
    features:
      - {name: vec, dtype: "float32[3]"}
      - {name: title, dtype: string}
  - name: user_region
    entities: [pair]
    source: src
    features:
      - {name: spend, dtype: float64}
feature_services:
  - name: svc
    features: [user_stats:score, item_vec]
"""

NOW_US = time.time_ns() // 1000


def make_repo(root: Path, online: dict[str, Any], project: str = "retr") -> FeatureStore:
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS)
    (root / "featurestore.yaml").write_text(f"project: {project}\n")
    store = FeatureStore(root, config_overrides={"online_store": online}, registry_refresh_seconds=0)
    store.apply()
    return store


def fill(store: FeatureStore) -> None:
    """user 1 fresh, user 2 older than the 1h ttl, user 3 absent; items 10, 11; one composite key."""
    online = store.online_store
    stats = ValueCodec(["int64", "float64"])
    online.write_latest("user_stats", [
        (encode_entity_key(["int64"], [1]), NOW_US - 60_000_000, 0, stats.encode_row([5, 0.5])),
        (encode_entity_key(["int64"], [2]), NOW_US - 7_200_000_000, 0, stats.encode_row([9, 0.9])),
    ])
    vec = ValueCodec(["float32[3]", "string"])
    online.write_latest("item_vec", [
        (encode_entity_key(["int64"], [10]), NOW_US, 0, vec.encode_row([[1.0, 2.0, 3.0], "ten"])),
        (encode_entity_key(["int64"], [11]), NOW_US, 0, vec.encode_row([[0.5, 0.25, 0.0], None])),
    ])
    online.write_latest("user_region", [
        (encode_entity_key(["int64", "string"], [1, "eu|west"]), NOW_US, 0, ValueCodec(["float64"]).encode_row([12.5])),
    ])


@pytest.fixture(params=["memory", "embedded", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> FeatureStore:
    project = "retr"
    if request.param == "redis":
        online = {"type": "redis", "url": request.getfixturevalue("redis_url")}
        project = request.getfixturevalue("unique_project")
    else:
        online = {"type": request.param}
    fs = make_repo(tmp_path / "repo", online, project)
    fill(fs)
    yield fs
    fs.close()
