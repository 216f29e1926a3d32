"""Redis Cluster behaviour the conformance suite cannot show: slots that move under a running
store (resharding, a replica promoted), the slot-aware asyncio reader, the health check over
every node, misconfiguration, and streams on a cluster. The conformance suite itself runs over
the cluster as the ``redis_cluster`` backend (tests/online/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from featurestore.online.redis_cluster_async import AsyncClusterReader
from featurestore.online.redis_cluster_health import cluster_health
from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
from featurestore.online.redis_keys import BUCKET_SLOTS, bucket_of, key_slot
from featurestore.online.redis_store import RedisOnlineStore
from registry.errors import StoreUnavailableError

NOW_US = time.time_ns() // 1000


# -- the health check, against stand-ins ----------------------------------------------------------


class _Node:
    def __init__(self, state: str = "ok", down: bool = False) -> None:
        self.state, self.down = state, down

    def ping(self) -> bool:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        return True

    def execute_command(self, *args: Any) -> dict[str, str]:
        return {"cluster_state": self.state}


def _nodes(**flags: str) -> dict[str, dict[str, Any]]:
    base = {
        "a:1": {"node_id": "A", "flags": "master", "master_id": "-", "slots": [["0", "8191"]]},
        "b:1": {"node_id": "B", "flags": "master", "master_id": "-", "slots": [["8192", "16382"], ["16383"]]},
        "c:1": {"node_id": "C", "flags": "slave", "master_id": "A", "slots": []},
        "d:1": {"node_id": "D", "flags": "slave", "master_id": "B", "slots": []},
    }
    for address, value in flags.items():
        base[address.replace("_", ":")]["flags"] = value
    return base


def test_health_of_a_cluster_that_serves_everything() -> None:
    assert cluster_health(_nodes(), lambda a: _Node()) == ([], [])  # type: ignore[arg-type,return-value]


def test_health_a_replica_down_is_a_warning_and_a_primary_down_is_fatal() -> None:
    fatal, warnings = cluster_health(_nodes(), lambda a: _Node(down=a == "d:1"))  # type: ignore[arg-type,return-value]
    assert fatal == []
    assert [w.split(" (")[0] for w in warnings] == ["replica d:1 does not answer", "primary b:1 has no replica that answers"]
    fatal, _ = cluster_health(_nodes(), lambda a: _Node(down=a == "a:1"))  # type: ignore[arg-type,return-value]
    assert fatal[0].startswith("primary a:1 (8192 slots) does not answer")
    fatal, _ = cluster_health(_nodes(a_1="master,fail"), lambda a: _Node())  # type: ignore[arg-type,return-value]
    assert fatal == ["primary a:1 (8192 slots) flagged failed by the cluster"]
    fatal, warnings = cluster_health(_nodes(), lambda a: _Node(state="fail" if a == "c:1" else "ok"))  # type: ignore[arg-type,return-value]
    assert fatal == [] and warnings == ["replica c:1 says cluster_state:fail", "primary a:1 has no replica that answers"]
    fatal, _ = cluster_health(_nodes(), lambda a: _Node(state="fail" if a == "b:1" else "ok"))  # type: ignore[arg-type,return-value]
    assert fatal == ["primary b:1 (8192 slots) says cluster_state:fail"]


def test_health_uncovered_slots_are_fatal() -> None:
    nodes = _nodes()
    nodes["b:1"]["slots"] = [["8192", "16000"]]
    fatal, _ = cluster_health(nodes, lambda a: _Node())  # type: ignore[arg-type,return-value]
    assert fatal == ["383 of 16384 hash slots have no primary"]


# -- against the real cluster -----------------------------------------------------------------------

def _primary_of(url: str, slot: int) -> tuple[str, int]:
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(url)
    try:
        node = client.nodes_manager.get_node_from_slot(slot)
        return node.host, node.port
    finally:
        client.close()


def _node(address: tuple[str, int]) -> redis.Redis:
    return redis.Redis(host=address[0], port=address[1], socket_timeout=10)


def _move_slot(url: str, slot: int, target: tuple[str, int], keys: int | None = None) -> tuple[str, int]:
    """Reshard one slot to ``target`` the way `redis-cli --cluster reshard` does (IMPORTING /
    MIGRATING, MIGRATE of its keys, SETSLOT NODE everywhere). With ``keys``, stop half-way:
    that many keys moved, the slot still MIGRATING (``_move_slot`` again finishes it). Returns
    where the slot was."""
    source = _primary_of(url, slot)
    if source == target:
        return source
    src, dst = _node(source), _node(target)
    try:
        src_id, dst_id = src.execute_command("CLUSTER MYID"), dst.execute_command("CLUSTER MYID")
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        if keys is not None:
            some = src.execute_command("CLUSTER GETKEYSINSLOT", slot, keys)
            src.execute_command("MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *some)
            return source
        while batch := src.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
            src.execute_command("MIGRATE", target[0], target[1], "", 0, 5000, "KEYS", *batch)
        for client in (dst, src):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for address in _primaries(url):
            if address not in (source, target):
                other = _node(address)
                other.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                other.close()
    finally:
        src.close()
        dst.close()
    _wait_cluster_ok(url)
    return source


def _primaries(url: str) -> list[tuple[str, int]]:
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(url)
    try:
        return [(n.host, n.port) for n in client.get_primaries()]
    finally:
        client.close()


def _wait_cluster_ok(url: str, timeout: float = 30.0) -> None:
    """Until the cluster has settled: every node says cluster_state:ok, every node maps the
    slots to the same primaries, and every replica is in sync with its primary."""
    deadline = time.monotonic() + timeout
    while not _settled(url):
        if time.monotonic() > deadline:
            pytest.fail("the cluster did not settle (cluster_state:ok, one slot map, replicas in sync)")
        time.sleep(0.1)


def _settled(url: str) -> bool:
    from redis.cluster import RedisCluster

    try:
        client = RedisCluster.from_url(url)
        addresses = [(n.host, n.port) for n in client.get_nodes()]
        client.close()
        maps = set()
        for address in addresses:
            node = _node(address)
            try:
                if node.execute_command("CLUSTER INFO").get("cluster_state") != "ok":
                    return False
                replication = node.info("replication")
                if replication.get("role") == "slave" and replication.get("master_link_status") != "up":
                    return False
                if not _every_primary_has_a_replica(node.execute_command("CLUSTER NODES")):
                    return False  # e.g. a demoted primary not yet known as a replica everywhere
                slots = node.execute_command("CLUSTER SLOTS")
                maps.add(tuple(sorted((int(e[0]), int(e[1]), *(int(n[1]) for n in e[2:])) for e in slots)))
            finally:
                node.close()
        return len(maps) == 1
    except (redis.RedisError, redis.exceptions.RedisClusterException):
        return False


def _every_primary_has_a_replica(nodes: dict[str, dict[str, Any]]) -> bool:
    """In one node's view (CLUSTER NODES as redis-py parses it): every primary with slots has a
    replica that is not flagged failed; what /health checks, so the next test starts clean."""
    served = {str(n["node_id"]) for n in nodes.values() if "master" in str(n["flags"]) and n.get("slots")}
    backed = {
        str(n["master_id"])
        for n in nodes.values()
        if "slave" in str(n["flags"]) and "fail" not in str(n["flags"]).replace("fail?", "")
    }
    return served <= backed


def _state(address: tuple[str, int]) -> str:
    node = _node(address)
    try:
        return str(node.execute_command("CLUSTER INFO").get("cluster_state"))
    finally:
        node.close()


@pytest.fixture
def moved_slot(redis_cluster_url: str) -> Iterator[tuple[int, tuple[str, int]]]:
    """Bucket 0's slot, to be moved by the test; moved back afterwards."""
    slot = BUCKET_SLOTS[0]
    home = _primary_of(redis_cluster_url, slot)
    yield slot, home
    _move_slot(redis_cluster_url, slot, home)
    _wait_cluster_ok(redis_cluster_url)


