"""The batch job's half of batch history + stream tail: it hands the stream job its pane
partials and a boundary (docs/streaming.md, "Batch and stream").

A batch run of an aggregated view that has a ``stream_source`` also writes, in the stream's
Redis beside the stream job's state (``materializers.stream_state``)::

    {project}:__stream__:{view}:bpane:{p}     entity key -> its partial of pane p (events < B),
                                              for the panes the stream job may still read
    {project}:__stream__:{view}:batch_until   at = B, version, run

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
from dataclasses import dataclass
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

__all__ = ["BatchPanes", "Published", "StageBatchPanes"]

#: The stream job's default allowed lateness, when no stream job has recorded its own.
DEFAULT_LATENESS_SECONDS = 3_600
#: Staged partials of a run that never published (it crashed) go after this long.
STAGE_TTL_MS = 86_400_000
_CHUNK = 10_000

# KEYS: 1 boundary, 2 window marks, 3 window versions, 4 the stream's partials of B's pane,
# then (bpane, bstage) per staged pane, then the stream's panes that are now wholly the batch's.
# ARGV: 1 expected version, 2 B, 3 run, 4 which pair is B's pane (0: none), 5 '1' when B's
# pane is the previous B's, 6 pairs, 7 stream panes, then per pair its expiry (ms), then the
# window ends to mark (count first), then the oldest window end worth a mark.
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
return {'ok', redis.call('HINCRBY', KEYS[1], 'version', 1)}
"""


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

    # -- planning --------------------------------------------------------------------------------
    @classmethod
    def plan(cls, store: FeatureStore, run: ViewRun, now_us: int | None = None) -> BatchPanes | None:
        """The hand-over of ``run`` (None unless the view aggregates and has a stream_source):
        reads the published boundary and the stream job's allowed lateness."""
        from featurestore.streams.redis_streams import connect
        from materializers.stream_state import Boundary, state_prefix

        s = run.schema
        if not s.aggregated:
            return None
        view = store.definitions().feature_views.get(s.view)
        if view is None or view.stream_source is None:
            return None
        source = view.stream_source
        url = source.url or store.config.online_store.url
        prefix = state_prefix(store.project, s.view)
        client = connect(url)
        try:
            with _guard(url, source.stream, "reading the batch boundary"):
                boundary = Boundary.parse(client.hgetall(prefix + "batch_until"))
                recorded = client.get(prefix + "lateness")
        finally:
            client.close()
        lateness = int(recorded) if recorded is not None else DEFAULT_LATENESS_SECONDS
        now = now_us if now_us is not None else time.time_ns() // 1000
        step = slide_us(s)
        k_max = max(a.panes for a in s.aggregates)
        # The batch cannot have seen events after now: a run ending later hands over at now.
        end = min(_us(run.interval.end), now)
        read_lo = _us(run.interval.start) - s.max_window_seconds * 1_000_000
        old = boundary.at_us
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
        lateness_panes = -(-lateness * 1_000_000 // step)
        retained_lo = now // step + 1 - k_max - lateness_panes - 1
        lo = max(-(-read_lo // step), retained_lo)
        hi = min(end // step, cut // step)
        straddle = (
            cut % step != 0
            and end >= cut
            and read_lo <= cut // step * step
            and cut // step >= retained_lo
        )
        return cls(
            schema=s,
            project=store.project,
            stream_url=url,
            stream=source.stream,
            run_id=run.run_id,
            version=boundary.version,
            old_at=old,
            cut_us=cut,
            lo=lo,
            hi=max(lo, hi),
            straddle=straddle,
            lateness_us=lateness * 1_000_000,
        )

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

        return state_prefix(self.project, self.schema.view)

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

    def stage(self) -> StageBatchPanes:
        """The pipeline step: validated events -> this run's staged partials."""
        return StageBatchPanes(self)

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
        from materializers.stream_state import PaneStore

        if not self.panes and not self.moves:
            return None
        now = now_us if now_us is not None else time.time_ns() // 1000
        s = self.schema
        lateness_s = self.lateness_us // 1_000_000
        client = connect(self.stream_url)
        try:
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
            # Windows from B on that read batch panes: the stream job (re)writes them offline.
            windows = list(range(-(-self.cut_us // self.step), c + state.k_max + 1))
            args += [len(windows), *windows, retained_lo]
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
        finally:
            client.close()
        return Published(s.view, self.cut_us, version, len(panes), written)


def _guard(url: str, stream: str, what: str) -> Any:
    from featurestore.streams.redis_streams import guard

    return guard(url, stream, what)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the pipeline step -----------------------------------------------------------------------------


class _PanePartialsFn(beam.DoFn):
    def __init__(self, panes: BatchPanes) -> None:
        self.panes = panes

    def process(self, batch: pa.RecordBatch | pa.Table) -> Iterator[tuple[int, pa.Table]]:
        partials = self.panes.partials(batch)
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


class StageBatchPanes(beam.PTransform):
    """Validated events -> per (entity, pane) partials of the panes the run hands over, merged
    per pane and written to ``{prefix}bstage:{run}:{pane}``; emits the entities per pane.

    >>> _ = valid | "StagePanes" >> panes.stage()  # doctest: +SKIP
    """

    def __init__(self, panes: BatchPanes) -> None:
        super().__init__()
        self.panes = panes

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        return (
            valid
            | "Partials" >> beam.ParDo(_PanePartialsFn(self.panes))
            | "PerPane" >> beam.CombinePerKey(_MergePartials(self.panes.schema))
            | "Stage" >> beam.ParDo(_StageFn(self.panes))
        )
