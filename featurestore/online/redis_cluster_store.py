"""The Redis Cluster online store (``online_store: {type: redis, url: ..., cluster: true}``).

The same values as the single-Redis store, under the cluster key layout of
``featurestore.online.redis_keys`` (docs/redis-cluster.md): every key carries one of 64 bucket
hash tags, chosen by its entity (or blob) key, so

- **writes** group a chunk's rows by bucket and run the newer-only script once per bucket (and
  per ``rows_per_script`` rows): its row keys and the bucket's newest-time and writes keys share
  a slot, so a row and its metadata still change atomically; the scripts of a chunk go in one
  cluster pipeline (redis-py sends each node its commands, writing to every node before reading
  any reply, and follows MOVED/ASK);
- **reads** (rows, blobs, the view metadata) are one MGET per slot, sent per node in one
  pipeline by the blocking client (``mget_nonatomic``) and by ``AsyncClusterReader`` on the
  server's asyncio path: one round trip per shard;
- **compare-and-swap** runs its script once per bucket of the swapped keys, on a client that
  never resends a command whose reply was lost (MOVED/ASK are still followed: a redirected
  command has not run);
- a view's **newest event time** is the largest of its 64 bucket keys, and its **version** the
  newest time with the sum of the bucket write counters (bumped by every winning script).

Every command here is safe to repeat except the swap, as for the single-Redis store.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from binascii import crc_hqx
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

import redis
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.exceptions import NoScriptError, RedisClusterException
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
from featurestore.online.redis_cluster_async import AsyncClusterReader
from featurestore.online.redis_cluster_health import cluster_health
from featurestore.online.redis_keys import BUCKET_SLOTS, BUCKETS, ClusterKeys
from featurestore.online.redis_store import (
    _CAS_SCRIPT,
    _TS,
    WRITE_LATEST_LUA,
    WRITE_LATEST_SHA,
    RedisOnlineStore,
    _glob_escape,
    decode_rows,
    expiry_ms,
    redact,
    script_args,
)
from registry.errors import ConfigError, FeatureStoreError, StoreUnavailableError

if TYPE_CHECKING:
    from redis.cluster import RedisCluster

_NODE_ERRORS = (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)


def open_cluster_client(url: str, *, once: bool = False) -> RedisCluster:
    """A redis-py cluster client with the project's policy (``redis_store.open_client``): two
    short retries (with a topology refresh before each) for commands that are safe to repeat,
    none with ``once`` (the compare-and-swap). It connects at once: raises
    ``RedisClusterException`` when no node answers."""
    from redis.cluster import RedisCluster

    retry = Retry(NoBackoff(), 0) if once else Retry(ExponentialBackoff(cap=0.5, base=0.05), 2)
    return RedisCluster.from_url(url, socket_connect_timeout=5, socket_timeout=30, retry=retry)


class RedisClusterOnlineStore(RedisOnlineStore):
    """Latest values and blobs in a Redis Cluster, grouped by hash-tag bucket.

    >>> store = RedisClusterOnlineStore("demo", "redis://127.0.0.1:7000")  # doctest: +SKIP
    >>> store.write_latest("users", [(b"42", 1_000, 1_000, b"v")])  # doctest: +SKIP
    1
    """

    cluster: ClassVar[bool] = True
    #: Rows per pipeline: split over 64 buckets, about 300 rows per script.
    rows_per_pipeline: ClassVar[int] = 20_000

    def __init__(self, project: str, url: str = "redis://127.0.0.1:7000") -> None:
        OnlineStore.__init__(self, project)  # the single-Redis clients are not wanted here
        self.url = url
        _check_url(url)
        self._keys = ClusterKeys(project)  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._cluster: RedisCluster | None = None
        self._once_cluster: RedisCluster | None = None
        self._rows: dict[str, tuple[bytes, ...]] = {}
        self._metas: dict[str, tuple[tuple[bytes, ...], tuple[bytes, ...]]] = {}
        self._nodes: dict[str, redis.Redis] = {}  # plain clients of single nodes, for health checks
        self._async_cluster = AsyncClusterReader(url) if redis_async.supports_url(url) else None

    # -- clients ---------------------------------------------------------------------------------
    @property
    def client(self) -> RedisCluster:  # type: ignore[override]
        """The redis-py cluster client (for admin tasks and tests); connects on first use."""
        with self._guard("connecting"):
            return self._connected()

    def _connected(self) -> RedisCluster:
        if self._cluster is None:
            with self._lock:
                if self._cluster is None:
                    self._cluster = open_cluster_client(self.url)
        return self._cluster

    def _swap_client(self) -> RedisCluster:
        if self._once_cluster is None:
            with self._lock:
                if self._once_cluster is None:
                    self._once_cluster = open_cluster_client(self.url, once=True)
        return self._once_cluster

    # -- keys ------------------------------------------------------------------------------------
    def row_prefixes(self, view: str) -> tuple[bytes, ...]:
        """``{P}:{V}:{T}:`` of every bucket, in bucket order."""
        prefixes = self._rows.get(view)
        if prefixes is None:
            check_view(view)
            prefixes = self._rows[view] = self._keys.row_prefixes(view)  # type: ignore[attr-defined]
        return prefixes

    def meta_keys(self, view: str) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """The view's newest-time keys and writes keys, one per bucket."""
        metas = self._metas.get(view)
        if metas is None:
            check_view(view)
            keys: Any = self._keys
            metas = self._metas[view] = (
                tuple(keys.newest(view, b) for b in range(BUCKETS)),
                tuple(keys.writes(view, b) for b in range(BUCKETS)),
            )
        return metas

    def blob_prefixes(self, namespace: str) -> tuple[bytes, ...]:
        check_namespace(namespace)
        return self._keys.blob_prefixes(namespace)  # type: ignore[attr-defined,no-any-return]

    def _view_prefix(self, view: str) -> bytes:
        raise NotImplementedError("a cluster store has a row prefix per bucket: use row_prefixes")

    def newest_key(self, view: str) -> bytes:
        raise NotImplementedError("a cluster store has a newest key per bucket: use meta_keys")

    def writes_key(self, view: str) -> bytes:
        raise NotImplementedError("a cluster store has a writes key per bucket: use meta_keys")

    def blob_prefix(self, namespace: str) -> bytes:
        raise NotImplementedError("a cluster store has a blob prefix per bucket: use blob_prefixes")

    def _row_keys(self, view_keys: Sequence[tuple[str, bytes]]) -> tuple[list[bytes], list[int]]:
        """The row key and hash slot of each ``(view, entity key)``."""
        rows = self._rows
        keys: list[bytes] = []
        slots: list[int] = []
        for view, key in view_keys:
            prefixes = rows.get(view) or self.row_prefixes(view)
            bucket = crc_hqx(key, 0) % BUCKETS
            keys.append(prefixes[bucket] + key)
            slots.append(BUCKET_SLOTS[bucket])
        return keys, slots

    def _blob_keys(self, namespace: str, keys: Sequence[bytes]) -> tuple[list[bytes], list[int]]:
        prefixes = self.blob_prefixes(namespace)
        buckets = [crc_hqx(k, 0) % BUCKETS for k in keys]
        return [prefixes[b] + k for b, k in zip(buckets, keys)], [BUCKET_SLOTS[b] for b in buckets]

    # -- errors ----------------------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        with super()._guard(what):
            try:
                yield
            except RedisClusterException as exc:
                text = str(exc)
                if "Cluster mode is not enabled" in text:
                    raise self._unavailable(
                        what, exc, f"{self.address} is a single Redis, not a cluster: set "
                        "online_store.cluster: false (or unset FEATURESTORE__ONLINE_STORE__CLUSTER)",
                    ) from exc
                if isinstance(exc, redis.exceptions.SlotNotCoveredError) or "cannot be connected" in text:
                    raise self._unavailable(what, exc, self._hint()) from exc
                raise FeatureStoreError(f"the redis online store at {self.address} failed {what}: {exc}") from exc

    def _hint(self) -> str:
        return (
            f"start the Redis Cluster that {self.address} belongs to (every slot served) or set "
            "online_store.url in featurestore.yaml"
        )

    # -- latest values ---------------------------------------------------------------------------
    def write_latest(self, view: str, rows: Sequence[Row], ttl_seconds: int = 0) -> int:
        self._check_open()
        cutoff = expiry_cutoff_us(ttl_seconds)
        if cutoff is None:
            return self._write(view, rows, None)
        ttl_us = ttl_seconds * 1_000_000
        return self._write(view, (row for row in rows if row[1] > cutoff), lambda part: expiry_ms(part, ttl_us))

    def write_expiring(self, view: str, rows: Sequence[Row], expire_at_ms: Sequence[int]) -> int:
        """``write_latest`` of rows that each expire at a given time (ms since the epoch, as
        PEXPIRETIME reports it): for copying rows from another layout with their expiry kept."""
        self._check_open()
        at = {id(row): ms for row, ms in zip(rows, expire_at_ms)}
        return self._write(view, rows, lambda part: [at[id(row)] for row in part])

    def _write(self, view: str, rows: Iterable[Row], expiries: Callable[[list[Row]], list[int]] | None) -> int:
        prefixes = self.row_prefixes(view)
        newest, writes = self.meta_keys(view)
        step = self.rows_per_script
        written = 0
        for chunk in chunks(rows, self.rows_per_pipeline):
            groups: list[list[Row]] = [[] for _ in range(BUCKETS)]
            for row in chunk:
                groups[crc_hqx(row[0], 0) % BUCKETS].append(row)
            commands: list[tuple[Any, ...]] = []
            for bucket, group in enumerate(groups):
                for start in range(0, len(group), step):
                    part = group[start : start + step]
                    keys = [prefixes[bucket] + row[0] for row in part]
                    args = script_args(part, None if expiries is None else expiries(part), count_all=True)
                    commands.append(
                        ("EVALSHA", WRITE_LATEST_SHA, len(keys) + 2, newest[bucket], writes[bucket], *keys, *args)
                    )
            if commands:
                written += sum(self._run_scripts(commands))
        return written

    def _run_scripts(self, commands: list[tuple[Any, ...]]) -> list[int]:
        """One cluster pipeline of EVALSHA calls. A primary without the script (restarted, or a
        replica just promoted) answers NOSCRIPT: the script is loaded on every primary and those
        calls alone are sent again (the others ran; repeating them would be harmless anyway)."""
        with self._guard("writing"):
            client = self._connected()
            results = _pipeline(client, commands)
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                client.script_load(WRITE_LATEST_LUA)
                for i, result in zip(missing, _pipeline(client, [commands[i] for i in missing])):
                    results[i] = result
            for result in results:
                if isinstance(result, Exception):
                    raise result
            return results

    def read_latest(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        self._check_open()
        if not view_keys:
            return []
        keys, _ = self._row_keys(view_keys)
        with self._guard("reading"):
            values = self._connected().mget_nonatomic(keys)
        return decode_rows(values)

    async def read_latest_async(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        self._check_open()
        if not view_keys:
            return []
        if self._async_cluster is None:
            return await asyncio.to_thread(self.read_latest, view_keys)
        values = await self._cluster_mget_async(*self._row_keys(view_keys))
        return decode_rows(values)

    async def _cluster_mget_async(self, keys: list[bytes], slots: list[int]) -> list[bytes | None]:
        assert self._async_cluster is not None
        try:
            return await self._async_cluster.mget(keys, slots)
        except _NODE_ERRORS as exc:
            raise self._unavailable("reading", exc, self._hint()) from exc
        except redis_async.RespError as exc:
            raise self._refused("reading", exc) from exc

    def _meta_values(self, views: list[str], writes_too: bool) -> list[list[bytes | None]]:
        """Per view: its 64 newest values (then its 64 writes values with ``writes_too``)."""
        keys: list[bytes] = []
        for view in views:
            newest, writes = self.meta_keys(view)
            keys += newest
            if writes_too:
                keys += writes
        with self._guard("reading"):
            values = self._connected().mget_nonatomic(keys)
        width = 2 * BUCKETS if writes_too else BUCKETS
        return [values[i * width : (i + 1) * width] for i in range(len(views))]

    def newest_event_ts(self, views: Sequence[str]) -> dict[str, int | None]:
        self._check_open()
        views = list(views)
        if not views:
            return {}
        return {view: _max_ts(values) for view, values in zip(views, self._meta_values(views, False))}

    def view_versions(self, views: Sequence[str]) -> dict[str, ViewVersion]:
        self._check_open()
        views = list(views)
        if not views:
            return {}
        out = {}
        for view, values in zip(views, self._meta_values(views, True)):
            out[view] = ViewVersion(_max_ts(values[:BUCKETS]), sum(int(v) for v in values[BUCKETS:] if v is not None))
        return out

    # -- blobs -----------------------------------------------------------------------------------
    def put_blobs(self, namespace: str, items: Mapping[bytes, bytes]) -> None:
        self._check_open()
        prefixes = self.blob_prefixes(namespace)
        groups: list[list[bytes]] = [[] for _ in range(BUCKETS)]
        for key, value in items.items():
            key = bytes(key)
            bucket = crc_hqx(key, 0) % BUCKETS
            groups[bucket] += (prefixes[bucket] + key, bytes(value))
        step = 2 * self.rows_per_script
        commands = [
            ("MSET", *group[start : start + step]) for group in groups for start in range(0, len(group), step)
        ]
        if not commands:
            return
        with self._guard("writing"):
            for result in _pipeline(self._connected(), commands):
                if isinstance(result, Exception):
                    raise result

    def get_blobs(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        full, _ = self._blob_keys(namespace, [bytes(k) for k in keys])
        if not full:
            return []
        with self._guard("reading"):
            return list(self._connected().mget_nonatomic(full))

    async def get_blobs_async(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        if not keys:
            return []
        if self._async_cluster is None:
            return await asyncio.to_thread(self.get_blobs, namespace, keys)
        return await self._cluster_mget_async(*self._blob_keys(namespace, [bytes(k) for k in keys]))

    def delete_namespace(self, namespace: str) -> int:
        prefixes = set(self.blob_prefixes(namespace))
        # One SCAN of every primary for the namespace under any bucket tag; the exact prefix is
        # checked after, as the glob's '*' inside the tag could reach past it.
        head = self._keys.prefix + b"__blob__:{"
        pattern = _glob_escape(head) + b"*}:" + _glob_escape(namespace.encode() + b":") + b"*"
        deleted = 0
        with self._guard("deleting"):
            client = self._connected()
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=1_000):
                if key[: key.find(b"}") + 2] + namespace.encode() + b":" not in prefixes:
                    continue
                batch.append(key)
                if len(batch) >= 1_000:
                    deleted += client.unlink(*batch)
                    batch = []
            if batch:
                deleted += client.unlink(*batch)
        return deleted

    def spread_keys(self, key: bytes) -> list[bytes]:
        """One key per bucket (``key@<bucket>.<n>``, the first ``n`` whose blob key lands in that
        bucket): the 64 buckets cover every primary's slots, so a marker under each is lost with
        any one shard."""
        return list(_spread_keys(bytes(key)))

    def compare_and_swap_blobs(
        self, namespace: str, swaps: Mapping[bytes, tuple[bytes | None, bytes]]
    ) -> list[bytes]:
        self._check_open()
        prefixes = self.blob_prefixes(namespace)
        if not swaps:
            return []
        order = {bytes(k): i for i, k in enumerate(swaps)}
        groups: dict[int, list[tuple[bytes, bytes | None, bytes]]] = {}
        for key, (expected, new) in swaps.items():
            key = bytes(key)
            groups.setdefault(crc_hqx(key, 0) % BUCKETS, []).append((key, expected, new))
        failed: list[bytes] = []
        with self._guard("writing"):
            once = self._swap_client()
            # One script per bucket, each atomic; one after the other, as a pipeline would
            # resend the commands of a dropped connection.
            for bucket, group in groups.items():
                args: list[bytes] = []
                for _, expected, new in group:
                    args += (b"0" if expected is None else b"1" + bytes(expected), bytes(new))
                keys = [prefixes[bucket] + key for key, _, _ in group]
                reply = once.execute_command("EVAL", _CAS_SCRIPT, len(keys), *keys, *args)
                failed += [group[int(i) - 1][0] for i in reply]
        return sorted(failed, key=order.__getitem__)

    # -- health ----------------------------------------------------------------------------------
    def check_health(self) -> list[str]:
        """Every node of the cluster: raises StoreUnavailableError when a slot is not served
        (cluster state not ok, a primary with slots down or failed); returns a sentence per
        weakness that still serves (a replica down, a primary without a replica)."""
        with self._guard("checking the cluster"):
            nodes = self._connected().cluster_nodes()
            fatal, warnings = cluster_health(nodes, self._node_client)
        if fatal:
            raise StoreUnavailableError(
                f"the redis online store at {self.address} cannot serve every slot: " + "; ".join(fatal),
                hint=self._hint(),
            )
        return warnings

    def ping(self) -> None:
        self.check_health()

    def _node_client(self, address: str) -> redis.Redis:
        client = self._nodes.get(address)
        if client is None:
            from redis.connection import parse_url

            params = parse_url(self.url)
            host, _, port = address.rpartition(":")
            params.update(host=host, port=int(port), socket_connect_timeout=2, socket_timeout=5)
            params.pop("db", None)
            client = self._nodes.setdefault(address, redis.Redis(retry=Retry(NoBackoff(), 0), **params))
        return client

    def close(self) -> None:
        if not self._closed:
            for client in (self._cluster, self._once_cluster, *self._nodes.values()):
                if client is not None:
                    client.close()
            if self._async_cluster is not None:
                self._async_cluster.close()
        OnlineStore.close(self)


def _pipeline(client: RedisCluster, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    pipe = client.pipeline()
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


def _max_ts(values: Sequence[bytes | None]) -> int | None:
    stamps = [_TS.unpack_from(v)[0] for v in values if v is not None]
    return max(stamps) if stamps else None


def _check_url(url: str) -> None:
    from redis.connection import parse_url

    try:
        params = parse_url(url)
    except ValueError as exc:
        raise ConfigError(
            f"bad online_store.url {redact(url)!r}: {exc}",
            hint="use the URL of any node of the cluster, such as redis://10.0.0.1:7000",
        ) from None
    if "path" in params:
        raise ConfigError(f"online_store.url {redact(url)!r}: a Redis Cluster is reached over TCP, not a Unix socket")
    if int(params.get("db") or 0) != 0:
        raise ConfigError(
            f"online_store.url {redact(url)!r} names database {params['db']}; a Redis Cluster has only database 0",
            hint="drop the database from the URL",
        )


@functools.lru_cache(maxsize=8)
def _spread_keys(key: bytes) -> tuple[bytes, ...]:
    out = []
    for bucket in range(BUCKETS):
        n = 0
        while crc_hqx(b"%s@%d.%d" % (key, bucket, n), 0) % BUCKETS != bucket:
            n += 1
        out.append(b"%s@%d.%d" % (key, bucket, n))
    return tuple(out)
