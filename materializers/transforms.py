"""The composite Beam transforms of batch materialization; every element is an Arrow record batch
(or table), never one Python object per row.

    ReadSource              splits -> record batches of the source's columns (+ __ordinal)
    ValidateAndCast         -> (valid, rejects): declared dtypes, layout columns; bad rows + reason
    DeduplicateBatches      one (entity key, event ts) per row inside each element
    DeduplicateByPartition  batch: stage by UTC date, then one (entity key, event ts) per day
    WriteOffline            (day, table) -> the offline partition, via layout.replace_interval
    WriteOnline             -> latest row per entity (a combine), -> OnlineStore.write_latest
    AggregateByDate         events -> one row per entity and window end, per UTC date

The row-level work lives in Beam-free modules the stream job shares: ``materializers.validate``
(``validate_batch``), ``materializers.dedup`` (``keep_latest``, ``dedup_rows``),
``materializers.online_write`` (``OnlineWriter``) and ``materializers.aggregates``. Their public
names are re-exported here, so ``from materializers.transforms import validate_batch`` works.

Deduplication keeps, per (join keys, event timestamp), the row with the latest created
timestamp; exact ties go to the row read last (the highest ``__ordinal``), so a re-run over the
same files picks the same rows.

    >>> valid, rejects = batches | ValidateAndCast(schema, interval)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator, Sequence
from datetime import date, datetime, timedelta, timezone
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows

from featurestore.offline import layout, location
from featurestore.offline.location import OfflinePath
from featurestore.sources import Interval, SourceReader
from materializers import progress
from materializers.aggregate_transforms import AggregateByDate
from materializers.convert import convert_column, to_timestamp
from materializers.dedup import as_table, dedup_rows, keep_latest
from materializers.metrics import METRICS_NAMESPACE, counter
from materializers.online_write import (
    ENTITY_KEY,
    LatestPerKey,
    OnlineWriter,
    WriteOnline,
    key_buckets,
    latest_per_entity,
)
from materializers.schema import (
    CREATED_TS,
    EVENT_TS,
    TS_TYPE,
    ViewSchema,
    check_source_schema,
    compatible,
)
from materializers.validate import REASON, Validated, validate_batch

__all__ = [
    "CRASH_ENV",
    "CREATED_TS",
    "ENTITY_KEY",
    "EVENT_TS",
    "METRICS_NAMESPACE",
    "REASON",
    "REJECTS",
    "TS_TYPE",
    "AggregateByDate",
    "DeduplicateBatches",
    "DeduplicateByPartition",
    "LatestPerKey",
    "OnlineWriter",
    "ReadSource",
    "ValidateAndCast",
    "Validated",
    "ViewSchema",
    "WriteOffline",
    "WriteOnline",
    "check_source_schema",
    "compatible",
    "convert_column",
    "dedup_rows",
    "keep_latest",
    "key_buckets",
    "latest_per_entity",
    "to_timestamp",
    "validate_batch",
]

REJECTS = "rejects"
#: Test-only: hard-exit the process after this many offline partitions were written.
CRASH_ENV = "FEATURESTORE_TEST_CRASH_AFTER_PARTITIONS"


class _ReadSplitFn(beam.DoFn):
    def __init__(self, reader: SourceReader, progress_key: str | None) -> None:
        self.reader = reader
        self.progress_key = progress_key
        self.rows = counter("source_rows")

    def process(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        for batch in self.reader.read(split):
            self.rows.inc(batch.num_rows)
            progress.add(self.progress_key, "read", batch.num_rows)
            yield batch


class ReadSource(beam.PTransform):
    """Record batches of a source: its splits, spread over workers, each read in batches.

    ``spread=False`` leaves out the reshuffle that spreads the splits: with one worker (the
    in-process runner) it only adds a stage and a shuffle to the job.
    """

    def __init__(
        self, reader: SourceReader, progress_key: str | None = None, spread: bool = True
    ) -> None:
        super().__init__()
        self.reader = reader
        self.progress_key = progress_key
        self.spread = spread

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        # Create's own reshuffle is left out: "Spread" below is the one that spreads them.
        splits = pbegin | "Splits" >> beam.Create(self.reader.splits(), reshuffle=False)
        if self.spread:
            splits = splits | "Spread" >> beam.Reshuffle()
        return splits | "Read" >> beam.ParDo(_ReadSplitFn(self.reader, self.progress_key))


class _ValidateFn(beam.DoFn):
    def __init__(self, schema: ViewSchema, interval: Interval | None) -> None:
        self.schema = schema
        self.interval = interval
        self.read = counter("rows_read")
        self.rejected = counter("rows_rejected")

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        result = validate_batch(batch, self.schema, self.interval)
        self.read.inc(result.rows_read)
        if result.valid.num_rows:
            yield result.valid
        if result.rejects is not None:
            self.rejected.inc(result.rejects.num_rows)
            yield beam.pvalue.TaggedOutput(REJECTS, result.rejects)


class ValidateAndCast(beam.PTransform):
    """``valid, rejects = batches | ValidateAndCast(schema, interval)``.

    ``valid``: record batches in the view's layout (plus ``__ordinal``); ``rejects``: the bad
    rows' source columns plus ``reason``. A batch with a missing or incompatible column fails
    the pipeline with DataError (a schema problem is not a row problem).
    """

    def __init__(self, schema: ViewSchema, interval: Interval | None = None) -> None:
        super().__init__()
        self.schema = schema
        self.interval = interval

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        out = batches | "Check" >> beam.ParDo(_ValidateFn(self.schema, self.interval)).with_outputs(
            REJECTS, main="valid"
        )
        return out.valid, out[REJECTS]


class _DedupFn(beam.DoFn):
    def __init__(self, schema: ViewSchema) -> None:
        self.schema = schema

    def process(self, element: pa.Table | pa.RecordBatch) -> Iterator[pa.Table]:
        yield dedup_rows(as_table(element), self.schema)


class DeduplicateBatches(beam.PTransform):
    """Deduplicate inside each element (e.g. a stream window's batch); see ``dedup_rows``."""

    def __init__(self, schema: ViewSchema) -> None:
        super().__init__()
        self.schema = schema

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Dedup" >> beam.ParDo(_DedupFn(self.schema))


def _read_ipc(path: OfflinePath | str) -> pa.Table:
    return location.read_ipc(location.coerce(path))


class _StageByDateFn(beam.DoFn):
    """Writes valid rows to Arrow files under ``{staging}/date=YYYY-MM-DD/``; emits
    ``(date, path)``. Buffers at most a few batches, so memory does not grow with the data.
    On an object store the staging files are objects under the run's ``_staging`` prefix."""

    def __init__(self, staging_dir: OfflinePath | str, batch_rows: int) -> None:
        self.staging_dir = location.coerce(staging_dir)
        self.batch_rows = batch_rows

    def start_bundle(self) -> None:
        self.buffers: dict[int, list[pa.RecordBatch]] = {}
        self.sizes: dict[int, int] = {}

    def process(self, batch: pa.RecordBatch) -> Iterator[tuple[str, Any]]:
        if not batch.num_rows:
            return
        days = pc.cast(batch.column(EVENT_TS), pa.date32()).to_numpy(zero_copy_only=False)
        days = days.astype("datetime64[D]").astype(np.int64)
        if (days == days[0]).all():
            parts = [(int(days[0]), batch)]
        else:
            order = np.argsort(days, kind="stable")
            batch, days = batch.take(pa.array(order)), days[order]
            cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), len(days)]
            parts = [(int(days[a]), batch.slice(a, b - a)) for a, b in itertools.pairwise(cuts)]
        for day, part in parts:
            self.buffers.setdefault(day, []).append(part)
            self.sizes[day] = self.sizes.get(day, 0) + part.num_rows
            if self.sizes[day] >= self.batch_rows:
                yield self._flush(day)
        if sum(self.sizes.values()) >= 4 * self.batch_rows:
            for day in list(self.buffers):
                yield self._flush(day)

    def finish_bundle(self) -> Iterator[Any]:
        for day in list(self.buffers):
            yield GlobalWindows.windowed_value(self._flush(day))

    def _flush(self, day: int) -> tuple[str, Any]:
        batches = self.buffers.pop(day)
        self.sizes.pop(day)
        iso = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
        path = self.staging_dir / f"date={iso}" / f"{uuid.uuid4().hex}.arrow"
        location.write_ipc(batches, path)
        # A local path travels as text (as it always has), an object path as itself (its store
        # options with it).
        return iso, path if location.is_remote(path) else str(path)


