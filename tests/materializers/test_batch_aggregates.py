"""The batch job on a view with aggregations: window rows for the run's interval only, each
complete (the source is read from the start minus the window), bad events rejected."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.offline import layout
from featurestore.online.memory import MemoryOnlineStore
from featurestore.store import FeatureStore
from materializers import materialize

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
T0 = datetime(2026, 1, 1, tzinfo=UTC)
DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - {name: events, type: parquet, path: data/src/*.parquet, timestamp_field: ts}
feature_views:
  - name: activity
    entities: [user]
    source: events
    features:
      - {name: n_10m, dtype: int64, aggregation: {function: count, window: 10m, slide: 5m}}
      - {name: clicks_10m, dtype: int64, aggregation: {function: sum, column: clicks, window: 10m, slide: 5m}}
"""


def make_store(root: Path, project: str) -> FeatureStore:
    (root / "features").mkdir(parents=True)
    (root / "data" / "src").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: memory}\n"
    )
    (root / "features" / "defs.yaml").write_text(DEFINITIONS)
    minutes = [1, 4, 7, 12, 18, 23, 31]  # user 1, one click each; then a bad row
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1] * len(minutes) + [None], pa.int64()),
                "ts": pa.array([T0 + timedelta(minutes=m) for m in [*minutes, 20]], TS),
                "clicks": pa.array([1] * len(minutes) + [5], pa.int64()),
            }
        ),
        root / "data" / "src" / "events.parquet",
    )
    store = FeatureStore(root)
    store.apply()
    return store


def test_windows_of_the_interval_only_each_complete(tmp_path: Path, unique_project: str) -> None:
    store = make_store(tmp_path / "repo", unique_project)
    try:
        [summary] = materialize(
            store, start=T0 + timedelta(minutes=15), end=T0 + timedelta(minutes=30), progress=False
        )
        # Read: the events from 5 minutes (start - window) to 30: at 7, 12, 18, 23 and the bad one.
        assert summary.rows_rejected == 1 and summary.rows_read == 5
        root = layout.view_dir(store.config.offline_path, store.project, "activity")
        rows = pq.read_table(root / "date=2026-01-01" / "data.parquet").to_pylist()
        # Windows ending at 15, 20 and 25 minutes (30 is the interval's end, excluded); the one
        # ending at 15 counts the events at 7 and 12, read from before the interval's start.
        got = [(r["event_timestamp"] - T0, r["n_10m"], r["clicks_10m"]) for r in rows]
        assert got == [
            (timedelta(minutes=15), 2, 2),
            (timedelta(minutes=20), 2, 2),
            (timedelta(minutes=25), 2, 2),
        ]
        assert [r["created_timestamp"] - T0 for r in rows] == [
            timedelta(minutes=12),
            timedelta(minutes=18),
            timedelta(minutes=23),
        ]
        online = store.get_online_features(["activity"], [{"user_id": 1}], with_timestamps=False)
        assert online.to_dict() == {"user_id": [1], "n_10m": [2], "clicks_10m": [2]}
    finally:
        store.close()
        MemoryOnlineStore.drop_project(unique_project)
