"""Reading a source definition as Arrow record batches: one reader per backend.

    base.py       Interval, ORDINAL, with_ordinal, the SourceReader protocol
    parquet.py    ParquetReader   (a file, a directory, a glob, an object-store URL)
    duckdb.py     DuckDBReader    (a query over files)
    postgres.py   PostgresReader  (a table or a query, through a server-side cursor)

A source is read in *splits* (one Parquet file; one DuckDB query; one PostgreSQL query) that
Beam spreads over workers (``materializers.transforms.ReadSource`` wraps a reader) and a feature
job reads one after another (``featurestore.models.feature_job``). Each split yields record
batches of at most ``batch_rows`` rows holding only the columns asked for, plus ``__ordinal``.

The [start, end) interval on the event timestamp is pushed down to the source when the column
is a timestamp (Parquet row-group statistics, a DuckDB or PostgreSQL ``WHERE``);
``Interval.everything()`` pushes down nothing. Rows whose timestamp is NULL pass the filter on
purpose: validation rejects them with a reason instead of the source dropping them silently.
Sources whose timestamp is text are filtered after parsing.

Readers are plain picklable objects: connections and filesystems are opened inside ``read``, on
the worker, and the heavy clients (duckdb, psycopg) are imported there. ``schemas()`` is what
``materializers.schema.check_source_schema`` checks before anything is written.

    >>> reader = open_source(spec, columns=["id", "ts"], timestamp_field="ts",  # doctest: +SKIP
    ...                      interval=iv, root=Path("repo"), batch_rows=65_536)
    >>> for split in reader.splits(): list(reader.read(split))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from featurestore.sources.base import EPOCH, ORDINAL, Interval, SourceReader, utc, with_ordinal
from featurestore.sources.duckdb import DuckDBReader
from featurestore.sources.parquet import ParquetReader
from featurestore.sources.postgres import PostgresReader, libpq_url, resolve_postgres_url
from registry.errors import ConfigError
from registry.spec import DuckDBSource, ParquetSource, PostgresSource

__all__ = [
    "EPOCH",
    "ORDINAL",
    "DuckDBReader",
    "Interval",
    "ParquetReader",
    "PostgresReader",
    "SourceReader",
    "libpq_url",
    "open_source",
    "resolve_postgres_url",
    "utc",
    "with_ordinal",
]


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
    """The reader of a source definition (ParquetSource, DuckDBSource or PostgresSource).

    ``root`` is the repository root (relative paths start there); ``postgres_url`` is
    ``RepoConfig.postgres_url``, used by postgres sources without a ``connection``.
    """
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
