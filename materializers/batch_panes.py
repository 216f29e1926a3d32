"""The batch job's half of batch history + stream tail: it hands the stream job its pane
partials and a boundary (docs/streaming.md, "Batch and stream").

A batch run of an aggregated view that has a ``stream_source`` also writes, in the stream's
Redis beside the stream job's state (``materializers.stream_state``)::

    {project}:__stream__:{view}:bpane:{p}     entity key -> its partial of pane p (events < B),
                                              for the panes the stream job may still read
    {project}:__stream__:{view}:batch_until   at = B, version, run

(on a Redis Cluster behind the stream's hash tag, ``{stream}:`` + the same, as in
``materializers.stream_state``)

B is the run's end (not rounded): events before B are the batch job's, the others the stream
job's. The stream job merges the batch's partials for panes before B's pane with its own for
the later ones; B's own pane takes both (the batch's holds the entity's events before B).

Three steps, around the batch pipeline::

    panes = BatchPanes.plan(store, run)              reads B, decides this run's cut
    valid | panes.stage()                            partials -> {prefix}bstage:{run}:{p}
    panes.publish(store.online_store)                one Lua script: the staged hashes replace
                                                     the batch partials, B moves; then every
                                                     entity's current window online

Staging first and swapping in one script means a stream job reads either the old partials with
the old B or the new ones with the new B, never a mix; a crashed run leaves staged hashes
that expire after a day.

    >>> panes = BatchPanes.plan(store, run)  # doctest: +SKIP
    >>> panes.publish(store.online_store)  # doctest: +SKIP
    Published(view='user_agg', at_us=..., version=3, panes=14, online=1200)
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from materializers.aggregates import (
    PANE,
    merge_partials,
    pane_of,
    pane_partials,
    partial_schema,
    partials_to_json,
    slide_us,
)
from materializers.dedup import as_table
from materializers.schema import EVENT_TS, ViewSchema
from registry.errors import ConflictError

if TYPE_CHECKING:
    from featurestore.sources.base import Interval
    from featurestore.store import FeatureStore


class ViewRun(Protocol):
    """What the hand-over needs of a batch run (``materializers.batch.ViewRun`` has it; named
    here, not imported, so the batch job and this module do not import each other)."""

    schema: ViewSchema
    interval: Interval
    run_id: str

__all__ = ["BatchPanes", "NewestEvent", "Published", "StageBatchPanes"]

#: The stream job's default allowed lateness, when no stream job has recorded its own.
DEFAULT_LATENESS_SECONDS = 3_600
#: Staged partials of a run that never published (it crashed) go after this long.
STAGE_TTL_MS = 86_400_000
_CHUNK = 10_000

# KEYS: 1 boundary, 2 window marks, 3 window versions, 4 the stream's partials of B's pane,
# then (bpane, bstage) per staged pane, then the stream's panes that are now wholly the batch's.
# ARGV: 1 expected version, 2 B, 3 run, 4 which pair is B's pane (0: none), 5 '1' when B's
# pane is the previous B's, 6 pairs, 7 stream panes, then per pair its expiry (ms), then the
# window ends to mark (count first), then the oldest window end worth a mark, then where the
# batch's offline rows start on a first hand-over ('' otherwise): the stream job prunes its
# files from there, not from the epoch; then where they end (B, or later: window_limit).
_PUBLISH = """
if (redis.call('HGET', KEYS[1], 'version') or '0') ~= ARGV[1] then return {'moved'} end
local straddle, same = tonumber(ARGV[4]), ARGV[5] == '1'
local n, m = tonumber(ARGV[6]), tonumber(ARGV[7])
if straddle > 0 then
  -- An entity whose pane the stream already counted keeps the stream's partial (it saw the
  -- events before B too); one that had a batch partial in this same pane keeps a batch one.
  local bkey, skey = KEYS[3 + 2 * straddle], KEYS[4 + 2 * straddle]
  for _, f in ipairs(redis.call('HKEYS', skey)) do
    local kept = same and redis.call('HEXISTS', bkey, f) == 1
    if (not kept) and redis.call('HEXISTS', KEYS[4], f) == 1 then
      redis.call('HDEL', skey, f)
    end
  end
