"""Reading a feature view's source as Arrow record batches.

A source is read in *splits* (one Parquet file; one DuckDB query; one PostgreSQL query) that
Beam spreads over workers. Each split yields record batches of at most ``batch_rows`` rows
holding only the columns the view needs, plus ``__ordinal`` (split index << 40 | row offset):
a stable read order that breaks exact ties in deduplication, so re-runs pick the same row.

The [start, end) interval on the event timestamp is pushed down to the source when the column
is a timestamp (Parquet row-group statistics, a DuckDB or PostgreSQL ``WHERE``). Rows whose
timestamp is NULL pass the filter on purpose: validation rejects them with a reason instead of
the source dropping them silently. Sources whose timestamp is text are filtered after parsing.

Readers are plain picklable objects: connections and filesystems are opened inside ``read``, on
the worker. ``schemas()`` is what ``transforms.check_source_schema`` checks before anything is
written.

    >>> reader = open_source(spec, columns=["item_id", "event_ts"], interval=iv,  # doctest: +SKIP
    ...                      root=Path("repo"), batch_rows=65_536)
    >>> for split in reader.splits(): list(reader.read(split))  # doctest: +SKIP
"""

from __future__ import annotations

import fnmatch
import glob
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from registry.errors import ConfigError, DataError, StoreUnavailableError
from registry.spec import DuckDBSource, ParquetSource, PostgresSource

ORDINAL = "__ordinal"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SPLIT_SHIFT = 40  # up to 2^40 rows per split, 2^23 splits
_GLOB_CHARS = "*?["


def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    return (
        value.replace(tzinfo=timezone.utc)
        if value.tzinfo is None
        else value.astimezone(timezone.utc)
    )


@dataclass(frozen=True)
class Interval:
    """A half-open event-time interval [start, end), both aware UTC datetimes.

    >>> Interval.of(datetime(2026, 1, 1), datetime(2026, 1, 2)).start.tzinfo
    datetime.timezone.utc
    """

    start: datetime
    end: datetime

    @classmethod
    def of(cls, start: datetime, end: datetime) -> Interval:
        return cls(utc(start), utc(end))

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


