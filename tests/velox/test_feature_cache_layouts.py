"""The item feature cache and the value layouts of docs/online-store.md: values of the view's own
layout (format 2) take the vectorised decode, anything else goes through the codec row by row
with the same result; values written under an earlier layout of a view keep, in the cache and so
in ``predict``, the features that are still the same, and an added or retyped feature is missing
(NaN, the item unscored) until the backfill."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.feature_cache import FeatureCache, ViewDecoder
from featurestore.models.serving import Prediction, Predictor
from featurestore.online.codec import ValueCodec
from featurestore.online.memory import MemoryOnlineStore
from tests.velox.conftest import (
    DEFS,
    NOW_US,
    STATS,
    USERS,
    item_pop,
    item_vec,
    key,
    labels,
    make_store,
    user_activity,
)

DTYPES = ["float32[2]", "int64", "bool", "float64", "int32", "timestamp"]
NAMES = ["vec", "count", "flag", "score", "small", "when"]
ROW = st.tuples(
    st.one_of(st.none(), st.lists(st.floats(-1e6, 1e6, width=32), min_size=2, max_size=2)),
    st.one_of(st.none(), st.integers(-(2**53), 2**53)),
    st.one_of(st.none(), st.booleans()),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 2**50),
)


def _counting(decoder: ViewDecoder) -> list[bytes]:
    """The payloads ``decoder`` sends through the codec one by one (its row-by-row path)."""
    seen: list[bytes] = []
    decode = decoder.codec.decode

    def counted(payload: bytes) -> tuple[Any, ...]:
        seen.append(payload)
        return decode(payload)

    decoder.codec.decode = counted  # type: ignore[method-assign]
    return seen


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(ROW, st.sampled_from(["own", "format 1", "earlier layout"])),
        min_size=1,
        max_size=30,
    )
)
def test_own_layout_values_are_vectorised_and_the_rest_match_the_codec(rows: list[tuple]) -> None:
    earlier = ValueCodec(DTYPES[:2], NAMES[:2])
    encode = {
        "own": ValueCodec(DTYPES, NAMES).encode_row,
        "format 1": ValueCodec(DTYPES).encode_row,  # positional: no layout id
        "earlier layout": lambda row: earlier.encode_row(row[:2]),
    }
    payloads = [encode[kind](list(r)) for r, kind in rows]
    decoder = ViewDecoder(DTYPES, NAMES, lambda: [(NAMES[:2], DTYPES[:2])])
    slowly = _counting(decoder)
    fast = decoder.decode(payloads)
    assert slowly == [p for p, (_, kind) in zip(payloads, rows) if kind != "own"]
    np.testing.assert_array_equal(fast, decoder._decode_rows(payloads))  # the codec, row by row
    for (r, kind), got in zip(rows, fast):
        count = np.nan if r[1] is None else float(r[1])
        score = np.nan if kind == "earlier layout" or r[3] is None else r[3]
        np.testing.assert_array_equal(got[[2, 4]], [count, score])


def test_a_batch_of_format_2_values_decodes_without_a_row_by_row_fallback() -> None:
    dtypes, names = ["float32"] * 10, [f"f{i}" for i in range(10)]
    rng = np.random.default_rng(0)
    values = rng.normal(size=(1000, 10)).astype(np.float32)
    rows = [
        [None if (r + c) % 7 == 0 else float(v) for c, v in enumerate(row)]
        for r, row in enumerate(values)
    ]
    payloads = [ValueCodec(dtypes, names).encode_row(row) for row in rows]
    decoder = ViewDecoder(dtypes, names)
    slowly = _counting(decoder)
    fast, keep = decoder.decode_keep(payloads)
    assert slowly == [] and keep is None
    expected = np.array([[np.nan if v is None else v for v in row] for row in rows])
    np.testing.assert_array_equal(fast, expected)
    np.testing.assert_array_equal(fast, decoder._decode_rows(payloads))
    assert len(slowly) == 1000  # the slow path, for the comparison, did go through the codec


def test_a_damaged_value_of_the_own_layout_is_still_an_error() -> None:
    from registry.errors import DataError

    codec = ValueCodec(["float64", "float64"], ["a", "b"])
    good = codec.encode_row([1.0, 2.0])
    with pytest.raises(DataError):
        ViewDecoder(["float64", "float64"], ["a", "b"]).decode([good, good[:-1]])


def test_values_read_while_the_history_is_unreadable_are_not_kept() -> None:
    old = ValueCodec(["float64"], ["a"]).encode_row([1.5])
    own = ValueCodec(["float64", "float64"], ["a", "b"]).encode_row([2.5, 3.5])
    answers: list[list | None] = [None, [(["a"], ["float64"])]]
    decoder = ViewDecoder(["float64", "float64"], ["a", "b"], lambda: answers.pop(0))
    rows, keep = decoder.decode_keep([own, old])
    assert np.isnan(rows[1]).all() and keep is not None and keep.tolist() == [True, False]
    rows, keep = decoder.decode_keep([own, old])
    np.testing.assert_array_equal(rows, [[2.5, 3.5], [1.5, np.nan]])
    assert keep is None and answers == []


# -- through the cache and predict, after a change of the view's features ----------------------

V1 = DEFS.replace(
    "      - {name: label, dtype: string}\n",
    "      - {name: label, dtype: string}\n      - {name: boost, dtype: float32}\n",
)
V2 = (
    DEFS.replace(
        "      - {name: label, dtype: string}\n",
        "      - {name: label, dtype: string}\n      - {name: boost, dtype: float64}\n"  # retyped
        "      - {name: rank, dtype: float64}\n",  # added
    )
    + """\
  - name: boosted
    user_entity: user
    item_entity: item
    features: [item_vec:vec, item_pop:boost]
    label: rating
  - name: ranked
    user_entity: user
    item_entity: item
    features: [item_vec:vec, item_pop:rank]
    label: rating
