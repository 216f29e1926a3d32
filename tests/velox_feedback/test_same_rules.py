"""/predict and /feedback check a user, an item and request features with one rule set: every bad
input is refused by both, naming the same field, and nothing bad reaches the feedback log."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback import FeedbackInput
from featurestore.feedback.log import FeedbackLog
from featurestore.feedback.types import AllRejectedError
from featurestore.inputs import entity_key, entity_keys
from featurestore.models.prediction_log import PredictionLog
from registry.errors import DataError, InputError, UserError
from tests.velox.conftest import NOW_US
from tests.velox_feedback.conftest import DEFS, trained_store

ITEMS = [{"item_id": i} for i in (1, 2, 3)]

# (what is wrong, model, user, item, request features, the field both must name)
BAD: list[tuple[str, str, Any, Any, Any, str]] = [
    ("NaN request feature", "ctx", {"user_id": 1}, {"item_id": 1}, {"hour": math.nan}, "request_features.hour"),
    ("infinite request feature", "ctx", {"user_id": 1}, {"item_id": 1}, {"hour": math.inf}, "request_features.hour"),
    ("missing request feature", "ctx", {"user_id": 1}, {"item_id": 1}, {}, "request_features"),
    ("bool request feature", "ctx", {"user_id": 1}, {"item_id": 1}, {"hour": True}, "request_features.hour"),
    ("extra user key", "taste", {"user_id": 1, "region": "eu"}, {"item_id": 1}, None, "user.region"),
    ("missing user key", "taste", {"uid": 1}, {"item_id": 1}, None, "user"),
    ("int64 key out of range", "taste", {"user_id": 2**70}, {"item_id": 1}, None, "user.user_id"),
    ("str for an int key", "taste", {"user_id": "7"}, {"item_id": 1}, None, "user.user_id"),
    ("int64 item key out of range", "taste", {"user_id": 1}, {"item_id": -(2**63) - 1}, None, "item.item_id"),
    ("unknown request feature", "ctx", {"user_id": 1}, {"item_id": 1}, {"hour": 1.0, "hours": 2.0}, "request_features.hours"),
    ("item not a mapping", "taste", {"user_id": 1}, [1], None, "item"),
    ("extra item key", "taste", {"user_id": 1}, {"item_id": 1, "sku": 2}, None, "item.sku"),
]


@pytest.mark.parametrize(("what", "model", "user", "item", "given", "field"), BAD, ids=[b[0] for b in BAD])
def test_predict_and_feedback_refuse_the_same_inputs(
    trained: FeatureStore, what: str, model: str, user: Any, item: Any, given: Any, field: str
) -> None:
    with pytest.raises(InputError) as refused:
        trained.predict(model, user, [item], request_features=given)
    # The items of a prediction are a list: the item is `items.0` there, `item` in feedback.
    in_predict = "items.0" + field[len("item"):] if field.startswith("item") else field
    assert refused.value.field == in_predict
    with pytest.raises(AllRejectedError) as rejected:
        trained.feedback_many(
            [{"model": model, "user": user, "item": item, "label": 1.0, "feedback_id": "bad", "request_features": given}]
        )
    result = rejected.value.result
    assert result.new == 0 and [r.field for r in result.rejected] == [field]
    assert not [o for batch in FeedbackLog(trained.registry.engine, trained.project).read(model) for o in batch]


def test_the_vectorised_key_path_and_the_row_path_agree() -> None:
    names, dtypes = ("item_id",), ("int64",)
    rows = [{"item_id": v} for v in (0, -1, 2**63 - 1, -(2**63), 42)]
    fast = entity_keys(names, dtypes, rows, "items", "item")
    slow = [entity_key(names, dtypes, row, f"items.{i}", "item") for i, row in enumerate(rows)]
    assert fast[0] == slow and fast[1] == [k.decode() for k in slow]
    for bad, field in (([{"item_id": 1}, {"item_id": 2**63}], "items.1.item_id"), ([{"item_id": 1}, {"x": 1}], "items.1")):
        with pytest.raises(InputError) as refused:
            entity_keys(names, dtypes, bad, "items", "item")
        assert refused.value.field == field


def test_predict_async_gives_what_predict_gives(trained: FeatureStore) -> None:
    sync = trained.predict("taste", {"user_id": 1}, ITEMS, k=2)
    asynced = asyncio.run(trained.predictor.predict_async("taste", {"user_id": 1}, ITEMS, k=2))
    np.testing.assert_array_equal(sync.scores, asynced.scores)
    assert sync.order.tolist() == asynced.order.tolist() and sync.statuses == asynced.statuses
    with pytest.raises(UserError, match="has no join key"):
        asyncio.run(trained.predictor.predict_async("taste", {"uid": 1}, ITEMS))


def test_prediction_ids_are_looked_up_in_one_query_and_waited_for_not_slept_on(trained: FeatureStore) -> None:
    served = [trained.predict("taste", {"user_id": u}, ITEMS) for u in (1, 2, 3)]
    trained.predictor.log.flush()
    # A second log of the same project (another process, say) has none of them in memory.
    other = PredictionLog(trained.registry.engine, trained.project)
    try:
        found = other.get_many([p.prediction_id for p in served] + ["nope"], wait_seconds=0.05)
        assert [found[p.prediction_id].user_key for p in served] == ["1", "2", "3"]  # type: ignore[union-attr]
        assert found["nope"] is None
    finally:
        other.close()


GOOD = {"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.0}


@pytest.mark.parametrize("field", ["feedback_id", "slice", "prediction_id"])
def test_a_nul_character_is_one_rejection_naming_the_field_and_the_batch_goes_on(trained: FeatureStore, field: str) -> None:
    # PostgreSQL cannot store NUL in text: refused before the database on every profile
    # (tests/velox_feedback/test_postgres_redis.py runs the same on PostgreSQL).
    bad = {**GOOD, "feedback_id": "nul-0", field: "a\x00b"}
    result = trained.feedback_many([bad, {**GOOD, "feedback_id": "nul-1"}])
    assert (result.new, [(r.index, r.field) for r in result.rejected]) == (1, [(0, field)])
    assert "NUL" in result.rejected[0].reason


def test_the_sdk_takes_the_timestamps_http_takes(trained: FeatureStore) -> None:
    result = trained.feedback_many([
        {**GOOD, "feedback_id": "ts-iso", "ts": "2026-01-02T03:04:05Z"},
        {**GOOD, "feedback_id": "ts-unix", "ts": 1_767_323_045},
    ])
    assert result.new == 2
    logged = {o.feedback_id: o.event_ts for batch in FeedbackLog(trained.registry.engine, trained.project).read("taste")
              for o in batch}
    assert logged["ts-iso"].isoformat() == logged["ts-unix"].isoformat() == "2026-01-02T03:04:05+00:00"
    with pytest.raises(AllRejectedError, match="field `ts`: must be a timestamp"):
        trained.feedback_many([{**GOOD, "feedback_id": "ts-bad", "ts": "yesterday"}])


def test_a_batch_with_every_observation_rejected_cannot_pass_for_success(trained: FeatureStore) -> None:
    with pytest.raises(AllRejectedError, match="all 2 observation") as refused:
        trained.feedback_many([{**GOOD, "feedback_id": "x", "label": "high"}, {**GOOD, "feedback_id": "y", "model": "nope"}])
    assert [r.field for r in refused.value.result.rejected] == ["label", "model"]
    # One good observation among bad ones is a result to read, not an error.
    assert trained.feedback_many([{**GOOD, "feedback_id": "z"}, {**GOOD, "feedback_id": "w", "label": "high"}]).new == 1


def test_a_huge_label_is_refused_before_the_log_and_poisons_nothing(trained: FeatureStore) -> None:
    # taste was trained on labels in some range; 1e308 is finite but far outside it.
    before = trained.predict("taste", {"user_id": 1}, ITEMS).scores
    with pytest.raises(DataError, match="field `label`: must lie in") as refused:
        trained.feedback("taste", {"user_id": 1}, {"item_id": 2}, 1e308, "huge")
    assert "training labels" in str(refused.value)
    assert not [o for batch in FeedbackLog(trained.registry.engine, trained.project).read("taste") for o in batch]
    np.testing.assert_array_equal(trained.predict("taste", {"user_id": 1}, ITEMS).scores, before)
    assert trained.feedback("taste", {"user_id": 1}, {"item_id": 2}, 3.0, "fine").new == 1


def test_a_declared_label_range_is_the_bound(tmp_path: Path, unique_project: str) -> None:
    defs = DEFS.replace("    label: rating\n", "    label: rating\n    label_range: [1, 5]\n", 1)
    store = trained_store(tmp_path / "repo", {"type": "memory"}, unique_project, defs)
    try:
        assert store.feedback("taste", {"user_id": 1}, {"item_id": 2}, 5.0, "top").new == 1
        with pytest.raises(DataError, match=r"must lie in \[1, 5\] for model 'taste' \(its label_range\), got 5.5"):
            store.feedback("taste", {"user_id": 1}, {"item_id": 2}, 5.5, "over")
    finally:
        store.close()


def test_features_so_large_the_update_overflows_are_refused_before_the_log(trained: FeatureStore) -> None:
    from tests.velox.conftest import POP, key

    # item_pop is float64: a finite 1e200 makes x·A⁻¹·x overflow.
    trained.online_store.write_latest("item_pop", [(key(2), NOW_US + 1, NOW_US + 1, POP.encode_row([1e200, "#2"]))])
    trained.predictor.cache.invalidate()
    result = trained.feedback_service.submit([
        FeedbackInput("taste", {"user_id": 1}, {"item_id": 2}, 3.0, "overflow"),
        FeedbackInput("taste", {"user_id": 1}, {"item_id": 3}, 3.0, "ok"),
    ])
    assert (result.new, [(r.index, r.field) for r in result.rejected]) == (1, [(0, "item")])
    assert "not a finite number" in result.rejected[0].reason
    logged = [o.feedback_id for batch in FeedbackLog(trained.registry.engine, trained.project).read("taste") for o in batch]
    assert logged == ["ok"]
