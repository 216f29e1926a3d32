"""Stream materialization: a Beam pipeline that runs until stopped, events -> online + offline.

    ReadStream (unbounded splittable DoFn) -> ValidateEvents -> WriteStreamRejects
        -> WriteStreamOnline | UpdateAggregates -> WriteStreamOffline -> ReportFreshness

per view with a ``stream_source``, all in one pipeline. ``run_stream`` builds it and runs it on
the in-process runner (or the ``--runner`` given), in **generations**: each pipeline run reads
for ``generation_seconds``, then writes every buffered window, acknowledges, and ends; the next
run is built from the same function and starts at once. Beam's in-process runner keeps about
20 KB per bundle for the whole of a run, so an endless run would grow without bound;
generations bound it (docs/streaming.md says what was tried and why).

SIGINT or SIGTERM ends the current run after the micro-batch in hand (the read returns within
``block_ms``), writing and acknowledging what was read; a second signal interrupts at once
(what was not acknowledged is read again by the next job).

    >>> run_stream(FeatureStore("repo"), ["user_clicks"], StreamOptions(consumer="job-1"))  # doctest: +SKIP
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO

from materializers.stream_plan import StreamOptions, StreamRun, plan_stream
from registry.errors import FeatureStoreError

if TYPE_CHECKING:
    import apache_beam as beam

    from featurestore.store import FeatureStore

__all__ = ["StreamOptions", "build_stream_pipeline", "run_stream", "stop"]


def build_stream_pipeline(
    pipeline: beam.Pipeline, runs: Sequence[StreamRun], deadline: float
) -> None:
    """Add one read-and-process branch per view to ``pipeline``; it ends at ``deadline``
    (epoch seconds) or on ``stop()``."""
    from materializers.stream_transforms import ProcessStream, ReadStream

    # Views share the runner's one thread, so a view's idle wait delays the others.
    block_ms = max(10, runs[0].options.block_ms // max(len(runs), 1)) if runs else 0
    for run in runs:
        _ = (
            pipeline
            | f"Read[{run.view}]" >> ReadStream(run, deadline, block_ms)
            | f"Process[{run.view}]" >> ProcessStream(run)
        )


def stop() -> None:
    """Ask every running stream pipeline of this process to finish the batch in hand and end."""
    from materializers.stream_read import STOP

    STOP.set()


@contextmanager
def _stop_on_signals(out: TextIO) -> Iterator[None]:
    """SIGINT/SIGTERM -> ``stop()``; a second one -> KeyboardInterrupt. Main thread only."""
    from materializers.stream_read import STOP

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt
        print(
            f"{signal.Signals(signum).name}: stopping after the batch in hand "
            "(again to stop at once)",
            file=out,
            flush=True,
        )
        STOP.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_stream(
    store: FeatureStore,
    views: Sequence[str] | None = None,
    options: StreamOptions | None = None,
    pipeline_args: Sequence[str] = (),
    out: TextIO | None = None,
    max_generations: int | None = None,
) -> int:
    """Stream ``views`` (default: every view with a ``stream_source``) until stopped; returns
    the number of pipeline runs made. ``pipeline_args`` go to Beam as in the batch job."""
    from apache_beam.runners.runner import PipelineState

    from materializers.batch import _original, make_pipeline
    from materializers.stream_read import STOP

    options = options or StreamOptions()
    out = out if out is not None else sys.stdout
    runs = plan_stream(store, views, options)
    names = ", ".join(r.view for r in runs)
    print(
        f"streaming {names} as consumer {options.consumer!r} (Ctrl-C or SIGTERM to stop)",
        file=out,
        flush=True,
    )
    STOP.clear()
    generations = 0
    with _stop_on_signals(out):
        while not STOP.is_set() and (max_generations is None or generations < max_generations):
            pipeline = make_pipeline([*pipeline_args, "--streaming"])
            build_stream_pipeline(pipeline, runs, time.time() + options.generation_seconds)
            try:
                result = pipeline.run()
                result.wait_until_finish()
            except FeatureStoreError as exc:
                raise _original(exc) from None
            generations += 1
            if result.state != PipelineState.DONE:
                raise FeatureStoreError(
                    f"the stream pipeline of {names} ended in state {result.state}",
                    hint="see the runner's logs; unacknowledged entries are read again on restart",
                )
    print(f"stopped streaming {names}", file=out, flush=True)
    return generations
