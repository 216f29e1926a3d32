"""Parquet sources: a file, a directory of them, a glob, or an object-store URL.

One split per file, in sorted path order, read in record batches of ``batch_rows`` rows through a
1 MiB read buffer, so memory does not follow the file's row-group size. The interval is pushed
down when the timestamp column is a timestamp: row groups whose statistics lie outside it are
skipped, the rest filtered row by row; text times are filtered after parsing, in validation.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from featurestore.sources.base import Interval, with_ordinal
from registry.errors import DataError, StoreUnavailableError

_GLOB_CHARS = "*?["
#: Bytes read at a time from a local file's column chunk (not the whole chunk at once).
_READ_BUFFER = 1 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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
        import pyarrow.parquet as pq

        index, path = split
        fs, _, local = self._filesystem()
        # Read in batches of ``batch_rows`` through a small read buffer, not a row group at a
        # time: a file written with row groups of a million rows would otherwise be decoded a
        # row group at a time, so peak memory would follow the file's layout (issue 19).
        # Pre-buffering column chunks pays on object stores, where a read is a request.
        with fs.open_input_file(path) as source:
            parquet = pq.ParquetFile(
                source, buffer_size=0 if not local else _READ_BUFFER, pre_buffer=not local
            )
            # ``iter_batches`` leaves out a requested column the file lacks, where a dataset
            # read refused it: refuse it here too (a file replaced since the run was planned).
            missing = [c for c in self.columns if c not in parquet.schema_arrow.names]
            if missing:
                raise DataError(f"{path}: no column {', '.join(map(repr, missing))}",
                                hint="the file changed since the run was planned; check the source and run again")
            ts_type = parquet.schema_arrow.field(self.timestamp_field).type
            keep = self._row_filter(ts_type)
            groups = self._row_groups(parquet.metadata, keep is not None)
            if not groups:
                return
            offset = 0
            for batch in parquet.iter_batches(
                batch_size=self.batch_rows, row_groups=groups, columns=list(self.columns)
            ):
                if keep is not None:
                    batch = batch.filter(keep(batch.column(self.timestamp_field)))
                if batch.num_rows:
                    yield with_ordinal(batch, index, offset)
                    offset += batch.num_rows

    def _row_groups(self, metadata: Any, bounded: bool) -> list[int]:
        """The row groups that may hold rows in the interval, by their statistics (all of them
        when the interval is unbounded or a group has no statistics)."""
        groups = list(range(metadata.num_row_groups))
        if not bounded:
            return groups
        names = [metadata.schema.column(i).path for i in range(metadata.num_columns)]
        if self.timestamp_field not in names:
            return groups
        column = names.index(self.timestamp_field)
        start = _micros(self.interval.start)
        end = _micros(self.interval.end)
        out = []
        for g in groups:
            meta = metadata.row_group(g)
            if not meta.num_rows:
                continue
            stats = meta.column(column).statistics
            if stats is None or not stats.has_min_max or stats.null_count:
                out.append(g)  # nulls pass the filter (validation rejects them with a reason)
                continue
            lo, hi = _micros(stats.min), _micros(stats.max)
            if lo is None or hi is None or (hi >= start and lo < end):
                out.append(g)
        return out

    def _row_filter(self, ts_type: pa.DataType) -> Callable[[pa.Array], pa.Array] | None:
        """The interval as a row mask over the timestamp column: rows inside it, and rows with a
        NULL time. None when nothing is filtered at the source (unbounded; text or dates)."""
        import pyarrow.compute as pc

        if not self.interval.bounded or not pa.types.is_timestamp(ts_type):
            return None  # everything; or text or dates: filtered after parsing, in validation
        start, end = self.interval.start, self.interval.end
        if ts_type.tz is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        lo, hi = pa.scalar(start, type=ts_type), pa.scalar(end, type=ts_type)

        def keep(ts: pa.Array) -> pa.Array:
            inside = pc.and_(pc.greater_equal(ts, lo), pc.less(ts, hi))
            return pc.or_kleene(pc.is_null(ts), inside)

        return keep


def _micros(value: Any) -> int | None:
    """A timestamp statistic or bound as microseconds since the epoch, for comparing row groups
    with the interval (naive values are UTC, as the row filter takes them); None if unknown."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return (value - _EPOCH) // timedelta(microseconds=1)
    return None
