"""The stream job's steps for one aggregated view, driven in-process without a Beam runner.

``StreamDriver`` reads micro-batches with the job's reader and passes each through the same
DoFns the pipeline fuses (validate, aggregate, offline), in order, so a test can interleave
pushes, batch runs and micro-batches deterministically and in milliseconds. It can also be
killed at a micro-batch, before its commit or right after it (before the online write), and
comes back as a restarted job would: new DoFns and reader under the same consumer, and none
of the process's memory. The Beam wiring itself is covered by the tests that run
``run_stream`` (test_stream_vs_batch, test_lambda).
"""

from __future__ import annotations

import time
from typing import Any

from featurestore import FeatureStore
from materializers import stream_transforms
from materializers.stream_plan import StreamOptions, plan_stream
from materializers.stream_read import MicroBatch, open_reader
from materializers.stream_transforms import _AggregateFn, _OfflineFn, _ValidateFn


class Killed(Exception):
    """The job died here (a test's kill point)."""


class StreamDriver:
    """One view's stream job, one micro-batch at a time.

    >>> with StreamDriver(store, "user_agg", StreamOptions(consumer="t")) as job:  # doctest: +SKIP
    ...     job.drain()
    """

    def __init__(
        self,
        store: FeatureStore,
        view: str,
        options: StreamOptions,
        kills: dict[int, str] | None = None,
    ) -> None:
        """``kills``: micro-batch number (from 1, counting non-empty reads) -> ``before_commit``
        or ``after_commit``: the job dies there and restarts."""
        [self.run] = plan_stream(store, [view], options)
        self.kills = dict(kills or {})
        self.reads = 0
        self.restarts = 0
        self._start()
        self.late = 0

    def _start(self) -> None:
        self.reader = open_reader(self.run)
        self.steps: list[Any] = [
            _ValidateFn(self.run),
            _AggregateFn(self.run),
            _OfflineFn(self.run),
        ]
        for step in self.steps[1:]:
            step.setup()

    def restart(self) -> None:
        """Die and start again: what a new process of the same consumer would have."""
        self.close()
        key = (self.run.project, self.run.view, self.run.options.consumer)
        for memory in (stream_transforms._WINDOW_END, stream_transforms._BOUNDARY):
            memory.pop(key, None)
        self.restarts += 1
        self._start()

    def _through(self, mb: MicroBatch, kill: str | None = None) -> MicroBatch:
        def hook(point: str) -> None:
            if point == kill:
                raise Killed(point)

        original = stream_transforms.crash_hook
        stream_transforms.crash_hook = hook
        try:
            for step in self.steps:
                [mb] = list(step.process(mb))
        finally:
            stream_transforms.crash_hook = original
        self.late += mb.late
        return mb

    def step(self, max_entries: int | None = None) -> int:
        """One read (not waiting) and its micro-batch through every step; entries read."""
        read = self.reader.read(max_entries or self.run.max_entries, 0)
        if len(read):
            self.reads += 1
        kill = self.kills.pop(self.reads, None) if len(read) else None
        if kill == "before_commit":
            self.restart()  # read, never committed: delivered again to the restarted job
            return len(read)
        try:
            self._through(MicroBatch(self.run.view, read, time.time()), kill)
        except Killed:
            self.restart()
        return len(read)

    def steps_for(self, micro_batches: int, max_entries: int | None = None) -> None:
        """At most this many non-empty micro-batches (a job that is behind)."""
        for _ in range(micro_batches):
            if not self.step(max_entries):
                return

    def drain(self, max_entries: int | None = None) -> None:
        """Micro-batches until the stream has nothing new, then a final (empty) one that
        writes the closed windows offline."""
        while self.step(max_entries):
            pass
        self._through(MicroBatch(self.run.view, None, time.time(), final=True))

    def close(self) -> None:
        for step in self.steps[1:]:
            step.teardown()
        self.reader.close()

    def __enter__(self) -> StreamDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
