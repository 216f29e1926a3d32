"""Redis Streams: a consumer group per feature view (``stream_source: {stream, group}``).

    XGROUP CREATE {stream} {group} 0 MKSTREAM          once; from the first entry, so events
                                                       pushed before the job first ran count
    XREADGROUP GROUP {group} {consumer} COUNT n STREAMS {stream} 0   own unacknowledged entries
                                                       (after a restart), until none are left
    XREADGROUP ... BLOCK ms STREAMS {stream} >         then new entries
    XACK {stream} {group} id...                        once the writes they feed succeeded
    XPENDING {stream} {group} IDLE ms - + n            + XCLAIM: entries other consumers left

Entries stay in the stream after they are acknowledged (trim it with ``XTRIM ... MINID`` below
the oldest id every group has read, e.g. from a cron job); the group only moves its cursor.

A stream may live in a Redis Cluster (``connect`` asks the server which it is). Every command
above names one stream; the idempotent push's script also writes its marker, which is then put
in the stream's slot (``redis_keys.stream_slot_prefix``: ``{stream}:`` + the marker's name).

    >>> reader = RedisStreamReader("redis://127.0.0.1:6379/0", "clicks", "features", schema, "job-1")  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import redis

from featurestore.online.redis_keys import stream_slot_prefix
from featurestore.online.redis_store import open_client, redact
from featurestore.streams.base import OnceResult, StreamRead, StreamReader, StreamWriter
from featurestore.streams.encoding import DATA_FIELD, decode_events, decode_payloads
from featurestore.streams.schema import EventSchema
from registry.errors import ConfigError, FeatureStoreError, StoreUnavailableError

_ACK_CHUNK = 10_000

# XREADGROUP without BLOCK, answered as three strings (ids, data fields joined by newlines,
# their sizes; -1 for an entry without one) instead of a nested reply: redis-py parses a stream
# reply entry by entry in Python (about 25 us each without hiredis), three strings at once.
_READ_LUA = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                         'STREAMS', KEYS[1], ARGV[4])
if not reply then return {} end
local ids, data, sizes = {}, {}, {}
for i, entry in ipairs(reply[1][2]) do
  ids[i] = entry[1]
  local fields, value, size = entry[2], '', -1
  if fields then
    for j = 1, #fields, 2 do
      if fields[j] == 'data' then value = fields[j + 1]; size = #value; break end
    end
  end
  data[i] = value
  sizes[i] = size
end
return {table.concat(ids, ' '), table.concat(data, '\\n'), table.concat(sizes, ' ')}
"""


# Whether the Redis at a URL is a cluster, as its server said (asked once per process and URL).
_CLUSTER_URLS: dict[str, bool] = {}
_CLUSTER_URLS_LOCK = threading.Lock()


def connect(url: str, cluster: bool | None = None) -> Any:
    """The online store's client policy (``open_client``) for a stream's Redis: a
    ``redis.Redis``, or a ``redis.cluster.RedisCluster`` when the server is a cluster node
    (``cluster=None`` asks it, once per process and URL, with ``INFO cluster``). An XADD
    without a push_id repeated after a dropped reply could add an event twice, which
    at-least-once delivery allows. Raises StoreUnavailableError when the question cannot be
    asked."""
    try:
        if cluster is None:
            cluster = _is_cluster(url)
        if cluster:
            from featurestore.online.redis_cluster_store import open_cluster_client

            return open_cluster_client(url)
        return open_client(url)
    except ValueError as exc:
        raise ConfigError(
            f"bad stream url {redact(url)!r}: {exc}",
            hint="use a URL such as redis://127.0.0.1:6379/0 in stream_source.url or "
            "online_store.url",
        ) from None
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise StoreUnavailableError(
            f"the Redis of a stream at {redact(url)} is unavailable (connecting: {exc})",
            hint=f"start Redis at {redact(url)} or set the view's stream_source.url",
        ) from exc


