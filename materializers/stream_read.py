"""Reading a view's stream in a Beam pipeline: ``ReadStream``, and ``MicroBatch``, the element
every step of the stream job passes on (the entry ids and an Arrow record batch of their events,
never one Python object per event).

``ReadStream`` is ``Impulse`` -> an unbounded splittable DoFn over an endless offset range, one
position per micro-batch: each call reads for about ``bundle_seconds`` (a read waits up to
``block_ms`` when the stream is idle, so an idle stream still yields empty micro-batches that
let later steps close windows on time), then defers the rest of its restriction; the runner
calls it again at once. On ``STOP`` (the job's signal handler, in this process) or at the
generation's deadline (epoch seconds, checked on the worker's clock: the one way to end the read
whatever the runner) it yields one ``final`` micro-batch and claims the rest of the range, which
ends the pipeline run. Every ``claim_idle_seconds / 2`` it first takes over entries other
consumers left.

    >>> batches = pipeline | ReadStream(run, deadline=time.time() + 600)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

from featurestore.streams.base import StreamRead, StreamReader, open_stream_reader
from materializers.stream_plan import StreamRun

#: Set (by the job's signal handler) to end every ReadStream after the batch in hand. It is
#: this process's: a runner whose workers are other processes ends the read at the deadline.
STOP = threading.Event()
#: Beam metrics of the read, per view: ``{view}:entries`` read and ``{view}:ends``, 1 when the
#: read ended at the deadline or on STOP (read by ``stream.run_stream`` after the run's end: a
#: run that is DONE with no end was cut short by the runner).
METRICS_NAMESPACE = "featurestore.stream"
#: Test-only: ``point:n`` hard-exits the process the n-th time it reaches ``point``
#: (after_online, after_flush, after_commit). Never set it elsewhere.
CRASH_ENV = "FEATURESTORE_TEST_STREAM_CRASH"
_crash_counts: dict[str, int] = {}


def crash_hook(point: str) -> None:
    """Test-only: die like a killed process at a chosen step (tests/streaming)."""
    setting = os.environ.get(CRASH_ENV)
    if not setting:
        return
    name, _, count = setting.partition(":")
    if name != point:
        return
    _crash_counts[point] = _crash_counts.get(point, 0) + 1
    if _crash_counts[point] >= int(count or 1):
        os._exit(75)


def now_us() -> int:
    """Wall-clock time in microseconds since the epoch."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class MicroBatch:
    """One read from the stream, and what the steps made of it."""

    view: str
    read: StreamRead | None
    read_at: float
    final: bool = False
    #: Valid events in the layout of the view's event schema, and the entry of each row.
    valid: pa.Table | None = None
    valid_ids: list[bytes] = field(default_factory=list)
    #: Rejected entries (the columns that decoded, ``__entry_id``, ``reason``).
    rejects: pa.Table | None = None
    rejected_ids: list[bytes] = field(default_factory=list)
    #: Seconds from each event's time to its online visibility.
    lags: np.ndarray | None = None
    late: int = 0

    @property
    def entries(self) -> int:
        return len(self.read) if self.read is not None else 0


def open_reader(run: StreamRun) -> StreamReader:
    """A reader of the run's stream as the job's consumer (one per DoFn, opened in setup)."""
    return open_stream_reader(
        run.source, run.events, consumer=run.options.consumer, default_url=run.stream_url
    )


def open_online(run: StreamRun) -> Any:
    """The run's online store (one per DoFn, opened in setup, never pickled)."""
    from featurestore.online.factory import open_online_store

    return open_online_store(run.online_config, run.project, run.root)


# -- reading ---------------------------------------------------------------------------------------


class _Endless(RestrictionProvider):
    """Positions 0, 1, 2, ...: one per micro-batch; the range is never used up."""

    def initial_restriction(self, element: Any) -> OffsetRange:
        return OffsetRange(0, 2**62)

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: Any, restriction: OffsetRange) -> int:
        return 1

    def split(self, element: Any, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # one reader per view: the consumer group spreads work across jobs


#: When each read (view, consumer, deadline) of this process first ran: where workers start
#: late, a read with ``reads_for`` ends that long after it, not at the bare deadline.
_FIRST_CALL: dict[tuple[str, str, float], float] = {}


class _ReadStreamFn(beam.DoFn):
    def __init__(
        self, run: StreamRun, deadline: float, block_ms: int, reads_for: float | None = None
    ) -> None:
        self.run = run
        self.deadline = deadline
        self.block_ms = block_ms
        self.reads_for = reads_for

    def _ends_at(self) -> float:
        if self.reads_for is None:
            return self.deadline
        key = (self.run.view, self.run.options.consumer, self.deadline)
        if key not in _FIRST_CALL:
            now = time.time()
            for old in [k for k in _FIRST_CALL if k[2] < now - 86_400]:  # a worker reused for days
                del _FIRST_CALL[old]
            _FIRST_CALL[key] = now
        return max(self.deadline, _FIRST_CALL[key] + self.reads_for)

    def setup(self) -> None:
        from apache_beam.metrics import Metrics

        self.reader = open_reader(self.run)
        self.next_claim = 0.0
        self.entries = Metrics.counter(METRICS_NAMESPACE, f"{self.run.view}:entries")
        self.ends = Metrics.counter(METRICS_NAMESPACE, f"{self.run.view}:ends")

    def teardown(self) -> None:
        reader = getattr(self, "reader", None)
        if reader is not None:
            reader.close()

    def _read(self) -> StreamRead:
        options = self.run.options
        now = time.monotonic()
        if now >= self.next_claim:
            self.next_claim = now + max(options.claim_idle_seconds / 2, 1.0)
            claimed = self.reader.claim_stale(
                options.claim_idle_seconds * 1000, self.run.max_entries
            )
            if len(claimed):
                return claimed
        return self.reader.read(self.run.max_entries, self.block_ms)

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: Any,
        tracker: Any = beam.DoFn.RestrictionParam(_Endless()),  # noqa: B008 - Beam's idiom
    ) -> Iterator[MicroBatch]:
        position = tracker.current_restriction().start
        until = time.monotonic() + self.run.options.bundle_seconds
        ends_at = self._ends_at()
        while True:
            if STOP.is_set() or time.time() >= ends_at:
                if tracker.try_claim(position):
                    self.ends.inc()
                    yield MicroBatch(self.run.view, None, time.time(), final=True)
                    # Claim the rest of the range: this restriction is done.
                    tracker.try_claim(tracker.current_restriction().stop - 1)
                return
            if not tracker.try_claim(position):
                return
            position += 1
            got = self._read()
            self.entries.inc(len(got))
            yield MicroBatch(self.run.view, got, time.time())
            if time.monotonic() >= until:
                break
        tracker.defer_remainder()


class ReadStream(beam.PTransform):
    """Micro-batches of one view's stream until ``STOP`` is set or ``deadline`` (epoch seconds)
    passes; the last element has ``final=True``. With ``reads_for`` (seconds), the read ends
    at the deadline or that long after its first call, whichever is later: a remote runner's
    workers may start after the deadline of a short run."""

    def __init__(
        self,
        run: StreamRun,
        deadline: float,
        block_ms: int | None = None,
        reads_for: float | None = None,
    ) -> None:
        super().__init__()
        self.run = run
        self.deadline = deadline
        self.block_ms = run.options.block_ms if block_ms is None else block_ms
        self.reads_for = reads_for

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Impulse" >> beam.Impulse()
            | "Read"
            >> beam.ParDo(_ReadStreamFn(self.run, self.deadline, self.block_ms, self.reads_for))
        )
