"""The Redis online store: one key per (view, entity), newer-only writes in a Lua script.

Key layout (``featurestore.online.redis_keys``; pinned by tests/online/test_redis_layout_golden.py,
described in docs/online-store.md)::

    {project}:{view}:{entity_key}             8-byte event_ts_us | 8-byte created_ts_us | payload
    {project}:__meta__:newest:{view}          8-byte newest event_ts_us written to the view
    {project}:__meta__:writes:{view}          winning writes that did not raise the newest time
    {project}:__blob__:{namespace}:{key}      the blob

Integers are little-endian signed. View names cannot start with ``__`` (registry rule), so the
meta and blob keys never collide with a view's keys.

Writes go in pipelines of ``rows_per_pipeline`` rows, as EVALSHA calls of ``rows_per_script``
rows each: the script reads the stored values with one MGET, keeps the rows whose
(event, created) is at least the stored one, writes them (one MSET, or SET ... PXAT per row with
a TTL), raises the view's newest-event key and, when rows won without raising it, counts the
write in the view's writes key: a row and the meta keys change atomically, and the pair
(newest, writes) moves with every winning write (``view_versions``). The writes key appears only
once a write wins without raising the newest time, so a view written in event-time order holds
exactly the keys it held before the counter existed. Reads are one MGET. The store needs
Redis >= 6.2 (PXAT). Redis Cluster is ``redis_cluster_store`` (``online_store.cluster: true``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import NoScriptError
from redis.retry import Retry

from featurestore.online import redis_async
from featurestore.online.base import (
    OnlineStore,
    Row,
    ViewVersion,
    check_namespace,
    check_view,
    chunks,
    expiry_cutoff_us,
)
from featurestore.online.redis_keys import StandaloneKeys
from registry.errors import ConfigError, FeatureStoreError

if TYPE_CHECKING:
    from featurestore.config import OnlineStoreConfig

HEADER = struct.Struct("<qq")  # event_ts_us, created_ts_us
HEADER_SIZE = HEADER.size
_TS = struct.Struct("<q")

# KEYS[1]: the newest-event key, KEYS[2]: the writes key, KEYS[3..]: row keys (one slot on a
# cluster: there, the meta keys are the bucket's).
# ARGV[1]: '1' when every value is followed by its absolute expiry in ms (SET PXAT), else '0'.
# ARGV[2]: '1' to count every call that wins a row; '0' to count only one that wins rows without
# raising the newest time (a raise is itself a visible change).
# Returns the number of rows written. Timestamps are compared as (high signed 32 bits, low
# unsigned 32 bits) pairs because Lua numbers are doubles, exact only up to 2^53.
WRITE_LATEST_LUA = """
local with_ttl = ARGV[1] == '1'
local count_all = ARGV[2] == '1'
local stride = with_ttl and 2 or 1
local n = #KEYS - 2
local stored = redis.call('MGET', unpack(KEYS, 3, n + 2))
-- The value each key holds so far, so a key given twice in one call compares with the winner.
local current = {}
for i = 1, n do current[KEYS[i + 2]] = stored[i] end
local written, best_hi, best_lo = 0, nil, nil
local mset = {}
for i = 1, n do
  local key = KEYS[i + 2]
  local value = ARGV[3 + (i - 1) * stride]
  local elo, ehi, clo, chi = struct.unpack('<I4i4I4i4', value)
  local wins = true
  local old = current[key]
  if old then
    local olo, ohi, oclo, ochi = struct.unpack('<I4i4I4i4', old)
    if ehi ~= ohi then wins = ehi > ohi
    elseif elo ~= olo then wins = elo > olo
    elseif chi ~= ochi then wins = chi > ochi
    else wins = clo >= oclo end
  end
  if wins then
    written = written + 1
    current[key] = value
    if with_ttl then
      redis.call('SET', key, value, 'PXAT', ARGV[4 + (i - 1) * 2])
    else
      -- MSET keeps the last value of a repeated key, and a later winner is the newer one.
      mset[#mset + 1] = key
      mset[#mset + 1] = value
    end
    if best_hi == nil or ehi > best_hi or (ehi == best_hi and elo > best_lo) then
      best_hi, best_lo = ehi, elo
    end
  end
end
if #mset > 0 then redis.call('MSET', unpack(mset)) end
local raised = false
if best_hi then
  local current = redis.call('GET', KEYS[1])
  raised = true
  if current then
    local lo, hi = struct.unpack('<I4i4', current)
    raised = best_hi > hi or (best_hi == hi and best_lo > lo)
  end
  if raised then redis.call('SET', KEYS[1], struct.pack('<I4i4', best_lo, best_hi)) end
end
if written > 0 and (count_all or not raised) then redis.call('INCR', KEYS[2]) end
return written
"""
WRITE_LATEST_SHA = hashlib.sha1(WRITE_LATEST_LUA.encode()).hexdigest()

# Replies that mean "the server cannot serve right now", not "this request is wrong".
# Replies to a connection whose credentials are wrong or missing: a configuration problem.
_CREDENTIAL_REPLIES = ("NOAUTH", "WRONGPASS", "NOPERM")
_UNAVAILABLE_REPLIES = ("OOM", "MISCONF", "LOADING", "READONLY", "MASTERDOWN", "NOREPLICAS", "BUSY")
# What a single-Redis client hears from a Redis Cluster node; on a cluster (after the client's
# redirects ran out), a failover or resharding in progress.
_CLUSTER_REPLIES = ("MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN", "TRYAGAIN")
_CLUSTER_ERRORS = (
    redis.exceptions.AskError,  # MovedError too
    redis.exceptions.ClusterCrossSlotError,
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
)


def decode_rows(values: Sequence[bytes | None]) -> list[tuple[int, bytes] | None]:
    """Row values as ``(event time, payload)`` (None where a key holds nothing): the value layout
    of both key layouts (a header whose first field is the event time, then the payload)."""
    unpack_from = _TS.unpack_from
    return [None if v is None else (unpack_from(v)[0], v[HEADER_SIZE:]) for v in values]


def redact(url: str) -> str:
    """The URL without its password (in the user-info or as ``?password=``), for messages."""
    parts = urlsplit(url)
    if parts.password is not None:
        url = url.replace(f":{parts.password}@", ":***@", 1)
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


def open_client(url: str) -> redis.Redis:
    """A redis-py client with the project's policy, for the online store and the streams alike.

    Every command sent through it is safe to repeat (newer-only writes, reads, overwrites, acks,
    idempotent pushes), so a retry after a dropped connection is safe; the retries are few and
    short, so a server that is down fails fast. Raises ValueError for a malformed URL.
    """
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        socket_timeout=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )


def open_once_client(url: str) -> redis.Redis:
    """Like ``open_client``, for the one command that is *not* safe to repeat: the blob
    compare-and-swap. Resent after a dropped reply, a swap that had succeeded fails (the key
    holds its own new value) and the caller would learn its update twice; without a retry the
    caller sees an error instead, and the feedback catch-up rebuilds the user from the log."""
    return redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30, retry=Retry(NoBackoff(), 0))


class RedisOnlineStore(OnlineStore):
    """Latest values and blobs in Redis, pipelined.

    >>> store = RedisOnlineStore("demo", "redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> store.read_latest([("user_stats", b"42")])  # doctest: +SKIP
    [(1000, b'payload')]
    """

    kind: ClassVar[str] = "redis"
    supports_ttl: ClassVar[bool] = True
    multi_process: ClassVar[bool] = True
    #: Rows per EVALSHA: the script blocks Redis while it runs (about 1.5 ms per 1,000 rows), and
    #: Lua's unpack() limit (8,000 values) bounds the MGET/MSET inside it.
    rows_per_script: ClassVar[int] = 1_000
    #: Rows per pipeline execute, i.e. per network round trip of a write.
    rows_per_pipeline: ClassVar[int] = 5_000

    def __init__(self, project: str, url: str = "redis://127.0.0.1:6379/0") -> None:
        super().__init__(project)
        self.url = url
        try:
            self._client = open_client(url)
            self._once: redis.Redis | None = None  # the compare-and-swap's client, on first use
        except ValueError as exc:
            raise ConfigError(
                f"bad online_store.url {redact(url)!r}: {exc}",
                hint="use a URL such as redis://127.0.0.1:6379/0 or rediss://user:pass@host:6380/0",
            ) from None
        self._keys = StandaloneKeys(project)
        self._view_prefixes: dict[str, bytes] = {}
        # The async read path (the online server) has its own pipelined connection; TLS URLs
        # use the blocking client in a worker thread instead (see redis_async).
        self._async = redis_async.AsyncRedisReader(url) if redis_async.supports_url(url) else None

    @classmethod
    def from_config(cls, config: OnlineStoreConfig, project: str, root: Path) -> RedisOnlineStore:
        if config.cluster and not cls.cluster:
            raise ConfigError(
                "online_store.cluster is true: open the store with open_online_store (a "
                "RedisClusterOnlineStore), not RedisOnlineStore"
            )
        return cls(project, config.url)

    @property
    def address(self) -> str:
        return redact(self.url)

    @property
    def client(self) -> redis.Redis:
        """The redis-py client (for admin tasks and tests)."""
        return self._client

    # -- keys ------------------------------------------------------------------------------------
    def _view_prefix(self, view: str) -> bytes:
        prefix = self._view_prefixes.get(view)
        if prefix is None:
            check_view(view)
            prefix = self._view_prefixes[view] = self._keys.row_prefix(view)
        return prefix

    def newest_key(self, view: str) -> bytes:
        check_view(view)
        return self._keys.newest(view)

    def writes_key(self, view: str) -> bytes:
        check_view(view)
        return self._keys.writes(view)

    def blob_prefix(self, namespace: str) -> bytes:
        check_namespace(namespace)
        return self._keys.blob_prefix(namespace)

    # -- errors ----------------------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        self._check_open()
        try:
            yield
        except redis.RedisError as exc:
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: redis.RedisError) -> FeatureStoreError:
        """What a redis-py error while ``what`` means here (``_guard``, and the read path that
        spares itself the context manager)."""
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)):
            return self._unavailable(what, exc, self._hint())
        if isinstance(exc, redis.ResponseError):
            return self._refused(what, exc)
        return self._unavailable(what, exc, self._hint())

    def _refused(self, what: str, exc: Exception) -> FeatureStoreError:
        """An error reply: "cannot serve right now" is unavailability, anything else a refusal."""
        if str(exc).startswith(_CREDENTIAL_REPLIES):
            return self._unavailable(
                what, exc, f"check the user and password in online_store.url ({self.address})"
            )
        # redis-py turns some replies into typed errors with messages of its own.
        cluster_reply = isinstance(exc, _CLUSTER_ERRORS) or str(exc).startswith(_CLUSTER_REPLIES)
        if not self.cluster and cluster_reply:
            return self._unavailable(
                what, exc, f"{self.address} is a Redis Cluster node: set online_store.cluster: true "
                "(or FEATURESTORE__ONLINE_STORE__CLUSTER=true)",
            )
        if cluster_reply or str(exc).startswith(_UNAVAILABLE_REPLIES):
            return self._unavailable(what, exc, self._hint())
        return FeatureStoreError(
            f"the redis online store at {self.address} refused {what}: {exc}",
            hint="a key of this project may have been written by something else",
        )

    def _hint(self) -> str:
        return f"start Redis at {self.address} or set online_store.url in featurestore.yaml"

    # -- latest values ---------------------------------------------------------------------------
    def write_latest(self, view: str, rows: Sequence[Row], ttl_seconds: int = 0) -> int:
        self._check_open()
        prefix = self._view_prefix(view)
        cutoff = expiry_cutoff_us(ttl_seconds)
        ttl_us = ttl_seconds * 1_000_000
        newest_key, writes_key = self.newest_key(view), self.writes_key(view)
        step = self.rows_per_script
        written = 0
        for chunk in chunks(rows, self.rows_per_pipeline):
            commands: list[tuple[Any, ...]] = []
            if cutoff is not None:
                chunk = [row for row in chunk if row[1] > cutoff]
            for start in range(0, len(chunk), step):
                part = chunk[start : start + step]
                keys = [prefix + row[0] for row in part]
                args = script_args(part, None if cutoff is None else expiry_ms(part, ttl_us), count_all=False)
                commands.append(
                    ("EVALSHA", WRITE_LATEST_SHA, len(keys) + 2, newest_key, writes_key, *keys, *args)
                )
            if commands:
                written += sum(self._run_scripts(commands))
        return written

    def _run_scripts(self, commands: list[tuple[Any, ...]]) -> list[int]:
        """One pipeline of EVALSHA calls; loads the script and repeats once if Redis lost it
        (a restart or SCRIPT FLUSH). Repeating is safe: the writes are newer-only."""
        with self._guard("writing"):
            for attempt in (1, 2):
                pipe = self._client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)
                results = pipe.execute(raise_on_error=False)
                if attempt == 1 and any(isinstance(r, NoScriptError) for r in results):
                    self._client.script_load(WRITE_LATEST_LUA)
                    continue
                for result in results:
                    if isinstance(result, Exception):
                        raise result
                return results
        raise AssertionError("unreachable")  # pragma: no cover

    def read_latest(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        if not view_keys:
            self._check_open()
            return []
        prefixes = self._view_prefixes
        try:
            keys = [prefixes[view] + key for view, key in view_keys]
        except KeyError:
            keys = [self._view_prefix(view) + key for view, key in view_keys]
        # The hot path: a try block costs nothing, a context manager a microsecond a call.
        self._check_open()
        try:
            values = self._client.execute_command("MGET", *keys)
        except redis.RedisError as exc:
            raise self._error("reading", exc) from exc
        return decode_rows(values)

    async def read_latest_async(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        self._check_open()
        if not view_keys:
            return []
        if self._async is None:
            return await asyncio.to_thread(self.read_latest, view_keys)
        prefixes = self._view_prefixes
        try:
            keys = [prefixes[view] + key for view, key in view_keys]
        except KeyError:
            keys = [self._view_prefix(view) + key for view, key in view_keys]
        values = await self._mget_async(keys)
        return decode_rows(values)

    def newest_event_ts(self, views: Sequence[str]) -> dict[str, int | None]:
        views = list(views)
        if not views:
            self._check_open()
            return {}
        keys = [self.newest_key(view) for view in views]
        with self._guard("reading"):
            values = self._client.execute_command("MGET", *keys)
        return {
            view: None if v is None else _TS.unpack_from(v)[0] for view, v in zip(views, values)
        }

    def view_versions(self, views: Sequence[str]) -> dict[str, ViewVersion]:
        views = list(views)
        if not views:
            self._check_open()
            return {}
        keys = [self.newest_key(view) for view in views] + [self.writes_key(view) for view in views]
        with self._guard("reading"):
            values = self._client.execute_command("MGET", *keys)
        n = len(views)
        return {
            view: ViewVersion(None if newest is None else _TS.unpack_from(newest)[0], int(writes or 0))
            for view, newest, writes in zip(views, values[:n], values[n:])
        }

    # -- blobs -----------------------------------------------------------------------------------
    def put_blobs(self, namespace: str, items: Mapping[bytes, bytes]) -> None:
        prefix = self.blob_prefix(namespace)
        flat: list[bytes] = []
        for key, value in items.items():
            flat += (prefix + bytes(key), bytes(value))
        if not flat:
            self._check_open()
            return
        step = 2 * self.rows_per_script
        with self._guard("writing"):
            pipe = self._client.pipeline(transaction=False)
            for start in range(0, len(flat), step):
                pipe.execute_command("MSET", *flat[start : start + step])
            pipe.execute()

    def get_blobs(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        prefix = self.blob_prefix(namespace)
        if not keys:
            self._check_open()
            return []
        with self._guard("reading"):
            return list(self._client.execute_command("MGET", *[prefix + k for k in keys]))

    async def get_blobs_async(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        if not keys:
            return []
        if self._async is None:
            return await asyncio.to_thread(self.get_blobs, namespace, keys)
        prefix = self.blob_prefix(namespace)
        return await self._mget_async([prefix + k for k in keys])

    async def _mget_async(self, keys: list[bytes]) -> list[bytes | None]:
        assert self._async is not None
        for attempt in (1, 2):
            try:
                return list(await self._async.execute(b"MGET", *keys))
            except (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError) as exc:
                # A dropped connection is re-opened once (the read is idempotent); a store that
                # stays down fails fast, like the blocking client's two short retries.
                if attempt == 2:
                    raise self._unavailable("reading", exc, self._hint()) from exc
            except redis_async.RespError as exc:
                raise self._refused("reading", exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def delete_namespace(self, namespace: str) -> int:
        pattern = _glob_escape(self.blob_prefix(namespace)) + b"*"
        deleted = 0
        with self._guard("deleting"):
            batch: list[bytes] = []
            for key in self._client.scan_iter(match=pattern, count=1_000):
                batch.append(key)
                if len(batch) >= 1_000:
                    deleted += self._client.unlink(*batch)
                    batch = []
            if batch:
                deleted += self._client.unlink(*batch)
        return deleted

    def compare_and_swap_blobs(
        self, namespace: str, swaps: Mapping[bytes, tuple[bytes | None, bytes]]
    ) -> list[bytes]:
        prefix = self.blob_prefix(namespace)
        if not swaps:
            self._check_open()
            return []
        keys = [bytes(k) for k in swaps]
        args: list[bytes] = []
        for expected, new in swaps.values():
            # A leading flag byte tells "must be absent" from "must equal these bytes".
            args += (b"0" if expected is None else b"1" + bytes(expected), bytes(new))
        with self._guard("writing"):
            if self._once is None:
                self._once = open_once_client(self.url)
            failed = self._once.execute_command(
                "EVAL", _CAS_SCRIPT, len(keys), *[prefix + k for k in keys], *args
            )
        return [keys[int(i) - 1] for i in failed]

    def ping(self) -> None:
        with self._guard("pinging"):
            self._client.ping()

    def close(self) -> None:
        if not self._closed:
            self._client.close()
            if self._once is not None:
                self._once.close()
            if self._async is not None:
                self._async.close()
        super().close()


# Atomic per call (Redis runs a script without interleaving): returns the 1-based indexes of the
# keys whose current value did not match the expected one.
_CAS_SCRIPT = b"""
local failed = {}
for i = 1, #KEYS do
  local expected = ARGV[2 * i - 1]
  local current = redis.call('GET', KEYS[i])
  local ok
  if string.sub(expected, 1, 1) == '0' then
    ok = (current == false)
  else
    ok = (current ~= false) and (current == string.sub(expected, 2))
  end
  if ok then
    redis.call('SET', KEYS[i], ARGV[2 * i])
  else
    failed[#failed + 1] = i
  end
end
return failed
"""


def script_args(rows: Sequence[Row], expiries: Sequence[int] | None, *, count_all: bool) -> list[Any]:
    """ARGV of WRITE_LATEST_LUA for ``rows``: the flags, then each value (and its absolute
    expiry in ms, from ``expiries``, when given)."""
    pack = HEADER.pack
    if expiries is None:
        args: list[Any] = [b"0", b"1" if count_all else b"0"]
        args += [pack(e, c) + p for _, e, c, p in rows]
        return args
    args = [b"1", b"1" if count_all else b"0"]
    for (_, e, c, p), expiry in zip(rows, expiries):
        args += (pack(e, c) + p, expiry)
    return args


def expiry_ms(rows: Sequence[Row], ttl_us: int) -> list[int]:
    """Each row's expiry: event time + ttl, ceiled to whole ms so a key never expires early."""
    return [-(-(e + ttl_us) // 1000) for _, e, _, _ in rows]


def _glob_escape(raw: bytes) -> bytes:
    """Escape Redis MATCH pattern characters so a namespace is matched literally."""
    out = bytearray()
    for byte in raw:
        if byte in b"*?[]\\":
            out.append(0x5C)
        out.append(byte)
    return bytes(out)