class _MergeDayFn(beam.DoFn):
    def __init__(self, schema: ViewSchema) -> None:
        self.schema = schema

    def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, pa.Table]]:
        day, paths = element
        files = sorted({p for p in paths if p}, key=str)
        if files:
            table = pa.concat_tables([_read_ipc(p) for p in files])
        else:
            table = self.schema.validated_schema().empty_table()
        # Sorted by (join keys, event time); replace_interval's stable sort by event time then
        # gives the fixed (event time, join keys) order that makes re-runs write identical files.
        deduplicated = dedup_rows(table, self.schema)
        # The fused steps after this one (offline, then online) run while this generator waits
        # at its yield: without the del, a second copy of the day would stay alive meanwhile.
        del table
        yield day, deduplicated


class DeduplicateByPartition(beam.PTransform):
    """Valid batches -> ``(date, table)``: every UTC date's rows, deduplicated.

    Duplicates share their event time and so their date, which makes per-date deduplication
    exact. Rows go through staging files rather than a shuffle of the data, so memory is
    bounded by the largest day on any runner. ``days`` adds dates to emit even without rows
    (existing partitions inside the run's interval, whose old rows must be replaced).
    """

    def __init__(
        self,
        schema: ViewSchema,
        staging_dir: OfflinePath | str,
        batch_rows: int,
        days: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.schema = schema
        self.staging_dir = staging_dir
        self.batch_rows = batch_rows
        self.days = list(days)

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        staged = valid | "Stage" >> beam.ParDo(_StageByDateFn(self.staging_dir, self.batch_rows))
        # No reshuffle of these few keys: the GroupByKey right after is the shuffle.
        known = valid.pipeline | "KnownDays" >> beam.Create(
            [(d, None) for d in self.days], reshuffle=False
        )
        return (
            (staged, known)
            | "All" >> beam.Flatten()
            | "ByDate" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_MergeDayFn(self.schema))
        )