end
for i = 1, n do
  local bkey, skey = KEYS[3 + 2 * i], KEYS[4 + 2 * i]
  if redis.call('EXISTS', skey) == 1 then
    redis.call('RENAME', skey, bkey)
    redis.call('PEXPIREAT', bkey, ARGV[7 + i])
  else
    redis.call('DEL', bkey)
  end
end
for j = 1, m do redis.call('DEL', KEYS[4 + 2 * n + j]) end
local pos = 8 + n
local n_win = tonumber(ARGV[pos])
for i = 1, n_win do
  local w = ARGV[pos + i]
  redis.call('ZADD', KEYS[2], w, w)
  redis.call('HINCRBY', KEYS[3], w, 1)
end
for _, w in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[pos + n_win + 1])) do
  redis.call('ZREM', KEYS[2], w)
  redis.call('HDEL', KEYS[3], w)
end
redis.call('HSET', KEYS[1], 'at', ARGV[2], 'run', ARGV[3])
if ARGV[pos + n_win + 2] ~= '' then redis.call('HSET', KEYS[1], 'from', ARGV[pos + n_win + 2]) end
redis.call('HSET', KEYS[1], 'until', ARGV[pos + n_win + 3])
return {'ok', redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""


def _dt(value_us: int) -> datetime:
    from datetime import timedelta, timezone

    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=value_us)


def _us(value: datetime) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


@dataclass(frozen=True)
class Published:
    """What ``BatchPanes.publish`` did: the boundary and its version, the panes replaced, and
    the entities whose current window was written online."""

    view: str
    at_us: int
    version: int
    panes: int
    online: int