def _rows(keys: list[bytes], ts: int, tag: bytes) -> list[tuple[bytes, int, int, bytes]]:
    return [(k, ts, 0, tag + k) for k in keys]


@pytest.mark.integration
def test_a_write_after_resharding_lands_newer_only(
    cluster_store: RedisClusterOnlineStore, redis_cluster_url: str, moved_slot: tuple[int, tuple[str, int]]
) -> None:
    slot, home = moved_slot
    keys = [b"%d" % i for i in range(400) if bucket_of(b"%d" % i) == 0]
    others = [b"%d" % i for i in range(400) if bucket_of(b"%d" % i) != 0]
    assert cluster_store.write_latest("users", _rows(keys + others, NOW_US, b"v1:")) == 400
    before = cluster_store.view_versions(["users"])["users"]
    target = next(a for a in _primaries(redis_cluster_url) if a != home)
    _move_slot(redis_cluster_url, slot, target)  # the store's slot map is now stale: MOVED
    # Older rows lose, newer rows win, wherever the slot went.
    assert cluster_store.write_latest("users", _rows(keys, NOW_US - 1, b"old:")) == 0
    assert cluster_store.write_latest("users", _rows(keys, NOW_US + 1, b"v2:")) == len(keys)
    assert _primary_of(redis_cluster_url, slot) == target
    got = cluster_store.read_latest([("users", k) for k in keys + others])
    assert got == [(NOW_US + 1, b"v2:" + k) for k in keys] + [(NOW_US, b"v1:" + k) for k in others]
    assert cluster_store.view_versions(["users"])["users"] != before
    assert cluster_store.newest_event_ts(["users"]) == {"users": NOW_US + 1}
    # The asyncio reader follows too (its map was read before the move).
    assert asyncio.run(cluster_store.read_latest_async([("users", k) for k in keys])) == got[: len(keys)]


