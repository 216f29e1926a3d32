"""The item feature cache follows the online store's version of each view (its newest event time
and a count of winning writes; any writer, no materialization run recorded), off the request
path; ``max_age_seconds`` is a backstop; views the version cannot follow are never cached (issue
14, item 7). The two-server test is tests/server/test_cache_two_servers.py; the future-dated
write of review finding 3a is tests/velox/test_feature_cache_versions.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feature_cache import FeatureCache
from featurestore.online.memory import MemoryOnlineStore
from registry.watcher import RegistryWatcher
from tests.velox.conftest import DEFS, NOW_US, POP, VEC, fill, item_vec, key, make_store


@pytest.fixture(params=["memory", "embedded", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    online = {"type": request.param}
    if request.param == "redis":
        online["url"] = request.getfixturevalue("redis_url")
    fs = make_store(tmp_path / "repo", online, unique_project)
    fill(fs)
    yield fs
    if request.param == "redis":
        client = fs.online_store.client  # type: ignore[attr-defined]
        keys = list(client.scan_iter(match=f"{unique_project}:*", count=1000))
        if keys:
            client.delete(*keys)
    fs.close()
    MemoryOnlineStore.drop_project(unique_project)


@pytest.fixture
def ticking(store: FeatureStore) -> Iterator[RegistryWatcher]:
    """A watcher whose thread ticks every 20 ms, as a server's does every second."""
    watcher = RegistryWatcher(store.registry, store.model_versions, store.materialization_log, interval=0.02)
    yield watcher
    watcher.close()


@pytest.fixture
def still(store: FeatureStore) -> Iterator[RegistryWatcher]:
    """A watcher that never ticks on its own: the test polls by hand."""
    watcher = RegistryWatcher(store.registry, store.model_versions, store.materialization_log, interval=3600)
    yield watcher
    watcher.close()


def _vec(cache: FeatureCache, item: int = 1) -> list[float]:
    return cache.lookup({"item_vec": [key(item)]})["item_vec"].values[0].tolist()  # type: ignore[no-any-return]


def _write_vec(store: FeatureStore, item: int, vec: list[float], at: int) -> None:
    store.online_store.write_latest("item_vec", [(key(item), at, at, VEC.encode_row([vec]))])


def _until(condition, timeout: float = 5.0) -> float:  # type: ignore[no-untyped-def]
    """Seconds until ``condition()`` held (polled every millisecond); fails at the deadline."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            pytest.fail(f"not within {timeout} s")
        time.sleep(0.001)
    return time.monotonic() - start


def test_a_newer_write_by_any_writer_drops_the_view_within_a_tick(store: FeatureStore, ticking: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, ticking)
    assert _vec(cache) == item_vec(1)
    cache.lookup({"item_pop": [key(1)]})
    assert _vec(cache) == item_vec(1) and cache.hits == 1  # served from memory
    _write_vec(store, 1, [9.0, 8.0, 7.0], NOW_US + 1_000_000)  # no materialization run recorded
    _until(lambda: _vec(cache) == [9.0, 8.0, 7.0])
    # Only the view that moved was dropped.
    hits = cache.hits
    cache.lookup({"item_pop": [key(1)]})
    assert cache.hits == hits + 1


def test_the_lookup_never_reads_the_store_when_everything_is_cached(store: FeatureStore, ticking: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, ticking)
    cache.lookup({"item_vec": [key(1), key(2)]})
    polled = cache.polls
    _until(lambda: cache.polls > polled)  # the thread polls on its own
    calls: list[str] = []
    real_versions, real_read = store.online_store.view_versions, store.online_store.read_latest
    ticking.close()  # from here on, only the request path runs
    store.online_store.view_versions = lambda views: calls.append("versions") or real_versions(views)  # type: ignore[method-assign]
    store.online_store.read_latest = lambda keys: calls.append("read") or real_read(keys)  # type: ignore[method-assign]
    for _ in range(100):
        cache.lookup({"item_vec": [key(2), key(1)]})
    assert calls == []


def test_a_read_that_started_before_the_poll_saw_a_write_is_not_kept(store: FeatureStore, still: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, still)
    pending = cache.start({"item_vec": [key(1)]})
    old = store.online_store.read_latest(pending.fetch)  # the old value, on its way back
    _write_vec(store, 1, [1.0, 1.0, 1.0], NOW_US + 1_000_000)
    cache.poll()  # the watcher's tick sees the newest time move
    assert pending.finish(old)["item_vec"].values[0].tolist() == item_vec(1)  # this answer is old...
    assert _vec(cache) == [1.0, 1.0, 1.0]  # ...but it was not cached


def test_an_older_event_time_moves_the_version(store: FeatureStore, still: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, still)
    _write_vec(store, 2, item_vec(2), NOW_US + 5_000_000)  # another item holds the view's newest time
    cache.poll()
    assert _vec(cache) == item_vec(1)
    # A correction of item 1 with an event time newer than its row's but older than the view's
    # newest: the newest time stands still, the view's version moves, the next poll drops it.
    _write_vec(store, 1, [3.0, 2.0, 1.0], NOW_US + 1_000_000)
    cache.poll()
    assert _vec(cache) == [3.0, 2.0, 1.0]


def test_max_age_bounds_what_the_version_cannot_see(store: FeatureStore, still: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, still, max_age_seconds=0.3)
    assert _vec(cache) == item_vec(1)
    polls = store.online_store.view_versions
    frozen = polls(["item_vec", "item_pop", "user_stats"])
    # Polls that see no change, as after a store that lost its data was refilled to the same
    # versions: only the max age can bound what they miss.
    store.online_store.view_versions = lambda views: {v: frozen[v] for v in views}  # type: ignore[method-assign]
    try:
        cache.poll()
        _write_vec(store, 1, [3.0, 2.0, 1.0], NOW_US + 1_000_000)
        cache.poll()
        assert _vec(cache) == item_vec(1)
        # Within max_age_seconds of the first read, the entry is read again.
        assert _until(lambda: _vec(cache) == [3.0, 2.0, 1.0], timeout=2.0) < 1.0
    finally:
        store.online_store.view_versions = polls  # type: ignore[method-assign]


def test_always_fresh_mode_polls_in_the_callers_thread(store: FeatureStore) -> None:
    cache = store.predictor.cache  # registry_refresh_seconds=0: no thread
    assert _vec(cache) == item_vec(1) and _vec(cache) == item_vec(1)
    _write_vec(store, 1, [0.5, 0.25, 0.125], NOW_US + 1_000_000)
    assert _vec(cache) == [0.5, 0.25, 0.125]


def test_a_failed_poll_keeps_the_rows_and_the_next_good_one_catches_up(
    store: FeatureStore, ticking: RegistryWatcher, caplog: pytest.LogCaptureFixture
) -> None:
    cache = FeatureCache(store.online_store, ticking)
    _vec(cache)
    real = store.online_store.view_versions

    def down(views):  # type: ignore[no-untyped-def]
        raise OSError("online store unreachable")

    with caplog.at_level(logging.WARNING, logger="registry.watcher"):
        store.online_store.view_versions = down  # type: ignore[method-assign]
        failures = cache.poll_failures
        _until(lambda: cache.poll_failures >= failures + 3)
        assert _vec(cache) == item_vec(1) and cache.hits >= 1  # memory still serves
        _write_vec(store, 1, [2.0, 2.0, 2.0], NOW_US + 1_000_000)
        store.online_store.view_versions = real  # type: ignore[method-assign]
        _until(lambda: _vec(cache) == [2.0, 2.0, 2.0])
    messages = [r.getMessage() for r in caplog.records if "online store unreachable" in r.getMessage()]
    assert len(messages) == 1  # logged once, not at every tick


LIVE = """\
  - name: item_clicks
    entities: [item]
    source: src
    stream_source: {type: redis_stream, stream: clicks, group: fs, url: 'redis://127.0.0.1:6379/0'}
    features:
      - {name: clicks_1h, dtype: int64, aggregation: {function: count, window: 1h, slide: 5m}}
