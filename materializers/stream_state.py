"""The stream job's aggregation state, in the stream's Redis, committed atomically with the acks,
and the batch job's pane partials beside it (``materializers.batch_panes``).

Per view, pane partials (``materializers.aggregates``) as JSON, one hash per pane::

    {project}:__stream__:{view}:pane:{p}      entity key -> partial row (JSON list): the stream's
    {project}:__stream__:{view}:bpane:{p}     entity key -> partial row: the batch job's
    {project}:__stream__:{view}:batch_until   hash: at (boundary B, µs), version, run
    {project}:__stream__:{view}:windows       sorted set of window ends to (re)write offline
    {project}:__stream__:{view}:winver        window end -> version (bumped by every change)

On a Redis Cluster every one of these keys is prefixed with the stream's hash tag,
``{stream}:{project}:__stream__:{view}:...`` (``state_prefix``), so each script touches one slot.

**Who owns an event** (docs/streaming.md, "Batch and stream"): with a boundary B published by
a batch run, events before B are the batch job's and the others the stream's. Panes before
B's pane come from ``bpane`` only; B's own pane ("the straddle") from both, the batch's partial
holding the entity's events before B; later panes from ``pane`` only. ``PaneStore.merged`` reads
both sides and B in one transaction, so every window computed here (online and offline) sees
one consistent boundary.

**Exactly once per entry.** A micro-batch is committed by one Lua script that (0) checks that
the boundary it decided ownership with is still the published one, (1) checks every entry is
still unacknowledged in the group (``XCLAIM ... JUSTID`` to this consumer: an entry someone
acknowledged meanwhile is not returned), (2) checks the stored partials it read are unchanged
(compare-and-set), (3) writes the merged partials, (4) marks the windows they feed for the
offline writer and (5) acknowledges the entries. Redis runs a script without interleaving, so an
entry's contribution and its acknowledgement happen together or not at all: a job killed before
the script is delivered the entries again and counts them once; killed after, it never sees them
again. Online values are written after the commit and recomputed from this state, so a kill
between the two is repaired by the refresh every run starts with.

Panes expire ``window + allowed lateness`` after they end; an event whose first window closed
more than the allowed lateness ago is dropped (counted), because the panes it would need may be
gone. Late events within it update the panes and mark the windows they touch, whose offline
rows are then rewritten.

    >>> state = AggregateState(reader, schema, "demo", lateness_seconds=3600)  # doctest: +SKIP
    >>> state.commit(ids, pane_partials(events, schema), keys, version=0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.streams.redis_streams import RedisStreamReader, guard
from materializers.aggregates import (
    PANE,
    WINDOW_END,
    ends_of_panes,
    merge_partials,
    pane_of,
    partials_from_json,
    partials_to_json,
    slide_us,
    window_rows,
)
from materializers.schema import EVENT_TS, ViewSchema
from registry.errors import ConfigError, ConflictError

_COMMIT = """
if (redis.call('HGET', KEYS[4], 'version') or '0') ~= ARGV[1] then return {'moved'} end
local group, consumer = ARGV[2], ARGV[3]
local n_ids = tonumber(ARGV[4])
local pos = 5
if n_ids > 0 then
  local claim = {'XCLAIM', KEYS[1], group, consumer, 0}
  for i = 1, n_ids do claim[5 + i] = ARGV[pos + i - 1] end
  claim[#claim + 1] = 'JUSTID'
  local owned = redis.call(unpack(claim))
  if #owned ~= n_ids then
    return {'ids', unpack(owned)}
  end
end
pos = pos + n_ids
local n_up = tonumber(ARGV[pos]); pos = pos + 1
for i = 0, n_up - 1 do
  local base = pos + i * 4
  local current = redis.call('HGET', KEYS[tonumber(ARGV[base])], ARGV[base + 1])
  local expected = ARGV[base + 2]
  if expected == '' then
    if current then return {'cas'} end
  elseif (not current) or ('=' .. current) ~= expected then
    return {'cas'}
  end
end
for i = 0, n_up - 1 do
  local base = pos + i * 4
  redis.call('HSET', KEYS[tonumber(ARGV[base])], ARGV[base + 1], ARGV[base + 3])
end
pos = pos + n_up * 4
local n_exp = tonumber(ARGV[pos]); pos = pos + 1
for i = 0, n_exp - 1 do
  redis.call('PEXPIREAT', KEYS[tonumber(ARGV[pos + 2 * i])], ARGV[pos + 2 * i + 1])
end
pos = pos + 2 * n_exp
local n_win = tonumber(ARGV[pos]); pos = pos + 1
for i = 0, n_win - 1 do
  local w = ARGV[pos + i]
  redis.call('ZADD', KEYS[2], w, w)
  redis.call('HINCRBY', KEYS[3], w, 1)
end
if n_ids > 0 then
  local ids = {}
  for i = 1, n_ids do ids[i] = ARGV[4 + i] end
  redis.call('XACK', KEYS[1], group, unpack(ids))
end
return {'ok'}
"""

# Forget a written window unless a commit changed it meanwhile (its version moved).
_WINDOW_DONE = """
local current = redis.call('HGET', KEYS[2], ARGV[1])
if current == ARGV[2] then
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 1
end
return 0
"""

#: Most entries one commit may acknowledge (Lua's unpack() takes about 8,000 values).
MAX_COMMIT_ENTRIES = 4_000
_MARGIN_MS = 3_600_000


@dataclass(frozen=True)
class CommitResult:
    """``committed``: the entries were counted and acknowledged. Otherwise ``owned`` lists the
    entries still this consumer's to count (the others were acknowledged by someone else):
    recompute the partials from those and commit again; or ``moved``: a batch run published a
    new boundary meanwhile, decide again which events are the stream's and commit again."""

    committed: bool
    owned: list[bytes]
    moved: bool = False


@dataclass(frozen=True)
class Boundary:
    """B, published by the batch job: events before ``at_us`` are the batch job's. ``version``
    moves with every publication (0: never published, every event is the stream's)."""

    at_us: int | None = None
    version: int = 0
    run: str = ""
    #: Where the batch job's offline rows start (the first hand-over's run start): the stream
    #: job's windows before it stay in its files. None: from the epoch.
    from_us: int | None = None
    #: Where they end: B, or later when the batch job wrote windows the stream job can no
    #: longer compute (``BatchPanes.window_limit``).
    until_us: int | None = None

    @classmethod
    def parse(cls, reply: dict[bytes, bytes]) -> Boundary:
        if not reply or b"at" not in reply:
            return cls(None, int(reply.get(b"version", 0)) if reply else 0)
        start, until = reply.get(b"from"), reply.get(b"until")
        return cls(
            int(reply[b"at"]),
            int(reply[b"version"]),
            reply.get(b"run", b"").decode(),
            None if start is None else int(start),
            None if until is None else int(until),
        )

    @property
    def rows_until(self) -> int | None:
        """Where the batch job's offline rows end (the stream job's files keep the rest)."""
        if self.at_us is None:
            return None
        return max(self.at_us, self.until_us or self.at_us)

    def pane(self, step: int) -> int | None:
        """The pane holding B (its "straddle": the batch's before B, the stream's from B)."""
        return None if self.at_us is None else self.at_us // step


def state_prefix(project: str, view: str, stream: str | None = None) -> str:
    """Where a view's pane state lives: ``{P}:__stream__:{V}:`` next to a stream on one Redis;
    with ``stream`` (a stream in a Redis Cluster) in that stream's slot, so the commit script
    that acknowledges entries and adds their partials touches one slot
    (``redis_keys.cluster_stream_prefix``)."""
    if stream is not None:
        from featurestore.online.redis_keys import cluster_stream_prefix

        return cluster_stream_prefix(project, view, stream)
    return f"{project}:__stream__:{view}:"


def prefix_for(client: Any, project: str, view: str, stream: str) -> str:
    """``state_prefix`` for the Redis ``client`` talks to (a cluster client puts the state in the
    stream's slot)."""
    import redis

    return state_prefix(project, view, None if isinstance(client, redis.Redis) else stream)


class PaneStore:
    """Pane partials of one aggregated view in the stream's Redis, the stream's and the batch
    job's, read merged by the published boundary. Reading only: ``AggregateState`` commits."""

    def __init__(
        self, client: Any, url: str, stream: str, schema: ViewSchema, project: str,
        lateness_seconds: int,
    ) -> None:
        self.client = client
        self.url = url
        self.stream = stream
        self.schema = schema
        self.step = slide_us(schema)
        self.k_max = max(a.panes for a in schema.aggregates)
        self.lateness_us = lateness_seconds * 1_000_000
        self.prefix = prefix_for(client, project, schema.view, stream)
        self.windows_key = self.prefix + "windows"
        self.versions_key = self.prefix + "winver"
        self.boundary_key = self.prefix + "batch_until"
        self.lateness_key = self.prefix + "lateness"

    def _guard(self, what: str) -> Any:
        return guard(self.url, self.stream, what)

    def pane_key(self, pane: int) -> str:
        return f"{self.prefix}pane:{pane}"

    def bpane_key(self, pane: int) -> str:
        return f"{self.prefix}bpane:{pane}"

    def expire_ms(self, pane: int) -> int:
        """When a pane's partials may go: no window that the allowed lateness still lets change
        reads it."""
        return ((pane + self.k_max) * self.step + self.lateness_us) // 1000 + _MARGIN_MS

    # -- time ------------------------------------------------------------------------------------
    def current_end(self, now_us: int) -> int:
        """The end index of the window that holds ``now`` (it ends after now)."""
        return now_us // self.step + 1

    def too_late(self, panes: np.ndarray, now_us: int) -> np.ndarray:
        """Events whose first window closed more than the allowed lateness ago."""
        return (panes + 1) * self.step + self.lateness_us <= now_us

    def retained_panes(self, now_us: int) -> tuple[int, int]:
        """``[first, last)``: the panes that may still hold state."""
        cur = self.current_end(now_us)
        lateness_panes = -(-self.lateness_us // self.step)
        return cur - self.k_max - lateness_panes - 1, cur + 1

    # -- reading ---------------------------------------------------------------------------------
    def boundary(self) -> Boundary:
        with self._guard("reading the batch boundary"):
            return Boundary.parse(self.client.hgetall(self.boundary_key))

    def merged(
        self, panes: Sequence[int], keys: Sequence[bytes] | None
    ) -> tuple[Boundary, pa.Table]:
        """The partials of ``panes`` (``keys``' entities, or all) that count under the published
        boundary, the batch's and the stream's side by side (not merged: the window functions
        merge), read with the boundary in one transaction."""
        panes = list(panes)
        with self._guard("reading aggregation state"):
            pipe = self.client.pipeline(transaction=True)
            pipe.hgetall(self.boundary_key)
            if keys is None or keys:
                for p in panes:
                    for key in (self.pane_key(p), self.bpane_key(p)):
                        if keys is None:
                            pipe.hgetall(key)
                        else:
                            pipe.hmget(key, list(keys))
            replies = pipe.execute()
        boundary = Boundary.parse(replies[0])
        straddle = boundary.pane(self.step)
        rows: list[Any] = []
        row_panes: list[int] = []
        for i, p in enumerate(panes if len(replies) > 1 else []):
            stream_reply, batch_reply = replies[1 + 2 * i], replies[2 + 2 * i]
            sides = []
            if straddle is None or p >= straddle:
                sides.append(stream_reply)
            if straddle is not None and p <= straddle:
                sides.append(batch_reply)
            for reply in sides:
                values = reply.values() if keys is None else reply
                for v in values:
                    if v is not None:
                        rows.append(json.loads(v))
                        row_panes.append(p)
        return boundary, partials_from_json(rows, row_panes, self.schema)

    def latest_rows(self, keys: Sequence[bytes] | None, lo_pane: int, now_us: int) -> pa.Table:
        """The online value of each entity (of ``keys``, or every entity with state in panes
        ``lo_pane ..``): its latest window that has started, ending at ``min(latest pane +
        window, current end)``; rows in the offline layout.

        ``lo_pane``: the oldest pane the caller changed; the panes read reach back a whole
        window before the current end too, since each value is the entity's whole window."""
        cur = self.current_end(now_us)
        first, _ = self.retained_panes(now_us)
        _, partials = self.merged(range(max(min(lo_pane, cur - self.k_max), first), cur), keys)
        if not partials.num_rows:
            return window_rows(partials, self.schema)
        names = list(self.schema.key_names)
        latest = partials.group_by(names, use_threads=False).aggregate([(PANE, "max")])
        ends = np.minimum(latest.column(f"{PANE}_max").to_numpy() + self.k_max, cur)
        targets = latest.select(names).append_column(WINDOW_END, pa.array(ends, pa.int64()))
        return window_rows(partials, self.schema, targets=targets)

    def window_table(self, end: int) -> tuple[Boundary, pa.Table]:
        """Every entity's row for the window ending at ``end``, from the merged state, and the
        boundary it was read under."""
        boundary, partials = self.merged(range(end - self.k_max, end), None)
        return boundary, window_rows(partials, self.schema, lo=end, hi=end + 1)


class AggregateState(PaneStore):
    """Pane partials of one aggregated view, next to its stream (one Redis): the stream job's
    reads, commits and offline window marks."""

    def __init__(
        self, reader: Any, schema: ViewSchema, project: str, lateness_seconds: int
    ) -> None:
        if not isinstance(reader, RedisStreamReader):
            raise ConfigError(
                f"feature view {schema.view!r} aggregates, which needs its state next to the "
                f"stream in Redis; {reader.kind!r} streams cannot hold it",
                hint="use a redis_stream source for views with aggregations",
            )
        super().__init__(
            reader.client, reader.url, reader.stream, schema, project, lateness_seconds
        )
        self.reader = reader
        self._commit = self.client.register_script(_COMMIT)
        self._done = self.client.register_script(_WINDOW_DONE)

    def record_lateness(self) -> None:
        """Tell batch runs how far back this job may still change windows, so they leave the
        panes it needs (``materializers.batch_panes``)."""
        with self._guard("recording the allowed lateness"):
            self.client.set(self.lateness_key, self.lateness_us // 1_000_000)

    def pruned_at(self, consumer: str) -> int | None:
        """The last boundary whose earlier windows ``consumer`` dropped from its files."""
        with self._guard("reading the pruned boundary"):
            done = self.client.get(f"{self.prefix}pruned:{consumer}")
        return None if done is None else int(done)

    def set_pruned(self, consumer: str, at_us: int) -> None:
        with self._guard("recording the pruned boundary"):
            self.client.set(f"{self.prefix}pruned:{consumer}", at_us)

    # -- loading ---------------------------------------------------------------------------------
    def load(
        self, panes: Sequence[int], keys: Sequence[bytes] | None
    ) -> tuple[pa.Table, dict[tuple[int, bytes], bytes]]:
        """The stream's stored partials of ``panes`` (only ``keys``' entities, or all) as a
        table, and the raw stored values by ``(pane, entity key)`` (what a commit compares
        against)."""
        panes = list(panes)
        raw: dict[tuple[int, bytes], bytes] = {}
        if panes and (keys is None or keys):
            with self._guard("reading aggregation state"):
                pipe = self.client.pipeline(transaction=False)
                for p in panes:
                    if keys is None:
                        pipe.hgetall(self.pane_key(p))
                    else:
                        pipe.hmget(self.pane_key(p), list(keys))
                replies = pipe.execute()
            for p, reply in zip(panes, replies):
                if keys is None:
                    raw.update(((p, k), v) for k, v in reply.items())
                else:
                    raw.update(((p, k), v) for k, v in zip(keys, reply) if v is not None)
        rows = [json.loads(v) for v in raw.values()]
        table = partials_from_json(rows, [p for p, _ in raw], self.schema)
        return table, raw

    # -- ownership -------------------------------------------------------------------------------
    def owned(self, rows: pa.Table, boundary: Boundary) -> np.ndarray:
        """Which validated event rows are the stream's to count under ``boundary``: those at
        or after B, and in B's pane also earlier ones of an entity the batch run left to the
        stream (no batch partial there: the stream had already counted that entity's pane)."""
        if boundary.at_us is None or not rows.num_rows:
            return np.ones(rows.num_rows, dtype=bool)
        from featurestore.online.codec import encode_entity_keys

        event_us = pc.cast(rows.column(EVENT_TS), pa.int64()).to_numpy()
        straddle = boundary.pane(self.step)
        owned = event_us >= boundary.at_us
        doubt = ~owned & (pane_of(event_us, self.schema) == straddle)
        if doubt.any():
            s = self.schema
            picked = rows.filter(pa.array(doubt))
            keys = encode_entity_keys(
                [d for _, d in s.join_keys], [picked.column(k) for k in s.key_names]
            )
            with self._guard("reading the batch partials"):
                held = self.client.hmget(self.bpane_key(straddle), keys)  # type: ignore[arg-type]
            owned[np.flatnonzero(doubt)] = [h is None for h in held]
        return owned

    # -- committing ------------------------------------------------------------------------------
    def commit(
        self,
        ids: Sequence[bytes],
        partials: pa.Table,
        entity_keys: Sequence[bytes],
        version: int = 0,
    ) -> CommitResult:
        """Merge ``partials`` (with ``entity_keys``, one per row) into the state and acknowledge
        ``ids``, atomically, if the boundary is still at ``version`` (the one ownership was
        decided with); retried while other consumers change the same partials."""
        if len(ids) > MAX_COMMIT_ENTRIES:
            raise ValueError(f"at most {MAX_COMMIT_ENTRIES} entries per commit, got {len(ids)}")
        panes = partials.column(PANE).to_pylist() if partials.num_rows else []
        keys = sorted(set(entity_keys))
        for _ in range(20):
            stored, raw = self.load(sorted(set(panes)), keys)
            stored_keys = [k for _, k in raw]
            merged, merged_keys = self._merge(stored, stored_keys, partials, list(entity_keys))
            args, key_names = self._commit_args(ids, merged, merged_keys, raw, version)
            with self._guard("committing aggregation state"):
                reply = self._commit(keys=key_names, args=args)
            status = _text(reply[0])
            if status == "ok":
                return CommitResult(True, list(ids))
            if status == "ids":
                return CommitResult(False, [bytes(i) for i in reply[1:]])
            if status == "moved":
                return CommitResult(False, list(ids), moved=True)
        raise ConflictError(
            f"the aggregation state of feature view {self.schema.view!r} kept changing under "
            "this consumer (20 attempts)",
            hint="too many consumers update the same entities; run fewer stream jobs per view",
        )

    def _merge(
        self, stored: pa.Table, stored_keys: list[bytes], partials: pa.Table, keys: list[bytes]
    ) -> tuple[pa.Table, list[bytes]]:
        # The entity key column rides along through the merge so each merged row knows its field.
        key_col = "__fs_key"
        both = pa.concat_tables(
            [
                stored.append_column(key_col, pa.array(stored_keys, pa.binary())),
                partials.append_column(key_col, pa.array(keys, pa.binary())),
            ]
        )
        merged = merge_partials(both, self.schema)
        # merge_partials keeps the key columns and sorts by them; entity keys follow the same
        # key values, so look each row's key up by its key values.
        lookup = {}
        key_names = list(self.schema.key_names)
        for values, k in zip(
            zip(*(both.column(n).to_pylist() for n in key_names)), both.column(key_col).to_pylist()
        ):
            lookup[values] = k
        merged_keys = [lookup[v] for v in zip(*(merged.column(n).to_pylist() for n in key_names))]
        return merged, merged_keys

    def _commit_args(
        self,
        ids: Sequence[bytes],
        merged: pa.Table,
        merged_keys: list[bytes],
        raw: dict[tuple[int, bytes], bytes],
        version: int,
    ) -> tuple[list[Any], list[str]]:
        panes = merged.column(PANE).to_pylist()
        pane_list = sorted(set(panes))
        # KEYS: stream, windows, versions, boundary, then the panes.
        index = {p: 5 + i for i, p in enumerate(pane_list)}
        key_names = [self.reader.stream, self.windows_key, self.versions_key, self.boundary_key]
        key_names += [self.pane_key(p) for p in pane_list]
        args: list[Any] = [version, self.reader.group, self.reader.consumer, len(ids), *ids]
        rows = partials_to_json(merged, self.schema)
        args.append(len(rows))
        for p, k, row in zip(panes, merged_keys, rows):
            old = raw.get((p, k))
            new = json.dumps(row, separators=(",", ":")).encode()
            args += [index[p], k, b"" if old is None else b"=" + old, new]
        args.append(len(pane_list))
        for p in pane_list:
            args += [index[p], self.expire_ms(p)]
        windows = sorted(ends_of_panes(pane_list, self.schema))
        args.append(len(windows))
        args += windows
        return args, key_names

    # -- offline windows -------------------------------------------------------------------------
    def due_windows(self, now_us: int, limit: int = 64) -> list[tuple[int, bytes]]:
        """Window ends marked for the offline writer whose window closed (grace included by the
        caller in ``now_us``), with their versions."""
        closed = now_us // self.step  # ends at or before now
        with self._guard("reading window marks"):
            ends = self.client.zrangebyscore(self.windows_key, "-inf", closed, start=0, num=limit)
            if not ends:
                return []
            versions = self.client.hmget(self.versions_key, ends)
        return [(int(e), v or b"") for e, v in zip(ends, versions)]

    def window_done(self, end: int, version: bytes) -> bool:
        with self._guard("clearing a window mark"):
            return bool(self._done(keys=[self.windows_key, self.versions_key], args=[end, version]))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
