"""The offline store's Parquet layout (specified in docs/offline-store.md, pinned by a golden test).

    {offline_path}/{project}/{view}/date=YYYY-MM-DD/data.parquet         batch jobs
    {offline_path}/{project}/{view}/date=YYYY-MM-DD/stream-{window}-{consumer}.parquet  stream jobs
    {offline_path}/{project}/_rejects/{view}/{run_id}.parquet              rows that failed checks

Columns, in this order: the view's join keys (declared dtypes), ``event_timestamp`` and
``created_timestamp`` (timestamp[us, tz=UTC], never null), then the features in declared order.
The date partition is the UTC date of ``event_timestamp``.

A batch run over [start, end) rewrites every partition it touches: rows of that partition outside
[start, end) are kept, rows inside are replaced by the run's rows. Each partition file is written
atomically (``location.write_parquet``: a temporary file renamed over the old one on a local
disk, one complete upload on an object store), so a reader never sees half a file and a re-run
of the same interval gives the same files, whatever a crash left behind. ``offline_path`` is a
``pathlib.Path`` or an object-store ``location.ObjectPath`` (``s3://``, ``gs://``).

The kept rows of a partition written under an earlier definition of the view are conformed to
the run's columns (``conform``): a feature added since is null in them, a removed one is dropped,
one whose dtype changed is cast (null where a value does not fit). So a run after a schema change
never fails on old partitions; a backfill (a run over the whole history) fills them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.offline import location
from featurestore.offline.location import OfflinePath

if TYPE_CHECKING:
    import pyarrow as pa

EVENT_TS = "event_timestamp"
CREATED_TS = "created_timestamp"
BATCH_FILE = "data.parquet"


def __getattr__(name: str) -> Any:
    # ``TS_TYPE`` is built on first use: pyarrow costs a process that only plans paths (the
    # point-in-time export, whose query DuckDB runs) about 0.12 s of CPU to import (issue 19).
    if name == "TS_TYPE":
        import pyarrow as pa

        globals()["TS_TYPE"] = value = pa.timestamp("us", tz="UTC")
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ts_type() -> pa.DataType:
    value: pa.DataType = __getattr__("TS_TYPE") if "TS_TYPE" not in globals() else globals()["TS_TYPE"]
    return value


def view_dir(offline_path: OfflinePath | str, project: str, view: str) -> OfflinePath:
    return location.coerce(offline_path) / project / view


def partition_dir(offline_path: OfflinePath | str, project: str, view: str, day: date) -> OfflinePath:
    return view_dir(offline_path, project, view) / f"date={day.isoformat()}"


def view_glob(offline_path: Path, project: str, view: str) -> str:
    """A glob over every Parquet file of a view (batch and stream), for DuckDB."""
    return str(view_dir(offline_path, project, view) / "date=*" / "*.parquet")


def partition_dates(start: datetime, end: datetime) -> list[date]:
    """The UTC dates a half-open interval [start, end) touches."""
    start, end = _utc(start), _utc(end)
    if end <= start:
        return []
    last = (end - timedelta(microseconds=1)).date()
    days, day = [], start.date()
    while day <= last:
        days.append(day)
        day += timedelta(days=1)
    return days


def existing_partitions(offline_path: OfflinePath | str, project: str, view: str) -> list[date]:
    root = view_dir(offline_path, project, view)
    if isinstance(root, Path) and not root.is_dir():  # an object store lists nothing instead
        return []
    return sorted(
        date.fromisoformat(p.name.removeprefix("date="))
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("date=")
    )


def replace_interval(
    offline_path: OfflinePath | str,
    project: str,
    view: str,
    table: pa.Table,
    start: datetime,
    end: datetime,
) -> int:
    """Make the view's history inside [start, end) equal to ``table``; returns rows written.

    ``table`` must already have the layout's columns and only rows inside [start, end). The
    whole table for the interval is needed at once only per partition: callers may pass a table
    assembled from record batches; memory is bounded by the largest day.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    start, end = _utc(start), _utc(end)
    written = 0
    day_col = pc.cast(table[EVENT_TS], pa.date32()) if table.num_rows else None
    for day in partition_dates(start, end):
        if day_col is None:
            new_rows = table.slice(0, 0)
        else:
            on_day = pc.equal(day_col, pa.scalar(day, pa.date32()))
            # A batch job hands over one day at a time: all rows match, and filtering would
            # only copy the table (the merge below sorts it into one chunk either way).
            all_match = on_day.null_count == 0 and pc.all(on_day).as_py()
            new_rows = table if all_match else table.filter(on_day)
        written += _rewrite_partition(offline_path, project, view, day, new_rows, start, end)
    return written


