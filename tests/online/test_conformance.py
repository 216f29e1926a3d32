"""The online store conformance suite: every backend must pass every test here.

Tests that only make sense for one backend (Redis expiry and round trips, SQLite with several
processes) follow the shared ones and say which backend they are about.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore.config import OnlineStoreConfig
from featurestore.online.base import OnlineStore
from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.factory import BACKENDS, load_backend, open_online_store
from featurestore.online.memory import MemoryOnlineStore
from featurestore.online.redis_store import RedisOnlineStore
from registry.errors import DataError, StoreUnavailableError, UserError

NOW_US = time.time_ns() // 1000


def row(key: bytes, event_ts: int, created_ts: int = 0, payload: bytes | None = None) -> tuple:
    return (key, event_ts, created_ts, payload if payload is not None else b"p%d" % event_ts)


# -- shared behaviour ---------------------------------------------------------------------------


def test_round_trip(store: OnlineStore) -> None:
    rows = [row(b"1", 100, 1, b"one"), row(b"2", 200, 2, b""), row(b"a|b\\c", 300, 3, b"\x00\xff")]
    assert store.write_latest("users", rows) == 3
    assert store.read_latest([("users", r[0]) for r in rows]) == [
        (100, b"one"),
        (200, b""),
        (300, b"\x00\xff"),
    ]


def test_older_row_is_not_written(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 100, 5, b"new")])
    assert store.write_latest("users", [row(b"1", 99, 9, b"late")]) == 0
    assert store.write_latest("users", [row(b"1", 100, 4, b"same event, older write")]) == 0
    assert store.read_latest([("users", b"1")]) == [(100, b"new")]


def test_equal_timestamps_rewrite_and_later_created_wins(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 100, 5, b"first")])
    assert store.write_latest("users", [row(b"1", 100, 5, b"rerun")]) == 1
    assert store.read_latest([("users", b"1")]) == [(100, b"rerun")]
    assert store.write_latest("users", [row(b"1", 100, 6, b"corrected")]) == 1
    assert store.read_latest([("users", b"1")]) == [(100, b"corrected")]


def test_repeated_key_in_one_write_keeps_the_newest(store: OnlineStore) -> None:
    rows = [row(b"1", 300, 0, b"newest"), row(b"1", 100, 0, b"old"), row(b"1", 200, 0, b"mid")]
    assert store.write_latest("users", rows) == 1
    assert store.read_latest([("users", b"1")]) == [(300, b"newest")]


def test_negative_and_large_timestamps_compare_exactly(store: OnlineStore) -> None:
    # 2**53 + 1 is not a double; the Redis script must not compare through Lua numbers.
    big = 2**53
    store.write_latest("users", [row(b"1", big + 1, 0, b"later")])
    assert store.write_latest("users", [row(b"1", big, 0, b"earlier")]) == 0
    store.write_latest("users", [row(b"2", -5, 0, b"before 1970")])
    assert store.write_latest("users", [row(b"2", -6, 0, b"even earlier")]) == 0
    assert store.read_latest([("users", b"1"), ("users", b"2")]) == [
        (big + 1, b"later"),
        (-5, b"before 1970"),
    ]
    assert store.newest_event_ts(["users"]) == {"users": big + 1}


def test_missing_keys_read_as_none(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 100)])
    assert store.read_latest([("users", b"2"), ("users", b"1"), ("items", b"1")]) == [
        None,
        (100, b"p100"),
        None,
    ]
    assert store.read_latest([]) == []


def test_one_read_mixes_views_and_keeps_order(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 10, 0, b"u1"), row(b"2", 20, 0, b"u2")])
    store.write_latest("items", [row(b"1", 30, 0, b"i1")])
    got = store.read_latest(
        [("items", b"1"), ("users", b"2"), ("users", b"1"), ("items", b"2"), ("users", b"2")]
    )
    assert got == [(30, b"i1"), (20, b"u2"), (10, b"u1"), None, (20, b"u2")]


def test_async_read_equals_the_blocking_read(store: OnlineStore) -> None:
    """The server's read path: same answers, same order, also for many concurrent reads."""
    store.write_latest("users", [row(b"%d" % i, i + 1, 0, b"u\r\n%d" % i) for i in range(50)])
    store.write_latest("items", [row(b"1", 30, 0, b"i1")])
    keys = [("items", b"1"), ("users", b"7"), ("users", b"nope"), ("items", b"2"), ("users", b"7")]

    async def reads() -> list:
        single = await store.read_latest_async(keys)
        many = await asyncio.gather(*(store.read_latest_async([("users", b"%d" % i)]) for i in range(50)))
        return [single, many, await store.read_latest_async([])]

    single, many, empty = asyncio.run(reads())
    assert single == store.read_latest(keys) == [(30, b"i1"), (8, b"u\r\n7"), None, None, (8, b"u\r\n7")]
    assert many == [[(i + 1, b"u\r\n%d" % i)] for i in range(50)]
    assert empty == []
    # A second event loop (a new worker, a new test) gets answers too.
    assert asyncio.run(store.read_latest_async(keys[:2])) == single[:2]