@dataclass(frozen=True)
class BatchPanes:
    """One batch run's hand-over to the stream job (plain data: shipped to the DoFns).

    ``cut_us`` is the boundary this run publishes: its end, unless that would move B inside B's
    current pane (then B stays, and this run only refreshes the partials before it) or the run
    does not reach back to B (a backfill, or a run that leaves a gap: B stays too).
    """

    schema: ViewSchema
    project: str
    stream_url: str
    stream: str
    run_id: str
    #: The boundary's version when planned: publishing fails if another run moved it since.
    version: int
    old_at: int | None
    cut_us: int
    #: Whole panes ``[lo, hi)`` are staged, and with ``straddle`` B's pane (events before B).
    lo: int
    hi: int
    straddle: bool
    lateness_us: int
    #: What the cut is decided from: the run's end (never after now), the oldest event time it
    #: reads, the oldest pane the stream job may still read, where its offline rows start.
    end_us: int = 0
    read_lo: int = 0
    retained_lo: int = 0
    offline_start_us: int = 0
    #: The newest event time the run read (None: none), once known (``resolved``).
    newest_us: int | None = None
    resolved_: bool = False
    #: The stream's Redis is a cluster: the state lives in the stream's slot (``prefix_for``).
    cluster: bool = False

    # -- planning --------------------------------------------------------------------------------
    @classmethod
    def plan(cls, store: FeatureStore, run: ViewRun, now_us: int | None = None) -> BatchPanes | None:
        """The hand-over of ``run`` (None unless the view aggregates and has a stream_source):
        reads the published boundary and the stream job's allowed lateness. The cut planned
        here is an upper bound: ``resolved`` lowers it to what the run actually read."""
        from featurestore.streams.redis_streams import connect
        from materializers.stream_state import Boundary, prefix_for, state_prefix

        s = run.schema
        if not s.aggregated:
            return None
        view = store.definitions().feature_views.get(s.view)
        if view is None or view.stream_source is None:
            return None
        source = view.stream_source
        url = source.url or store.config.online_store.url
        client = connect(url)
        try:
            prefix = prefix_for(client, store.project, s.view, source.stream)
            with _guard(url, source.stream, "reading the batch boundary"):
                boundary = Boundary.parse(client.hgetall(prefix + "batch_until"))
                recorded = client.get(prefix + "lateness")
        finally:
            client.close()
        lateness = int(recorded) if recorded is not None else DEFAULT_LATENESS_SECONDS
        now = now_us if now_us is not None else time.time_ns() // 1000
        step = slide_us(s)
        k_max = max(a.panes for a in s.aggregates)
        lateness_panes = -(-lateness * 1_000_000 // step)
        start = _us(run.interval.start)
        base = cls(
            schema=s,
            project=store.project,
            stream_url=url,
            stream=source.stream,
            run_id=run.run_id,
            version=boundary.version,
            old_at=boundary.at_us,
            cut_us=0,
            lo=0,
            hi=0,
            straddle=False,
            lateness_us=lateness * 1_000_000,
            # The batch cannot have seen events after now: a run ending later hands over at now.
            end_us=min(_us(run.interval.end), now),
            read_lo=start - s.max_window_seconds * 1_000_000,
            retained_lo=now // step + 1 - k_max - lateness_panes - 1,
            offline_start_us=start,
            cluster=prefix != state_prefix(store.project, s.view),
        )
        return base._cut_at(base.end_us)

    def _cut_at(self, end: int) -> BatchPanes:
        """This hand-over with its cut decided for a run whose events end before ``end``."""
        step = slide_us(self.schema)
        old, read_lo = self.old_at, self.read_lo
        if old is None:
            cut = end
        elif end >= old and read_lo <= old // step * step:
            # Moving B within its pane would count twice the events between the two ends of an
            # entity with a batch partial there (before the old B) and a stream partial (from
            # it on): B moves to a later pane, or within its pane only when it starts it (no
            # batch partials there yet).
            cut = end if end // step > old // step or old % step == 0 else old
        else:
            cut = old
        lo = max(-(-read_lo // step), self.retained_lo)
        hi = min(end // step, cut // step)
        straddle = (
            cut % step != 0
            and end >= cut
            and read_lo <= cut // step * step
            and cut // step >= self.retained_lo
        )
        return replace(self, cut_us=cut, lo=lo, hi=max(lo, hi), straddle=straddle)

    def resolved(self, newest_us: int | None) -> BatchPanes:
        """The hand-over once the run has read its events, ``newest_us`` the newest event time
        among them (None: none). B moves no further than just after it: a batch source holds
        events up to some time, not up to the run's end (the default end is now), and every
        event after B is the stream job's. A run that read nothing moves nothing."""
        if self.resolved_:
            return self
        if newest_us is None:
            end = self.read_lo if self.old_at is None else min(self.end_us, self.old_at)
        else:
            end = min(self.end_us, newest_us + 1)
        out = replace(self._cut_at(end), newest_us=newest_us, resolved_=True)
        if not out.publishes:
            out = replace(out, lo=out.hi, straddle=False)  # nothing to hand over, B unset
        return out

    @property
    def first_reaches_back(self) -> bool:
        """A first hand-over makes every event before B the batch job's, also those of the
        panes the stream job still reads that this run did not read (it starts later) and that
        the stream job has yet to see: so it happens only for a run that read back to the
        oldest such pane (review finding 1c)."""
        return self.read_lo <= self.retained_lo * self.step

    @property
    def publishes(self) -> bool:
        """False when B stays unset: a first hand-over of a run that read nothing, or that does
        not reach back to the panes the stream job still reads (the stream job keeps every
        event; the run writes its rows like a run of a view without a stream)."""
        if not self.resolved_ or self.old_at is not None:
            return True
        return self.newest_us is not None and self.first_reaches_back

    @property
    def step(self) -> int:
        return slide_us(self.schema)

    @property
    def straddle_pane(self) -> int:
        return self.cut_us // self.step

    @property
    def panes(self) -> list[int]:
        """The panes this run replaces, oldest first."""
        return [*range(self.lo, self.hi), *([self.straddle_pane] if self.straddle else [])]

    @property
    def moves(self) -> bool:
        return self.old_at is None or self.cut_us > self.old_at

    @property
    def prefix(self) -> str:
        from materializers.stream_state import state_prefix

        return state_prefix(self.project, self.schema.view, self.stream if self.cluster else None)

    def stage_key(self, pane: int) -> str:
        return f"{self.prefix}bstage:{self.run_id}:{pane}"

    # -- staging ---------------------------------------------------------------------------------
    def partials(self, events: pa.Table | pa.RecordBatch) -> pa.Table:
        """The partials of validated events that this run hands over: events before the cut in
        the staged panes, one row per (entity, pane)."""
        events = as_table(events)
        if not events.num_rows:
            return partial_schema(self.schema).empty_table()
        event_us = pc.cast(events.column(EVENT_TS), pa.int64()).to_numpy()
        pane = pane_of(event_us, self.schema)
        keep = (event_us < self.cut_us) & (
            ((pane >= self.lo) & (pane < self.hi))
            | ((pane == self.straddle_pane) & self.straddle)
        )
        if not keep.any():
            return partial_schema(self.schema).empty_table()
        return pane_partials(events.filter(pa.array(keep)), self.schema)

    def newest(self) -> NewestEvent:
        """The pipeline step: validated events -> the newest event time read."""
        return NewestEvent(self)

    def stage(self, newest: beam.PCollection) -> StageBatchPanes:
        """The pipeline step: validated events -> this run's staged partials."""
        return StageBatchPanes(self, newest)

    @property
    def stream_from(self) -> int:
        """The first window end index the stream job can still compute: every pane of the
        window is one it keeps (``retained_lo``, as planned)."""
        return self.retained_lo + max(a.panes for a in self.schema.aggregates)

    def window_limit(self, newest: int | None) -> int | None:
        """The first window end index the batch job must not write offline: a window ending
        after the newest event it read may hold events only the stream job has seen, so the
        stream job writes it, unless some of its panes are older than the stream job keeps (a
        source that lags the stream by more than the allowed lateness): those windows are the
        batch job's, from its events (docs/streaming.md). None: no limit."""
        if newest is None:
            return None
        return max(-(-(newest + 1) // self.step), self.stream_from)

    def write_stage(self, client: Any, pane: int, partials: pa.Table) -> int:
        """Write one pane's merged partials to its staging hash; returns the entities."""
        from featurestore.online.codec import encode_entity_keys

        s = self.schema
        keys = encode_entity_keys([d for _, d in s.join_keys], [partials.column(k) for k in s.key_names])
        rows = partials_to_json(partials, s)
        key = self.stage_key(pane)
        with _guard(self.stream_url, self.stream, "staging batch partials"):
            for start in range(0, len(keys), _CHUNK):
                mapping = {
                    k: json.dumps(r, separators=(",", ":"))
                    for k, r in zip(keys[start : start + _CHUNK], rows[start : start + _CHUNK])
                }
                pipe = client.pipeline(transaction=False)
                pipe.hset(key, mapping=mapping)
                pipe.pexpire(key, STAGE_TTL_MS)
                pipe.execute()
        return len(keys)

    # -- publishing ------------------------------------------------------------------------------
    def publish(self, online_store: Any = None, now_us: int | None = None) -> Published | None:
        """Swap the staged partials in and move B, atomically; then write every entity's
        current window online from the merged state (the same function the stream job uses),
        so a batch correction reaches online values the stream job wrote with a later event
        time, running or not. None when there was nothing to hand over."""
        from featurestore.streams.redis_streams import connect

        now = now_us if now_us is not None else time.time_ns() // 1000
        client = connect(self.stream_url)
        try:
            if not self.resolved_:
                return self.resolved(self.read_newest(client))._publish(client, online_store, now)
            return self._publish(client, online_store, now)
        finally:
            client.close()

    def _publish(self, client: Any, online_store: Any, now: int) -> Published | None:
        from materializers.stream_state import PaneStore

        if not self.publishes or (not self.panes and not self.moves):
            return None
        s = self.schema
        lateness_s = self.lateness_us // 1_000_000
        state = PaneStore(client, self.stream_url, self.stream, s, self.project, lateness_s)
        retained_lo, _ = state.retained_panes(now)
        panes = self.panes
        key_names = [
            state.boundary_key,
            state.windows_key,
            state.versions_key,
            state.pane_key(self.straddle_pane),
        ]
        for p in panes:
            key_names += [state.bpane_key(p), self.stage_key(p)]
        gone: list[int] = []
        if self.moves:
            first = retained_lo if self.old_at is None else max(retained_lo, self.old_at // self.step)
            gone = list(range(first, self.straddle_pane))
        key_names += [state.pane_key(p) for p in gone]
        c = self.straddle_pane
        same = self.old_at is not None and self.old_at // self.step == c
        args: list[Any] = [
            self.version,
            self.cut_us,
            self.run_id,
            len(panes) if self.straddle else 0,
            "1" if same else "0",
            len(panes),
            len(gone),
            *(state.expire_ms(p) for p in panes),
        ]
        # Windows from B on that read batch panes: the stream job (re)writes them offline, but
        # for those with panes it no longer keeps (the batch job wrote them: window_limit).
        first_window = max(-(-self.cut_us // self.step), self.stream_from)
        windows = list(range(first_window, c + state.k_max + 1))
        args += [len(windows), *windows, retained_lo]
        args.append(self.offline_start_us if self.old_at is None else "")
        args.append(max(self.cut_us, first_window * self.step))
        with _guard(self.stream_url, self.stream, "publishing the batch boundary"):
            reply = client.register_script(_PUBLISH)(keys=key_names, args=args)
        if _text(reply[0]) == "moved":
            raise ConflictError(
                f"another batch run of feature view {s.view!r} handed its panes to the "
                "stream job while this one ran",
                hint="run one materialization of a view at a time; re-run this one",
            )
        version = int(reply[1])
        written = 0
        if online_store is not None and s.online:
            from materializers.online_write import OnlineWriter, latest_per_entity

            rows = state.latest_rows(None, retained_lo, now)
            if rows.num_rows:
                writer = OnlineWriter(s, online_store)
                written = sum(writer.write(latest_per_entity(rows, s)))
        return Published(s.view, self.cut_us, version, len(panes), written)

    # -- the newest event time read --------------------------------------------------------------
    @property
    def newest_key(self) -> str:
        return f"{self.prefix}bstage:{self.run_id}:newest"

    def record_newest(self, client: Any, newest_us: int) -> None:
        """Keep the newest event time the run read, for ``publish`` (after the pipeline)."""
        with _guard(self.stream_url, self.stream, "staging batch partials"):
            client.set(self.newest_key, newest_us, px=STAGE_TTL_MS)

    def read_newest_once(self) -> int | None:
        """``read_newest`` on a connection of its own."""
        from featurestore.streams.redis_streams import connect

        client = connect(self.stream_url)
        try:
            return self.read_newest(client)
        finally:
            client.close()

    def covered_until(self) -> datetime:
        """Where the batch job's rows of a resolved run end: just after the newest event it
        read, or where it starts when it read none."""
        if self.newest_us is None:
            return _dt(self.offline_start_us)
        return _dt(self.newest_us + 1)

    def read_newest(self, client: Any) -> int | None:
        with _guard(self.stream_url, self.stream, "reading the staged batch partials"):
            value = client.get(self.newest_key)
        return None if value is None else int(value)


def _guard(url: str, stream: str, what: str) -> Any:
    from featurestore.streams.redis_streams import guard

    return guard(url, stream, what)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the pipeline step -----------------------------------------------------------------------------


class _NewestFn(beam.CombineFn):
    """The newest event time (µs) among validated events."""

    def create_accumulator(self) -> int | None:
        return None

    def add_input(self, acc: int | None, batch: pa.RecordBatch | pa.Table) -> int | None:
        if not batch.num_rows:
            return acc
        newest = pc.max(pc.cast(batch.column(EVENT_TS), pa.int64())).as_py()
        return newest if acc is None or newest is None else max(acc, newest)

    def merge_accumulators(self, accumulators: Any) -> int | None:
        known = [a for a in accumulators if a is not None]
        return max(known) if known else None

    def extract_output(self, acc: int | None) -> int | None:
        return acc


class _RecordNewestFn(beam.DoFn):
    def __init__(self, panes: BatchPanes) -> None:
        self.panes = panes

    def process(self, newest: int | None) -> Iterator[int]:
        from featurestore.streams.redis_streams import connect

        if newest is None:
            return
        client = connect(self.panes.stream_url)
        try:
            self.panes.record_newest(client, newest)
        finally:
            client.close()
        yield newest


class _PanePartialsFn(beam.DoFn):
    def __init__(self, panes: BatchPanes) -> None:
        self.panes = panes

    def process(
        self, batch: pa.RecordBatch | pa.Table, newest: int | None = None
    ) -> Iterator[tuple[int, pa.Table]]:
        partials = self.panes.resolved(newest).partials(batch)
        if not partials.num_rows:
            return
        pane = partials.column(PANE).to_numpy()
        for p in np.unique(pane).tolist():
            yield int(p), partials.filter(pa.array(pane == p))


class _MergePartials(beam.CombineFn):
    """Partial tables of one pane -> one row per entity. Accumulators are lists of tables,
    merged once they hold more pending rows than the merged part."""

    MIN_PENDING = 8_192

    def __init__(self, schema: ViewSchema) -> None:
        self.schema = schema

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, acc: list[pa.Table], table: pa.Table) -> list[pa.Table]:
        acc.append(table)
        pending = sum(t.num_rows for t in acc[1:])
        return self._merge(acc) if pending > max(acc[0].num_rows, self.MIN_PENDING) else acc

    def merge_accumulators(self, accumulators: Any) -> list[pa.Table]:
        return self._merge([t for acc in accumulators for t in acc])

    def compact(self, acc: list[pa.Table]) -> list[pa.Table]:
        return self._merge(acc)

    def extract_output(self, acc: list[pa.Table]) -> pa.Table:
        merged = self._merge(acc)
        return merged[0] if merged else partial_schema(self.schema).empty_table()

    def _merge(self, acc: list[pa.Table]) -> list[pa.Table]:
        if len(acc) <= 1:
            return acc
        return [merge_partials(pa.concat_tables(acc), self.schema)]


class _StageFn(beam.DoFn):
    def __init__(self, panes: BatchPanes) -> None:
        self.panes = panes

    def setup(self) -> None:
        from featurestore.streams.redis_streams import connect

        self.client = connect(self.panes.stream_url)

    def teardown(self) -> None:
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def process(self, element: tuple[int, pa.Table]) -> Iterator[int]:
        pane, partials = element
        yield self.panes.write_stage(self.client, pane, partials)


class NewestEvent(beam.PTransform):
    """Validated events -> one element, the newest event time (µs), kept in the stream's Redis
    for ``publish``; empty when the run read no event. Used as a side input: the cut, and so
    the staged partials and the windows the batch job writes, depend on it."""

    def __init__(self, panes: BatchPanes) -> None:
        super().__init__()
        self.panes = panes

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        return (
            valid
            | "Max" >> beam.CombineGlobally(_NewestFn()).without_defaults()
            | "Keep" >> beam.ParDo(_RecordNewestFn(self.panes))
        )


class StageBatchPanes(beam.PTransform):
    """Validated events -> per (entity, pane) partials of the panes the run hands over, merged
    per pane and written to ``{prefix}bstage:{run}:{pane}``; emits the entities per pane.
    ``newest`` is ``NewestEvent``'s output.

    >>> newest = valid | panes.newest()  # doctest: +SKIP
    >>> _ = valid | "StagePanes" >> panes.stage(newest)  # doctest: +SKIP
    """

    def __init__(self, panes: BatchPanes, newest: beam.PCollection) -> None:
        super().__init__()
        self.panes = panes
        self.newest = newest

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        newest = beam.pvalue.AsSingleton(self.newest, default_value=None)
        return (
            valid
            | "Partials" >> beam.ParDo(_PanePartialsFn(self.panes), newest)
            | "PerPane" >> beam.CombinePerKey(_MergePartials(self.panes.schema))
            | "Stage" >> beam.ParDo(_StageFn(self.panes))
        )