def _rewrite_partition(
    offline_path: OfflinePath | str,
    project: str,
    view: str,
    day: date,
    new_rows: pa.Table,
    start: datetime,
    end: datetime,
) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc

    directory = partition_dir(offline_path, project, view, day)
    target = directory / BATCH_FILE
    parts: list[pa.Table] = []
    if target.exists():
        old = location.read_table(target)
        ts = old[EVENT_TS]
        keep = pc.or_(
            pc.less(ts, pa.scalar(start, _ts_type())), pc.greater_equal(ts, pa.scalar(end, _ts_type()))
        )
        kept = old.filter(keep)
        if kept.num_rows:
            parts.append(conform(kept, new_rows.schema) if new_rows.num_columns else kept)
    if new_rows.num_rows:
        parts.append(new_rows)
    if not parts:
        if target.exists():
            target.unlink()
        return 0
    merged = pa.concat_tables(parts).sort_by([(EVENT_TS, "ascending")])
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(merged, target)
    return new_rows.num_rows


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly the columns of ``schema``, matched by name.

    Rows written under an earlier definition of the view meet the current layout here: a column
    the table lacks (a feature added since) is all null, a column ``schema`` lacks (a feature
    removed) is dropped, and a column of another type (a changed dtype) is cast, each value that
    does not fit the new type becoming null rather than failing the run.

    >>> import pyarrow as pa
    >>> old = pa.table({"k": [1], "a": ["7"], "gone": [0.5]})
    >>> conform(old, pa.schema([("k", pa.int64()), ("a", pa.int32()), ("new", pa.float64())])).to_pylist()
    [{'k': 1, 'a': 7, 'new': None}]
    """
    import pyarrow as pa

    if table.schema.equals(schema):
        return table
    columns = []
    for field in schema:
        index = table.schema.get_field_index(field.name)
        if index < 0:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(index)
        columns.append(column if column.type == field.type else _cast_or_null(column, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _cast_or_null(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    import pyarrow as pa

    try:
        return column.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        pass
    # Rare (kept rows after a dtype change, before the backfill): value by value.
    values = []
    for scalar in column:
        try:
            values.append(scalar.cast(target).as_py())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values.append(None)
    return pa.chunked_array([pa.array(values, target)], target)


def write_atomic(table: pa.Table, target: OfflinePath) -> None:
    """Write ``table`` to ``target`` so that readers see the old file or the new one, never half
    (a local temporary file fsynced and renamed over it, or one complete upload to an object
    store: ``location.write_parquet``)."""
    import pyarrow as pa

    # Dictionary encoding pays for strings and keys, not for high-cardinality floats, where it
    # made writes about 5x slower.
    dictionary = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_integer(f.type) or pa.types.is_binary(f.type)]
    location.write_parquet(table, target, compression="zstd", use_dictionary=dictionary)


def layout_schema(join_keys: Iterable[tuple[str, pa.DataType]], features: Iterable[tuple[str, pa.DataType]]) -> pa.Schema:
    """The column order every offline file of a view follows."""
    import pyarrow as pa

    return pa.schema(
        [*(pa.field(n, t) for n, t in join_keys),
         pa.field(EVENT_TS, _ts_type(), nullable=False),
         pa.field(CREATED_TS, _ts_type(), nullable=False),
         *(pa.field(n, t) for n, t in features)]
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
