"""A stream window file written before a feature was added is merged into, not a crash."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from materializers import stream_offline


class _Schema:
    """The two things merge_into_file needs of a ViewSchema, for a plain view (user_id, ts)."""

    key_names = ["user_id"]

    def __init__(self, fields: list[tuple[str, pa.DataType]]) -> None:
        self._schema = pa.schema([("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC")),
                                  ("created_timestamp", pa.timestamp("us", tz="UTC")), *fields])

    def layout_schema(self) -> pa.Schema:
        return self._schema


def test_an_old_file_gets_the_new_column_as_null(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(stream_offline, "dedup_rows", lambda table, schema: table)
    path = tmp_path / "stream-x.parquet"
    old_schema = _Schema([("clicks", pa.int64())])
    ts = pa.array([1_700_000_000_000_000], pa.timestamp("us", tz="UTC"))
    pq.write_table(pa.table({"user_id": [1], "event_timestamp": ts, "created_timestamp": ts, "clicks": [3]},
                            schema=old_schema.layout_schema()), path)
    new_schema = _Schema([("clicks", pa.int64()), ("bonus", pa.float64())])
    ts2 = pa.array([1_700_000_060_000_000], pa.timestamp("us", tz="UTC"))
    rows = pa.table({"user_id": [2], "event_timestamp": ts2, "created_timestamp": ts2, "clicks": [4], "bonus": [0.5]},
                    schema=new_schema.layout_schema())
    stream_offline.merge_into_file(path, rows, new_schema)  # type: ignore[arg-type]
    merged = pq.read_table(path).to_pylist()
    assert [(r["user_id"], r["clicks"], r["bonus"]) for r in merged] == [(1, 3, None), (2, 4, 0.5)]
