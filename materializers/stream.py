"""Stream materialization: a Beam pipeline that runs until stopped, events -> online + offline.

    ReadStream (unbounded splittable DoFn) -> ValidateEvents -> WriteStreamRejects
        -> WriteStreamOnline | UpdateAggregates -> WriteStreamOffline -> ReportFreshness

per view with a ``stream_source``, all in one pipeline. ``run_stream`` builds it and runs it on
the in-process runner (or the ``--runner`` given), in **generations**: each pipeline run reads
for ``generation_seconds``, then writes every buffered window, acknowledges, and ends; the next
run is built from the same function and starts at once. Beam's in-process runner keeps about
20 KB per bundle for the whole of a run, so an endless run would grow without bound;
generations bound it (docs/streaming.md says what was tried and why).

Each run goes through the batch job's lifecycle (``materializers.lifecycle``), so it runs on
another runner too: tested on Beam's portable runner (docs/streaming.md, "Other runners").

SIGINT or SIGTERM ends the current run after the micro-batch in hand (the read returns within
``block_ms``), writing and acknowledging what was read; a second signal interrupts at once
(what was not acknowledged is read again by the next job). Where the read runs in other
processes (the portable runner's workers) the signal cannot reach it: the run in hand ends at
its deadline, and no other starts.

    >>> run_stream(FeatureStore("repo"), ["user_clicks"], StreamOptions(consumer="job-1"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from materializers.stream_plan import StreamOptions, StreamRun, plan_stream
from registry.errors import FeatureStoreError, UserError

if TYPE_CHECKING:
    import apache_beam as beam

    from featurestore.store import FeatureStore
    from materializers.lifecycle import Runner

__all__ = ["StreamOptions", "build_stream_pipeline", "check_stream_options", "run_stream", "stop"]


def build_stream_pipeline(
    pipeline: beam.Pipeline,
    runs: Sequence[StreamRun],
    deadline: float,
    reads_for: float | None = None,
) -> None:
    """Add one read-and-process branch per view to ``pipeline``; it ends at ``deadline``
    (epoch seconds) or on ``stop()``; with ``reads_for``, not before each read ran that many
    seconds (workers that start late, on another runner)."""
    from materializers.stream_transforms import ProcessStream, ReadStream

    # Views share the runner's one thread, so a view's idle wait delays the others.
    block_ms = max(10, runs[0].options.block_ms // max(len(runs), 1)) if runs else 0
    for run in runs:
        _ = (
            pipeline
            | f"Read[{run.view}]" >> ReadStream(run, deadline, block_ms, reads_for)
            | f"Process[{run.view}]" >> ProcessStream(run)
        )


def stop() -> None:
    """Ask every running stream pipeline of this process to finish the batch in hand and end."""
    from materializers.stream_read import STOP

    STOP.set()


@dataclass
class _Generation:
    """The pipeline run in hand, as the signal handler sees it."""

    runner: Runner | None = None
    seconds: float = 0.0


@contextmanager
def _stop_on_signals(out: TextIO, current: _Generation) -> Iterator[None]:
    """SIGINT/SIGTERM -> ``stop()``; a second one -> KeyboardInterrupt. Main thread only.

    ``STOP`` reaches the read only where it runs in this process; elsewhere the run in hand
    ends at its deadline and no other starts (a second signal cancels the job)."""
    from materializers.stream_read import STOP

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if STOP.is_set():
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        runner = current.runner
        if runner is None or runner.in_process:
            print(
                f"{name}: stopping after the batch in hand (again to stop at once)",
                file=out,
                flush=True,
            )
        else:
            print(
                f"{name}: stopping when this pipeline run ends, after its --generation of "
                f"{current.seconds:.0f} s of reading: the read runs on {runner.name}'s workers, "
                "out of this signal's reach (again to cancel the job now; what it had not "
                "acknowledged is read again)",
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


def check_stream_options(pipeline_args: Sequence[str]) -> None:
    """Before anything runs: refuse what cannot run the stream job (``UserError``, one line).

    The batch job's checks (``lifecycle.Runner.check_options``: runners known to lose data),
    and the in-process runner with several workers (``--direct_num_workers``), which ends the
    unbounded read after its first bundle (``portable_services.unbounded`` shows why)."""
    from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

    from materializers.lifecycle import IN_PROCESS_NAMES, Runner

    options = PipelineOptions(list(pipeline_args))
    workers = options.view_as(DirectOptions).direct_num_workers
    if options.view_as(StandardOptions).runner in IN_PROCESS_NAMES and workers != 1:
        import apache_beam

        raise UserError(
            f"--direct_num_workers {workers} is refused for the stream job: Beam's in-process "
            f"runner with several workers (apache-beam {apache_beam.__version__}) drops the "
            "read's self-checkpoint (defer_remainder), so the read would end after one bundle",
            hint="leave --direct_num_workers out (one reader per view; the consumer group "
            "spreads a stream over several jobs), or use --runner PortableRunner with a job "
            "server (docs/streaming.md, Other runners)",
        )
    Runner.check_options(pipeline_args)  # after: the stream job's own reason is the more exact


def _read_counts(result: Any) -> dict[str, dict[str, int]] | None:
    """``view -> {"entries": n, "ends": n}`` of the read, from the job's metrics read after its
    end; None when the runner reports no metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    from materializers.stream_read import METRICS_NAMESPACE

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except NotImplementedError:
        return None
    counts: dict[str, dict[str, int]] = {}
    for counter in found["counters"]:
        view, _, name = counter.key.metric.name.rpartition(":")
        value = counter.committed if counter.committed is not None else counter.attempted
        per_view = counts.setdefault(view, {"entries": 0, "ends": 0})
        per_view[name] = per_view.get(name, 0) + int(value or 0)
    return counts


