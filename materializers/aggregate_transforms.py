"""``AggregateByDate``: the batch job's step for views with aggregations.

    valid events -> pane partials per batch -> routed to every UTC date holding a window end
    they feed -> grouped by date -> merged -> one row per (entity, window end) of that date

The output, ``(date, table)`` in the view's layout, is what ``WriteOffline`` takes, so an
aggregated view's run rewrites its dates like any other view's. Only windows ending inside the
run's interval [start, end) are produced: every one of them is closed (all its events are
before ``end``), and the source is read from ``start`` minus the largest window so each is
complete. Memory per date follows the (entity, pane) partials feeding it, not the events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa

from featurestore.sources import Interval
from materializers.aggregates import (
    pane_partials,
    partial_schema,
    slide_us,
    window_ends,
    window_rows,
)
from materializers.schema import ViewSchema

_DAY_US = 86_400 * 1_000_000
_EPOCH_DAY = date(1970, 1, 1)


def _day_of(end: np.ndarray, step_us: int) -> np.ndarray:
    return np.floor_divide(end * step_us, _DAY_US)


class _PartialsByDateFn(beam.DoFn):
    def __init__(self, schema: ViewSchema, lo: int, hi: int) -> None:
        self.schema = schema
        self.lo, self.hi = lo, hi

    def process(self, batch: pa.RecordBatch | pa.Table) -> Iterator[tuple[str, pa.Table]]:
        partials = pane_partials(batch, self.schema)
        if not partials.num_rows:
            return
        step = slide_us(self.schema)
        k_max = max(a.panes for a in self.schema.aggregates)
        pane = partials.column("__pane").to_numpy()
        routes: dict[int, np.ndarray] = {}
        for j in range(k_max):
            end = pane + 1 + j
            inside = (end >= self.lo) & (end < self.hi)
            days = _day_of(end, step)
            for day in np.unique(days[inside]).tolist():
                hit = inside & (days == day)
                routes[day] = routes[day] | hit if day in routes else hit
        for day, rows in routes.items():
            iso = (_EPOCH_DAY + timedelta(days=int(day))).isoformat()
            yield iso, partials.filter(pa.array(rows))


class _WindowsOfDayFn(beam.DoFn):
    def __init__(
        self, schema: ViewSchema, lo: int, hi: int, limit: Callable[[Any], int | None] | None = None
    ) -> None:
        self.schema = schema
        self.lo, self.hi = lo, hi
        self.limit = limit

    def process(self, element: tuple[str, Any], bound: Any = None) -> Iterator[tuple[str, pa.Table]]:
        hi = self.hi
        if self.limit is not None:
            cap = self.limit(bound)
            hi = hi if cap is None else min(hi, cap)
        day, parts = element
        tables = [p for p in parts if p is not None]
        partials = pa.concat_tables(tables) if tables else partial_schema(self.schema).empty_table()
        start = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc)
        day_lo, day_hi = window_ends(_us(start), _us(start + timedelta(days=1)), self.schema)
        rows = window_rows(partials, self.schema, lo=max(self.lo, day_lo), hi=min(hi, day_hi))
        yield day, rows


def _us(value: datetime) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def read_interval(schema: ViewSchema, interval: Interval) -> Interval:
    """The events an aggregated run over ``interval`` must read: from ``start`` minus the largest
    window (so the first windows are complete) to ``end``."""
    return Interval.of(interval.start - timedelta(seconds=schema.max_window_seconds), interval.end)


class AggregateByDate(beam.PTransform):
    """Valid event batches -> ``(date, rows)``: one row per (entity, window end), window ends in
    ``interval``. ``days`` adds dates to emit even without rows (existing partitions inside the
    interval, whose old rows must be replaced).

    >>> days = valid | AggregateByDate(schema, interval, run.days)  # doctest: +SKIP
    """

    def __init__(
        self,
        schema: ViewSchema,
        interval: Interval,
        days: Sequence[str] = (),
        limit: tuple[beam.PCollection, Callable[[Any], int | None]] | None = None,
    ) -> None:
        super().__init__()
        self.schema = schema
        self.lo, self.hi = window_ends(_us(interval.start), _us(interval.end), schema)
        self.days = list(days)
        # (a singleton PCollection, its value -> the first window end index not to emit):
        # the lambda hand-over's limit (materializers/batch_panes.py, ``window_limit``).
        self.limit = limit

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        routed = valid | "Partials" >> beam.ParDo(_PartialsByDateFn(self.schema, self.lo, self.hi))
        known = valid.pipeline | "KnownDays" >> beam.Create([(d, None) for d in self.days])
        return (
            (routed, known)
            | "All" >> beam.Flatten()
            | "ByDate" >> beam.GroupByKey()
            | "Windows" >> self._windows()
        )

    def _windows(self) -> beam.ParDo:
        if self.limit is None:
            return beam.ParDo(_WindowsOfDayFn(self.schema, self.lo, self.hi))
        bound, limit = self.limit
        return beam.ParDo(
            _WindowsOfDayFn(self.schema, self.lo, self.hi, limit),
            beam.pvalue.AsSingleton(bound, default_value=None),
        )