"""
)
ITEMS = list(range(1, 11))
POP_V1 = ValueCodec(["float64", "string", "float32"], ["pop", "label", "boost"])


def _export(entity_df: pa.Table, features: list[str], **options: Any) -> pa.Table:
    """A stand-in for the point-in-time export: every label sees the same values."""
    items = entity_df["item_id"].to_pylist()
    columns = {
        "item_vec:vec": lambda: pa.array([item_vec(i) for i in items], pa.list_(pa.float32(), 3)),
        "item_pop:pop": lambda: pa.array([item_pop(i) for i in items], pa.float64()),
        "item_pop:boost": lambda: pa.array([i / 2 for i in items], pa.float64()),
        "item_pop:rank": lambda: pa.array([float(i) for i in items], pa.float64()),
    }
    for ref in features:
        entity_df = entity_df.append_column(ref.replace(":", "__"), columns[ref]())
    return entity_df


@pytest.fixture(params=["memory", "embedded"])
def changed(
    request: pytest.FixtureRequest, tmp_path: Path, unique_project: str
) -> Iterator[tuple[FeatureStore, Prediction]]:
    """Values written (format 2) under V1, "taste" trained on V1 (and its prediction then); then
    V2 applied, nothing re-materialized, "boosted" and "ranked" trained on V2's features."""
    store = make_store(tmp_path / "repo", {"type": request.param}, unique_project, defs=V1)
    online = store.online_store
    vec = ValueCodec(["float32[3]"], ["vec"])
    online.write_latest(
        "item_vec", [(key(i), NOW_US, 0, vec.encode_row([item_vec(i)])) for i in ITEMS]
    )
    online.write_latest(
        "item_pop",
        [(key(i), NOW_US, 0, POP_V1.encode_row([item_pop(i), "x", i / 2])) for i in ITEMS],
    )
    online.write_latest(
        "user_stats", [(key(u), NOW_US, 0, STATS.encode_row([user_activity(u)])) for u in USERS]
    )
    store.get_training_dataset = _export  # type: ignore[method-assign]
    store.train("taste", labels())
    before = store.predict("taste", {"user_id": 1}, [{"item_id": i} for i in ITEMS])
    (store.repo_path / "features" / "defs.yaml").write_text(V2)
    store.apply(allow_breaking=True)
    store.train("boosted", labels())
    store.train("ranked", labels())
    yield store, before
    if "predictor" in store.__dict__:
        store.predictor.close()
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


