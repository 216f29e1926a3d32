"""PostgreSQL sources: a table or a query, read in chunks through a server-side cursor.

One split (the table or query). The interval is pushed down as a ``WHERE`` when the timestamp
column is a timestamp or a date. ``psycopg`` is imported inside the methods, on the worker; the
URL is resolved on the driver, so workers need no featurestore.yaml.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from featurestore.sources.base import Interval, with_ordinal
from registry.errors import ConfigError, DataError, StoreUnavailableError
from registry.spec import PostgresSource


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
    """A SQLAlchemy URL (``postgresql+psycopg://``) as libpq wants it (``postgresql://``).

    >>> libpq_url("postgresql+psycopg://u@h/db")
    'postgresql://u@h/db'
    """
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
            if (
                self.interval.bounded
                and ts_type is not None
                and (pa.types.is_timestamp(ts_type) or pa.types.is_date(ts_type))
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
