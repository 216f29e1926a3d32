"""DuckDB sources: a query over files, relative paths resolved against the repository root.

One split (the query). The interval is pushed down as a ``WHERE`` when the timestamp column is
a timestamp. ``duckdb`` is imported inside the methods, on the worker.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from featurestore.sources.base import Interval, with_ordinal
from registry.errors import DataError


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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
            if self.interval.bounded and pa.types.is_timestamp(ts_type):
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
