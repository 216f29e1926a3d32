"""Batch materialization: one Beam pipeline per feature view, source -> offline + online store.

    ReadSource -> ValidateAndCast -> DeduplicateByPartition -> WriteOffline -> WriteOnline
                               \\-> rejects -> WriteRejects

Each view runs over a half-open event-time interval [start, end): a full run from the epoch
(or ``start``) to now (or ``end``), or an incremental run from the view's watermark minus
``materialization.lookback`` (late data) to now. Every source of the selected views is checked
against its definition before any pipeline starts. The watermark moves (in the registry, with
the run's record) only after both stores are written; a crashed run leaves it where it was, and
the re-run rewrites the same partitions and writes the same newer-only online rows.

A view with a pending backfill (a feature added or retyped since data was written:
``registry.evolution.pending_backfills``) runs over its whole history, from the earliest data
written under the earlier definition, also when the run is incremental; the run, recorded under
the current registry version, is what marks the backfill done.

The default runner is Beam's in-process FnApiRunner. ``DirectRunner`` is mapped to it too:
Beam's own DirectRunner first tries Prism, which downloads a binary. Any other ``--runner`` and
option goes to Beam unchanged (docs/materialization.md).

    >>> from featurestore import FeatureStore  # doctest: +SKIP
    >>> summaries = materialize(FeatureStore("repo"), incremental=True)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.offline import layout, location
from featurestore.sources import EPOCH, Interval, SourceReader, open_source, utc
from materializers.progress import ProgressDisplay, ViewSummary
from registry.errors import FeatureStoreError, UserError
from registry.evolution import PendingBackfill, pending_backfills
from registry.types import parse_duration

if TYPE_CHECKING:
    import apache_beam as beam

    from featurestore.config import OnlineStoreConfig
    from featurestore.offline.location import OfflinePath
    from featurestore.store import FeatureStore
    from materializers.schema import ViewSchema

__all__ = [
    "ViewRun",
    "ViewSummary",
    "build_view_pipeline",
    "in_process_runner",
    "make_pipeline",
    "materialize",
    "parse_time",
]

_LOG = logging.getLogger(__name__)
# Names under which Beam's own DirectRunner would be picked (and with it, Prism).


def parse_time(value: datetime | str) -> datetime:
    """An aware UTC datetime from a datetime, ``now``, or ISO 8601 text (naive means UTC).

    >>> parse_time("2026-01-02").isoformat()
    '2026-01-02T00:00:00+00:00'
    """
    if isinstance(value, datetime):
        return utc(value)
    text = str(value).strip()
    if text.lower() == "now":
        return datetime.now(timezone.utc)
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise UserError(
            f"bad time {value!r}",
            hint="use ISO 8601, e.g. 2026-01-31, 2026-01-31T12:00:00 (UTC) or "
            "2026-01-31T12:00:00+01:00",
        ) from None


def in_process_runner() -> Any:
    """Beam's in-process Python runner (no Prism, nothing downloaded)."""
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    return FnApiRunner()


def make_pipeline(pipeline_args: Sequence[str] = ()) -> beam.Pipeline:
    """A pipeline with these Beam options; the in-process runner unless ``--runner`` names
    another."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from materializers.lifecycle import IN_PROCESS_NAMES

    options = PipelineOptions(list(pipeline_args))
    name = options.view_as(StandardOptions).runner
    runner = in_process_runner() if name in IN_PROCESS_NAMES else None
    return beam.Pipeline(runner=runner, options=options)


@dataclass(frozen=True)
class ViewRun:
    """Everything one view's pipeline needs; plain data, built before any pipeline runs."""

    schema: ViewSchema
    reader: SourceReader
    interval: Interval
    run_id: str
    project: str
    #: A local Path or an object-store ObjectPath (plain data either way: workers open it).
    offline_path: OfflinePath
    online_config: OnlineStoreConfig
    root: Path
    batch_rows: int
    days: tuple[str, ...] = ()
    watermark: datetime | None = None
    backfill: PendingBackfill | None = None

    @property
    def staging_root(self) -> OfflinePath:
        return self.offline_path / self.project / "_staging" / self.schema.view

    @property
    def staging_dir(self) -> OfflinePath:
        return self.staging_root / self.run_id

    @property
    def rejects_target(self) -> OfflinePath:
        from materializers.rejects import rejects_path

        return rejects_path(self.offline_path, self.project, self.schema.view, self.run_id)