_partitions_written = 0


def _crash_hook() -> None:
    """Test-only: die like a killed process after N partitions (see tests/materializers)."""
    global _partitions_written
    limit = os.environ.get(CRASH_ENV)
    if not limit:
        return
    _partitions_written += 1
    if _partitions_written >= int(limit):
        os._exit(75)


class _WritePartitionFn(beam.DoFn):
    def __init__(
        self,
        schema: ViewSchema,
        offline_path: OfflinePath | str,
        project: str,
        interval: Interval,
        progress_key: str | None,
    ) -> None:
        self.schema = schema
        self.offline_path = location.coerce(offline_path)
        self.project = project
        self.interval = interval
        self.progress_key = progress_key
        self.rows = counter("rows_offline")
        self.partitions = counter("partitions_written")

    def process(self, element: tuple[str, pa.Table]) -> Iterator[pa.Table]:
        day, table = element
        day_start = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc)
        start = max(self.interval.start, day_start)
        end = min(self.interval.end, day_start + timedelta(days=1))
        target = self.schema.layout_schema()
        written = layout.replace_interval(
            self.offline_path,
            self.project,
            self.schema.view,
            table.select(target.names).cast(target),
            start,
            end,
        )
        self.rows.inc(written)
        self.partitions.inc()
        progress.add(self.progress_key, "partitions", 1)
        progress.add(self.progress_key, "offline", written)
        _crash_hook()
        if table.num_rows:
            yield table


class WriteOffline(beam.PTransform):
    """``(date, table)`` -> that date's partition rewritten for the run's interval, atomically.

    Emits the tables written, so the online write follows the offline one.
    """

    def __init__(
        self,
        schema: ViewSchema,
        offline_path: OfflinePath | str,
        project: str,
        interval: Interval,
        progress_key: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = _WritePartitionFn(schema, offline_path, project, interval, progress_key)

    def expand(self, days: beam.PCollection) -> beam.PCollection:
        return days | "Replace" >> beam.ParDo(self.fn)
