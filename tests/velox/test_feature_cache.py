"""The in-process item feature cache: decoding, hit/miss counts, LRU bound, and invalidation by
new materialization runs and registry versions."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.feature_cache import FeatureCache, ViewDecoder
from featurestore.online.codec import ValueCodec
from registry.watcher import RegistryWatcher
from tests.velox.conftest import NOW_US, VEC, fake_export, key, labels

DTYPES = ["float32[2]", "int64", "bool", "float64", "int32", "timestamp"]
NAMES = ["vec", "count", "flag", "score", "small", "when"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=2)),
            st.one_of(st.none(), st.integers(-(2**53), 2**53)),
            st.one_of(st.none(), st.booleans()),
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
            st.integers(-(2**31), 2**31 - 1),
            st.integers(0, 2**50),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_batch_decoding_equals_the_codec_row_by_row(rows: list[tuple]) -> None:
    codec = ValueCodec(DTYPES, NAMES)
    decoder = ViewDecoder(DTYPES, NAMES)
    payloads = [codec.encode_row(list(r)) for r in rows]
    fast = decoder.decode(payloads)
    slow = decoder._decode_rows(payloads)  # the codec path
    np.testing.assert_array_equal(fast, slow)
    assert decoder.columns == {"vec": slice(0, 2), "count": slice(2, 3), "flag": slice(3, 4),
                               "score": slice(4, 5), "small": slice(5, 6)}  # timestamps are not numbers
    for row, decoded in zip(rows, fast):
        if row[1] is None:
            assert np.isnan(decoded[2])
        else:
            assert decoded[2] == float(row[1])


def test_views_with_strings_decode_row_by_row_and_skip_them() -> None:
    codec = ValueCodec(["string", "float64", "float32[]"], ["name", "x", "ragged"])
    decoder = ViewDecoder(["string", "float64", "float32[]"], ["name", "x", "ragged"])
    assert decoder.columns == {"x": slice(0, 1)} and decoder.width == 1
    out = decoder.decode([codec.encode_row(["a", 1.5, [1.0]]), codec.encode_row([None, None, []])])
    assert out[0, 0] == 1.5 and np.isnan(out[1, 0])


def _cache(store: FeatureStore, **kwargs) -> FeatureCache:  # type: ignore[no-untyped-def]
    return FeatureCache(store.online_store, store.watcher, **kwargs)


def test_hits_misses_and_not_found_is_never_cached(store: FeatureStore) -> None:
    cache = _cache(store)
    rows = cache.lookup({"item_vec": [key(1), key(2), key(99)]})["item_vec"]
    assert (cache.hits, cache.misses) == (0, 3)
    assert rows.found.tolist() == [True, True, False]
    assert np.isnan(rows.values[2]).all() and rows.event_ts[0] == NOW_US
    rows = cache.lookup({"item_vec": [key(2), key(1), key(99), key(3)]})["item_vec"]
    assert (cache.hits, cache.misses) == (2, 5)
    assert rows.found.tolist() == [True, True, False, True]
    assert cache.stats()["entries"] == 3 and cache.stats()["hit_rate"] == pytest.approx(2 / 7)


def test_lru_keeps_at_most_max_entries(store: FeatureStore) -> None:
    cache = _cache(store, max_entries=3)
    cache.lookup({"item_vec": [key(1), key(2), key(3)]})
    cache.lookup({"item_vec": [key(1)]})  # 1 is now the most recent: 2 is the oldest
    cache.lookup({"item_vec": [key(4)]})  # evicts 2
    hits = cache.hits
    rows = cache.lookup({"item_vec": [key(1), key(3), key(4)]})["item_vec"]
    assert cache.hits - hits == 3 and rows.found.all()
    cache.lookup({"item_vec": [key(2)]})
    assert cache.hits - hits == 3  # 2 was a miss
    assert cache.stats()["entries"] == 3


def _rewrite(store: FeatureStore, item: int, vec: list[float], at: int) -> None:
    store.online_store.write_latest("item_vec", [(key(item), at, 0, VEC.encode_row([vec]))])


def _record_run(store: FeatureStore, view: str) -> None:
    t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    store.materialization_log.record(
        view, t, t, rows_read=1, rows_offline=1, rows_online=1, rows_rejected=0, registry_version=1
    )


def test_a_new_materialization_run_invalidates_the_view_once_the_snapshot_shows_it(store: FeatureStore) -> None:
    # A watcher that never ticks on its own: the test moves the snapshot by hand.
    watcher = RegistryWatcher(store.registry, store.model_versions, store.materialization_log, interval=3600)
    cache = FeatureCache(store.online_store, watcher)
    try:
        first = cache.lookup({"item_vec": [key(1)], "item_pop": [key(1)]})
        _rewrite(store, 1, [9.0, 9.0, 9.0], NOW_US + 1)
        _record_run(store, "item_vec")
        # The lookup reads the snapshot, not the database: until it moves, memory serves.
        stale = cache.lookup({"item_vec": [key(1)]})["item_vec"]
        np.testing.assert_array_equal(stale.values, first["item_vec"].values)
        watcher.refresh()
        fresh = cache.lookup({"item_vec": [key(1)], "item_pop": [key(1)]})
        assert fresh["item_vec"].values.tolist() == [[9.0, 9.0, 9.0]]
        assert cache.invalidations == 2  # the first load counts one, as it always did
        # item_pop had no new run: still served from memory.
        assert cache.hits >= 2
    finally:
        watcher.close()


def test_a_new_registry_version_clears_everything(store: FeatureStore) -> None:
    cache = _cache(store)
    cache.lookup({"item_vec": [key(1)]})
    defs_file = store.repo_path / "features" / "defs.yaml"
    defs_file.write_text(defs_file.read_text().replace("  - name: user_stats", "  - name: user_stats\n    description: changed"))
    store.apply()
    misses = cache.misses
    cache.lookup({"item_vec": [key(1)]})
    assert cache.misses == misses + 1


def test_predict_sees_new_item_features_after_a_materialization_run(store: FeatureStore) -> None:
    fake_export(store)
    result = store.train("explore", labels())
    items = [{"item_id": 1}, {"item_id": 2}]
    before = store.predict("explore", {"user_id": 999}, items)
    again = store.predict("explore", {"user_id": 999}, items)
    np.testing.assert_array_equal(before.scores, again.scores)
    assert store.predictor.cache.hits >= 2
    _rewrite(store, 1, [1.0, 2.0, 3.0], NOW_US + 1)
    _record_run(store, "item_vec")
    after = store.predict("explore", {"user_id": 999}, items)
    assert after.scores[0] == pytest.approx(np.array([1.0, 2.0, 3.0, 1.0]) @ result.w_avg)
    assert after.scores[1] == before.scores[1]
