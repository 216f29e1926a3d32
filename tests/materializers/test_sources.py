"""Source readers (featurestore.sources): Parquet globs, DuckDB queries over files, PostgreSQL in
chunks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.sources import ORDINAL, Interval, ParquetReader, libpq_url, open_source
from registry.errors import ConfigError, DataError
from registry.spec import DuckDBSource, ParquetSource, PostgresSource

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
JAN = Interval.of(datetime(2026, 1, 1), datetime(2026, 2, 1))


def events(ids: list[int], times: list[datetime | None]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array(ids, pa.int64()),
            "ts": pa.array(times, TS),
            "clicks": pa.array([i * 10 for i in ids], pa.int64()),
        }
    )


def read_all(reader) -> list[pa.RecordBatch]:  # type: ignore[no-untyped-def]
    return [batch for split in reader.splits() for batch in reader.read(split)]


def parquet_reader(tmp_path: Path, path: str, batch_rows: int = 1_000) -> ParquetReader:
    spec = ParquetSource(name="events", type="parquet", path=path, timestamp_field="ts")
    return open_source(
        spec,
        columns=["user_id", "ts", "clicks"],
        timestamp_field="ts",
        interval=JAN,
        root=tmp_path,
        batch_rows=batch_rows,
    )  # type: ignore[return-value]


def test_parquet_glob_reads_matching_files_in_order_with_the_interval_pushed_down(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(
        events([1, 2], [datetime(2026, 1, 5, tzinfo=UTC), datetime(2025, 12, 31, tzinfo=UTC)]),
        data / "a.parquet",
    )
    pq.write_table(
        events([3, 4], [None, datetime(2026, 1, 31, 23, tzinfo=UTC)]), data / "b.parquet"
    )
    pq.write_table(events([5], [datetime(2026, 1, 6, tzinfo=UTC)]), data / "other.csv.parquet.bak")
    reader = parquet_reader(tmp_path, "data/*.parquet")  # relative to the repository root
    assert [Path(p).name for _, p in reader.splits()] == ["a.parquet", "b.parquet"]
    batches = read_all(reader)
    rows = [r for b in batches for r in b.to_pylist()]
    # Out-of-interval rows are filtered at the source; a NULL time passes, for validation to reject.
    assert [r["user_id"] for r in rows] == [1, 3, 4]
    assert batches[0].schema.names == ["user_id", "ts", "clicks", ORDINAL]
    # The read order: split index in the high bits, row offset in the low ones.
    assert [r[ORDINAL] for r in rows] == [0, 1 << 40, (1 << 40) + 1]


def test_parquet_directory_and_batch_size(tmp_path: Path) -> None:
    data = tmp_path / "dir"
    data.mkdir()
    pq.write_table(
        events(list(range(2_500)), [datetime(2026, 1, 2, tzinfo=UTC)] * 2_500),
        data / "part-0.parquet",
        row_group_size=1_000,
    )
    (data / "_SUCCESS").write_text("")
    reader = parquet_reader(tmp_path, str(data), batch_rows=1_000)
    batches = read_all(reader)
    assert sum(b.num_rows for b in batches) == 2_500
    assert max(b.num_rows for b in batches) <= 1_000
    assert [s for s, _ in reader.splits()] == [0]


def test_parquet_schemas_are_read_per_file(tmp_path: Path) -> None:
    pq.write_table(events([1], [datetime(2026, 1, 2, tzinfo=UTC)]), tmp_path / "x.parquet")
    [(origin, schema)] = list(parquet_reader(tmp_path, "x.parquet").schemas())
    assert origin.endswith("x.parquet")
    assert schema.field("ts").type == TS


def test_parquet_without_files_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Parquet files match nothing/"):
        parquet_reader(tmp_path, "nothing/*.parquet").splits()


def test_object_store_urls_go_through_pyarrow_filesystems(tmp_path: Path) -> None:
    import pyarrow.fs as pafs

    reader = parquet_reader(tmp_path, "mock:///bucket/events/*.parquet")
    fs, inner, local = reader._filesystem()
    assert isinstance(fs, pafs._MockFileSystem) and inner == "bucket/events/*.parquet" and not local
    with pytest.raises(DataError, match="no Parquet files match mock:///bucket/events"):
        reader.files()


def test_duckdb_query_resolves_relative_paths_against_the_repo_root(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    pq.write_table(
        events(
            [1, 1, 2],
            [
                datetime(2026, 1, 5, 1, tzinfo=UTC),
                datetime(2026, 1, 5, 2, tzinfo=UTC),
                datetime(2027, 1, 1, tzinfo=UTC),
            ],
        ),
        tmp_path / "raw" / "e.parquet",
    )
    spec = DuckDBSource(
        name="daily",
        type="duckdb",
        timestamp_field="day",
        query="select user_id, date_trunc('day', ts) + interval 1 day as day, sum(clicks)::bigint as clicks "
        "from read_parquet('raw/*.parquet') group by all",
    )
    reader = open_source(
        spec,
        columns=["user_id", "day", "clicks"],
        timestamp_field="day",
        interval=JAN,
        root=tmp_path,
        batch_rows=1_000,
    )
    [(_, schema)] = list(reader.schemas())
    assert schema.field("clicks").type == pa.int64()
    rows = [r for b in read_all(reader) for r in b.to_pylist()]
    assert [(r["user_id"], r["day"], r["clicks"]) for r in rows] == [
        (1, datetime(2026, 1, 6, tzinfo=UTC), 20)
    ]


def test_duckdb_query_error_is_a_data_error(tmp_path: Path) -> None:
    spec = DuckDBSource(
        name="bad", type="duckdb", timestamp_field="ts", query="select * from nowhere_table"
    )
    reader = open_source(
        spec, columns=["ts"], timestamp_field="ts", interval=JAN, root=tmp_path, batch_rows=1_000
    )
    with pytest.raises(DataError, match="the DuckDB query failed"):
        list(reader.schemas())


def test_everything_pushes_no_filter_down(tmp_path: Path) -> None:
    # Nanosecond times cannot hold year 1 or 9999: an unbounded interval must not be compared.
    ns = pa.timestamp("ns", tz="UTC")
    times = [datetime(1900, 1, 1, tzinfo=UTC), None, datetime(2200, 1, 1, tzinfo=UTC)]
    table = pa.table({"user_id": [1, 2, 3], "ts": pa.array(times, ns)})
    pq.write_table(table, tmp_path / "e.parquet")
    everything = Interval.everything()
    assert not everything.bounded and JAN.bounded
    specs = [
        ParquetSource(name="p", type="parquet", path="e.parquet", timestamp_field="ts"),
        DuckDBSource(
            name="d", type="duckdb", timestamp_field="ts", query="select * from 'e.parquet'"
        ),
    ]
    for spec in specs:
        reader = open_source(
            spec,
            columns=["user_id", "ts"],
            timestamp_field="ts",
            interval=everything,
            root=tmp_path,
            batch_rows=1_000,
        )
        assert [r["user_id"] for b in read_all(reader) for r in b.to_pylist()] == [1, 2, 3]


def test_postgres_connection_is_required(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FEATURESTORE__POSTGRES_URL", raising=False)
    spec = PostgresSource(name="pg", type="postgres", table="events", timestamp_field="ts")
    with pytest.raises(ConfigError, match="FEATURESTORE__POSTGRES_URL"):
        open_source(
            spec,
            columns=["ts"],
            timestamp_field="ts",
            interval=JAN,
            root=tmp_path,
            batch_rows=1_000,
        )
    assert libpq_url("postgresql+psycopg://u@h/db?x=1") == "postgresql://u@h/db?x=1"


@pytest.mark.integration
def test_postgres_table_and_query_are_read_in_chunks(postgres_url: str, tmp_path: Path) -> None:
    import psycopg

    start = datetime(2026, 1, 1, tzinfo=UTC)
    with psycopg.connect(libpq_url(postgres_url)) as conn:
        conn.execute(
            "create table events (user_id bigint, ts timestamptz, score numeric, name text, emb float8[])"
        )
        with conn.cursor().copy("copy events (user_id, ts, score, name, emb) from stdin") as copy:
            for i in range(2_500):
                copy.write_row(
                    (i, start + timedelta(minutes=i), f"{i}.5", f"user%{i}", [1.0, float(i)])
                )
            copy.write_row((9_999, None, None, None, None))
            copy.write_row((10_000, datetime(2027, 1, 1, tzinfo=UTC), None, None, None))
    columns = ["user_id", "ts", "score", "name", "emb"]
    table_spec = PostgresSource(
        name="pg", type="postgres", table="events", timestamp_field="ts", connection=postgres_url
    )
    reader = open_source(
        table_spec,
        columns=columns,
        timestamp_field="ts",
        interval=JAN,
        root=tmp_path,
        batch_rows=1_000,
    )
    [(_, schema)] = list(reader.schemas())
    assert schema.field("ts").type == TS and schema.field("emb").type == pa.list_(pa.float64())
    batches = read_all(reader)
    # 2,500 rows in the interval + the NULL-time row, 1,000 at a time; the 2027 row stays out.
    assert [b.num_rows for b in batches] == [1_000, 1_000, 501]
    rows = [r for b in batches for r in b.to_pylist()]
    assert rows[7]["score"] == 7.5 and rows[7]["emb"] == [1.0, 7.0] and rows[7]["name"] == "user%7"
    assert max(r["user_id"] for r in rows) == 9_999

    query_spec = PostgresSource(
        name="pgq",
        type="postgres",
        timestamp_field="ts",
        connection=postgres_url,
        query="select user_id, ts, name from events where name like 'user%1%'",
    )
    reader = open_source(
        query_spec,
        columns=["user_id", "ts", "name"],
        timestamp_field="ts",
        interval=JAN,
        root=tmp_path,
        batch_rows=1_000,
    )
    names = [r["name"] for b in read_all(reader) for r in b.to_pylist()]
    assert names and all("1" in n for n in names)