"""


def test_an_aggregated_stream_view_is_read_on_every_lookup(tmp_path: Path, unique_project: str) -> None:
    from featurestore.online.codec import ValueCodec

    defs = DEFS.replace("  - name: user_stats\n", LIVE + "  - name: user_stats\n")
    store = make_store(tmp_path / "repo", {"type": "memory"}, unique_project, defs)
    try:
        fill(store)
        counts = ValueCodec(["int64"])
        store.online_store.write_latest("item_clicks", [(key(1), NOW_US, NOW_US, counts.encode_row([4]))])
        cache = FeatureCache(store.online_store, store.watcher)
        assert cache.lookup({"item_clicks": [key(1)]})["item_clicks"].values.tolist() == [[4.0]]
        # The stream job's next micro-batch: same window end (event time), a later created time.
        store.online_store.write_latest("item_clicks", [(key(1), NOW_US, NOW_US + 1, counts.encode_row([5]))])
        assert cache.lookup({"item_clicks": [key(1)]})["item_clicks"].values.tolist() == [[5.0]]
        assert cache.hits == 0 and cache.stats()["entries"] == 0
        # Plain views of the same repository are still cached.
        cache.lookup({"item_pop": [key(1)]})
        cache.lookup({"item_pop": [key(1)]})
        assert cache.hits == 1
    finally:
        store.close()
        MemoryOnlineStore.drop_project(unique_project)


def test_max_age_counts_as_a_miss_and_refreshes_in_place(store: FeatureStore, still: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, still, max_age_seconds=0.05, max_entries=4)
    cache.lookup({"item_vec": [key(1), key(2)]})
    time.sleep(0.06)  # the condition under test is the passage of time itself
    rows = cache.lookup({"item_vec": [key(1), key(2)]})["item_vec"]
    assert (cache.hits, cache.misses) == (0, 4) and rows.found.all()
    assert cache.stats()["entries"] == 2  # rewritten in place, not added twice
    np.testing.assert_array_equal(rows.values[0], item_vec(1))
    with pytest.raises(ValueError, match="max_age_seconds"):
        FeatureCache(store.online_store, still, max_age_seconds=0)


def test_pop_rows_are_unaffected_by_item_vec_writes(store: FeatureStore, still: RegistryWatcher) -> None:
    cache = FeatureCache(store.online_store, still)
    cache.lookup({"item_pop": [key(3)], "item_vec": [key(3)]})
    store.online_store.write_latest("item_pop", [(key(3), NOW_US - 1, 0, POP.encode_row([0.0, "x"]))])  # older: lost
    _write_vec(store, 3, [1.0, 0.0, 0.0], NOW_US + 1_000_000)
    cache.poll()
    hits = cache.hits
    rows = cache.lookup({"item_pop": [key(3)], "item_vec": [key(3)]})
    assert cache.hits == hits + 1  # item_pop from memory, item_vec read again
    assert rows["item_vec"].values[0].tolist() == [1.0, 0.0, 0.0]
