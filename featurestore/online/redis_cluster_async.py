"""Slot-aware asyncio reads from Redis Cluster, on the pipelined connections of ``redis_async``.

The online server's reads on a cluster, with the same low per-command cost as on one Redis:
a request's keys are grouped by hash slot (the store knows each key's slot), one MGET per slot
goes to the primary serving that slot, a node's MGETs leave back to back on its one connection
per event loop (``AsyncRedisReader``: concurrent requests share the packets), and the nodes are
asked in parallel. So a read costs one round trip per shard, not one per slot.

The slot map comes from ``CLUSTER SLOTS``, asked of any node that answers (the URL's first, then
every node seen). It is read again when a node answers ``MOVED`` (the slot moved: resharding or
a failover) or cannot be reached (its primary may have failed; a replica takes over within the
cluster's node timeout). ``ASK`` (the slot is being migrated and the key is already on the
target) sends ``ASKING`` and the MGET to the named node; ``TRYAGAIN`` (a migration split the
keys of one MGET) waits a moment. After ``max_attempts`` the last error is raised: reads stay
fail-fast, like the single-Redis reader's one retry. Reads go to primaries only, so a read never
misses a write that was acknowledged before it started.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Sequence
from typing import Any

from featurestore.online.redis_async import AsyncRedisReader, RespError, supports_url
from featurestore.online.redis_keys import HASH_SLOTS

__all__ = ["AsyncClusterReader"]

Address = tuple[str, int]
_NODE_ERRORS = (ConnectionError, TimeoutError, asyncio.TimeoutError, OSError)


class AsyncClusterReader:
    """MGETs across the slots of the Redis Cluster that ``url`` names (any one of its nodes).

    >>> reader = AsyncClusterReader("redis://127.0.0.1:7000")  # doctest: +SKIP
    >>> await reader.mget([b"{a}x", b"{b}y"], [15495, 3300])  # doctest: +SKIP
    [b'1', None]
    """

    def __init__(self, url: str, connect_timeout: float = 5.0, timeout: float = 30.0, max_attempts: int = 5) -> None:
        if not supports_url(url):
            raise ValueError("AsyncClusterReader handles redis:// URLs")
        self.url = url
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self.max_attempts = max_attempts
        seed = AsyncRedisReader(url, connect_timeout, timeout).params
        self._seed: Address = (seed.get("host", "127.0.0.1"), int(seed.get("port", 6379)))
        self._nodes: dict[Address, AsyncRedisReader] = {}
        self._slots: list[Address | None] | None = None
        self.refreshes = 0  # slot maps read so far (tests and metrics)
        self._refreshing: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]] = (
            weakref.WeakKeyDictionary()
        )

    # -- the slot map ------------------------------------------------------------------------------
    def _node(self, address: Address) -> AsyncRedisReader:
        reader = self._nodes.get(address)
        if reader is None:
            reader = self._nodes.setdefault(
                address, AsyncRedisReader(self.url, self.connect_timeout, self.timeout, address=address)
            )
        return reader

    async def refresh(self, seen: int | None = None) -> None:
        """Read the slot map again, unless it was read since the caller's ``refreshes`` count
        ``seen``. Concurrent callers of one event loop share one ``CLUSTER SLOTS``."""
        if seen is not None and seen != self.refreshes:
            return
        loop = asyncio.get_running_loop()
        task = self._refreshing.get(loop)
        if task is None:
            task = self._refreshing[loop] = loop.create_task(self._load())
            task.add_done_callback(lambda _: self._refreshing.pop(loop, None))
        await asyncio.shield(task)

    async def _load(self) -> None:
        candidates = [self._seed, *(a for a in list(self._nodes) if a != self._seed)]
        error: BaseException | None = None
        for address in candidates:
            try:
                reply = await self._node(address).execute(b"CLUSTER", b"SLOTS")
            except (*_NODE_ERRORS, RespError) as exc:
                error = exc
                continue
            slots: list[Address | None] = [None] * HASH_SLOTS
            for entry in reply:
                start, end, primary = int(entry[0]), int(entry[1]), entry[2]
                # An empty host means "the address you reached me at".
                host = primary[0].decode() if primary[0] else address[0]
                node = (host, int(primary[1]))
                slots[start : end + 1] = [node] * (end + 1 - start)
            self._slots = slots
            self.refreshes += 1
            return
        assert error is not None
        raise error

    # -- reads -------------------------------------------------------------------------------------
    async def mget(self, keys: Sequence[bytes], slots: Sequence[int]) -> list[bytes | None]:
        """The values of ``keys`` (None when missing), in order; ``slots[i]`` is the hash slot
        of ``keys[i]``. Raises ``RespError`` for an error reply that no retry can help (e.g.
        CLUSTERDOWN), ``ConnectionError``/``TimeoutError``/``OSError`` when no node serves."""
        out: list[bytes | None] = [None] * len(keys)
        if not keys:
            return out
        if self._slots is None:
            await self.refresh(self.refreshes)
        pending: dict[int, list[int]] = {}
        for i, slot in enumerate(slots):
            pending.setdefault(slot, []).append(i)
        asking: dict[int, Address] = {}
        error: BaseException | None = None
        for attempt in range(self.max_attempts):
            seen = self.refreshes
            assert self._slots is not None
            by_node: dict[Address, list[int]] = {}
            retry: dict[int, list[int]] = {}
            for slot, indexes in pending.items():
                address = asking.get(slot) or self._slots[slot]
                if address is None:  # an uncovered slot: the map may be out of date
                    retry[slot] = indexes
                    error = RespError(f"CLUSTERDOWN Hash slot {slot} not served")
                else:
                    by_node.setdefault(address, []).append(slot)
            replies = await asyncio.gather(
                *(self._send(address, node_slots, pending, keys, asking) for address, node_slots in by_node.items()),
                return_exceptions=True,
            )
            refresh, wait, asking = bool(retry), False, {}
            for (address, node_slots), result in zip(by_node.items(), replies):
                if isinstance(result, _NODE_ERRORS):
                    error, refresh = result, True
                    retry.update((slot, pending[slot]) for slot in node_slots)
                    continue
                if isinstance(result, BaseException):
                    raise result
                for slot, reply in zip(node_slots, result):
                    if not isinstance(reply, RespError):
                        for i, value in zip(pending[slot], reply):
                            out[i] = value
                        continue
                    text = str(reply)
                    if text.startswith("MOVED "):
                        refresh = True
                    elif text.startswith("ASK "):
                        host, _, port = text.split()[2].rpartition(":")
                        asking[slot] = (host or address[0], int(port))
                    elif text.startswith("TRYAGAIN"):
                        wait = True
                    else:
                        raise reply
                    error = reply
                    retry[slot] = pending[slot]
            if not retry:
                return out
            pending = retry
            if attempt + 1 == self.max_attempts:
                break
            if refresh:
                await self.refresh(seen)
            if wait or refresh:
                await asyncio.sleep(0.01 * (attempt + 1))
        assert error is not None
        raise error

    async def _send(
        self, address: Address, slots: list[int], pending: dict[int, list[int]], keys: Sequence[bytes],
        asking: dict[int, Address],
    ) -> list[Any]:
        """One MGET per slot, back to back on the node's connection; the replies in slot order."""
        commands: list[tuple[bytes, ...]] = []
        for slot in slots:
            if slot in asking:
                commands.append((b"ASKING",))
            commands.append((b"MGET", *[keys[i] for i in pending[slot]]))
        replies = await self._node(address).execute_many(commands)
        if not asking:
            return replies
        out, position = [], 0
        for slot in slots:
            position += slot in asking  # skip ASKING's +OK
            out.append(replies[position])
            position += 1
        return out

    def close(self) -> None:
        """Close every node's connections (from any thread)."""
        for reader in list(self._nodes.values()):
            reader.close()
