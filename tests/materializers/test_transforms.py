"""The composite transforms, each run with TestPipeline on the in-process runner and checked
with assert_that; and the Arrow functions they are built from."""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from featurestore.config import OnlineStoreConfig
from featurestore.online.codec import ValueCodec
from featurestore.online.memory import MemoryOnlineStore
from featurestore.sources import ORDINAL, Interval
from materializers.batch import in_process_runner
from materializers.transforms import (
    CREATED_TS,
    EVENT_TS,
    DeduplicateBatches,
    DeduplicateByPartition,
    ValidateAndCast,
    ViewSchema,
    WriteOffline,
    WriteOnline,
    check_source_schema,
    convert_column,
    dedup_rows,
    validate_batch,
)
from registry.errors import DataError

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
SCHEMA = ViewSchema(
    view="stats",
    source="events",
    join_keys=(("user_id", "int64"),),
    features=(("clicks", "int32"), ("score", "float32"), ("emb", "float32[2]"), ("name", "string")),
    timestamp_field="ts",
    created_timestamp_field="created",
)
INTERVAL = Interval.of(datetime(2026, 1, 1), datetime(2026, 1, 3))


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


def pipeline() -> test_pipeline.TestPipeline:
    return test_pipeline.TestPipeline(runner=in_process_runner())


def rows_batch(
    rows: list[dict], *, ts_type: pa.DataType = TS, ordinal: bool = True
) -> pa.RecordBatch:
    """Source rows -> a record batch with the source's column types."""
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("ts", ts_type),
            ("created", TS),
            ("clicks", pa.int64()),
            ("score", pa.float64()),
            ("emb", pa.list_(pa.float64())),
            ("name", pa.string()),
        ]
    )
    # The created time defaults to the event time (or a fixed time when that is text).
    full = [
        {
            "created": r["ts"] if isinstance(r.get("ts"), datetime) else t(1),
            "clicks": 1,
            "score": 0.5,
            "emb": [1.0, 2.0],
            "name": "x",
            **r,
        }
        for r in rows
    ]
    batch = pa.RecordBatch.from_pylist(full, schema=schema)
    if ordinal:
        batch = batch.append_column(ORDINAL, pa.array(range(len(rows)), pa.int64()))
    return batch


# -- pure functions --------------------------------------------------------------------------------


def test_validate_batch_rejects_each_bad_row_with_its_reason() -> None:
    batch = rows_batch(
        [
            {"user_id": 1, "ts": "2026-01-01T10:00:00Z"},
            {"user_id": None, "ts": "2026-01-01T10:00:00Z"},
            {"user_id": 3, "ts": None},
            {"user_id": 4, "ts": "not a time"},
            {"user_id": 5, "ts": "2026-01-01 11:00:00"},  # no zone: UTC
            {"user_id": 6, "ts": "2025-12-31T23:00:00-02:00"},  # 2026-01-01T01:00Z
            {"user_id": 7, "ts": "2026-01-01T10:00:00Z", "clicks": 2**40},
            {"user_id": 8, "ts": "2026-01-01T10:00:00Z", "emb": [1.0, 2.0, 3.0]},
            {"user_id": 9, "ts": "2026-01-01T10:00:00Z", "emb": [1.0, None]},
            {"user_id": 10, "ts": "2026-01-01T10:00:00Z", "score": 1e300},
            {"user_id": 11, "ts": "2027-06-01T00:00:00Z"},  # outside the interval: not this run's
            {"user_id": 12, "ts": "2026-01-01T10:00:00Z", "created": None},
        ],
        ts_type=pa.string(),
    )
    result = validate_batch(batch, SCHEMA, INTERVAL)
    assert result.rows_read == 11
    valid = result.valid.to_pydict()
    assert valid["user_id"] == [1, 5, 6]
    assert valid[EVENT_TS] == [t(1, 10), t(1, 11), t(1, 1)]
    assert result.valid.schema == SCHEMA.validated_schema()
    assert valid["emb"] == [[1.0, 2.0]] * 3
    rejects = result.rejects
    assert rejects is not None and rejects.schema.names[-1] == "reason"
    assert ORDINAL not in rejects.schema.names
    assert dict(zip(rejects["user_id"].to_pylist(), rejects["reason"].to_pylist())) == {
        None: "null join key user_id",
        3: "null event timestamp ts",
        4: "unparseable event timestamp ts",
        7: "feature clicks does not fit int32",
        8: "feature emb: vector length is not 2",
        9: "feature emb: vector has null elements",
        10: "feature score does not fit float32",
        12: "null created timestamp created",
    }
    # Rejected rows keep the source's values and types.
    assert rejects.schema.field("clicks").type == pa.int64()
    assert 2**40 in rejects["clicks"].to_pylist()