def test_the_cache_keeps_the_unchanged_features_of_an_earlier_layout(
    changed: tuple[FeatureStore, Prediction],
) -> None:
    store, _ = changed
    cache = FeatureCache(store.online_store, store.watcher)
    rows = cache.lookup({"item_pop": [key(i) for i in ITEMS]})["item_pop"]
    columns = cache.decoder("item_pop").columns
    assert rows.found.all()
    assert rows.values[:, columns["pop"]].ravel().tolist() == [item_pop(i) for i in ITEMS]
    assert np.isnan(rows.values[:, columns["boost"]]).all()  # float32 then, float64 now
    assert np.isnan(rows.values[:, columns["rank"]]).all()  # not there then
    # They were kept: the second lookup is served from memory, with the same rows.
    again = cache.lookup({"item_pop": [key(i) for i in ITEMS]})["item_pop"]
    assert cache.hits == len(ITEMS)
    np.testing.assert_array_equal(again.values, rows.values)


def test_predict_scores_with_the_unchanged_features_until_the_backfill(
    changed: tuple[FeatureStore, Prediction],
) -> None:
    store, before = changed
    items = [{"item_id": i} for i in ITEMS]
    after = store.predict("taste", {"user_id": 1}, items)
    assert after.statuses == before.statuses == ["present"] * len(ITEMS)
    np.testing.assert_allclose(after.scores, before.scores)
    for model in ("boosted", "ranked"):  # a retyped or added feature: the items are not scored
        got = store.predict(model, {"user_id": 1}, items)
        assert got.statuses == ["null"] * len(ITEMS) and np.isnan(got.scores).all()
    # The backfill writes V2 values: every model scores them.
    pop = ValueCodec(["float64", "string", "float64", "float64"], ["pop", "label", "boost", "rank"])
    store.online_store.write_latest(
        "item_pop",
        [
            (key(i), NOW_US + 1, 0, pop.encode_row([item_pop(i), "x", i / 2, float(i)]))
            for i in ITEMS
        ],
    )
    store.predictor.cache.invalidate("item_pop")  # what the backfill's materialization run does
    for model in ("taste", "boosted", "ranked"):
        assert store.predict(model, {"user_id": 1}, items).statuses == ["present"] * len(ITEMS)


def test_without_the_history_the_items_are_unscored(
    changed: tuple[FeatureStore, Prediction],
) -> None:
    store, _ = changed
    cache = FeatureCache(store.online_store, store.watcher, layouts=lambda view: [])
    predictor = Predictor(store.context, cache=cache)
    try:
        got = predictor.predict("taste", {"user_id": 1}, [{"item_id": i} for i in ITEMS])
        assert got.statuses == ["null"] * len(ITEMS)
    finally:
        predictor.close()


def test_rows_read_while_the_registry_is_unreadable_are_read_again(
    changed: tuple[FeatureStore, Prediction],
) -> None:
    store, _ = changed
    answers = [None, store.online_reader.layouts("item_pop")]
    cache = FeatureCache(store.online_store, store.watcher, layouts=lambda view: answers.pop(0))
    keys = [key(i) for i in ITEMS]
    first = cache.lookup({"item_pop": keys})["item_pop"]
    assert first.found.all() and np.isnan(first.values[0]).all()  # read while the registry was down
    assert cache.stats()["entries"] == 0  # none of the batch kept: the next read may do better
    second = cache.lookup({"item_pop": keys})["item_pop"]
    assert cache.hits == 0 and answers == []
    assert second.values[:, cache.decoder("item_pop").columns["pop"]].ravel().tolist() == [
        item_pop(i) for i in ITEMS
    ]
    cache.lookup({"item_pop": keys})
    assert cache.hits == len(ITEMS)
