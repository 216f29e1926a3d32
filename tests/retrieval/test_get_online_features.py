from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from featurestore import FeatureStore, NotFoundError, UserError
from registry.errors import InputError
from tests.retrieval.conftest import DEFS, NOW_US


def test_values_statuses_and_order(store: FeatureStore) -> None:
    resp = store.get_online_features(
        ["user_stats:clicks", "user_stats:score"], [{"user_id": 3}, {"user_id": 1}, {"user_id": 2}]
    )
    assert resp.to_dict() == {"user_id": [3, 1, 2], "clicks": [None, 5, None], "score": [None, 0.5, None]}
    assert resp.statuses["clicks"] == ["not_found", "present", "expired"]


def test_feature_service_vectors_strings_and_nulls(store: FeatureStore) -> None:
    resp = store.get_online_features("svc", [{"user_id": 1, "item_id": 11}, {"user_id": 1, "item_id": 10}])
    out = resp.to_dict()
    assert list(out) == ["user_id", "item_id", "score", "vec", "title"]
    assert out["vec"] == [(0.5, 0.25, 0.0), (1.0, 2.0, 3.0)]
    assert out["title"] == [None, "ten"]
    assert out["score"] == [0.5, 0.5]


def test_composite_keys(store: FeatureStore) -> None:
    resp = store.get_online_features(
        ["user_region:spend"], [{"user_id": 1, "region": "eu|west"}, {"user_id": 1, "region": "eu"}]
    )
    assert resp.values["spend"] == [12.5, None]
    assert resp.statuses["spend"] == ["present", "not_found"]


def test_event_timestamps_on_request(store: FeatureStore) -> None:
    resp = store.get_online_features(["user_stats:clicks"], [{"user_id": 1}, {"user_id": 3}], with_timestamps=True)
    assert resp.event_timestamps == {"clicks": [NOW_US - 60_000_000, None]}
    assert resp.to_dict()["clicks__event_timestamp"] == [NOW_US - 60_000_000, None]


def test_one_round_trip_whatever_the_number_of_views_and_entities(store: FeatureStore) -> None:
    calls = []
    original = store.online_store.read_latest

    def counting(keys):  # type: ignore[no-untyped-def]
        calls.append(len(keys))
        return original(keys)

    store.online_store.read_latest = counting  # type: ignore[method-assign]
    rows = [{"user_id": u, "item_id": i} for u in range(50) for i in (10, 11)]
    store.get_online_features("svc", rows)
    assert calls == [2 * len(rows)]


def test_unknown_reference_names_the_nearest(store: FeatureStore) -> None:
    with pytest.raises(NotFoundError, match="did you mean 'user_stats:clicks'"):
        store.get_online_features(["user_stats:clicck"], [{"user_id": 1}])
    with pytest.raises(NotFoundError, match="did you mean 'user_stats'"):
        store.get_online_features(["user_stat:clicks"], [{"user_id": 1}])


def test_missing_join_key_is_a_user_error(store: FeatureStore) -> None:
    with pytest.raises(UserError, match="`entity_rows.1` has no join key 'user_id'"):
        store.get_online_features(["user_stats:clicks"], [{"user_id": 1}, {"uid": 2}])


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, "7", None, 1.5])
def test_a_bad_join_key_value_names_the_row_and_the_key(store: FeatureStore, value: object) -> None:
    with pytest.raises(InputError) as refused:
        store.get_online_features(["user_stats:clicks"], [{"user_id": 1}, {"user_id": value}])
    assert refused.value.field == "entity_rows.1.user_id" and refused.value.http_status == 422


def test_pandas_arrow_and_async(store: FeatureStore) -> None:
    resp = store.get_online_features(["user_stats:clicks"], [{"user_id": 1}, {"user_id": 3}])
    df = resp.to_pandas()
    assert list(df.columns) == ["user_id", "clicks", "clicks__status"]
    assert df["clicks__status"].tolist() == ["present", "not_found"]
    assert resp.to_arrow().num_rows == 2
    again = asyncio.run(store.get_online_features_async(["user_stats:clicks"], [{"user_id": 1}]))
    assert again.values == {"clicks": [5]}


def test_registry_cache_follows_apply(store: FeatureStore) -> None:
    assert store.get_online_features(["user_stats:clicks"], [{"user_id": 1}]).values == {"clicks": [5]}
    defs = store.repo_path / "features" / "defs.yaml"
    defs.write_text(DEFS.replace("ttl: 1h", "ttl: 10s"))
    store.apply()
    # The same user is now older than the view's ttl.
    assert store.get_online_features(["user_stats:clicks"], [{"user_id": 1}]).statuses["clicks"] == ["expired"]


def test_freshness_per_view(store: FeatureStore) -> None:
    fresh = store.feature_freshness()
    assert set(fresh) == {"user_stats", "item_vec", "user_region"}
    assert 55 <= fresh["user_stats"] < 3600
    assert fresh["item_vec"] < 3600


def test_same_feature_name_in_two_views_needs_full_names(tmp_path: Path) -> None:
    from tests.retrieval.conftest import make_repo

    fs = make_repo(tmp_path / "r", {"type": "memory"})
    text = DEFS.replace("      - {name: spend, dtype: float64}", "      - {name: score, dtype: float64}")
    (fs.repo_path / "features" / "defs.yaml").write_text(text)
    fs.apply(allow_breaking=True)
    with pytest.raises(UserError, match="full_names"):
        fs.get_online_features(["user_stats:score", "user_region:score"], [{"user_id": 1, "region": "x"}])
    resp = fs.get_online_features(["user_stats:score", "user_region:score"], [{"user_id": 1, "region": "x"}], full_names=True)
    assert list(resp.values) == ["user_stats__score", "user_region__score"]