def test_validate_batch_takes_naive_and_nanosecond_timestamps_as_utc() -> None:
    batch = rows_batch(
        [{"user_id": 1, "ts": datetime(2026, 1, 2, 3, 4, 5, 6)}], ts_type=pa.timestamp("ns")
    )
    result = validate_batch(batch, SCHEMA, INTERVAL)
    assert result.rejects is None
    assert result.valid[EVENT_TS].to_pylist() == [datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)]
    assert result.valid[CREATED_TS].to_pylist() == [datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)]


def test_convert_column_parses_text_row_by_row() -> None:
    out, problems = convert_column(pa.array(["1.5", "x", None, "3"]), "f", "float64")
    assert out.to_pylist() == [1.5, None, None, 3.0]
    assert [(mask.tolist(), reason) for mask, reason in problems] == [
        ([False, True, False, False], "feature f does not fit float64")
    ]


def test_check_source_schema_names_column_expected_and_found_types() -> None:
    found = pa.schema(
        [
            ("user_id", pa.binary()),
            ("ts", TS),
            ("created", TS),
            ("clicks", pa.bool_()),
            ("score", pa.float64()),
            ("emb", pa.list_(pa.float64())),
        ]
    )
    with pytest.raises(DataError) as info:
        check_source_schema(SCHEMA, found, "events.parquet")
    message = str(info.value)
    assert "'user_id' has type binary, expected int64" in message
    assert "'clicks' has type bool, expected int32" in message
    assert "'name' is missing (expected string)" in message
    assert "events.parquet" in message


def test_dedup_keeps_latest_created_then_last_read() -> None:
    table = pa.table(
        {
            "user_id": [1, 1, 1, 2, 2],
            EVENT_TS: pa.array([t(1)] * 5, TS),
            CREATED_TS: pa.array([t(1, 1), t(1, 3), t(1, 2), t(1), t(1)], TS),
            ORDINAL: [0, 1, 2, 3, 4],
            "clicks": [10, 30, 20, 40, 50],
        }
    )
    out = dedup_rows(table, SCHEMA)
    assert out.to_pydict()["clicks"] == [30, 50]


# -- composite transforms --------------------------------------------------------------------------


def _equal(expected: list) -> object:
    """An assert_that matcher: the same elements in any order (elements need not hash)."""

    def check(actual: list) -> None:
        assert sorted(actual, key=repr) == sorted(expected, key=repr), actual

    return check


def test_validate_and_cast_transform_splits_valid_and_rejects() -> None:
    batches = [
        rows_batch([{"user_id": 1, "ts": t(1)}, {"user_id": None, "ts": t(1)}]),
        rows_batch([{"user_id": 2, "ts": t(2)}, {"user_id": 3, "ts": t(5)}]),
    ]
    with pipeline() as p:
        valid, rejects = p | beam.Create(batches) | ValidateAndCast(SCHEMA, INTERVAL)
        valid_rows = valid | "ValidRows" >> beam.FlatMap(
            lambda b: [(r["user_id"], r[EVENT_TS]) for r in b.to_pylist()]
        )
        reject_rows = rejects | "RejectRows" >> beam.FlatMap(
            lambda b: [(r["user_id"], r["reason"]) for r in b.to_pylist()]
        )
        assert_that(valid_rows, _equal([(1, t(1)), (2, t(2))]), label="valid")
        assert_that(reject_rows, _equal([(None, "null join key user_id")]), label="rejects")


def test_deduplicate_batches_works_inside_each_element() -> None:
    batch = validate_batch(
        rows_batch(
            [
                {"user_id": 1, "ts": t(1), "created": t(1), "clicks": 1},
                {"user_id": 1, "ts": t(1), "created": t(1, 5), "clicks": 2},
            ]
        ),
        SCHEMA,
    ).valid
    with pipeline() as p:
        out = p | beam.Create([batch]) | DeduplicateBatches(SCHEMA)
        assert_that(out | beam.FlatMap(lambda tb: tb["clicks"].to_pylist()), _equal([2]))