def build_view_pipeline(
    pipeline: beam.Pipeline,
    run: ViewRun,
    progress_key: str | None = None,
    panes: Any = None,
    one_worker: bool = False,
) -> None:
    """Add one view's materialization to ``pipeline``.

    A view with aggregations validates its source rows as events (read from the interval's
    start minus the largest window) and replaces deduplication by ``AggregateByDate``.
    ``one_worker``: the runner runs one worker (in-process), so the source's splits are not
    reshuffled to spread them.
    """
    from materializers.aggregate_transforms import AggregateByDate, read_interval
    from materializers.rejects import WriteRejects
    from materializers.transforms import (
        DeduplicateByPartition,
        ReadSource,
        ValidateAndCast,
        WriteOffline,
        WriteOnline,
    )

    s = run.schema
    batches = pipeline | "Read" >> ReadSource(run.reader, progress_key, spread=not one_worker)
    if s.aggregated:
        valid, rejects = batches | "Validate" >> ValidateAndCast(
            s.event_schema(), read_interval(s, run.interval)
        )
        limit = None
        if panes is not None:  # a stream_source: hand the stream job this run's panes
            newest = valid | "Newest" >> panes.newest()
            _ = valid | "StagePanes" >> panes.stage(newest)
            limit = (newest, panes.window_limit)
        days = valid | "Aggregate" >> AggregateByDate(s, run.interval, run.days, limit)
    else:
        valid, rejects = batches | "Validate" >> ValidateAndCast(s, run.interval)
        days = valid | "Deduplicate" >> DeduplicateByPartition(
            s, run.staging_dir / "offline", run.batch_rows, run.days
        )
    _ = rejects | "WriteRejects" >> WriteRejects(run.rejects_target, run.staging_dir / "rejects")
    written = days | "WriteOffline" >> WriteOffline(
        s, run.offline_path, run.project, run.interval, progress_key
    )
    if s.online:
        _ = written | "WriteOnline" >> WriteOnline(
            s, run.online_config, run.project, run.root, progress_key=progress_key
        )


def new_run_id() -> str:
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _days_in(existing: list[date], interval: Interval) -> tuple[str, ...]:
    first = interval.start.date()
    last = (interval.end - timedelta(microseconds=1)).date()
    return tuple(d.isoformat() for d in existing if first <= d <= last)


def _applied(store: FeatureStore) -> tuple[Any, int]:
    version = store.registry.head_version()
    if version == 0:
        raise UserError(
            f"nothing is applied in project {store.project!r}, so there is nothing to materialize",
            hint="run `featurestore apply` first",
        )
    # Straight from SQL at that version: ``store.definitions()`` would start the registry
    # watcher, a thread polling the database every second for a job that reads it once.
    return store.registry.definitions(version), version