def _is_cluster(url: str) -> bool:
    known = _CLUSTER_URLS.get(url)
    if known is None:
        probe = open_client(url)
        try:
            known = bool(probe.info("cluster").get("cluster_enabled"))
        finally:
            probe.close()
        with _CLUSTER_URLS_LOCK:
            _CLUSTER_URLS[url] = known
    return known


@contextmanager
def guard(url: str, stream: str, what: str) -> Iterator[None]:
    """Redis errors as the project's errors, naming the stream and the server."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.RedisClusterException) as exc:
        # RedisClusterException: no node reachable, or a slot without a primary.
        raise StoreUnavailableError(
            f"the Redis stream {stream!r} at {redact(url)} is unavailable ({what}: {exc})",
            hint=f"start Redis at {redact(url)} or set the view's stream_source.url",
        ) from exc
    except redis.ResponseError as exc:
        raise FeatureStoreError(
            f"Redis refused {what} on stream {stream!r} at {redact(url)}: {exc}",
            hint="the key may not be a stream, or the server is older than Redis 6.2",
        ) from exc


class RedisStreamReader(StreamReader):
    """One consumer of a Redis Stream consumer group."""

    kind: ClassVar[str] = "redis_stream"

    def __init__(
        self, url: str, stream: str, group: str, schema: EventSchema, consumer: str
    ) -> None:
        super().__init__(schema, consumer)
        self.url = url
        self.stream = stream
        self.group = group
        self.client = connect(url)
        self._own_pending_from: bytes | None = b"0"  # None once this consumer's backlog is read
        self._group_ready = False
        self._read_script = self.client.register_script(_READ_LUA)

    @classmethod
    def from_source(
        cls, source: Any, schema: EventSchema, *, consumer: str, default_url: str
    ) -> RedisStreamReader:
        return cls(source.url or default_url, source.stream, source.group, schema, consumer)

    @property
    def address(self) -> str:
        return f"{redact(self.url)} stream {self.stream!r} group {self.group!r}"

    def _guard(self, what: str) -> Any:
        return guard(self.url, self.stream, what)

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if needed, reading from the first entry."""
        if self._group_ready:
            return
        with self._guard("creating the consumer group"):
            try:
                self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
        self._group_ready = True

    def read(self, max_entries: int, block_ms: int) -> StreamRead:
        self.ensure_group()
        with self._guard("reading"):
            if self._own_pending_from is not None:
                got = self._read_now(max_entries, self._own_pending_from)
                if got is not None:
                    self._own_pending_from = got.ids[-1]
                    return got
                self._own_pending_from = None
            got = self._read_now(max_entries, b">")
            if got is not None:
                return got
            # Nothing waiting: block in a plain XREADGROUP (scripts cannot block).
            reply = self._xreadgroup(max_entries, block_ms if block_ms > 0 else None, b">")
        return self._decoded(_entries(reply))

    def _read_now(self, max_entries: int, start: bytes) -> StreamRead | None:
        """Entries already there, through the read script; None when there are none."""
        args = [self.group, self.consumer, max_entries, start]
        try:
            reply = self._read_script(keys=[self.stream], args=args)
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_ready = False
            self.ensure_group()
            reply = self._read_script(keys=[self.stream], args=args)
        if not reply or not reply[0]:
            return None
        ids = reply[0].split(b" ")
        sizes = [int(x) for x in reply[2].split(b" ")]
        blob = reply[1]
        payloads: list[bytes | None] = []
        offset = 0
        for size in sizes:
            if size < 0:
                payloads.append(None)
                offset += 1
            else:
                payloads.append(blob[offset : offset + size])
                offset += size + 1
        decoded = decode_payloads(
            ids, payloads, self.schema, joined=blob if min(sizes) > 0 else None
        )
        return StreamRead(ids, decoded.batch, decoded.rejected)

    def _xreadgroup(self, count: int, block: int | None, start: bytes) -> Any:
        try:
            return self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            # Someone deleted the group (or the stream): start it again from the first entry.
            self._group_ready = False
            self.ensure_group()
            return self.client.xreadgroup(
                self.group, self.consumer, {self.stream: start}, count=count, block=block
            )

    def _decoded(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> StreamRead:
        decoded = decode_events(entries, self.schema)
        return StreamRead([e[0] for e in entries], decoded.batch, decoded.rejected)

    def ack(self, ids: Sequence[bytes]) -> int:
        done = 0
        with self._guard("acknowledging"):
            for start in range(0, len(ids), _ACK_CHUNK):
                done += int(
                    self.client.xack(self.stream, self.group, *ids[start : start + _ACK_CHUNK])
                )
        return done

    def claim_stale(self, min_idle_ms: int, max_entries: int) -> StreamRead:
        self.ensure_group()
        with self._guard("claiming stale entries"):
            stale = self.client.xpending_range(
                self.stream, self.group, min="-", max="+", count=max_entries, idle=min_idle_ms
            )
            theirs = [p["message_id"] for p in stale if _text(p["consumer"]) != self.consumer]
            if not theirs:
                return self._decoded([])
            claimed = self.client.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, theirs
            )
        return self._decoded([(i, f) for i, f in claimed if i is not None])

    def pending(self) -> int:
        self.ensure_group()
        with self._guard("reading pending entries"):
            return int(self.client.xpending(self.stream, self.group)["pending"])

    def backlog(self) -> int | None:
        self.ensure_group()
        with self._guard("reading the group's lag"):
            for info in self.client.xinfo_groups(self.stream):
                if _text(info.get("name")) == self.group:
                    lag = info.get("lag")
                    return None if lag is None else int(lag)
        return None

    def close(self) -> None:
        self.client.close()


