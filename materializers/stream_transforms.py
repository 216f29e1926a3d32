"""The steps of the stream job after the read, as composite Beam transforms over ``MicroBatch``
elements (``materializers.stream_read``):

    ValidateEvents -> WriteStreamRejects -> (WriteStreamOnline | UpdateAggregates)
        -> WriteStreamOffline -> ReportFreshness          (all of it: ProcessStream)

Every step is a ParDo, so the runner fuses them with the read into one stage and each
micro-batch goes through all of them as soon as it is read. There is deliberately no
GroupByKey: on Beam's in-process runner a stage after a GroupByKey would only run once the
unbounded read ends (docs/streaming.md). Windows (offline files, aggregation panes) are kept by
the steps themselves: in the DoFn (offline rows, until their window is written) or in Redis
(aggregation state, ``materializers.stream_state``).

The row-level work is the batch job's: ``validate_batch``, ``latest_per_entity`` /
``OnlineWriter`` (the same online write), ``dedup_rows`` (in ``merge_into_file``) and the
aggregation functions.

    >>> _ = pipeline | ReadStream(run, deadline) | ProcessStream(run)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.offline.location import write_parquet
from featurestore.streams.encoding import ENTRY_ID
from materializers import freshness
from materializers.aggregates import pane_of, pane_partials
from materializers.dedup import as_table
from materializers.online_write import ENTITY_KEY, OnlineWriter, latest_per_entity, with_entity_key
from materializers.rejects import rejects_path
from materializers.schema import EVENT_TS
from materializers.stream_offline import WindowBuffer, merge_into_file, prune_before, stream_file
from materializers.stream_plan import StreamRun
from materializers.stream_read import (
    CRASH_ENV,
    STOP,
    MicroBatch,
    ReadStream,
    crash_hook,
    now_us,
    open_online,
    open_reader,
)
from materializers.validate import REASON, validate_batch

__all__ = [
    "CRASH_ENV",
    "STOP",
    "MicroBatch",
    "ProcessStream",
    "ReadStream",
    "ReportFreshness",
    "UpdateAggregates",
    "ValidateEvents",
    "WriteStreamOffline",
    "WriteStreamOnline",
    "WriteStreamRejects",
]

# Kept per (project, view, consumer) in this process across pipeline runs (generations): freshness,
# and the window end the aggregated view's online values were last brought to.
_STATS: dict[tuple[str, str, str], freshness.LagStats] = {}
_WINDOW_END: dict[tuple[str, str, str], int] = {}
# ... and the version of the batch boundary those values were computed under.
_BOUNDARY: dict[tuple[str, str, str], int] = {}

# -- validation and rejects ------------------------------------------------------------------------


class _ValidateFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        if mb.read is None or not mb.entries:
            yield mb
            return
        batch = mb.read.batch
        result = validate_batch(batch, self.run.schema.event_schema())
        ids = batch.column(ENTRY_ID).to_pylist()
        parts: list[pa.Table] = []
        rejected_ids = [i for i, _ in mb.read.rejected]
        if mb.read.rejected:
            parts.append(
                pa.table(
                    {
                        ENTRY_ID: pa.array(rejected_ids, pa.binary()),
                        REASON: pa.array([r for _, r in mb.read.rejected], pa.string()),
                    }
                )
            )
        if result.rejects is not None:
            bad = pa.Table.from_batches([result.rejects])
            bad_ids = bad.column(ENTRY_ID).to_pylist()
            rejected_ids += bad_ids
            parts.append(bad)
            gone = set(bad_ids)
            ids = [i for i in ids if i not in gone]
        rejects = pa.concat_tables(parts, promote_options="default") if parts else None
        yield replace(
            mb,
            valid=as_table(result.valid),
            valid_ids=ids,
            rejects=rejects,
            rejected_ids=rejected_ids,
        )


class ValidateEvents(beam.PTransform):
    """Micro-batches -> the same, with ``valid`` rows (the view's event layout, the batch job's
    ``validate_batch``) and ``rejects`` (entries that did not decode or validate, with a reason)."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Validate" >> beam.ParDo(_ValidateFn(self.run))