def plan(
    store: FeatureStore,
    views: Sequence[str] | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    incremental: bool = False,
) -> tuple[list[ViewRun | ViewSummary], int]:
    """The runs to do (or skipped summaries), each source checked; and the registry version."""
    from materializers.aggregate_transforms import read_interval
    from materializers.schema import ViewSchema, check_source_schema

    definitions, version = _applied(store)
    names = list(dict.fromkeys(views)) if views else sorted(definitions.feature_views)
    for name in names:
        definitions.get("feature_view", name)  # NotFoundError with the nearest name
    if not names:
        raise UserError(
            "no feature views are applied",
            hint="declare feature_views and run `featurestore apply`",
        )
    if incremental and start is not None:
        raise UserError(
            "--incremental and --start do not go together",
            hint="an incremental run starts at the watermark minus the lookback; drop one of them",
        )
    config = store.config
    lookback = timedelta(seconds=parse_duration(config.materialization.lookback))
    end_dt = parse_time(end) if end is not None else datetime.now(timezone.utc)
    start_dt = parse_time(start) if start is not None else None
    log = store.materialization_log
    backfills = pending_backfills(store.registry.engine, store.project, names)
    out: list[ViewRun | ViewSummary] = []
    for name in names:
        schema = ViewSchema.of(definitions, name)
        watermark = log.watermark(name)
        backfill = backfills.get(name)
        if incremental and watermark is not None:
            begin = max(EPOCH, watermark - lookback)
            if backfill is not None:
                begin = min(begin, backfill.start)
                _LOG.info("feature view %s: backfill from %s (%s)", name, begin, "; ".join(backfill.reasons))
        else:
            begin = start_dt if start_dt is not None else EPOCH
        if backfill is not None and begin > backfill.start:
            _LOG.warning(
                "feature view %s needs a backfill from %s (%s); this run starts later, so it stays "
                "pending until an incremental run or one without --start", name, backfill.start,
                "; ".join(backfill.reasons),
            )
            backfill = None
        run_id = new_run_id()
        if begin >= end_dt:
            out.append(
                ViewSummary(
                    name,
                    run_id,
                    begin,
                    end_dt,
                    0,
                    0,
                    0,
                    0,
                    0.0,
                    watermark=watermark,
                    skipped=f"nothing to do: start {begin:%Y-%m-%d %H:%M} is not before end",
                )
            )
            continue
        interval = Interval.of(begin, end_dt)
        reader = open_source(
            definitions.get("source", definitions.feature_views[name].source),
            columns=schema.source_columns,
            timestamp_field=schema.timestamp_field,
            interval=read_interval(schema, interval) if schema.aggregated else interval,
            root=config.root,
            batch_rows=config.materialization.batch_rows,
            postgres_url=config.postgres_url,
        )
        for origin, found in reader.schemas():
            check_source_schema(schema, found, origin)
        existing = layout.existing_partitions(config.offline_path, store.project, name)
        out.append(
            ViewRun(
                schema=schema,
                reader=reader,
                interval=interval,
                run_id=run_id,
                project=store.project,
                offline_path=config.offline_path,
                online_config=config.online_store,
                root=config.root,
                batch_rows=config.materialization.batch_rows,
                days=_days_in(existing, interval),
                watermark=watermark,
                backfill=backfill,
            )
        )
    return out, version


def materialize(
    store: FeatureStore,
    views: Sequence[str] | None = None,
    start: datetime | str | None = None,
    end: datetime | str | None = None,
    incremental: bool = False,
    pipeline_args: Sequence[str] = (),
    progress: bool = True,
) -> list[ViewSummary]:
    """Materialize feature views into the offline and online stores; one summary per view.

    ``views``: names (default: every applied view). ``start``/``end``: datetimes or ISO text
    (default: the epoch and now, UTC). ``incremental``: start each view at its watermark minus
    the configured lookback. ``pipeline_args``: Beam options such as ``--runner FlinkRunner``.

    >>> materialize(FeatureStore("repo"), ["user_activity"], start="2026-01-01")  # doctest: +SKIP
    [ViewSummary(view='user_activity', ...)]
    """
    planned, version = plan(store, views, start, end, incremental)
    summaries = []
    for item in planned:
        if isinstance(item, ViewSummary):
            summaries.append(item)
            continue
        summaries.append(_run(store, item, pipeline_args, progress, version))
    return summaries


def _original(exc: BaseException) -> BaseException:
    """Beam re-raises a DoFn's error as a copy with the step name but without our ``hint``;
    the original is its ``__context__``."""
    seen = exc
    while isinstance(seen.__context__, FeatureStoreError):
        seen = seen.__context__
    return seen


