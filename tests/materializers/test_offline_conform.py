"""A partly rewritten partition written under an earlier definition of the view: its kept rows
meet the run's columns (``layout.conform``) instead of failing the run."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.offline import layout

UTC = timezone.utc


def t(hour: int) -> datetime:
    return datetime(2026, 1, 3, hour, tzinfo=UTC)


def test_kept_rows_of_an_older_layout_are_conformed(tmp_path: Path) -> None:
    old_schema = layout.layout_schema(
        [("user_id", pa.int64())], [("clicks", pa.int32()), ("gone", pa.string()), ("level", pa.string())]
    )
    old = pa.Table.from_pylist(
        [
            {"user_id": 1, "event_timestamp": t(3), "created_timestamp": t(3), "clicks": 1, "gone": "x", "level": "7"},
            {"user_id": 2, "event_timestamp": t(4), "created_timestamp": t(4), "clicks": 2, "gone": "y", "level": "high"},
            {"user_id": 1, "event_timestamp": t(9), "created_timestamp": t(9), "clicks": 3, "gone": "z", "level": "9"},
        ],
        old_schema,
    )
    layout.replace_interval(tmp_path, "p", "v", old, t(0), datetime(2026, 1, 4, tzinfo=UTC))

    # Since then: `gone` removed, `level` retyped to int32, `bonus` added.
    new_schema = layout.layout_schema(
        [("user_id", pa.int64())], [("clicks", pa.int32()), ("level", pa.int32()), ("bonus", pa.float64())]
    )
    new = pa.Table.from_pylist(
        [{"user_id": 1, "event_timestamp": t(9), "created_timestamp": t(9), "clicks": 3, "level": 9, "bonus": 0.5}],
        new_schema,
    )
    assert layout.replace_interval(tmp_path, "p", "v", new, t(6), t(12)) == 1

    written = pq.read_table(layout.partition_dir(tmp_path, "p", "v", t(0).date()) / layout.BATCH_FILE)
    assert written.schema.equals(new_schema)
    assert written.to_pylist() == [
        {"user_id": 1, "event_timestamp": t(3), "created_timestamp": t(3), "clicks": 1, "level": 7, "bonus": None},
        # "high" does not fit int32: null until the backfill recomputes the row
        {"user_id": 2, "event_timestamp": t(4), "created_timestamp": t(4), "clicks": 2, "level": None, "bonus": None},
        {"user_id": 1, "event_timestamp": t(9), "created_timestamp": t(9), "clicks": 3, "level": 9, "bonus": 0.5},
    ]
