"""The prediction log: records reach fs_predictions with the exact feature vectors served, and
``get`` finds them before (memory) and after (table) they are flushed."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from featurestore import FeatureStore
from featurestore.models.prediction_log import PredictionLog, PredictionRecord
from registry import tables as t
from tests.velox.conftest import fake_export, item_x, labels


def test_predictions_reach_the_table_with_the_exact_features(store: FeatureStore) -> None:
    fake_export(store)
    store.train("taste", labels())
    items = [{"item_id": 3}, {"item_id": 77}, {"item_id": 5}]
    prediction = store.predict("taste", {"user_id": 2}, items)
    log = store.predictor.log
    # Before the writer ran (or whether it ran or not): served from memory.
    record = log.get(prediction.prediction_id)
    assert record is not None and record.model == "taste" and record.model_version == 1
    assert log.flush()
    with store.registry.engine.connect() as conn:
        row = conn.execute(sa.select(t.predictions)).mappings().one()
    assert row["prediction_id"] == prediction.prediction_id and row["project"] == store.project
    assert row["user_key"] == "2" and json.loads(row["items"]) == ["3", "77", "5"]
    assert row["dimension"] == 5 and row["model_version"] == 1
    features = np.frombuffer(row["features"], dtype="<f8").reshape(3, 5)
    np.testing.assert_array_equal(features[0], item_x(3))
    np.testing.assert_array_equal(features[2], item_x(5))
    assert np.isnan(features[1, :4]).all()  # item 77 has no features: logged as NaN

    log.forget_recent()
    from_table = log.get(prediction.prediction_id)
    assert from_table is not None and from_table is not record
    np.testing.assert_array_equal(from_table.features, prediction.features)
    assert from_table.items == ["3", "77", "5"] and from_table.user_key == "2"
    np.testing.assert_array_equal(from_table.features_of("5"), item_x(5))
    assert from_table.features_of("4") is None
    assert log.get("no-such-id") is None


def test_the_writer_batches_and_closes_cleanly(store: FeatureStore) -> None:
    log = PredictionLog(store.registry.engine, store.project, flush_seconds=0.01, batch_rows=7, recent=5)
    ids = []
    for i in range(30):
        record = PredictionRecord(
            prediction_id=f"p{i:03d}", project=store.project, model="taste", model_version=1,
            user_key=str(i), items=["1", "2"], features=np.full((2, 3), float(i)),
            created_at=datetime.now(timezone.utc),
        )
        log.log(record)
        ids.append(record.prediction_id)
    log.close()
    assert log.written == 30 and log.dropped == 0
    with store.registry.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(t.predictions)).scalar()
    assert count == 30
    # Only the 5 most recent are kept in memory; older ones come from the table.
    assert len(log._recent) == 5
    old = log.get("p000")
    assert old is not None and old.features.tolist() == [[0.0] * 3] * 2
    log.log(PredictionRecord("late", store.project, "m", 1, "u", ["1"], np.zeros((1, 1)), datetime.now(timezone.utc)))
    log.close()  # a log after close starts a new writer; close writes it
    assert log.written == 31 and log._thread is None


def test_a_full_queue_drops_instead_of_blocking(store: FeatureStore) -> None:
    log = PredictionLog(store.registry.engine, store.project, max_pending=1, flush_seconds=60)
    log._start = lambda: None  # type: ignore[method-assign]  # no writer: the queue never drains
    for i in range(3):
        log.log(PredictionRecord(f"q{i}", store.project, "m", 1, "u", ["1"], np.zeros((1, 1)), datetime.now(timezone.utc)))
    assert log.dropped == 2 and log.pending == 1
    assert log.get("q2") is not None  # still answered from memory
    log.close()


@pytest.mark.integration
def test_the_log_on_postgresql(postgres_url: str) -> None:
    from registry.db import create_engine, ensure_schema

    engine = create_engine(postgres_url)
    ensure_schema(engine)
    log = PredictionLog(engine, "proj")
    X = np.arange(12, dtype=np.float64).reshape(3, 4) / 7.0
    log.log(PredictionRecord("pg1", "proj", "taste", 2, "u|1", ["a", "b\\|c", "ç"], X, datetime.now(timezone.utc)))
    assert log.flush()
    log.forget_recent()
    record = log.get("pg1")
    assert record is not None and record.items == ["a", "b\\|c", "ç"] and record.user_key == "u|1"
    np.testing.assert_array_equal(record.features, X)
    log.close()
    engine.dispose()
