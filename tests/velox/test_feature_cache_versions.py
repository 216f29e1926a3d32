"""The item feature cache polls each view's version, not only its newest event time (review
finding 3a of issue 14): one future-dated write pinned the newest time, and every later write
with an older event time went unseen until the 30 s max age. On every backend, a write that
wins a row now drops the view at the next poll."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.feature_cache import FeatureCache
from featurestore.online.memory import MemoryOnlineStore
from registry.watcher import RegistryWatcher
from tests.online.conftest import store_config
from tests.velox.conftest import NOW_US, VEC, fill, item_vec, key, make_store

BACKENDS = [
    "memory",
    "embedded",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("redis_cluster", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    section = store_config(request.param, request)
    fs = make_store(tmp_path / "repo", section, unique_project)
    fill(fs)
    yield fs
    if request.param == "redis_cluster":
        from tests.conftest import delete_redis_cluster_project

        delete_redis_cluster_project(str(section["url"]), unique_project)
    elif request.param == "redis":
        from tests.online.conftest import delete_redis_project

        delete_redis_project(str(section["url"]), unique_project)
    fs.close()
    MemoryOnlineStore.drop_project(unique_project)


def _vec(cache: FeatureCache, item: int) -> list[float]:
    return cache.lookup({"item_vec": [key(item)]})["item_vec"].values[0].tolist()  # type: ignore[no-any-return]


def _write_vec(store: FeatureStore, item: int, vec: list[float], at: int) -> None:
    store.online_store.write_latest("item_vec", [(key(item), at, at, VEC.encode_row([vec]))])


def test_a_future_dated_write_no_longer_hides_later_writes(store: FeatureStore) -> None:
    watcher = RegistryWatcher(store.registry, store.model_versions, store.materialization_log, interval=3600)
    try:
        cache = FeatureCache(store.online_store, watcher)  # max age: the default 30 s
        _write_vec(store, 2, item_vec(2), NOW_US + 86_400 * 1_000_000)  # a day ahead: pins the newest time
        cache.poll()
        assert _vec(cache, 1) == item_vec(1)
        polled = time.monotonic()
        # A normal write of another item, with an older event time than the pinned newest.
        _write_vec(store, 1, [3.0, 2.0, 1.0], NOW_US + 1_000_000)
        assert store.online_store.newest_event_ts(["item_vec"])["item_vec"] == NOW_US + 86_400 * 1_000_000
        cache.poll()  # the watcher's next tick
        assert _vec(cache, 1) == [3.0, 2.0, 1.0]
        assert time.monotonic() - polled < 5  # at the poll, not after the 30 s max age
        # A write that loses (older than the row it would replace) moves nothing.
        _vec(cache, 1)
        invalidations = cache.invalidations
        _write_vec(store, 1, [0.0, 0.0, 0.0], NOW_US)
        cache.poll()
        assert cache.invalidations == invalidations and _vec(cache, 1) == [3.0, 2.0, 1.0]
    finally:
        watcher.close()


def test_the_poll_reads_versions_in_one_call(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    watcher = RegistryWatcher(store.registry, store.model_versions, store.materialization_log, interval=3600)
    try:
        cache = FeatureCache(store.online_store, watcher)
        calls: list[list[str]] = []
        real = store.online_store.view_versions
        monkeypatch.setattr(store.online_store, "view_versions", lambda views: calls.append(list(views)) or real(views))
        cache.poll()
        assert len(calls) == 1 and set(calls[0]) == {"item_vec", "item_pop", "user_stats"}
    finally:
        watcher.close()