@pytest.mark.integration
def test_reads_during_a_migration_follow_ask(
    cluster_store: RedisClusterOnlineStore, redis_cluster_url: str, moved_slot: tuple[int, tuple[str, int]]
) -> None:
    """Half of a slot's keys moved, the slot still MIGRATING: the source answers ASK for the
    moved ones, and both readers get every value."""
    slot, home = moved_slot
    keys = [b"%d" % i for i in range(600) if bucket_of(b"%d" % i) == 0]
    cluster_store.write_latest("users", _rows(keys, NOW_US, b"v:"))
    asyncio.run(cluster_store.read_latest_async([("users", keys[0])]))  # the reader's map: before
    target = next(a for a in _primaries(redis_cluster_url) if a != home)
    _move_slot(redis_cluster_url, slot, target, keys=len(keys) // 2)
    try:
        expected = [(NOW_US, b"v:" + k) for k in keys]
        # One key at a time: an MGET over keys on both sides is refused (TRYAGAIN) until the
        # migration ends, which is what a real reshard does within milliseconds.
        assert [cluster_store.read_latest([("users", k)])[0] for k in keys] == expected

        async def reads() -> list[Any]:
            return [(await cluster_store.read_latest_async([("users", k)]))[0] for k in keys]

        assert asyncio.run(reads()) == expected
    finally:
        _move_slot(redis_cluster_url, slot, target)  # finish it; the fixture moves it back


@pytest.mark.integration
def test_a_promoted_replica_serves_writes_and_reads(cluster_store: RedisClusterOnlineStore, redis_cluster_url: str) -> None:
    """CLUSTER FAILOVER on the replica of bucket 0's primary: the old primary now answers MOVED,
    the new one has no script loaded yet (NOSCRIPT); writes still land newer-only."""
    from redis.cluster import RedisCluster

    slot = BUCKET_SLOTS[0]
    _wait_cluster_ok(redis_cluster_url)
    keys = [b"%d" % i for i in range(300) if bucket_of(b"%d" % i) == 0]
    assert cluster_store.write_latest("users", _rows(keys, NOW_US, b"v1:")) == len(keys)
    asyncio.run(cluster_store.read_latest_async([("users", keys[0])]))
    admin = RedisCluster.from_url(redis_cluster_url)
    old = admin.nodes_manager.get_node_from_slot(slot)
    replica = next(n for n in admin.get_replicas() if _master_port((n.host, n.port)) == old.port)
    admin.close()
    promoted = (replica.host, replica.port)
    try:
        _failover(promoted, redis_cluster_url)
        assert _primary_of(redis_cluster_url, slot) == promoted
        assert cluster_store.write_latest("users", _rows(keys, NOW_US - 1, b"old:")) == 0
        assert cluster_store.write_latest("users", _rows(keys, NOW_US + 1, b"v2:")) == len(keys)
        expected = [(NOW_US + 1, b"v2:" + k) for k in keys]
        assert cluster_store.read_latest([("users", k) for k in keys]) == expected
        assert asyncio.run(cluster_store.read_latest_async([("users", k) for k in keys])) == expected
        # The old primary rejoins as a replica of the new one; until every node has heard, the
        # new primary is reported without a replica (a warning: it serves).
        deadline = time.monotonic() + 10
        while (warnings := cluster_store.check_health()) and time.monotonic() < deadline:
            assert all("replica" in w for w in warnings), warnings
            time.sleep(0.05)
        assert warnings == []
    finally:
        _failover((old.host, old.port), redis_cluster_url)  # back as it was


def _master_port(address: tuple[str, int]) -> int:
    node = _node(address)
    try:
        return int(node.info("replication").get("master_port", 0))
    finally:
        node.close()


def _failover(replica: tuple[str, int], url: str) -> None:
    """CLUSTER FAILOVER on ``replica``, once it is in sync with its primary; asked again if the
    primary did not hand over in time (Redis times a manual failover out after 5 s)."""
    node = _node(replica)
    try:
        deadline = time.monotonic() + 30
        while node.info("replication").get("master_link_status") != "up":
            if time.monotonic() > deadline:
                pytest.fail(f"{replica} is not in sync with its primary")
            time.sleep(0.05)
        for _ in range(3):
            node.execute_command("CLUSTER FAILOVER")
            asked = time.monotonic()
            while node.info("replication").get("role") != "master" and time.monotonic() - asked < 8:
                time.sleep(0.05)
            if node.info("replication").get("role") == "master":
                break
        else:
            pytest.fail(f"{replica} was not promoted")
    finally:
        node.close()
    _wait_cluster_ok(url)


@pytest.mark.integration
def test_the_async_reader_rereads_a_stale_slot_map(redis_cluster_url: str, cluster_store: RedisClusterOnlineStore) -> None:
    keys = [b"%d" % i for i in range(500)]
    cluster_store.write_latest("users", _rows(keys, NOW_US, b"v:"))
    full, slots = cluster_store._row_keys([("users", k) for k in keys])
    assert [key_slot(k) for k in full] == slots
    reader = AsyncClusterReader(redis_cluster_url)

    async def scenario() -> list[Any]:
        await reader.refresh()
        assert reader._slots is not None
        wrong = reader._slots[0]
        reader._slots = [wrong] * len(reader._slots)  # as if every slot had moved away from it
        refreshes = reader.refreshes
        values = await reader.mget(full, slots)
        assert reader.refreshes == refreshes + 1  # one refresh, shared by every slot
        return values

    try:
        assert asyncio.run(scenario()) == [cluster_store.client.get(k) for k in full]
    finally:
        reader.close()


@pytest.mark.integration
def test_the_async_reader_rereads_the_map_when_a_node_is_gone(
    redis_cluster_url: str, cluster_store: RedisClusterOnlineStore
) -> None:
    keys = [b"%d" % i for i in range(100)]
    cluster_store.write_latest("users", _rows(keys, NOW_US, b"v:"))
    full, slots = cluster_store._row_keys([("users", k) for k in keys])
    reader = AsyncClusterReader(redis_cluster_url)

    async def scenario() -> list[Any]:
        await reader.refresh()
        reader._slots = [("127.0.0.1", 1)] * len(reader._slots or [])  # a primary that died
        return await reader.mget(full, slots)

    try:
        assert asyncio.run(scenario()) == [cluster_store.client.get(k) for k in full]
    finally:
        reader.close()


@pytest.mark.integration
def test_health_asks_every_node(cluster_store: RedisClusterOnlineStore) -> None:
    assert cluster_store.check_health() == []
    cluster_store.ping()
    assert len(cluster_store._nodes) == 6  # every primary and replica was asked


# -- misconfiguration ------------------------------------------------------------------------------


@pytest.mark.integration
def test_cluster_true_on_a_single_redis_says_so(redis_url: str, unique_project: str) -> None:
    store = RedisClusterOnlineStore(unique_project, redis_url)
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.read_latest([("users", b"1")])
        assert "online_store.cluster: false" in str(info.value.hint)
    finally:
        store.close()


@pytest.mark.integration
def test_cluster_false_on_a_cluster_says_so(redis_cluster_url: str, unique_project: str) -> None:
    store = RedisOnlineStore(unique_project, redis_cluster_url)
    try:
        with pytest.raises(StoreUnavailableError) as info:
            store.write_latest("users", [(b"%d" % i, 1, 0, b"x") for i in range(50)])
        assert "online_store.cluster: true" in str(info.value.hint)
        with pytest.raises(StoreUnavailableError, match="cluster"):
            asyncio.run(store.read_latest_async([("users", b"%d" % i) for i in range(50)]))
    finally:
        store.close()


def test_a_cluster_url_with_a_database_is_refused() -> None:
    from registry.errors import ConfigError

    with pytest.raises(ConfigError, match="only database 0"):
        RedisClusterOnlineStore("demo", "redis://127.0.0.1:7000/3")


# -- streams -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_push_markers_go_to_the_streams_slot(redis_cluster_url: str, unique_project: str) -> None:
    from featurestore.streams.redis_streams import RedisStreamWriter, connect

    stream = f"{unique_project}_clicks"
    writer = RedisStreamWriter(redis_cluster_url, stream)
    try:
        assert writer.cluster and not isinstance(connect(redis_cluster_url), redis.Redis)
        first = writer.append_once([b'{"a":1}', b'{"a":2}'], f"{unique_project}:__push__:v:p1", "d1", 60)
        again = writer.append_once([b'{"a":1}', b'{"a":2}'], f"{unique_project}:__push__:v:p1", "d1", 60)
        assert (first.count, first.duplicate, again.duplicate, again.first_id) == (2, False, True, first.first_id)
        marker = f"{{{stream}}}:{unique_project}:__push__:v:p1"
        assert key_slot(marker.encode()) == key_slot(stream.encode())
        assert 0 < writer.client.pttl(marker) <= 60_000
        assert len(writer.append([b'{"a":3}'])) == 1 and writer.client.xlen(stream) == 3
    finally:
        writer.client.delete(stream, f"{{{stream}}}:{unique_project}:__push__:v:p1")
        writer.close()