class SourceReader(Protocol):
    """What ReadSource needs of a source; implemented by the readers below."""

    @property
    def name(self) -> str: ...

    def schemas(self) -> Iterator[tuple[str, pa.Schema]]:
        """``(origin, schema)`` of everything the source reads (each file, or the query)."""

    def splits(self) -> list[tuple[int, str]]:
        """The units of work, ``(index, description)``, in a stable order."""

    def read(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        """The split's rows inside the interval (and rows with a NULL timestamp), in batches."""


def open_source(
    spec: Any,
    *,
    columns: Sequence[str],
    timestamp_field: str,
    interval: Interval,
    root: Path,
    batch_rows: int,
    postgres_url: str | None = None,
) -> SourceReader:
    """The reader of a source definition (ParquetSource, DuckDBSource or PostgresSource)."""
    cols = tuple(dict.fromkeys(columns))
    if isinstance(spec, ParquetSource):
        return ParquetReader(
            spec.name, spec.path, str(root), cols, timestamp_field, interval, batch_rows
        )
    if isinstance(spec, DuckDBSource):
        return DuckDBReader(
            spec.name, spec.query, str(root), cols, timestamp_field, interval, batch_rows
        )
    if isinstance(spec, PostgresSource):
        url = resolve_postgres_url(spec, postgres_url)
        return PostgresReader(
            spec.name, url, spec.table, spec.query, cols, timestamp_field, interval, batch_rows
        )
    raise ConfigError(f"source {getattr(spec, 'name', spec)!r} has an unsupported type")


def with_ordinal(batch: pa.RecordBatch, split: int, offset: int) -> pa.RecordBatch:
    """Append the ``__ordinal`` column: split index in the high bits, row offset in the low."""
    import numpy as np

    base = (split << _SPLIT_SHIFT) + offset
    ordinal = pa.array(np.arange(base, base + batch.num_rows, dtype=np.int64))
    return batch.append_column(ORDINAL, ordinal)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# -- Parquet ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParquetReader:
    """A Parquet file, a directory of them, a glob, or an object-store URL (``s3://...``,
    ``gs://...``, opened through ``pyarrow.fs.FileSystem.from_uri``)."""

    name: str
    path: str
    root: str
    columns: tuple[str, ...]
    timestamp_field: str
    interval: Interval
    batch_rows: int

    def _filesystem(self) -> tuple[Any, str, bool]:
        """``(filesystem, path inside it, is_local)``; relative local paths use the repo root."""
        import pyarrow.fs as pafs

        if "://" in self.path and not self.path.startswith("file://"):
            # from_uri rejects glob characters, so open the part before the first one.
            cut = min((self.path.find(c) for c in _GLOB_CHARS if c in self.path), default=-1)
            head = self.path if cut < 0 else self.path[: self.path.rfind("/", 0, cut) + 1]
            try:
                fs, inner = pafs.FileSystem.from_uri(head)
            except (pa.ArrowInvalid, OSError) as exc:
                raise StoreUnavailableError(
                    f"source {self.name!r}: cannot open {self.path}: {exc}",
                    hint="check the URL and the credentials of the object store",
                ) from exc
            rest = "" if cut < 0 else self.path[len(head) :]
            return fs, (inner.rstrip("/") + "/" + rest) if rest else inner, False
        local = self.path.removeprefix("file://")
        full = Path(local).expanduser()
        if not full.is_absolute():
            full = Path(self.root) / full
        return pafs.LocalFileSystem(), str(full), True

    def files(self) -> list[str]:
        """Every Parquet file the path names, sorted (the split order)."""
        import pyarrow.fs as pafs

        fs, path, local = self._filesystem()
        if any(c in path for c in _GLOB_CHARS):
            if local:
                found = [p for p in glob.glob(path, recursive=True) if os.path.isfile(p)]
            else:
                cut = min(path.find(c) for c in _GLOB_CHARS if c in path)
                base = path[: path.rfind("/", 0, cut)]
                infos = fs.get_file_info(
                    pafs.FileSelector(base, recursive=True, allow_not_found=True)
                )
                found = [
                    i.path
                    for i in infos
                    if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, path)
                ]
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                found = [
                    i.path
                    for i in infos
                    if i.type == pafs.FileType.File
                    and i.path.endswith(".parquet")
                    and not any(
                        part.startswith((".", "_")) for part in i.path[len(path) :].split("/")
                    )
                ]
            elif info.type == pafs.FileType.File:
                found = [path]
            else:
                found = []
        if not found:
            raise DataError(
                f"source {self.name!r}: no Parquet files match {self.path}",
                hint="check the source's `path` (relative paths start at the repository root)",
            )
        return sorted(found)

    def schemas(self) -> Iterator[tuple[str, pa.Schema]]:
        import pyarrow.parquet as pq

        fs, _, _ = self._filesystem()
        for path in self.files():
            yield path, pq.read_schema(path, filesystem=fs)

    def splits(self) -> list[tuple[int, str]]:
        return list(enumerate(self.files()))

    def read(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        import pyarrow.dataset as ds

        index, path = split
        fs, _, local = self._filesystem()
        # Pre-buffering a whole file's column chunks and reading far ahead pays on object
        # stores; on local disks it only multiplies the memory held per file.
        file_format = ds.ParquetFileFormat(
            default_fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=not local)
        )
        dataset = ds.dataset(path, filesystem=fs, format=file_format)
        ts_type = dataset.schema.field(self.timestamp_field).type
        offset = 0
        for batch in dataset.to_batches(
            columns=list(self.columns),
            filter=self._filter(ts_type),
            batch_size=self.batch_rows,
            batch_readahead=1 if local else 4,
            fragment_readahead=1,
        ):
            if batch.num_rows:
                yield with_ordinal(batch, index, offset)
                offset += batch.num_rows

    def _filter(self, ts_type: pa.DataType) -> Any:
        import pyarrow.dataset as ds

        if not pa.types.is_timestamp(ts_type):
            return None  # text or dates: filtered after parsing, in validation
        start, end = self.interval.start, self.interval.end
        if ts_type.tz is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        field = ds.field(self.timestamp_field)
        lo, hi = pa.scalar(start, type=ts_type), pa.scalar(end, type=ts_type)
        return field.is_null() | ((field >= lo) & (field < hi))