class RedisStreamWriter(StreamWriter):
    """Appends events with ``XADD {stream} * data <json>``, pipelined."""

    def __init__(self, url: str, stream: str) -> None:
        self.url = url
        self.stream = stream
        self.client = connect(url)
        self.cluster = not isinstance(self.client, redis.Redis)

    @classmethod
    def from_source(cls, source: Any, *, default_url: str) -> RedisStreamWriter:
        return cls(source.url or default_url, source.stream)

    def append(self, payloads: Sequence[bytes]) -> list[bytes]:
        ids: list[bytes] = []
        with guard(self.url, self.stream, "appending events"):
            for start in range(0, len(payloads), 5_000):
                pipe = self.client.pipeline(transaction=False)
                for payload in payloads[start : start + 5_000]:
                    pipe.xadd(self.stream, {DATA_FIELD: payload})
                ids += pipe.execute()
        return ids

    def append_once(self, payloads: Sequence[bytes], marker: str, digest: str, ttl_seconds: int) -> OnceResult:
        # One script: the entries and the marker appear together or not at all (Redis runs a
        # script without interleaving), so a push retried after a lost reply appends nothing.
        # On a cluster, the marker goes to the stream's slot.
        key = stream_slot_prefix(self.stream) + marker if self.cluster else marker
        with guard(self.url, self.stream, "appending events"):
            reply = self.client.eval(
                _APPEND_ONCE_LUA, 2, key, self.stream, ttl_seconds * 1000, digest, DATA_FIELD, *payloads
            )
        appended, summary = int(reply[0]), _text(reply[1])
        first_id, last_id, count, stored_digest = summary.split(" ")
        return OnceResult(first_id, last_id, int(count), stored_digest, duplicate=not appended)

    def close(self) -> None:
        self.client.close()


# KEYS: marker, stream. ARGV: ttl ms, digest, data field name, payloads...
# The marker holds "first_id last_id count digest".
_APPEND_ONCE_LUA = """
local done = redis.call('GET', KEYS[1])
if done then return {0, done} end
local first, last
for i = 4, #ARGV do
  last = redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[i])
  if not first then first = last end
end
local summary = first .. ' ' .. last .. ' ' .. (#ARGV - 3) .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], summary, 'PX', ARGV[1])
return {1, summary}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
    """XREADGROUP's reply (one stream) as ``[(id, fields)]``; a deleted entry has no fields."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        reply = list(reply.items())
    out = []
    for _, messages in reply:
        for entry_id, fields in messages:
            out.append((entry_id, fields or None))
    return out