class _RejectsFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def setup(self) -> None:
        self.reader = open_reader(self.run)

    def teardown(self) -> None:
        self.reader.close()

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        if mb.rejects is not None and mb.rejects.num_rows:
            run = self.run
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            run_id = f"stream-{stamp}-{uuid.uuid4().hex[:8]}"
            target = rejects_path(run.offline_path, run.project, run.view, run_id)
            write_parquet(mb.rejects, target, compression="zstd")  # local or object store
            # Views with aggregations acknowledge everything in their commit (exactly once).
            if not run.schema.aggregated:
                self.reader.ack(mb.rejected_ids)
        yield mb


class WriteStreamRejects(beam.PTransform):
    """Rejected entries -> ``_rejects/{view}/stream-{time}-{hex}.parquet`` (one file per
    micro-batch that had any), then acknowledged (plain views)."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Rejects" >> beam.ParDo(_RejectsFn(self.run))


# -- online ----------------------------------------------------------------------------------------


def _lags(valid: pa.Table, done: float) -> np.ndarray:
    event_us = pc.cast(valid.column(EVENT_TS), pa.int64()).to_numpy()
    return done - event_us / 1e6


class _WriteOnlineFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def setup(self) -> None:
        self.store = open_online(self.run)
        self.writer = OnlineWriter(self.run.schema, self.store)

    def teardown(self) -> None:
        self.store.close()

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        if mb.valid is None or not mb.valid.num_rows or not self.run.schema.online:
            yield mb
            return
        for _ in self.writer.write(latest_per_entity(mb.valid, self.run.schema)):
            pass
        lags = _lags(mb.valid, time.time())
        crash_hook("after_online")
        yield replace(mb, lags=lags)


class WriteStreamOnline(beam.PTransform):
    """Valid rows -> the latest per entity -> ``OnlineStore.write_latest`` (newer-only), the
    batch job's rules; measures each event's lag to online visibility."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "WriteOnline" >> beam.ParDo(_WriteOnlineFn(self.run))


class _AggregateFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def setup(self) -> None:
        from materializers.stream_state import AggregateState

        self.reader = open_reader(self.run)
        self.store = open_online(self.run)
        self.writer = OnlineWriter(self.run.schema, self.store)
        self.state = AggregateState(
            self.reader, self.run.schema, self.run.project, self.run.options.lateness_seconds
        )
        self.state.record_lateness()
        self.sliding = any(a.panes > 1 for a in self.run.schema.aggregates)
        self.key = (self.run.project, self.run.view, self.run.options.consumer)

    def teardown(self) -> None:
        self.reader.close()
        self.store.close()

    def _write(self, rows: pa.Table) -> None:
        if rows.num_rows and self.run.schema.online:
            for _ in self.writer.write(latest_per_entity(rows, self.run.schema)):
                pass

    def _refresh(self, at_us: int, boundary: Any) -> None:
        """Every entity's current window, written online: all of the state on the process's
        first element (repairs a kill between a commit and its online write) and whenever a
        batch run published a new boundary (its partials replace the stream's before it), and
        the entities of the current window whenever a slide boundary passed (sliding windows:
        the oldest pane drops out)."""
        cur = self.state.current_end(at_us)
        last = _WINDOW_END.get(self.key)
        if last is None or _BOUNDARY.get(self.key) != boundary.version:
            first, _ = self.state.retained_panes(at_us)
            self._write(self.state.latest_rows(None, first, at_us))
        elif cur != last and self.sliding:
            # From the last end brought online: entities whose window grew since then.
            self._write(self.state.latest_rows(None, last - self.state.k_max, at_us))
        _WINDOW_END[self.key] = cur
        _BOUNDARY[self.key] = boundary.version

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        from featurestore.online.codec import encode_entity_keys

        at_us = now_us()
        boundary = self.state.boundary()
        self._refresh(at_us, boundary)
        if mb.read is None or not mb.entries:
            yield mb
            return
        s = self.run.schema
        rows = (
            mb.valid if mb.valid is not None else s.event_schema().validated_schema().empty_table()
        )
        row_ids = list(mb.valid_ids)
        late = 0
        if rows.num_rows:
            panes = pane_of(pc.cast(rows.column(EVENT_TS), pa.int64()).to_numpy(), s)
            too_late = self.state.too_late(panes, at_us)
            late = int(too_late.sum())
            if late:
                keep = ~too_late
                rows = rows.filter(pa.array(keep))
                row_ids = [i for i, k in zip(row_ids, keep.tolist()) if k]
        ids = list(mb.read.ids)
        while True:
            # Events before the batch boundary are the batch job's: acknowledged, not counted.
            owned = self.state.owned(rows, boundary)
            mine = rows.filter(pa.array(owned)) if not owned.all() else rows
            partials = pane_partials(mine, s)
            keys = (
                encode_entity_keys(
                    [d for _, d in s.join_keys], [partials.column(k) for k in s.key_names]
                )
                if partials.num_rows
                else []
            )
            result = self.state.commit(ids, partials, keys, boundary.version)
            if result.committed:
                break
            if result.moved:
                # A batch run published meanwhile: decide ownership again (and refresh next).
                boundary = self.state.boundary()
                continue
            # Someone else acknowledged some entries meanwhile: count only the ones still ours.
            still = set(result.owned)
            keep_rows = [i in still for i in row_ids]
            rows = rows.filter(pa.array(keep_rows, pa.bool_()))
            row_ids = [i for i in row_ids if i in still]
            ids = [i for i in ids if i in still]
        crash_hook("after_commit")
        late += rows.num_rows - mine.num_rows
        lags = None
        if mine.num_rows:
            touched = (
                with_entity_key(mine, s.event_schema()).column(ENTITY_KEY).unique().to_pylist()
            )
            lo_pane = int(pane_of(pc.cast(pc.min(mine.column(EVENT_TS)), pa.int64()).as_py(), s))
            self._write(self.state.latest_rows(touched, lo_pane, at_us))
            lags = _lags(mine, time.time())
        yield replace(mb, lags=lags, late=late)


