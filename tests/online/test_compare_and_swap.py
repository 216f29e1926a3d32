"""compare_and_swap_blobs: the primitive that keeps concurrent per-user updates from being lost."""

from __future__ import annotations

import multiprocessing
import struct
import threading
from pathlib import Path

import pytest

from featurestore.config import OnlineStoreConfig
from featurestore.online.base import OnlineStore
from featurestore.online.factory import open_online_store
from tests.online.conftest import store_config


def test_swap_semantics(store: OnlineStore) -> None:
    assert store.compare_and_swap_blobs("cas", {b"a": (None, b"1"), b"b": (None, b"1")}) == []
    assert store.get_blobs("cas", [b"a", b"b"]) == [b"1", b"1"]
    # One stale expectation fails alone; the other key is written.
    failed = store.compare_and_swap_blobs("cas", {b"a": (b"1", b"2"), b"b": (b"0", b"2")})
    assert failed == [b"b"]
    assert store.get_blobs("cas", [b"a", b"b"]) == [b"2", b"1"]
    # Absent means absent: an existing key does not match None.
    assert store.compare_and_swap_blobs("cas", {b"a": (None, b"3")}) == [b"a"]
    assert store.compare_and_swap_blobs("cas", {}) == []


def _increment(store: OnlineStore, times: int) -> None:
    for _ in range(times):
        while True:
            (current,) = store.get_blobs("cas", [b"counter"])
            value = struct.unpack("<q", current)[0] if current else 0
            if not store.compare_and_swap_blobs("cas", {b"counter": (current, struct.pack("<q", value + 1))}):
                break


def test_concurrent_increments_lose_nothing_threads(store: OnlineStore) -> None:
    threads = [threading.Thread(target=_increment, args=(store, 200)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert struct.unpack("<q", store.get_blobs("cas", [b"counter"])[0])[0] == 600


def _increment_in_process(section: dict, root: str, project: str, times: int, barrier) -> None:  # type: ignore[no-untyped-def]
    config = OnlineStoreConfig.model_validate(section)
    store = open_online_store(config, project, Path(root))
    store.ping()  # open (and, for a new file, initialise) before the race starts
    barrier.wait(timeout=60)
    _increment(store, times)
    store.close()


@pytest.mark.parametrize(
    "kind",
    [
        "embedded",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("redis_cluster", marks=pytest.mark.integration),
    ],
)
def test_concurrent_increments_lose_nothing_processes(
    kind: str, tmp_path: Path, unique_project: str, request: pytest.FixtureRequest
) -> None:
    section = store_config(kind, request)
    section.setdefault("path", "online.db")
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(
            target=_increment_in_process, args=(section, str(tmp_path), unique_project, 150, barrier), daemon=True
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
            assert p.exitcode == 0, f"worker exit code {p.exitcode}"
    finally:
        for p in procs:  # never leave a child behind: pytest would wait for it at exit
            if p.is_alive():
                p.kill()
    store = open_online_store(OnlineStoreConfig.model_validate(section), unique_project, tmp_path)
    try:
        assert struct.unpack("<q", store.get_blobs("cas", [b"counter"])[0])[0] == 300
    finally:
        store.delete_namespace("cas")
        store.close()


def test_a_swap_over_many_keys_reports_the_losers_in_order(store: OnlineStore) -> None:
    """Keys of every bucket of a cluster (one script each): each swap is decided alone."""
    keys = [b"u%d" % i for i in range(200)]
    assert store.compare_and_swap_blobs("cas", {k: (None, b"1") for k in keys}) == []
    swaps = {k: ((b"1" if i % 3 else b"stale"), b"2") for i, k in enumerate(keys)}
    assert store.compare_and_swap_blobs("cas", swaps) == [k for i, k in enumerate(keys) if not i % 3]
    assert store.get_blobs("cas", keys) == [b"1" if not i % 3 else b"2" for i in range(200)]


@pytest.mark.integration
def test_the_cluster_swap_is_never_resent(redis_cluster_url: str, unique_project: str) -> None:
    """As on one Redis: the swaps go through a client without retries (redirects are still
    followed: a redirected command has not run)."""
    from featurestore.online.redis_cluster_store import RedisClusterOnlineStore

    store = RedisClusterOnlineStore(unique_project, redis_cluster_url)
    try:
        assert store.compare_and_swap_blobs("cas", {b"k": (None, b"v")}) == []
        assert store._swap_client().retry.get_retries() == 0
        assert store.client.retry.get_retries() > 0
    finally:
        store.delete_namespace("cas")
        store.close()


@pytest.mark.integration
def test_the_redis_swap_is_never_resent(tmp_path: Path, unique_project: str, redis_url: str) -> None:
    """redis-py resends a command after a dropped reply; a resent swap that had succeeded would
    fail on its own write and the caller would learn its update twice. The swap's client
    therefore has no retry (the caller sees an error, and the catch-up heals from the log)."""
    config = OnlineStoreConfig.model_validate({"type": "redis", "url": redis_url})
    store = open_online_store(config, unique_project, tmp_path)
    try:
        assert store.compare_and_swap_blobs("cas", {b"k": (None, b"v")}) == []
        retry = store._once.connection_pool.connection_kwargs["retry"]  # type: ignore[attr-defined]
        assert retry._retries == 0
        assert store._client.connection_pool.connection_kwargs["retry"]._retries > 0  # type: ignore[attr-defined]
    finally:
        store.close()