def _counters(result: Any) -> dict[str, int] | None:
    """The job's counters, read once it has ended; None when the runner reports no metrics."""
    from apache_beam.metrics.metric import MetricsFilter

    from materializers.metrics import METRICS_NAMESPACE

    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except NotImplementedError:
        return None
    out: dict[str, int] = {}
    for counter in found["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return out


def _run(
    store: FeatureStore, run: ViewRun, pipeline_args: Sequence[str], progress: bool, version: int
) -> ViewSummary:
    """One view's job: submit, wait once, read metrics after the end, verify the stores, then
    record (materializers/lifecycle.py, verify.py)."""
    from materializers.lifecycle import Runner, StagingWatch, no_ipython_probe, run_to_end
    from materializers.verify import verify_run

    view = run.schema.view
    Runner.check_options(pipeline_args)
    pipeline = make_pipeline(pipeline_args)
    runner = Runner.of(pipeline, pipeline_args)
    online = store.online_store if run.schema.online else None
    if online is not None and not runner.in_process and not online.multi_process:
        raise UserError(
            f"the {online.kind} online store lives in this process; workers of {runner.name} "
            "cannot write it",
            hint="use online_store type embedded (one machine) or redis with this runner",
        )
    # Left-overs of crashed runs of this view; one run per view at a time is assumed.
    location.remove_tree(run.staging_root)
    run.staging_dir.mkdir(parents=True)
    from materializers.batch_panes import BatchPanes

    panes = BatchPanes.plan(store, run)  # None unless aggregated with a stream_source
    started = time.monotonic()
    with no_ipython_probe(), ProgressDisplay(run.run_id, view, enabled=progress) as display:
        build_view_pipeline(
            pipeline, run, progress_key=run.run_id, panes=panes, one_worker=runner.in_process
        )
        files = None
        if progress and not runner.in_process:  # the board stays empty: read the shared files
            files = StagingWatch(
                run.staging_dir, layout.view_dir(run.offline_path, run.project, view)
            )
        try:
            result = run_to_end(
                pipeline,
                runner,
                view,
                watch=None if files is None else lambda: display.update(files()),
            )
        except FeatureStoreError as exc:
            raise _original(exc) from None
        counters = _counters(result)  # after the end: a running portable job answers empty
        if counters is not None:
            display.update(counters)
    # The stores, not the runner, say what was written; nothing is recorded unless they agree.
    counts = verify_run(run, online, counters).counts(counters)
    seconds = time.monotonic() - started
    end = run.interval.end
    if panes is not None:
        panes = panes.resolved(panes.read_newest_once())
        panes.publish(store.online_store)
        # A view the stream job completes is materialized up to the newest event the batch read
        # (the windows after it are the stream job's): the watermark stays there, so the next
        # incremental run reads back to B and can move it (docs/streaming.md, "Batch and stream").
        end = max(run.interval.start, min(end, panes.covered_until()))
    location.remove_tree(run.staging_root)
    try:
        run.staging_root.parent.rmdir()  # `_staging` itself, once no view has a run going
    except OSError:
        pass
    rejected = counts["rows_rejected"]
    # Without a watermark, or when the run starts at or before it, the data up to `end` is in
    # both stores now; a run that leaves a gap after the watermark must not move it.
    advance = run.watermark is None or run.interval.start <= run.watermark
    if counts["rows_online"]:
        from featurestore.online.epoch import ensure_epoch

        ensure_epoch(store.online_store)  # lasting content: its loss must be noticed
    store.materialization_log.record(
        view,
        run.interval.start,
        end,
        rows_read=counts["rows_read"],
        rows_offline=counts["rows_offline"],
        rows_online=counts["rows_online"],
        rows_rejected=rejected,
        registry_version=version,
        advance_watermark=advance,
    )
    return ViewSummary(
        view=view,
        run_id=run.run_id,
        start=run.interval.start,
        end=end,
        rows_read=counts["rows_read"],
        rows_offline=counts["rows_offline"],
        rows_online=counts["rows_online"],
        rows_rejected=rejected,
        seconds=seconds,
        rejects_path=str(run.rejects_target) if rejected else None,
        watermark=store.materialization_log.watermark(view),
    )
