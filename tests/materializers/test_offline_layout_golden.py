"""Golden test of the offline store's Parquet layout (docs/offline-store.md).

A tiny fixed source is materialized; the exact file paths, Arrow schema (names, types, order,
nullability) and rows are pinned. If this fails, the layout changed: update the doc, think about
readers of existing stores (export, training jobs), and only then the expected values here.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.online.memory import MemoryOnlineStore
from featurestore.store import FeatureStore
from materializers import materialize

UTC = timezone.utc
DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}, {name: country, dtype: string}]
sources:
  - name: golden_src
    type: parquet
    path: data/golden.parquet
    timestamp_field: ts
    created_timestamp_field: written_at
feature_views:
  - name: golden
    entities: [user]
    source: golden_src
    features:
      - {name: clicks, dtype: int32}
      - {name: emb, dtype: "float32[2]"}
      - {name: label, dtype: string}
      - {name: seen_at, dtype: timestamp}
      - {name: active, dtype: bool}
"""


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=UTC)


def test_offline_layout_is_pinned(tmp_path: Path, unique_project: str) -> None:
    repo = tmp_path / "repo"
    (repo / "features").mkdir(parents=True)
    (repo / "data").mkdir()
    (repo / "featurestore.yaml").write_text(
        f"project: {unique_project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: memory}\n"
    )
    (repo / "features" / "defs.yaml").write_text(DEFINITIONS)
    # Source columns in another order and other types than declared: the layout does not care.
    pq.write_table(
        pa.table(
            {
                "active": [True, False, None, True],
                "country": ["fr", "de", "fr", "fr"],
                "user_id": pa.array([2, 1, 2, 2], pa.int32()),
                "ts": pa.array([at(2, 8), at(1, 23, 59), at(1, 7), at(1, 7)], pa.timestamp("ms")),
                "written_at": pa.array(
                    [at(2, 9), at(2, 0), at(1, 8), at(1, 7, 30)], pa.timestamp("us", tz="UTC")
                ),
                "clicks": pa.array([3, 1, 2, 9], pa.int64()),
                "emb": [[0.5, 1.0], [1.5, 2.0], [2.5, 3.0], [9.0, 9.0]],
                "label": ["c", None, "b", "stale"],
                "seen_at": ["2026-03-02T07:00:00Z", "2026-03-01T00:00:00+01:00", None, None],
            }
        ),
        repo / "data" / "golden.parquet",
    )
    store = FeatureStore(repo)
    store.apply()
    try:
        [summary] = materialize(store, start="2026-03-01", end="2026-03-03", progress=False)
    finally:
        store.close()
        MemoryOnlineStore.drop_project(unique_project)
    assert (summary.rows_read, summary.rows_offline, summary.rows_rejected) == (4, 3, 0)

    offline = repo / "data" / "offline"
    files = sorted(
        str((Path(d) / n).relative_to(offline)) for d, _, names in os.walk(offline) for n in names
    )
    assert files == [
        f"{unique_project}/golden/date=2026-03-01/data.parquet",
        f"{unique_project}/golden/date=2026-03-02/data.parquet",
    ]

    day1 = pq.read_table(offline / files[0])
    day2 = pq.read_table(offline / files[1])
    assert day1.schema == day2.schema
    assert [(f.name, str(f.type), f.nullable) for f in day1.schema] == [
        ("user_id", "int64", True),
        ("country", "string", True),
        ("event_timestamp", "timestamp[us, tz=UTC]", False),
        ("created_timestamp", "timestamp[us, tz=UTC]", False),
        ("clicks", "int32", True),
        ("emb", "fixed_size_list<element: float>[2]", True),
        ("label", "string", True),
        ("seen_at", "timestamp[us, tz=UTC]", True),
        ("active", "bool", True),
    ]
    # Sorted by event time, then the join keys; one row per (keys, event time), latest created.
    assert day1.to_pylist() == [
        {
            "user_id": 2,
            "country": "fr",
            "event_timestamp": at(1, 7),
            "created_timestamp": at(1, 8),
            "clicks": 2,
            "emb": [2.5, 3.0],
            "label": "b",
            "seen_at": None,
            "active": None,
        },
        {
            "user_id": 1,
            "country": "de",
            "event_timestamp": at(1, 23, 59),
            "created_timestamp": at(2, 0),
            "clicks": 1,
            "emb": [1.5, 2.0],
            "label": None,
            "seen_at": datetime(2026, 2, 28, 23, tzinfo=UTC),
            "active": False,
        },
    ]
    assert day2.to_pylist() == [
        {
            "user_id": 2,
            "country": "fr",
            "event_timestamp": at(2, 8),
            "created_timestamp": at(2, 9),
            "clicks": 3,
            "emb": [0.5, 1.0],
            "label": "c",
            "seen_at": at(2, 7),
            "active": True,
        },
    ]