def test_views_are_separate_key_spaces(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 10, 0, b"user")])
    store.write_latest("users_v2", [row(b"1", 5, 0, b"other view")])
    assert store.read_latest([("users", b"1"), ("users_v2", b"1")]) == [
        (10, b"user"),
        (5, b"other view"),
    ]


def test_newest_event_ts(store: OnlineStore) -> None:
    assert store.newest_event_ts(["users"]) == {"users": None}
    store.write_latest("users", [row(b"1", 100), row(b"2", 300), row(b"3", 200)])
    store.write_latest("users", [row(b"4", 50)])
    store.write_latest("items", [row(b"1", 7)])
    assert store.newest_event_ts(["users", "items", "never"]) == {
        "users": 300,
        "items": 7,
        "never": None,
    }
    assert store.newest_event_ts([]) == {}


def test_view_versions_move_with_every_winning_write(store: OnlineStore) -> None:
    """What the item cache polls (review finding 3a of issue 14): a future-dated row pins the
    newest time, and the version must still move for every later row that wins."""
    assert store.view_versions(["users"]) == {"users": (None, 0)}
    assert store.view_versions([]) == {}
    future = NOW_US + 3600 * 1_000_000
    store.write_latest("users", [row(b"1", future)])
    pinned = store.view_versions(["users"])["users"]
    assert pinned.newest_event_ts == future
    assert store.write_latest("users", [row(b"2", NOW_US)]) == 1  # older than the newest: wins
    moved = store.view_versions(["users"])["users"]
    assert moved != pinned and moved.newest_event_ts == future
    assert store.write_latest("users", [row(b"2", NOW_US - 1)]) == 0  # loses: nothing moves
    assert store.view_versions(["users"])["users"] == moved
    assert store.write_latest("users", [row(b"2", NOW_US)]) == 1  # a rerun rewrites: it moves
    rerun = store.view_versions(["users"])["users"]
    assert rerun not in (moved, pinned)
    store.write_latest("items", [row(b"1", 7)])
    both = store.view_versions(["users", "items", "never"])
    assert both["users"] == rerun and both["items"].newest_event_ts == 7
    assert both["never"] == (None, 0)
    assert store.newest_event_ts(["users"]) == {"users": future}


def test_blobs_round_trip_and_delete_namespace(store: OnlineStore) -> None:
    store.put_blobs("model_state/ctr", {b"u1": b"\x01\x02", b"u:2": b"", b"u*3": b"x" * 5000})
    store.put_blobs("model_state", {b"u1": b"sibling namespace"})
    store.put_blobs("model_state/ctr", {b"u1": b"overwritten"})
    assert store.get_blobs("model_state/ctr", [b"u1", b"missing", b"u:2", b"u*3"]) == [
        b"overwritten",
        None,
        b"",
        b"x" * 5000,
    ]
    assert store.get_blobs("model_state/ctr", []) == []
    assert store.delete_namespace("model_state/ctr") == 3
    assert store.get_blobs("model_state/ctr", [b"u1", b"u:2"]) == [None, None]
    assert store.get_blobs("model_state", [b"u1"]) == [b"sibling namespace"]
    assert store.delete_namespace("model_state/ctr") == 0