class UpdateAggregates(beam.PTransform):
    """Valid events of an aggregated view -> pane partials merged into the Redis state and the
    entries acknowledged, in one atomic commit (``materializers.stream_state``); then the
    touched entities' current windows recomputed from the state and written online.

    Events before the batch boundary B (``materializers.batch_panes``) are acknowledged, not
    counted (``late``); windows merge the batch job's partials before B with the stream's."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Aggregate" >> beam.ParDo(_AggregateFn(self.run))


# -- offline ---------------------------------------------------------------------------------------


class _OfflineFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def setup(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.reader = open_reader(self.run)
        options = self.run.options
        self.buffer = WindowBuffer(options.window_seconds, options.grace_seconds)
        self.state: Any = None
        if self.run.schema.aggregated:
            from materializers.stream_state import AggregateState

            self.state = AggregateState(
                self.reader, self.run.schema, self.run.project, options.lateness_seconds
            )
        self.next_check = 0.0
        self.pruned_version: int | None = None
        # Windows are written (and their entries acknowledged) on one writer thread, so a
        # window's Parquet file does not hold up the online writes; Arrow releases the GIL.
        self.writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-offline")
        self.writes: list[Any] = []

    def teardown(self) -> None:
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.shutdown(wait=True)
        self.reader.close()

    def _write_window(self, start: int, rows: pa.Table, ids: list[bytes]) -> None:
        merge_into_file(self._file(start), rows, self.run.schema)
        crash_hook("after_flush")
        self.reader.ack(ids)

    def _collect(self, wait: bool) -> None:
        """Raise a failed write here, in the pipeline; with ``wait``, finish them all."""
        still = []
        for future in self.writes:
            if wait or future.done():
                future.result()
            else:
                still.append(future)
        self.writes = still

    def _file(self, window_start_us: int) -> Any:
        run = self.run
        return stream_file(
            run.offline_path, run.project, run.view, window_start_us, run.options.consumer
        )

    def _plain(self, mb: MicroBatch) -> None:
        if mb.valid is not None and mb.valid.num_rows:
            self.buffer.add(mb.valid, mb.valid_ids)
        due = self.buffer.due(now_us(), everything=mb.final)
        while self.buffer.rows > self.run.options.max_buffer_rows and len(self.buffer) > len(due):
            largest = self.buffer.largest()
            if largest in due:
                break
            due.append(largest)
        for window in due:
            self.writes.append(self.writer.submit(self._write_window, *self.buffer.pop(window)))
        # A backlog of writes bounds memory: wait when more than two windows are in flight.
        self._collect(wait=mb.final or len(self.writes) > 2)

    def _aggregated(self, mb: MicroBatch) -> None:
        now = time.monotonic()
        if now < self.next_check and not mb.final:
            return
        self.next_check = now + 1.0
        grace_us = self.run.options.grace_seconds * 1_000_000
        window_us = self.run.options.window_seconds * 1_000_000
        step = self.state.step
        boundary = self.state.boundary()
        if boundary.version != self.pruned_version:
            self._prune(boundary)
        while True:
            due = self.state.due_windows(now_us() - grace_us)
            for end, version in due:
                # Windows ending before the batch boundary are the batch job's files' rows.
                if boundary.at_us is None or end * step >= boundary.at_us:
                    boundary, rows = self.state.window_table(end)
                    if rows.num_rows and (boundary.at_us is None or end * step >= boundary.at_us):
                        merge_into_file(
                            self._file((end * step) // window_us * window_us), rows, self.run.schema
                        )
                self.state.window_done(end, version)
            if len(due) < 64 or not mb.final:
                break

    def _prune(self, boundary: Any) -> None:
        """A batch run published boundary B: the windows ending before it (or before where its
        rows end, ``rows_until``) are its files' rows now, so drop them from this consumer's files (once per boundary: the last B pruned is
        kept in Redis, per consumer)."""
        if boundary.at_us is not None:
            run = self.run
            consumer = run.options.consumer
            since = self.state.pruned_at(consumer)
            if since is None:
                since = boundary.from_us  # the batch job's rows start there, not at the epoch
            until = boundary.rows_until
            if since is None or since < until:
                prune_before(run.offline_path, run.project, run.view, consumer, until, since)
                self.state.set_pruned(consumer, until)
        self.pruned_version = boundary.version

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        if self.state is None:
            self._plain(mb)
        else:
            self._aggregated(mb)
        yield mb


class WriteStreamOffline(beam.PTransform):
    """Plain views: valid rows buffered by event-time window, each window merged into its
    stream file once closed (or at the end of a run), then its entries acknowledged. Views with
    aggregations: the windows the state marked, recomputed and merged once closed, those ending
    from the batch boundary B on only; when B moves, this consumer's rows before it go."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "WriteOffline" >> beam.ParDo(_OfflineFn(self.run))


