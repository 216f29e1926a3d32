"""Values stored before a change of the view's features, read after it (no re-materialization).

The fixture's values are format 1 (written by positional codecs, as every value was before
format 2), so these tests also pin how a reader places a value that carries no layout id: with
the view's history in the registry, by size, trusting only what every fitting layout agrees on.
"""

from __future__ import annotations

from featurestore import FeatureStore
from featurestore.online.codec import ValueCodec, encode_entity_key
from tests.retrieval.conftest import DEFS, NOW_US

ROWS = [{"user_id": 1}, {"user_id": 3}]


def redefine(store: FeatureStore, old: str, new: str, allow_breaking: bool = False) -> None:
    (store.repo_path / "features" / "defs.yaml").write_text(DEFS.replace(old, new))
    store.apply(allow_breaking=allow_breaking)


def test_an_added_feature_is_stale_and_the_others_still_answer(store: FeatureStore) -> None:
    redefine(
        store,
        "      - {name: score, dtype: float64}\n",
        "      - {name: score, dtype: float64}\n      - {name: extra, dtype: int32}\n",
    )
    got = store.get_online_features(["user_stats"], ROWS).to_dict(include_status=True)
    assert got["clicks"] == [5, None] and got["score"] == [0.5, None]
    assert got["extra"] == [None, None]
    assert got["clicks__status"] == got["score__status"] == ["present", "not_found"]
    assert got["extra__status"] == ["stale_layout", "not_found"]
    # A value written under the new layout (format 2) is read whole.
    codec = ValueCodec(["int64", "float64", "int32"], ["clicks", "score", "extra"])
    store.online_store.write_latest(
        "user_stats", [(encode_entity_key(["int64"], [3]), NOW_US, 0, codec.encode_row([1, 2.0, 3]))]
    )
    got = store.get_online_features(["user_stats:extra", "user_stats:clicks"], ROWS).to_dict(include_status=True)
    assert got["extra"] == [None, 3] and got["extra__status"] == ["stale_layout", "present"]
    assert got["clicks"] == [5, 1] and got["clicks__status"] == ["present", "present"]


def test_a_same_width_retype_is_stale_never_misread(store: FeatureStore) -> None:
    # float64 -> int64: a format 1 value of either layout has the same size.
    redefine(store, "{name: score, dtype: float64}", "{name: score, dtype: int64}", allow_breaking=True)
    got = store.get_online_features(["user_stats:clicks", "user_stats:score"], ROWS[:1]).to_dict(include_status=True)
    assert got == {
        "user_id": [1], "clicks": [5], "score": [None],
        "clicks__status": ["present"], "score__status": ["stale_layout"],
    }


def test_a_removed_feature_leaves_the_rest_readable(store: FeatureStore) -> None:
    redefine(store, "      - {name: vec, dtype: \"float32[3]\"}\n", "", allow_breaking=True)
    got = store.get_online_features(["item_vec:title"], [{"item_id": 10}]).to_dict(include_status=True)
    assert got == {"item_id": [10], "title": ["ten"], "title__status": ["present"]}