def test_blobs_and_latest_values_do_not_mix(store: OnlineStore) -> None:
    store.put_blobs("users", {b"1": b"blob"})
    store.write_latest("users", [row(b"1", 10, 0, b"value")])
    assert store.read_latest([("users", b"1")]) == [(10, b"value")]
    assert store.get_blobs("users", [b"1"]) == [b"blob"]


def test_bad_namespace_and_view_names_are_refused(store: OnlineStore) -> None:
    with pytest.raises(UserError, match="namespace"):
        store.put_blobs("a:b", {b"k": b"v"})
    with pytest.raises(UserError, match="namespace"):
        store.get_blobs("", [b"k"])
    with pytest.raises(UserError, match="feature view"):
        store.write_latest("__meta__", [row(b"1", 1)])


def test_bad_rows_are_refused(store: OnlineStore) -> None:
    with pytest.raises(DataError, match="entity_key: bytes"):
        store.write_latest("users", [("1", 10, 0, b"str key")])  # type: ignore[list-item]
    with pytest.raises(DataError, match="entity_key: bytes"):
        store.write_latest("users", [(b"1", 1.5, 0, b"float time")])  # type: ignore[list-item]


def test_rows_may_come_from_a_generator(store: OnlineStore) -> None:
    generated = (row(b"%d" % i, i + 1) for i in range(12_000))
    written = store.write_latest("users", generated)  # type: ignore[arg-type]
    assert written == 12_000
    assert store.read_latest([("users", b"11999")]) == [(12_000, b"p12000")]


def test_large_write_reads_back_equal(store: OnlineStore) -> None:
    rows = [(b"%d" % i, NOW_US - i, i, i.to_bytes(4, "little") * 3) for i in range(50_000)]
    assert store.write_latest("big", rows) == 50_000
    got = store.read_latest([("big", r[0]) for r in rows])
    assert got == [(r[1], r[3]) for r in rows]
    assert store.newest_event_ts(["big"]) == {"big": NOW_US}
    # Running the same data again rewrites every row (idempotent, equal timestamps win).
    assert store.write_latest("big", rows[:1000]) == 1000


def test_ttl_skips_rows_already_expired(store: OnlineStore) -> None:
    hour_us = 3600 * 1_000_000
    fresh, stale = NOW_US, NOW_US - 2 * hour_us
    assert store.write_latest("users", [row(b"1", fresh), row(b"2", stale)], ttl_seconds=3600) == 1
    assert store.read_latest([("users", b"1"), ("users", b"2")]) == [(fresh, b"p%d" % fresh), None]
    assert store.newest_event_ts(["users"]) == {"users": fresh}
    with pytest.raises(UserError, match="ttl_seconds"):
        store.write_latest("users", [row(b"1", fresh)], ttl_seconds=-1)


def test_closed_store_raises_unavailable(store: OnlineStore) -> None:
    store.write_latest("users", [row(b"1", 1)])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.read_latest([("users", b"1")])
    with pytest.raises(StoreUnavailableError, match="closed"):
        store.ping()
    with pytest.raises(StoreUnavailableError, match="closed"):
        asyncio.run(store.read_latest_async([("users", b"1")]))


def test_ping_and_capabilities(store: OnlineStore, backend: str) -> None:
    store.ping()
    assert store.check_health() == []
    assert store.kind == backend.removesuffix("_cluster")
    assert store.supports_ttl is backend.startswith("redis")
    assert store.multi_process is (backend != "memory")
    assert store.cluster is (backend == "redis_cluster")
    assert store.project in repr(store)


# -- factory ------------------------------------------------------------------------------------


def test_factory_resolves_relative_embedded_path(tmp_path: Path) -> None:
    config = OnlineStoreConfig.model_validate({"type": "embedded", "path": "deep/er/online.db"})
    with open_online_store(config, "demo", tmp_path) as opened:
        assert isinstance(opened, EmbeddedOnlineStore)
        assert opened.path == tmp_path / "deep/er/online.db"
        assert opened.path.is_file()


