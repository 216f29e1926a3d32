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

    >>> merge_into_file(path, rows, schema)  # doctest: +SKIP
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.offline import layout
from featurestore.sources import ORDINAL
from materializers.dedup import dedup_rows
from materializers.schema import EVENT_TS, ViewSchema

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def stream_file(
    offline_path: Path, project: str, view: str, window_start_us: int, consumer: str
) -> Path:
    """The file of the window starting at ``window_start_us`` written by ``consumer``.

    >>> stream_file(Path("off"), "demo", "clicks", 1_795_000_000_000_000, "job 1").name
    'stream-20261118T110640Z-job_1.parquet'
    """
    start = datetime.fromtimestamp(window_start_us / 1_000_000, timezone.utc)
    directory = layout.partition_dir(Path(offline_path), project, view, start.date())
    return directory / f"stream-{start:%Y%m%dT%H%M%SZ}-{_SAFE.sub('_', consumer)}.parquet"


def merge_into_file(path: Path, rows: pa.Table, schema: ViewSchema) -> int:
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
        old = pq.read_table(path).select(target.names).cast(target)
        # Rows already in the file lose ties against rows written now.
        parts.insert(0, old.append_column(ORDINAL, pa.array(np.full(old.num_rows, -1, np.int64))))
    merged = dedup_rows(pa.concat_tables(parts), schema)
    order = [(EVENT_TS, "ascending"), *((k, "ascending") for k in schema.key_names)]
    merged = merged.sort_by(order).select(target.names)
    layout.write_atomic(merged, path)
    return merged.num_rows


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