def _check_ended(
    counts: dict[str, dict[str, int]] | None, runner: Runner, names: Sequence[str], deadline: float
) -> None:
    """A pipeline run is over only when every view's read ended (deadline or STOP): a runner
    that drops the read's self-checkpoint reports DONE after one bundle instead."""
    from materializers.stream_read import STOP

    if counts is None:  # no metrics: the clock says whether the run could have reached its end
        cut = [] if STOP.is_set() or time.time() >= deadline - 1.0 else list(names)
    else:
        cut = [v for v in names if counts.get(v, {}).get("ends", 0) < 1]
    if cut:
        raise FeatureStoreError(
            f"{runner.name} ended the stream read of {', '.join(cut)} before the end of its "
            "run although the job is DONE: the runner dropped the read's self-checkpoint "
            "(defer_remainder)",
            hint="on Beam's Python job server, run the stream job on one SDK worker "
            "(python -m materializers.portable_services job-server does so); what was read "
            "and not acknowledged is read again by the next run",
        )


class _StatsWatch:
    """Where the read runs in other processes, their freshness lines are printed here, from the
    figures the job stores in the online store (``stream_stats`` blobs)."""

    def __init__(self, store: FeatureStore, views: Sequence[str], out: TextIO) -> None:
        self.online = store.online_store  # the store's own: it closes it
        self.views = list(views)
        self.out = out
        self.seen: dict[str, float] = {}
        self.since = time.time()  # figures stored by an earlier job are not this one's

    def __call__(self) -> None:
        from materializers import freshness

        try:
            blobs = self.online.get_blobs(
                freshness.STATS_NAMESPACE, [v.encode() for v in self.views]
            )
        except FeatureStoreError as exc:  # a store hiccup must not stop the job; say so
            print(f"stream stats unavailable: {exc}", file=self.out, flush=True)
            return
        for view, blob in zip(self.views, blobs):
            if blob is None:
                continue
            stats = json.loads(blob)
            if stats.get("updated_at", 0) > self.seen.get(view, self.since):
                self.seen[view] = stats["updated_at"]
                print(freshness.format_line(stats), file=self.out, flush=True)


def run_stream(
    store: FeatureStore,
    views: Sequence[str] | None = None,
    options: StreamOptions | None = None,
    pipeline_args: Sequence[str] = (),
    out: TextIO | None = None,
    max_generations: int | None = None,
) -> int:
    """Stream ``views`` (default: every view with a ``stream_source``) until stopped; returns
    the number of pipeline runs made. ``pipeline_args`` go to Beam as in the batch job.

    Each run goes through the batch job's lifecycle (``materializers.lifecycle``: submitted,
    waited for once, its metrics read after its end), so any runner that runs the batch job
    runs this one: ``--runner PortableRunner --job_endpoint ... --environment_type EXTERNAL
    --environment_config ...`` is tested (tests/streaming/test_portable_stream.py)."""
    from materializers.batch import _original, make_pipeline
    from materializers.lifecycle import Runner, run_to_end
    from materializers.stream_read import STOP

    options = options or StreamOptions()
    out = out if out is not None else sys.stdout
    check_stream_options(pipeline_args)
    runs = plan_stream(store, views, options)
    names = ", ".join(r.view for r in runs)
    print(
        f"streaming {names} as consumer {options.consumer!r} (Ctrl-C or SIGTERM to stop)",
        file=out,
        flush=True,
    )
    STOP.clear()
    generations = 0
    current = _Generation()
    watch: _StatsWatch | None = None
    with _stop_on_signals(out, current):
        while not STOP.is_set() and (max_generations is None or generations < max_generations):
            pipeline = make_pipeline([*pipeline_args, "--streaming"])
            runner = Runner.of(pipeline, pipeline_args)
            if not runner.in_process and watch is None:
                watch = _StatsWatch(store, [r.view for r in runs], out)
            deadline = time.time() + options.generation_seconds
            current.runner, current.seconds = runner, options.generation_seconds
            # Remote workers start seconds (a cluster: minutes) after the submission: each run
            # reads for its whole generation from when its read starts.
            reads_for = None if runner.in_process else options.generation_seconds
            build_stream_pipeline(pipeline, runs, deadline, reads_for)
            try:
                result = run_to_end(
                    pipeline, runner, names, watch=watch, every=options.stats_seconds
                )
            except FeatureStoreError as exc:
                if runner.in_process or type(exc) is not FeatureStoreError:
                    raise _original(exc) from None
                # The lifecycle's hint speaks of the batch job's watermark; say the stream's.
                raise FeatureStoreError(
                    exc.message,
                    hint="see the runner's logs; what the run had not acknowledged is read "
                    "again by the next start (same --consumer)",
                ) from exc.__cause__
            generations += 1
            counts = _read_counts(result)
            if watch is not None:
                watch()  # the figures of the run's final micro-batch
                if counts is not None:  # and what the job's metrics say, after its end
                    read = ", ".join(
                        f"{r.view} {counts.get(r.view, {}).get('entries', 0):,}" for r in runs
                    )
                    print(
                        f"pipeline run {generations} on {runner.name} ended; entries read: {read}",
                        file=out,
                        flush=True,
                    )
            _check_ended(counts, runner, [r.view for r in runs], deadline)
    print(f"stopped streaming {names}", file=out, flush=True)
    return generations
