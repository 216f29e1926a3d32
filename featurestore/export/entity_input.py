"""The entity rows of an export: a pandas DataFrame, an Arrow table, Parquet files or a query.

Each input becomes a FROM item in the export's DuckDB connection holding the caller's columns,
in their order, plus ``__fs_row``: the row's position in the input, which the export sorts its
output by. Positions come from ``row_number() OVER ()`` over in-memory frames and queries (a
streaming window, which DuckDB evaluates in scan order) and from the file index and row number
for Parquet files, so a parallel scan cannot reorder them.

Timestamps: a column with a time zone is converted to UTC; a naive one is taken to be UTC
already; a DATE is midnight UTC; any unit (s, ms, us, ns) is accepted. Everything is kept at
microsecond precision, nanoseconds floored (never a later instant: no future leaks in).
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from featurestore.export.pit import RESERVED_PREFIX, ROW_COLUMN, literal, quote
from registry.errors import UserError

ENTITY_VIEW = "__fs_entities"
# A query starts with a keyword and a space (or a parenthesis); "table.parquet" is a path.
_SQL_START = re.compile(r"^\s*(\(|(select|with|from|values|table|pivot|unpivot)\s)", re.IGNORECASE)
_GLOB_CHARS = re.compile(r"[*?\[]")
_INTEGER_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "UHUGEINT",
    }
)
# Every entity timestamp type docs/point-in-time.md accepts, as DuckDB names it. Parquet and Arrow
# `timestamp[ns, tz=...]` (pandas' default resolution) arrive as TIMESTAMPTZ_NS, `timestamp[s]`
# from Arrow as TIMESTAMP_S, `date32`/`date64` as DATE.
_NAIVE_TIME_TYPES = frozenset({"TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "DATE"})
_AWARE_TIME_TYPES = frozenset({"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ"})
_AWARE_NS_TIME_TYPES = frozenset({"TIMESTAMPTZ_NS", "TIMESTAMP_NS WITH TIME ZONE"})
_ACCEPTED_TIME_TYPES = "a timestamp of any unit (naive = UTC, or with a time zone) or a date"
# A declared join key dtype -> the DuckDB types an entity column may have to match it.
_KEY_TYPES: dict[str, frozenset[str]] = {
    "int32": _INTEGER_TYPES,
    "int64": _INTEGER_TYPES,
    "string": frozenset({"VARCHAR"}),
    "bytes": frozenset({"BLOB"}),
}


@dataclass(frozen=True)
class EntityInput:
    """The entity rows as seen by DuckDB."""

    source: str  # a FROM item: the caller's columns plus ROW_COLUMN
    columns: dict[str, str]  # column -> DuckDB type, in input order, without ROW_COLUMN
    description: str  # what the caller passed, for messages

    def require(self, column: str, purpose: str) -> str:
        """The DuckDB type of ``column``; a UserError listing the columns found if absent."""
        if column not in self.columns:
            found = ", ".join(self.columns) or "(none)"
            raise UserError(
                f"the entity rows ({self.description}) have no column {column!r}, "
                f"needed as {purpose}; "
                f"columns found: {found}",
                hint="add the column, or rename it "
                "(timestamp: timestamp_column= / --timestamp-column)",
            )
        return self.columns[column]


def open_entity_input(con: Any, entity_df: Any) -> EntityInput:
    """Register ``entity_df`` with ``con`` and describe it.

    ``entity_df`` is a pandas DataFrame, a pyarrow Table or RecordBatch, a Parquet path,
    directory or glob (``str`` or ``Path``), or a DuckDB SQL query string.

    >>> open_entity_input(con, "labels/*.parquet").columns  # doctest: +SKIP
    {'user_id': 'BIGINT', 'event_timestamp': 'TIMESTAMP WITH TIME ZONE', 'label': 'DOUBLE'}
    """
    import duckdb

    reader = None
    if isinstance(entity_df, Path) or (
        isinstance(entity_df, str) and not _SQL_START.match(entity_df)
    ):
        files = _parquet_files(str(entity_df))
        reader = f"read_parquet([{', '.join(literal(f) for f in files)}], union_by_name = true)"
        position = "(file_index::BIGINT << 40) + file_row_number"
        source = f"(SELECT *, {position} AS {ROW_COLUMN} FROM {reader})"
        description = str(entity_df)
        probe = f"SELECT * FROM {reader}"
    elif isinstance(entity_df, str):
        query = entity_df.strip().rstrip(";")
        source = f"(SELECT *, row_number() OVER () - 1 AS {ROW_COLUMN} FROM ({query}))"
        description = "the entity query"
        probe = query
    else:
        frame = _in_memory(entity_df)
        con.register(ENTITY_VIEW, frame)
        source = f"(SELECT *, row_number() OVER () - 1 AS {ROW_COLUMN} FROM {ENTITY_VIEW})"
        description = f"a {type(entity_df).__module__.split('.')[0]} {type(entity_df).__name__}"
        probe = f"SELECT * FROM {ENTITY_VIEW}"
    try:
        relation = con.sql(probe)
        columns = dict(zip(relation.columns, (str(t) for t in relation.types)))
    except duckdb.Error as exc:
        raise UserError(
            f"cannot read the entity rows ({description}): {exc}",
            hint="check the path or the SQL; a query runs in DuckDB, "
            "e.g. select * from read_parquet('labels.parquet')",
        ) from None
    if reader is not None and ("file_index" in columns or "file_row_number" in columns):
        # Real columns of those names would shadow DuckDB's virtual ones used for the order.
        source = f"(SELECT *, row_number() OVER () - 1 AS {ROW_COLUMN} FROM {reader})"
    reserved = [c for c in columns if c.lower().startswith(RESERVED_PREFIX)]
    if reserved:
        raise UserError(
            f"the entity rows have columns {reserved} starting with {RESERVED_PREFIX!r}, "
            "which the export uses itself",
            hint="rename those columns",
        )
    return EntityInput(source, columns, description)


def timestamp_sql(column: str, duckdb_type: str) -> str:
    """SQL turning the entity timestamp column into a TIMESTAMPTZ (UTC); naive means UTC.

    Nanoseconds are floored to microseconds, the offline store's precision: a label at
    12:00:00.000000300 must not see a feature row of 12:00:00.000001 (rounding would leak it).

    >>> timestamp_sql("ts", "TIMESTAMP")
    'timezone(\\'UTC\\', CAST("ts" AS TIMESTAMP))'
    >>> timestamp_sql("ts", "TIMESTAMPTZ_NS")
    'timezone(\\'UTC\\', make_timestamp((epoch_ns("ts") - (epoch_ns("ts") % 1000 + 1000) % 1000) // 1000))'
    """
    if duckdb_type in _AWARE_TIME_TYPES:
        return quote(column)
    if duckdb_type in _AWARE_NS_TIME_TYPES or duckdb_type == "TIMESTAMP_NS":
        # An instant to an instant: the session's time zone plays no part. The remainder made
        # non-negative first, so instants before 1970 are floored too (`%` truncates).
        ns = f"epoch_ns({quote(column)})"
        return f"timezone('UTC', make_timestamp(({ns} - ({ns} % 1000 + 1000) % 1000) // 1000))"
    if duckdb_type in _NAIVE_TIME_TYPES:
        return f"timezone('UTC', CAST({quote(column)} AS TIMESTAMP))"
    raise UserError(
        f"the timestamp column {column!r} has type {duckdb_type}; expected {_ACCEPTED_TIME_TYPES}",
        hint=_conversion_hint(column, duckdb_type),
    )


def _conversion_hint(column: str, duckdb_type: str) -> str:
    """How to turn a column of this type into a timestamp, in pandas and in DuckDB SQL."""
    col = quote(column)
    if duckdb_type in _INTEGER_TYPES or duckdb_type in ("FLOAT", "DOUBLE") or duckdb_type.startswith("DECIMAL"):
        return (
            f"if these are seconds since the epoch: pandas pd.to_datetime(df[{column!r}], unit='s', utc=True), "
            f"SQL to_timestamp({col}) (milliseconds: unit='ms', epoch_ms({col}))"
        )
    if duckdb_type == "VARCHAR":
        return (
            f"parse the text: pandas pd.to_datetime(df[{column!r}], utc=True), "
            f"SQL CAST({col} AS TIMESTAMPTZ) or strptime({col}, '%Y-%m-%d %H:%M:%S')"
        )
    return (
        "point --timestamp-column (SDK: timestamp_column=) at the column that holds the time, "
        "or convert this one to a timestamp or a date first"
    )


def check_key_type(column: str, duckdb_type: str, dtype: str, view: str) -> None:
    """A join key column must compare exactly with the view's declared key dtype."""
    allowed = _KEY_TYPES.get(dtype, frozenset())
    if duckdb_type not in allowed:
        raise UserError(
            f"join key {column!r} of the entity rows has type {duckdb_type}, but feature view "
            f"{view!r} declares it {dtype}",
            hint=f"convert the column to {dtype} before exporting",
        )


