"""FeedbackService through the SDK: exact updates, idempotency, rejections with reasons, the
served feature vectors, and that the next prediction sees an update."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback import FeedbackInput
from featurestore.feedback.log import FeedbackLog
from featurestore.models.linear import learn_one
from featurestore.models.state_codec import decode_state, encode_state
from featurestore.models.state_store import ModelStateStore
from registry.errors import ConflictError, DataError
from tests.velox.conftest import NOW_US, VEC, item_x, key, user_activity
from tests.velox_feedback.conftest import assert_same_state, state

ITEMS = [{"item_id": i} for i in (1, 2, 3, 4)]


def logged(store: FeatureStore, model: str = "taste") -> list:
    return [o for batch in FeedbackLog(store.registry.engine, store.project).read(model) for o in batch]


def test_one_observation_is_learn_one_and_the_next_predict_sees_it(trained: FeatureStore) -> None:
    before = state(trained, key(1))
    first = trained.predict("taste", {"user_id": 1}, ITEMS)
    result = trained.feedback("taste", {"user_id": 1}, {"item_id": 3}, 2.5, "f1")
    assert (result.new, result.duplicates, result.model_versions) == (1, 0, {"taste": 2})
    after = state(trained, key(1))
    assert_same_state(after, learn_one(before, item_x(3), 2.5), tol=1e-12)
    # No per-user state is cached by the predictor: the very next prediction uses the update.
    again = trained.predict("taste", {"user_id": 1}, ITEMS)
    np.testing.assert_allclose(again.scores, [item_x(i["item_id"]) @ after.w for i in ITEMS], rtol=1e-12)
    assert not np.allclose(again.scores, first.scores)


def test_a_retry_changes_nothing(trained: FeatureStore) -> None:
    trained.feedback("taste", {"user_id": 2}, {"item_id": 5}, 4.0, "same")
    stored = encode_state(state(trained, key(2)))
    retry = trained.feedback("taste", {"user_id": 2}, {"item_id": 5}, 4.0, "same")
    assert (retry.new, retry.duplicates) == (0, 1)
    # Duplicates inside one batch count once, and only the first is learned; an id reused for
    # another observation is not a duplicate but a conflict, and is not recorded.
    batch = trained.feedback_many([
        {"model": "taste", "user": {"user_id": 2}, "item": {"item_id": 6}, "label": 1.0, "feedback_id": "b"},
        {"model": "taste", "user": {"user_id": 2}, "item": {"item_id": 6}, "label": 1.0, "feedback_id": "b"},
        {"model": "taste", "user": {"user_id": 2}, "item": {"item_id": 7}, "label": 9.0, "feedback_id": "b"},
        {"model": "taste", "user": {"user_id": 2}, "item": {"item_id": 5}, "label": 4.0, "feedback_id": "same"},
    ])
    assert (batch.new, batch.duplicates) == (1, 2)
    assert [(r.index, r.field, r.status) for r in batch.rejected] == [(2, "feedback_id", 409)]
    expected = learn_one(decode_state(stored), item_x(6), 1.0)
    assert_same_state(state(trained, key(2)), expected, tol=1e-12)
    assert [o.feedback_id for o in logged(trained)] == ["same", "b"]


def test_a_batch_accepts_the_good_ones_and_says_why_not_the_others(trained: FeatureStore) -> None:
    served = trained.predict("taste", {"user_id": 1}, ITEMS)
    good = {"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.0}
    observations = [
        {**good, "feedback_id": "ok-0"},
        {**good, "feedback_id": "x-1", "model": "tast"},
        {**good, "feedback_id": "x-2", "prediction_id": "0" * 32},
        {**good, "feedback_id": "x-3", "prediction_id": served.prediction_id, "item": {"item_id": 9}},
        {**good, "feedback_id": "x-4", "prediction_id": served.prediction_id, "user": {"user_id": 2}},
        {**good, "feedback_id": "x-5", "model": "ctx", "label": 0.5, "request_features": {"hour": 3.0}},
        {**good, "feedback_id": "x-6", "item": {"item_id": 20}},  # item_pop has no row for item 20
        {**good, "feedback_id": "x-7", "user": {"user_id": "one"}},
        {**good, "feedback_id": "x-8", "label": float("nan")},
        {**good, "feedback_id": "x-9", "model": "ctx", "label": 1.0},  # no request features
        {**good, "feedback_id": "", "label": 1.0},
        {**good, "feedback_id": "ok-11", "prediction_id": served.prediction_id},
    ]
    result = trained.feedback_many(observations)
    assert (result.new, result.duplicates) == (2, 0)
    reasons = {r.index: (r.field, r.reason) for r in result.rejected}
    assert {i: f for i, (f, _) in reasons.items()} == {
        1: "model", 2: "prediction_id", 3: "item", 4: "user", 5: "label", 6: "item", 7: "user.user_id",
        8: "label", 9: "request_features", 10: "feedback_id",
    }
    assert "did you mean 'taste'" in reasons[1][1]
    assert "unknown prediction id" in reasons[2][1]
    assert "was not a candidate of prediction" in reasons[3][1]
    assert "was made for user '1'" in reasons[4][1]
    assert "must be 0 or 1" in reasons[5][1]
    assert "missing features" in reasons[6][1] and "item_pop" in reasons[6][1]
    assert "lacks hour, needed by model 'ctx'" in reasons[9][1]
    assert [o.feedback_id for o in logged(trained)] == ["ok-0", "ok-11"]


def test_one_bad_observation_raises_naming_the_field(trained: FeatureStore) -> None:
    with pytest.raises(DataError, match="field `label`"):
        trained.feedback("ctx", {"user_id": 1}, {"item_id": 1}, 2.0, "c1", request_features={"hour": 1.0})
    assert logged(trained, "ctx") == []


def test_the_prediction_id_makes_the_update_use_the_served_vector(trained: FeatureStore) -> None:
    served = trained.predict("taste", {"user_id": 3}, ITEMS)
    # The item's features change after the prediction was served.
    trained.online_store.write_latest("item_vec", [(key(2), NOW_US + 1, 1, VEC.encode_row([[9.0, 9.0, 9.0]]))])
    trained.predictor.cache.invalidate()
    before = state(trained, key(3))
    trained.feedback("taste", {"user_id": 3}, {"item_id": 2}, 5.0, "p1", prediction_id=served.prediction_id)
    with_id = state(trained, key(3))
    trained.feedback("taste", {"user_id": 3}, {"item_id": 2}, 5.0, "p2")
    rows = logged(trained)
    np.testing.assert_array_equal(rows[0].features, served.features[1])
    np.testing.assert_array_equal(rows[0].features, item_x(2))
    np.testing.assert_array_equal(rows[1].features, [9.0, 9.0, 9.0, item_x(2)[3], 1.0])
    assert rows[0].prediction_id == served.prediction_id and rows[1].prediction_id is None
    assert_same_state(with_id, learn_one(before, item_x(2), 5.0), tol=1e-12)
    # Also once the record is only in the table (another process made the prediction).
    trained.predictor.log.flush()
    trained.predictor.log.forget_recent()
    trained.feedback("taste", {"user_id": 3}, {"item_id": 1}, 1.0, "p3", prediction_id=served.prediction_id)
    np.testing.assert_array_equal(logged(trained)[2].features, item_x(1))


def test_a_prediction_of_an_older_version_with_the_same_layout_trains_the_active_one(trained: FeatureStore) -> None:
    served = trained.predictor.predict("taste", {"user_id": 1}, ITEMS, version=1)
    assert served.model_version == 1
    before = state(trained, key(1), version=2)
    result = trained.feedback("taste", {"user_id": 1}, {"item_id": 4}, 2.0, "v1", prediction_id=served.prediction_id)
    assert result.model_versions == {"taste": 2}
    assert_same_state(state(trained, key(1), version=2), learn_one(before, item_x(4), 2.0), tol=1e-12)
    assert logged(trained)[0].model_version == 2


def test_logistic_with_user_and_request_features(trained: FeatureStore) -> None:
    before = state(trained, key(2), "ctx", 1)
    trained.feedback("ctx", {"user_id": 2}, {"item_id": 7}, 1, "c1", request_features={"hour": 13})
    x = item_x(7, "ctx", user=2, hour=13.0)
    assert x[3] == user_activity(2)
    assert_same_state(state(trained, key(2), "ctx", 1), learn_one(before, x, 1.0, "logistic"), tol=1e-12)
    row = logged(trained, "ctx")[0]
    np.testing.assert_array_equal(row.features, x)
    # Monitoring stores probabilities for logistic models: what the user was shown, σ(w·x).
    assert row.prediction == pytest.approx(1 / (1 + np.exp(-(x @ before.w))), rel=1e-12)


def test_many_users_in_one_batch_equal_one_by_one(trained: FeatureStore) -> None:
    rng = np.random.default_rng(3)
    users = rng.choice([1, 2, 3, 50, 51], 40)
    items = rng.integers(1, 20, 40)
    y = rng.normal(3, 1, 40)
    starts = {u: state(trained, key(int(u))) for u in set(users.tolist())}
    trained.feedback_many([
        FeedbackInput("taste", {"user_id": int(u)}, {"item_id": int(i)}, float(v), f"m{k}")
        for k, (u, i, v) in enumerate(zip(users, items, y))
    ])
    for u, start in starts.items():
        s = start
        for uu, i, v in zip(users, items, y):
            if uu == u:
                s = learn_one(s, item_x(int(i)), float(v))
        assert_same_state(state(trained, key(u)), s, tol=1e-10)
    # A user never seen is stored from the first feedback on, still the average user plus it.
    assert ModelStateStore(trained.online_store, "taste", 2).known([key(50)]) == [True]


@pytest.mark.parametrize("size", [1, 4])
def test_a_lost_compare_and_swap_is_re_read_and_retried(trained: FeatureStore, size: int) -> None:
    """Another writer updates user 1 between our read and our swap (deterministically, here):
    our swap fails, we re-read, re-learn on top of its update, and nothing is lost."""
    online = trained.online_store
    states = ModelStateStore(online, "taste", 2)
    start = state(trained, key(1))
    theirs = learn_one(start, item_x(9), 7.0)
    real = online.compare_and_swap_blobs
    calls: list[int] = []

    def racing(namespace: str, swaps: dict) -> list[bytes]:
        calls.append(len(swaps))
        if len(calls) == 1:
            states.put_states({key(1): theirs})  # the other process wins the race
        return real(namespace, swaps)

    online.compare_and_swap_blobs = racing  # type: ignore[method-assign]
    try:
        users = [1, 2, 1, 3][:size]
        before = {u: state(trained, key(u)) for u in set(users)}
        result = trained.feedback_many([
            FeedbackInput("taste", {"user_id": u}, {"item_id": 10 + k}, 1.0 + k, f"r{k}") for k, u in enumerate(users)
        ])
    finally:
        del online.compare_and_swap_blobs
    assert result.cas_retries == 1 and trained.feedback_service.cas_retries == 1
    # The retry swaps only the user whose swap failed.
    assert calls == ([1, 1] if size == 1 else [3, 1])
    mine = theirs
    for k, u in enumerate(users):
        if u == 1:
            mine = learn_one(mine, item_x(10 + k), 1.0 + k)
    assert_same_state(state(trained, key(1)), mine, tol=1e-12)
    for u in set(users) - {1}:
        k = users.index(u)
        assert_same_state(state(trained, key(u)), learn_one(before[u], item_x(10 + k), 1.0 + k), tol=1e-12)


def test_a_feedback_id_reused_for_another_observation_is_a_conflict_not_a_duplicate(trained: FeatureStore) -> None:
    trained.feedback("taste", {"user_id": 3}, {"item_id": 4}, 2.0, "once")
    stored = encode_state(state(trained, key(3)))
    with pytest.raises(ConflictError, match="feedback_id 'once' was already used for another observation"):
        trained.feedback("taste", {"user_id": 3}, {"item_id": 4}, 5.0, "once")  # another label
    with pytest.raises(ConflictError):
        trained.feedback("taste", {"user_id": 3}, {"item_id": 8}, 2.0, "once")  # another item
    assert trained.feedback("taste", {"user_id": 3}, {"item_id": 4}, 2.0, "once").duplicates == 1  # a retry
    assert encode_state(state(trained, key(3))) == stored  # none of them changed anything
    assert [(o.label, o.item_key) for o in logged(trained) if o.feedback_id == "once"] == [(2.0, "4")]
