"""Predictions through the SDK: new users are the average user, trained users their closed
form, rollback switches versions on the next call, statuses, top-k, LinUCB, request features."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.models.linear import ucb_bonus
from featurestore.models.state_store import ModelStateStore
from registry.errors import NotFoundError, UserError
from tests.velox.conftest import ITEMS, NOW_US, POP, fake_export, fill, item_x, key, labels

CANDIDATES = [{"item_id": i} for i in ITEMS[:-1]]


def _x(items: list[dict], model: str = "taste") -> np.ndarray:
    return np.stack([item_x(row["item_id"], model) for row in items])


def test_a_new_user_gets_exactly_the_average_users_scores(store: FeatureStore) -> None:
    fake_export(store)
    result = store.train("taste", labels())
    prediction = store.predict("taste", {"user_id": 999}, CANDIDATES)
    assert prediction.model_version == result.version
    np.testing.assert_array_equal(prediction.scores, _x(CANDIDATES) @ result.w_avg)
    assert prediction.statuses == ["present"] * len(CANDIDATES)


def test_a_trained_user_gets_their_closed_form_scores(store: FeatureStore) -> None:
    fake_export(store)
    table = labels()
    result = store.train("taste", table)
    users = table["user_id"].to_numpy()
    X = _x([{"item_id": int(i)} for i in table["item_id"].to_numpy()])
    y = table["rating"].to_numpy()
    Xu, yu = X[users == 2], y[users == 2]
    w2 = np.linalg.solve(Xu.T @ Xu + 2.0 * np.eye(5), Xu.T @ yu + 2.0 * result.w_avg)
    prediction = store.predict("taste", {"user_id": 2}, CANDIDATES)
    np.testing.assert_allclose(prediction.scores, _x(CANDIDATES) @ w2, rtol=1e-9, atol=1e-10)
    body = prediction.to_dict()
    assert body["model"] == "taste" and body["model_version"] == 1 and len(body["prediction_id"]) == 32
    assert body["scores"][0] == {"item": {"item_id": 1}, "score": pytest.approx(float(item_x(1) @ w2)), "status": "present"}


def test_rollback_changes_the_scores_of_the_next_request(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels(seed=0))
    store.train("taste", labels(seed=1))
    v2 = store.predict("taste", {"user_id": 1}, CANDIDATES)
    assert v2.model_version == 2
    pinned = store.predictor.predict("taste", {"user_id": 1}, CANDIDATES, version=1)
    assert pinned.model_version == 1 and not np.allclose(pinned.scores, v2.scores)
    assert store.rollback_model("taste") == 1
    v1 = store.predict("taste", {"user_id": 1}, CANDIDATES)
    assert v1.model_version == 1
    w1 = ModelStateStore(store.online_store, "taste", 1).get_state(key(1)).w
    np.testing.assert_allclose(v1.scores, _x(CANDIDATES) @ w1, rtol=1e-12)
    assert not np.allclose(v1.scores, v2.scores)
    with pytest.raises(NotFoundError, match="no version before the active version 1"):
        store.rollback_model("taste")
    store.activate_model("taste", 2)
    assert store.predict("taste", {"user_id": 1}, CANDIDATES).model_version == 2


def test_missing_and_null_items_get_no_score_and_a_status(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    # item 20 has no popularity, 77 nothing at all; item 6's popularity is now null.
    store.online_store.write_latest("item_pop", [(key(6), NOW_US + 1, 0, POP.encode_row([None, "x"]))])
    items = [{"item_id": 4}, {"item_id": 20}, {"item_id": 77}, {"item_id": 6}]
    prediction = store.predict("taste", {"user_id": 1}, items)
    assert prediction.statuses == ["present", "not_found", "not_found", "null"]
    assert [s["score"] is None for s in prediction.to_dict()["scores"]] == [False, True, True, True]


def test_expired_feature_status(tmp_path, unique_project) -> None:  # type: ignore[no-untyped-def]
    from tests.velox.conftest import make_store

    store = make_store(tmp_path / "repo", {"type": "memory"}, unique_project)
    fill(store, pop_us=NOW_US - 2 * 3_600_000_000)  # every popularity is older than the 1h ttl
    fake_export(store)
    store.train("taste", labels())
    prediction = store.predict("taste", {"user_id": 1}, CANDIDATES[:2])
    assert prediction.statuses == ["expired", "expired"]
    assert np.isnan(prediction.scores).all()
    store.predictor.close()
    store.close()


def test_top_k_by_score(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    everything = store.predict("taste", {"user_id": 3}, CANDIDATES + [{"item_id": 77}])
    assert everything.bonus is None  # taste does not explore
    top = store.predict("taste", {"user_id": 3}, CANDIDATES + [{"item_id": 77}], k=4).to_dict()["scores"]
    expected = np.argsort(-np.nan_to_num(everything.scores, nan=-np.inf), kind="stable")[:4]
    assert [s["item"]["item_id"] for s in top] == [CANDIDATES[i]["item_id"] for i in expected]
    assert [s["score"] for s in top] == sorted((s["score"] for s in top), reverse=True)
    assert len(store.predict("taste", {"user_id": 3}, CANDIDATES[:2], k=10).to_dict()["scores"]) == 2


def test_linucb_bonus_is_added_and_ranks(store: FeatureStore) -> None:
    fake_export(store)
    store.train("explore", labels())
    items = CANDIDATES[:6]
    prediction = store.predict("explore", {"user_id": 1}, items, k=3)
    assert prediction.bonus is not None
    state = ModelStateStore(store.online_store, "explore", 1).get_state(key(1))
    X = _x(items, "explore")
    np.testing.assert_allclose(prediction.bonus, ucb_bonus(state.A_inv, X, 0.5), rtol=1e-12)
    rank = X @ state.w + ucb_bonus(state.A_inv, X, 0.5)
    assert prediction.order.tolist() == np.argsort(-rank)[:3].tolist()
    body = prediction.to_dict()["scores"]
    assert all("bonus" in s and s["bonus"] > 0 for s in body)
    # A user never seen explores more than one with feedback.
    fresh = store.predict("explore", {"user_id": 999}, items)
    assert (fresh.bonus > prediction.bonus).all()


def test_request_and_user_features(store: FeatureStore) -> None:
    fake_export(store)
    store.train("ctx", labels())
    items = CANDIDATES[:3]
    prediction = store.predict("ctx", {"user_id": 2}, items, request_features={"hour": 13})
    w = ModelStateStore(store.online_store, "ctx", 1).get_state(key(2)).w
    X = np.stack([item_x(r["item_id"], "ctx", user=2, hour=13.0) for r in items])
    np.testing.assert_allclose(prediction.scores, X @ w, rtol=1e-12)
    np.testing.assert_allclose(prediction.probabilities, 1 / (1 + np.exp(-(X @ w))), rtol=1e-12)
    assert "probability" in prediction.to_dict()["scores"][0]
    with pytest.raises(UserError, match="`request_features` lacks hour, needed by model 'ctx'"):
        store.predict("ctx", {"user_id": 2}, items)
    # No user features stored for user 42: nothing can be scored.
    assert store.predict("ctx", {"user_id": 42}, items, request_features={"hour": 1}).statuses == ["not_found"] * 3


def test_bad_inputs_are_user_errors(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    with pytest.raises(NotFoundError, match="did you mean 'taste'"):
        store.predict("tast", {"user_id": 1}, CANDIDATES)
    with pytest.raises(NotFoundError, match="has no trained version"):
        store.predict("explore", {"user_id": 1}, CANDIDATES)
    with pytest.raises(UserError, match="`user` has no join key 'user_id'"):
        store.predict("taste", {"uid": 1}, CANDIDATES)
    with pytest.raises(UserError, match="`items.1` has no join key 'item_id'"):
        store.predict("taste", {"user_id": 1}, [{"item_id": 1}, {"id": 2}])
    with pytest.raises(UserError, match="items.0"):
        store.predict("taste", {"user_id": 1}, [{"item_id": "one"}])
    with pytest.raises(UserError, match="non-empty"):
        store.predict("taste", {"user_id": 1}, [])


def test_a_version_trained_on_features_that_changed_says_so(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    defs_file = store.repo_path / "features" / "defs.yaml"
    defs_file.write_text(defs_file.read_text().replace('dtype: "float32[3]"', 'dtype: "float32[4]"'))
    store.apply(allow_breaking=True)
    with pytest.raises(NotFoundError, match=r"was trained on item_vec:vec \(float32\[3\]\).*float32\[4\]"):
        store.predict("taste", {"user_id": 1}, CANDIDATES)


def test_json_body_matches_the_result_for_every_key_kind() -> None:
    import json

    from featurestore.models.serving import Prediction

    composite = Prediction(
        prediction_id="p", model="m", model_version=3,
        items=[{"shop": "a|b", "sku": 1, "extra": 9}, {"shop": "ç", "sku": 2}],
        item_keys=("shop", "sku"), item_texts=["a\\|b|1", "ç|2"],
        scores=np.array([1.5, np.nan]), statuses=["present", "not_found"], order=np.array([1, 0]),
        bonus=np.array([0.25, np.nan]), probabilities=np.array([0.8, np.nan]),
    )
    assert json.loads(composite.to_json()) == {
        "prediction_id": "p", "model": "m", "model_version": 3,
        "scores": [
            {"item": {"shop": "ç", "sku": 2}, "score": None, "status": "not_found", "bonus": None, "probability": None},
            {"item": {"shop": "a|b", "sku": 1}, "score": 1.5, "status": "present", "bonus": 0.25, "probability": 0.8},
        ],
    }
    single = Prediction(
        prediction_id="q", model="m", model_version=1, items=[{"item_id": 7}, {"item_id": -3}],
        item_keys=("item_id",), item_texts=["7", "-3"], scores=np.array([0.1, 1e-7]),
        statuses=["present", "present"], order=np.array([0, 1]), int_key=True,
    )
    assert single.to_dict()["scores"] == [
        {"item": {"item_id": 7}, "score": 0.1, "status": "present"},
        {"item": {"item_id": -3}, "score": 1e-7, "status": "present"},
    ]


def test_column_blocks_are_slices_when_contiguous() -> None:
    from featurestore.models.plan import _columns

    assert _columns([3, 4, 5]) == slice(3, 6)
    assert _columns([0, 2]).tolist() == [0, 2]


def test_a_model_trained_by_another_process_is_served_at_once(store: FeatureStore) -> None:
    # A server-like store whose watcher ticks once a second; the snapshot it holds predates the
    # training, which another FeatureStore (another process, as far as the registry knows) does.
    server = FeatureStore(store.repo_path, config_overrides={"online_store": store.config.online_store.model_dump()},
                          registry_refresh_seconds=5)
    try:
        assert "taste" not in server.context.snapshot.active_models
        fake_export(store)
        store.train("taste", labels())
        # No active version in the snapshot: a miss looks again (at most every 0.1 s), not a 404.
        assert server.predict("taste", {"user_id": 1}, CANDIDATES).model_version == 1
        with pytest.raises(NotFoundError, match="has no trained version"):
            server.predict("explore", {"user_id": 1}, CANDIDATES)
    finally:
        server.close()