def _in_memory(entity_df: Any) -> Any:
    import pyarrow as pa

    if isinstance(entity_df, pa.RecordBatch):
        return pa.Table.from_batches([entity_df])
    if isinstance(entity_df, pa.Table):
        return entity_df
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(entity_df, pd.DataFrame):
        # DuckDB scans pandas itself (time zones included); the index is not a column.
        return _round_aware_nanoseconds(entity_df)
    raise UserError(
        f"entity_df is a {type(entity_df).__name__}",
        hint="pass a pandas DataFrame, a pyarrow Table, a Parquet path or glob, "
        "or a SQL query string",
    )


def _round_aware_nanoseconds(frame: Any) -> Any:
    """``frame`` with its time-zone-aware nanosecond columns floored to microseconds.

    DuckDB's pandas scan reads ``datetime64[ns, tz]`` (pandas' default) as microseconds by
    truncating toward zero, which for instants before 1970 is a ceiling; flooring here first
    makes every input give the same instant as ``timestamp_sql``'s floor, and never a later one.
    """
    import pandas as pd

    aware = [
        column for column, dtype in frame.dtypes.items()
        if isinstance(dtype, pd.DatetimeTZDtype) and dtype.unit == "ns"
    ]
    if not aware:
        return frame
    floored = frame.copy(deep=False)
    for column in aware:
        floored[column] = frame[column].dt.floor("us")
    return floored


def _parquet_files(path: str) -> list[str]:
    if "://" in path:
        return [path]  # object stores: DuckDB expands the glob, in its (sorted) order
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet") if not f.name.startswith("."))
    elif _GLOB_CHARS.search(path):
        files = sorted(glob.glob(str(p), recursive=True))
    else:
        files = [str(p)] if p.is_file() else []
    if not files:
        raise UserError(
            f"no Parquet file matches the entity path {path!r}",
            hint="give a file, a directory of .parquet files, a glob, or a SQL query (select ...)",
        )
    return files