# -- DuckDB ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DuckDBReader:
    """A DuckDB query over files; relative paths resolve against the repository root."""

    name: str
    query: str
    root: str
    columns: tuple[str, ...]
    timestamp_field: str
    interval: Interval
    batch_rows: int

    def _connect(self) -> Any:
        import duckdb

        con = duckdb.connect()
        # UTC makes date_trunc & co. on timestamptz independent of the machine's zone.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET file_search_path = '" + self.root.replace("'", "''") + "'")
        return con

    def _run(self, con: Any, sql: str, params: dict[str, Any] | None = None) -> Any:
        import duckdb

        try:
            return con.sql(sql, params=params)
        except duckdb.Error as exc:
            raise DataError(
                f"source {self.name!r}: the DuckDB query failed: {str(exc).splitlines()[0]}",
                hint="run the source's `query` in the duckdb shell from the repository root",
            ) from None

    def schemas(self) -> Iterator[tuple[str, pa.Schema]]:
        con = self._connect()
        try:
            yield (
                "query",
                self._run(con, f"SELECT * FROM ({self.query}) AS src LIMIT 0")
                .to_arrow_table()
                .schema,
            )
        finally:
            con.close()

    def splits(self) -> list[tuple[int, str]]:
        return [(0, "query")]

    def read(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        con = self._connect()
        try:
            inner = f"({self.query}) AS src"
            ts_type = (
                self._run(con, f"SELECT {_quote(self.timestamp_field)} FROM {inner} LIMIT 0")
                .to_arrow_table()
                .schema[0]
                .type
            )
            cols = ", ".join(_quote(c) for c in self.columns)
            sql, params = f"SELECT {cols} FROM {inner}", None
            if pa.types.is_timestamp(ts_type):
                ts = _quote(self.timestamp_field)
                sql += f" WHERE {ts} IS NULL OR ({ts} >= $start AND {ts} < $end)"
                params = {"start": self.interval.start, "end": self.interval.end}
            offset = 0
            for batch in self._run(con, sql, params).to_arrow_reader(self.batch_rows):
                if batch.num_rows:
                    yield with_ordinal(batch, split[0], offset)
                    offset += batch.num_rows
        finally:
            con.close()


# -- PostgreSQL ------------------------------------------------------------------------------------


def resolve_postgres_url(spec: PostgresSource, configured: str | None) -> str:
    """The source's ``connection``, else ``RepoConfig.postgres_url``, else the environment's
    FEATURESTORE__POSTGRES_URL (read again on workers)."""
    url = spec.connection or configured or os.environ.get("FEATURESTORE__POSTGRES_URL")
    if not url:
        raise ConfigError(
            f"source {spec.name!r} has no PostgreSQL connection; looked at the source's "
            "`connection`, `postgres_url` in featurestore.yaml and FEATURESTORE__POSTGRES_URL",
            hint="set one of them to a URL such as postgresql://user@host:5432/db",
        )
    return url


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg://``) as libpq wants it (``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return scheme.split("+", 1)[0] + sep + rest if sep else url


# PostgreSQL type name -> Arrow type; everything else is read as text.
_PG_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "numeric": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "bytea": pa.binary(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "date": pa.date32(),
}


@dataclass(frozen=True)
class PostgresReader:
    """A PostgreSQL table or query, read in chunks through a server-side cursor."""

    name: str
    url: str
    table: str | None
    query: str | None
    columns: tuple[str, ...]
    timestamp_field: str
    interval: Interval
    batch_rows: int

    def _connect(self) -> Any:
        import psycopg

        try:
            conn = psycopg.connect(libpq_url(self.url))
        except psycopg.OperationalError as exc:
            raise StoreUnavailableError(
                f"source {self.name!r}: cannot connect to PostgreSQL: {str(exc).strip().splitlines()[0]}",
                hint="check the source's connection (or postgres_url) and that the server is up",
            ) from None
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def _from(self) -> Any:
        from psycopg import sql

        if self.table is not None:
            return sql.Identifier(*self.table.split("."))
        # The query is composed with parameters, so a literal % must be doubled.
        return sql.SQL("({}) AS src").format(sql.SQL(self.query.replace("%", "%%")))  # type: ignore[union-attr]

    def _execute(self, cursor: Any, statement: Any, params: Any = None) -> None:
        import psycopg

        try:
            cursor.execute(statement, params)
        except psycopg.Error as exc:
            raise DataError(
                f"source {self.name!r}: the PostgreSQL query failed: {str(exc).strip().splitlines()[0]}",
                hint="check the source's `table` or `query` in psql",
            ) from None

    def _arrow_fields(self, cursor: Any) -> list[pa.Field]:
        from psycopg.postgres import types as pg_types

        fields = []
        for column in cursor.description:
            info = pg_types.get(column.type_code)
            if info is None:
                fields.append(pa.field(column.name, pa.string()))
            elif info.array_oid == column.type_code:
                # The registry maps an array OID to its element's TypeInfo.
                fields.append(
                    pa.field(column.name, pa.list_(_PG_TYPES.get(info.name, pa.string())))
                )
            else:
                fields.append(pa.field(column.name, _PG_TYPES.get(info.name, pa.string())))
        return fields

    def _describe(self, conn: Any) -> list[pa.Field]:
        from psycopg import sql

        with conn.cursor() as cur:
            self._execute(cur, sql.SQL("SELECT * FROM {} LIMIT 0").format(self._from()))
            return self._arrow_fields(cur)

    def schemas(self) -> Iterator[tuple[str, pa.Schema]]:
        with self._connect() as conn:
            yield (self.table or "query"), pa.schema(self._describe(conn))

    def splits(self) -> list[tuple[int, str]]:
        return [(0, self.table or "query")]

    def read(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        from psycopg import sql

        with self._connect() as conn:
            types = {f.name: f.type for f in self._describe(conn)}
            ts = sql.Identifier(self.timestamp_field)
            statement = sql.SQL("SELECT {} FROM {}").format(
                sql.SQL(", ").join(sql.Identifier(c) for c in self.columns), self._from()
            )
            params = None
            ts_type = types.get(self.timestamp_field)
            if ts_type is not None and (
                pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type)
            ):
                statement = sql.SQL("{} WHERE {} IS NULL OR ({} >= %s AND {} < %s)").format(
                    statement, ts, ts, ts
                )
                params = (self.interval.start, self.interval.end)
            # A named cursor is a server-side cursor: rows arrive batch_rows at a time.
            with conn.cursor(name=f"featurestore_{uuid.uuid4().hex[:12]}") as cur:
                cur.itersize = self.batch_rows
                self._execute(cur, statement, params)
                fields = [pa.field(c, types.get(c, pa.string())) for c in self.columns]
                schema = pa.schema(fields)
                offset = 0
                while rows := cur.fetchmany(self.batch_rows):
                    batch = _rows_to_batch(rows, schema)
                    yield with_ordinal(batch, split[0], offset)
                    offset += batch.num_rows


def _rows_to_batch(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.RecordBatch:
    from decimal import Decimal

    columns = list(zip(*rows))
    arrays = []
    for field, values in zip(schema, columns):
        if pa.types.is_floating(field.type) and any(isinstance(v, Decimal) for v in values):
            values = tuple(None if v is None else float(v) for v in values)
        elif pa.types.is_string(field.type):
            values = tuple(v if v is None or isinstance(v, str) else str(v) for v in values)
        arrays.append(pa.array(values, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)
