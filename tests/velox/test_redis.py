"""The models on the real Redis online store: state blobs, the feature cache, rollback over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.models.state_store import AVERAGE_KEY, META_KEY, ModelStateStore
from online_server import create_app
from tests.online.conftest import delete_redis_project
from tests.velox.conftest import ITEMS, fake_export, fill, item_x, key, labels, make_store

pytestmark = pytest.mark.integration
CANDIDATES = [{"item_id": i} for i in ITEMS[:-1]]


@pytest.fixture
def store(tmp_path: Path, redis_url: str, unique_project: str) -> Iterator[FeatureStore]:
    fs = make_store(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project)
    fill(fs)
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    delete_redis_project(redis_url, unique_project)


def test_train_predict_rollback_on_redis(store: FeatureStore, redis_url: str) -> None:
    import redis

    fake_export(store)
    first = store.train("taste", labels(seed=0))
    store.train("taste", labels(seed=1))
    client = redis.Redis.from_url(redis_url)
    prefix = f"{store.project}:__blob__:model.taste.v1:".encode()
    assert client.exists(prefix + META_KEY, prefix + AVERAGE_KEY, prefix + b"1") == 3
    client.close()

    new_user = store.predict("taste", {"user_id": 12345}, CANDIDATES)
    assert new_user.model_version == 2
    w2 = ModelStateStore(store.online_store, "taste", 2).average()
    np.testing.assert_array_equal(new_user.scores, np.stack([item_x(r["item_id"]) for r in CANDIDATES]) @ w2)

    with TestClient(create_app(store)) as http:
        body = {"model": "taste", "user": {"user_id": 12345}, "items": CANDIDATES[:3]}
        assert http.post("/predict", json=body).json()["model_version"] == 2
        store.model_versions.activate("taste", 1)
        after = http.post("/predict", json=body).json()
        assert after["model_version"] == 1
        expected = [item_x(r["item_id"]) @ first.w_avg for r in CANDIDATES[:3]]
        np.testing.assert_allclose([s["score"] for s in after["scores"]], expected, rtol=1e-12)
    cache = store.predictor.cache.stats()
    assert cache["hits"] > 0 and cache["misses"] > 0
    assert store.predictor.log.get(after["prediction_id"]) is not None
    assert ModelStateStore(store.online_store, "taste", 1).known([key(1), key(12345)]) == [True, False]