# -- freshness -------------------------------------------------------------------------------------


class _StatsFn(beam.DoFn):
    def __init__(self, run: StreamRun) -> None:
        self.run = run

    def setup(self) -> None:
        key = (self.run.project, self.run.view, self.run.options.consumer)
        self.stats = _STATS.setdefault(key, freshness.LagStats(self.run.view))
        self.reader = open_reader(self.run)
        self.store = open_online(self.run)
        self.next_report = time.monotonic() + self.run.options.stats_seconds

    def teardown(self) -> None:
        self.reader.close()
        self.store.close()

    def process(self, mb: MicroBatch) -> Iterator[MicroBatch]:
        lags = mb.lags if mb.lags is not None else np.zeros(0)
        self.stats.add(lags, mb.entries, rejected=len(mb.rejected_ids), late=mb.late)
        now = time.monotonic()
        if now >= self.next_report or mb.final:
            self.next_report = now + self.run.options.stats_seconds
            snap = self.stats.report(
                pending=self.reader.pending(),
                backlog=self.reader.backlog(),
                consumer=self.run.options.consumer,
            )
            print(freshness.format_line(snap), flush=True)
            self.store.put_blobs(
                freshness.STATS_NAMESPACE, {self.run.view.encode(): freshness.encode(snap)}
            )
        yield mb


class ReportFreshness(beam.PTransform):
    """Counts events and lags; every ``stats_seconds`` prints a line and stores the figures in
    the online store (``stream_stats`` blobs) for the server's ``/metrics``."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Stats" >> beam.ParDo(_StatsFn(self.run))


class ProcessStream(beam.PTransform):
    """Everything after the read, for one view."""

    def __init__(self, run: StreamRun) -> None:
        super().__init__()
        self.run = run

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        checked = (
            batches
            | "Validate" >> ValidateEvents(self.run)
            | "Rejects" >> WriteStreamRejects(self.run)
        )
        if self.run.schema.aggregated:
            online = checked | "Aggregate" >> UpdateAggregates(self.run)
        else:
            online = checked | "Online" >> WriteStreamOnline(self.run)
        return (
            online
            | "Offline" >> WriteStreamOffline(self.run)
            | "Freshness" >> ReportFreshness(self.run)
        )