def test_deduplicate_by_partition_dedups_across_batches_per_day(tmp_path: Path) -> None:
    first = validate_batch(
        rows_batch(
            [
                {"user_id": 1, "ts": t(1, 1), "created": t(1, 1), "clicks": 1},
                {"user_id": 1, "ts": t(2, 1), "created": t(2, 1), "clicks": 2},
            ]
        ),
        SCHEMA,
    ).valid
    second = validate_batch(
        rows_batch(
            [
                {
                    "user_id": 1,
                    "ts": t(1, 1),
                    "created": t(1, 9),
                    "clicks": 3,
                },  # same key+time, newer
                {"user_id": 2, "ts": t(1, 2), "created": t(1, 2), "clicks": 4},
            ]
        ),
        SCHEMA,
    ).valid

    def check(actual: list) -> None:
        got = {
            day: sorted(tb.select(["user_id", "clicks"]).to_pylist(), key=str) for day, tb in actual
        }
        assert got == {
            "2026-01-01": [{"user_id": 1, "clicks": 3}, {"user_id": 2, "clicks": 4}],
            "2026-01-02": [{"user_id": 1, "clicks": 2}],
            "2026-01-05": [],
        }, got

    with pipeline() as p:
        days = (
            p
            | beam.Create([first, second])
            | DeduplicateByPartition(
                SCHEMA, str(tmp_path / "staging"), batch_rows=1_000, days=["2026-01-05"]
            )
        )
        assert_that(days, check)


def test_write_offline_replaces_each_day_of_the_interval(tmp_path: Path) -> None:
    table = pa.Table.from_batches(
        [validate_batch(rows_batch([{"user_id": 1, "ts": t(2, 5)}]), SCHEMA).valid]
    )
    with pipeline() as p:
        out = (
            p
            | beam.Create([("2026-01-02", table)])
            | WriteOffline(SCHEMA, tmp_path, "demo", INTERVAL)
        )
        assert_that(out | beam.Map(lambda tb: tb.num_rows), _equal([1]))
    written = pq.read_table(tmp_path / "demo" / "stats" / "date=2026-01-02" / "data.parquet")
    assert written.schema == SCHEMA.layout_schema()
    assert written["user_id"].to_pylist() == [1]


def test_write_online_keeps_the_latest_row_per_entity(unique_project: str) -> None:
    early = validate_batch(
        rows_batch(
            [
                {"user_id": 1, "ts": t(2), "clicks": 20},
                {"user_id": 2, "ts": t(1), "clicks": 5},
            ]
        ),
        SCHEMA,
    ).valid
    late = validate_batch(
        rows_batch(
            [
                {"user_id": 1, "ts": t(1), "clicks": 10},  # older than the row above: loses
                {"user_id": 2, "ts": t(2), "clicks": 7},
            ]
        ),
        SCHEMA,
    ).valid
    config = OnlineStoreConfig(type="memory")
    try:
        with pipeline() as p:
            written = (
                p
                | beam.Create([early, late])
                | WriteOnline(SCHEMA, config, unique_project, ".", buckets=4)
            )
            assert_that(written | beam.CombineGlobally(sum), _equal([2]))
        store = MemoryOnlineStore(unique_project)
        codec = ValueCodec([d for _, d in SCHEMA.features])
        got = store.read_latest([("stats", b"1"), ("stats", b"2")])
        assert [(ts, codec.decode(payload)[0]) for ts, payload in got] == [
            (int(t(2).timestamp() * 1e6), 20),
            (int(t(2).timestamp() * 1e6), 7),
        ]
    finally:
        MemoryOnlineStore.drop_project(unique_project)


def test_layout_day_of_a_row_is_its_utc_date() -> None:
    # The staging and the layout must agree on the day of a row just before midnight UTC.
    batch = validate_batch(
        rows_batch([{"user_id": 1, "ts": datetime(2026, 1, 1, 23, 59, 59, tzinfo=UTC)}]), SCHEMA
    ).valid
    assert pa.compute.cast(batch[EVENT_TS], pa.date32()).to_pylist() == [date(2026, 1, 1)]
