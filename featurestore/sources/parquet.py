"""Parquet sources: a file, a directory of them, a glob, or an object-store URL.

One split per file, in sorted path order. The interval is pushed down as a dataset filter (row-
group statistics) when the timestamp column is a timestamp; text times are filtered after
parsing, in validation.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from featurestore.sources.base import Interval, with_ordinal
from registry.errors import DataError, StoreUnavailableError

_GLOB_CHARS = "*?["


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

        if not self.interval.bounded or not pa.types.is_timestamp(ts_type):
            return None  # everything; or text or dates: filtered after parsing, in validation
        start, end = self.interval.start, self.interval.end
        if ts_type.tz is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        field = ds.field(self.timestamp_field)
        lo, hi = pa.scalar(start, type=ts_type), pa.scalar(end, type=ts_type)
        return field.is_null() | ((field >= lo) & (field < hi))