def test_factory_map_names_only_online_stores() -> None:
    assert set(BACKENDS) == {"memory", "embedded", "redis"}
    for kind in BACKENDS:
        cls = load_backend(kind)
        assert issubclass(cls, OnlineStore) and cls.kind == kind and not cls.cluster
    cluster = load_backend("redis", cluster=True)
    assert cluster.kind == "redis" and cluster.cluster


def test_the_cluster_switch_is_checked(tmp_path: Path) -> None:
    from registry.errors import ConfigError

    with pytest.raises(ValueError, match="cluster: true needs type: redis"):
        OnlineStoreConfig.model_validate({"type": "embedded", "cluster": True})
    config = OnlineStoreConfig.model_validate({"type": "redis", "url": "redis://h:7000", "cluster": "true"})
    with pytest.raises(ConfigError, match="open_online_store"):
        RedisOnlineStore.from_config(config, "demo", tmp_path)


def test_factory_refuses_a_class_that_is_not_a_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BACKENDS, "memory", "pathlib:Path")
    with pytest.raises(UserError, match="not an OnlineStore"):
        load_backend("memory")
    with pytest.raises(UserError, match="unknown online_store.type"):
        load_backend("cassandra")


def test_unimplemented_method_names_itself() -> None:
    class Partial(MemoryOnlineStore):
        def put_blobs(self, namespace: str, items: Any) -> None:
            OnlineStore.put_blobs(self, namespace, items)

    with pytest.raises(NotImplementedError, match=r"Partial\.put_blobs"):
        Partial("demo").put_blobs("ns", {})


# -- unavailable stores -------------------------------------------------------------------------


def test_redis_at_a_closed_port_is_unavailable() -> None:
    store = RedisOnlineStore("demo", "redis://:secret@127.0.0.1:1/0")
    for call in (
        store.ping,
        lambda: store.read_latest([("users", b"1")]),
        lambda: store.write_latest("users", [row(b"1", 1)]),
        lambda: store.get_blobs("ns", [b"k"]),
        lambda: asyncio.run(store.read_latest_async([("users", b"1")])),
    ):
        with pytest.raises(StoreUnavailableError) as info:
            call()
        message = str(info.value)
        assert "redis online store at redis://:***@127.0.0.1:1/0" in message
        assert "secret" not in message
        assert "set online_store.url" in message
        assert info.value.retryable


def test_embedded_store_under_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "not_a_dir").write_text("x")
    with pytest.raises(StoreUnavailableError, match="online_store.path"):
        EmbeddedOnlineStore("demo", tmp_path / "not_a_dir" / "online.db")


def test_embedded_store_on_a_foreign_file_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "online.db"
    path.write_bytes(b"this is not a database, it is a text file" * 100)
    with pytest.raises(StoreUnavailableError, match="online store file"):
        EmbeddedOnlineStore("demo", path)


# -- embedded: several processes ----------------------------------------------------------------

ROUNDS, KEYS = 12, 1_500


def _event_ts(worker: int, round_: int, key: int) -> int:
    # Each key sees its rounds in a different order, and the two workers interleave.
    return ((round_ * 7 + key) % ROUNDS) * 2 + worker


def _write_from_process(path: str, project: str, worker: int, barrier: Any) -> None:
    store = EmbeddedOnlineStore(project, path)
    barrier.wait(timeout=60)
    for round_ in range(ROUNDS):
        rows = []
        for key in range(KEYS):
            ts = _event_ts(worker, round_, key)
            rows.append((b"%d" % key, ts, worker, b"w%d:%d" % (worker, ts)))
        store.write_latest("shared", rows)
    store.close()


def test_embedded_two_processes_end_with_the_newest_values(tmp_path: Path) -> None:
    path = str(tmp_path / "online.db")
    EmbeddedOnlineStore("demo", path).close()  # create the schema once, as `apply` would
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_write_from_process, args=(path, "demo", w, barrier), daemon=True)
        for w in (0, 1)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=120)
    assert [p.exitcode for p in workers] == [0, 0]
    store = EmbeddedOnlineStore("demo", path)
    got = store.read_latest([("shared", b"%d" % k) for k in range(KEYS)])
    expected = []
    for key in range(KEYS):
        ts, worker = max((_event_ts(w, r, key), w) for w in (0, 1) for r in range(ROUNDS))
        expected.append((ts, b"w%d:%d" % (worker, ts)))
    assert got == expected
    assert store.newest_event_ts(["shared"]) == {"shared": 2 * ROUNDS - 1}
    store.close()


