"""The stream job's offline files: rows of a window of event time, beside the batch files.

    {offline_path}/{project}/{view}/date=YYYY-MM-DD/stream-{window start}-{consumer}.parquet

``window start`` is ``YYYYMMDDTHHMMSSZ`` (UTC); a window is ``--window`` long (a divisor of a
day, so a window never spans two dates) and aligned on the epoch. The consumer's name keeps two
jobs of one view from rewriting the same file. The batch writer rewrites only ``data.parquet``
and readers glob ``*.parquet``, so an export or training job sees these rows with the batch rows.

Every write **merges**: the file's rows plus the new ones, one row per (join keys, event time),
the latest created winning and, on a tie, the new row (``dedup_rows``), written with
``layout.write_atomic``. So writing the same rows again (entries delivered again after a crash)
changes nothing, and late rows for a window already written are added to its file.

An aggregated view's windows ending before the batch boundary B are the batch job's rows:
``prune_before`` drops them from a consumer's files when B moves (docs/streaming.md).

    >>> merge_into_file(path, rows, schema)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.offline import layout, location
from featurestore.offline.location import OfflinePath
from featurestore.sources import ORDINAL
from materializers.dedup import dedup_rows
from materializers.schema import EVENT_TS, ViewSchema

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def stream_file(
    offline_path: OfflinePath | str, project: str, view: str, window_start_us: int, consumer: str
) -> OfflinePath:
    """The file of the window starting at ``window_start_us`` written by ``consumer``.

    >>> stream_file(Path("off"), "demo", "clicks", 1_795_000_000_000_000, "job 1").name
    'stream-20261118T110640Z-job_1.parquet'
    """
    start = datetime.fromtimestamp(window_start_us / 1_000_000, timezone.utc)
    directory = layout.partition_dir(offline_path, project, view, start.date())
    return directory / f"stream-{start:%Y%m%dT%H%M%SZ}-{_SAFE.sub('_', consumer)}.parquet"


def merge_into_file(path: OfflinePath, rows: pa.Table, schema: ViewSchema) -> int:
    """Merge ``rows`` (the layout, maybe ``__ordinal``) into ``path``; returns rows written."""
    target = schema.layout_schema()
    new = rows.select(target.names).cast(target)
    ordinal = (
        rows.column(ORDINAL)
        if ORDINAL in rows.column_names
        else pa.array(np.zeros(rows.num_rows, np.int64))
    )
    parts = [new.append_column(ORDINAL, ordinal)]
    if path.exists():
        # A file written before the view changed (a feature added, removed or retyped) is
        # conformed to the current layout, as the batch job's partial rewrites are.
        old = layout.conform(location.read_table(path), target)
        # Rows already in the file lose ties against rows written now.
        parts.insert(0, old.append_column(ORDINAL, pa.array(np.full(old.num_rows, -1, np.int64))))
    merged = dedup_rows(pa.concat_tables(parts), schema)
    order = [(EVENT_TS, "ascending"), *((k, "ascending") for k in schema.key_names)]
    merged = merged.sort_by(order).select(target.names)
    layout.write_atomic(merged, path)
    return merged.num_rows


def prune_before(
    offline_path: OfflinePath | str,
    project: str,
    view: str,
    consumer: str,
    before_us: int,
    since_us: int | None = None,
) -> int:
    """Drop the rows of this consumer's files whose event time is in ``[since_us, before_us)``
    (an aggregated view's windows that a batch run now owns; from the epoch when ``since_us``
    is None), looking at the files of those dates; returns the rows dropped. A file left
    without rows is deleted.

    >>> prune_before(Path("off"), "demo", "clicks", "job-1", 1_795_000_000_000_000)  # doctest: +SKIP
    12
    """
    root = layout.view_dir(offline_path, project, view)
    if isinstance(root, Path) and not root.is_dir():  # an object store lists nothing instead
        return 0
    last = datetime.fromtimestamp(before_us / 1_000_000, timezone.utc).date()
    first = (
        None if since_us is None else datetime.fromtimestamp(since_us / 1_000_000, timezone.utc).date()
    )
    suffix = f"-{_SAFE.sub('_', consumer)}.parquet"
    dropped = 0
    for directory in sorted(root.glob("date=*")):
        try:
            day = date.fromisoformat(directory.name[len("date=") :])
        except ValueError:
            continue
        if day > last or (first is not None and day < first):
            continue
        for path in sorted(directory.glob(f"stream-*{suffix}")):
            start = _window_start(path.name)
            if start is None or start >= before_us:
                continue
            table = location.read_table(path)
            event_us = pc.cast(table.column(EVENT_TS), pa.int64())
            keep = pc.greater_equal(event_us, pa.scalar(before_us, pa.int64()))
            if since_us is not None:  # rows before ``since`` are not the batch job's
                keep = pc.or_(keep, pc.less(event_us, pa.scalar(since_us, pa.int64())))
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            dropped += table.num_rows - kept.num_rows
            if kept.num_rows:
                layout.write_atomic(kept, path)
            else:
                path.unlink(missing_ok=True)
    return dropped


def _window_start(name: str) -> int | None:
    """The window start (µs) in a stream file's name, None for another file."""
    match = re.match(r"stream-(\d{8}T\d{6}Z)-", name)
    if match is None:
        return None
    start = datetime.strptime(match.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return int(start.timestamp()) * 1_000_000


class WindowBuffer:
    """Valid rows and their entry ids, by offline window, until the window is written.

    >>> buffer = WindowBuffer(60, 5)
    """

    def __init__(self, window_seconds: int, grace_seconds: int) -> None:
        self.window_us = window_seconds * 1_000_000
        self.grace_us = grace_seconds * 1_000_000
        self._tables: dict[int, list[pa.Table]] = {}
        self._ids: dict[int, list[bytes]] = {}
        self.rows = 0

    def add(self, rows: pa.Table, ids: list[bytes]) -> None:
        """``ids[i]`` is the entry of row ``i``."""
        if not rows.num_rows:
            return
        event_us = pc.cast(rows.column(EVENT_TS), pa.int64()).to_numpy()
        windows = np.floor_divide(event_us, self.window_us)
        id_array = np.array(ids, dtype=object)
        for w in np.unique(windows).tolist():
            hit = windows == w
            self._tables.setdefault(w, []).append(rows.filter(pa.array(hit)))
            self._ids.setdefault(w, []).extend(id_array[hit].tolist())
        self.rows += rows.num_rows

    def due(self, now_us: int, everything: bool = False) -> list[int]:
        """Windows to write: closed ones (ended ``grace`` ago), or all of them."""
        if everything:
            return sorted(self._tables)
        return sorted(w for w in self._tables if (w + 1) * self.window_us + self.grace_us <= now_us)

    def largest(self) -> int:
        return max(self._tables, key=lambda w: sum(t.num_rows for t in self._tables[w]))

    def pop(self, window: int) -> tuple[int, pa.Table, list[bytes]]:
        """``(window start us, rows, ids)`` of a window, forgotten here."""
        tables = self._tables.pop(window)
        ids = self._ids.pop(window)
        table = pa.concat_tables(tables)
        self.rows -= table.num_rows
        return window * self.window_us, table, ids

    def __len__(self) -> int:
        return len(self._tables)
