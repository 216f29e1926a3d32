"""What every source reader shares: the event-time interval, the read-order column, the protocol.

A reader yields record batches holding only the columns asked for, plus ``__ordinal`` (split
index << 40 | row offset): a stable read order that breaks exact ties in deduplication, so
re-runs pick the same row.

    >>> iv = Interval.of(datetime(2026, 1, 1), datetime(2026, 1, 2))
    >>> str(iv)
    '[2026-01-01T00:00:00+00:00, 2026-01-02T00:00:00+00:00)'
    >>> Interval.everything().bounded
    False
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

import pyarrow as pa

ORDINAL = "__ordinal"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_SPLIT_SHIFT = 40  # up to 2^40 rows per split, 2^23 splits
_MIN = datetime.min.replace(tzinfo=timezone.utc)
_MAX = datetime.max.replace(tzinfo=timezone.utc)


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

    @classmethod
    def everything(cls) -> Interval:
        """Every event time: readers push no time filter down at all (a feature job reads all)."""
        return cls(_MIN, _MAX)

    @property
    def bounded(self) -> bool:
        """False for ``everything()``: its ends do not fit every timestamp type (ns overflows),
        so readers skip the filter instead of comparing against them."""
        return (self.start, self.end) != (_MIN, _MAX)

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


class SourceReader(Protocol):
    """What ReadSource and the feature jobs need of a source; one implementation per backend."""

    @property
    def name(self) -> str: ...

    def schemas(self) -> Iterator[tuple[str, pa.Schema]]:
        """``(origin, schema)`` of everything the source reads (each file, or the query)."""

    def splits(self) -> list[tuple[int, str]]:
        """The units of work, ``(index, description)``, in a stable order."""

    def read(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        """The split's rows inside the interval (and rows with a NULL timestamp), in batches."""


def with_ordinal(batch: pa.RecordBatch, split: int, offset: int) -> pa.RecordBatch:
    """Append the ``__ordinal`` column: split index in the high bits, row offset in the low."""
    import numpy as np

    base = (split << _SPLIT_SHIFT) + offset
    ordinal = pa.array(np.arange(base, base + batch.num_rows, dtype=np.int64))
    return batch.append_column(ORDINAL, ordinal)