# -- redis: expiry and round trips --------------------------------------------------------------


@pytest.mark.integration
def test_redis_ttl_sets_expiry_at_event_time_plus_ttl(redis_store: RedisOnlineStore) -> None:
    client = redis_store.client
    prefix = redis_store.project.encode() + b":users:"
    event_ts = NOW_US - 1_000_000  # one second ago
    assert redis_store.write_latest("users", [row(b"1", event_ts)], ttl_seconds=3600) == 1
    assert 0 < client.pttl(prefix + b"1") <= 3600 * 1000
    expire_at_ms = -(-(event_ts + 3600 * 1_000_000) // 1000)
    assert client.execute_command("PEXPIRETIME", prefix + b"1") == expire_at_ms
    # Without a TTL the key never expires; the meta key never does.
    redis_store.write_latest("users", [row(b"2", event_ts)])
    assert client.pttl(prefix + b"2") == -1
    assert client.pttl(redis_store.newest_key("users")) == -1
    # An already expired row is not written at all.
    stale = NOW_US - 7200 * 1_000_000
    assert redis_store.write_latest("users", [row(b"3", stale)], ttl_seconds=3600) == 0
    assert client.exists(prefix + b"3") == 0


@pytest.mark.integration
def test_redis_reads_are_one_round_trip(
    redis_store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_store.write_latest("users", [row(b"%d" % i, i + 1) for i in range(200)])
    redis_store.write_latest("items", [row(b"%d" % i, i + 1) for i in range(100)])
    redis_store.put_blobs("state", {b"%d" % i: b"b" for i in range(50)})
    calls = _counting(redis_store.client, monkeypatch)
    keys = [("users", b"%d" % i) for i in range(150)] + [("items", b"%d" % i) for i in range(150)]
    got = redis_store.read_latest(keys)
    assert calls == ["MGET"]
    assert sum(v is not None for v in got) == 150 + 100
    calls.clear()
    assert redis_store.get_blobs("state", [b"%d" % i for i in range(60)]).count(None) == 10
    assert redis_store.newest_event_ts(["users", "items"]) == {"users": 200, "items": 100}
    assert calls == ["MGET", "MGET"]


@pytest.mark.integration
def test_redis_writes_are_one_pipeline_per_chunk(
    redis_store: RedisOnlineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_store.write_latest("users", [row(b"0", 1)])  # loads the script
    calls = _counting(redis_store.client, monkeypatch)
    rows = [row(b"%d" % i, i + 1) for i in range(2 * redis_store.rows_per_pipeline + 1)]
    assert redis_store.write_latest("users", rows) == len(rows)
    assert calls == ["PIPELINE"] * 3


@pytest.mark.integration
def test_redis_reloads_a_flushed_script(redis_store: RedisOnlineStore) -> None:
    redis_store.write_latest("users", [row(b"1", 1)])
    redis_store.client.script_flush()
    assert redis_store.write_latest("users", [row(b"1", 2)]) == 1
    assert redis_store.read_latest([("users", b"1")]) == [(2, b"p2")]


def _counting(client: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every command sent outside a pipeline and every pipeline execute."""
    calls: list[str] = []
    send = client.execute_command

    def execute_command(*args: Any, **kwargs: Any) -> Any:
        calls.append(str(args[0]))
        return send(*args, **kwargs)

    make_pipeline = client.pipeline

    def pipeline(*args: Any, **kwargs: Any) -> Any:
        pipe = make_pipeline(*args, **kwargs)
        run = pipe.execute

        def execute(*eargs: Any, **ekwargs: Any) -> Any:
            calls.append("PIPELINE")
            return run(*eargs, **ekwargs)

        pipe.execute = execute
        return pipe

    monkeypatch.setattr(client, "execute_command", execute_command)
    monkeypatch.setattr(client, "pipeline", pipeline)
    return calls
