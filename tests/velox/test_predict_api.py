"""``POST /predict`` over HTTP (FastAPI's TestClient) and the ``FeatureStoreClient``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore, NotFoundError, UserError
from featurestore.client import FeatureStoreClient, ValidationError
from featurestore.models.state_store import ModelStateStore
from featurestore.online.memory import MemoryOnlineStore
from online_server import create_app
from tests.velox.conftest import fake_export, fill, item_x, key, labels, make_store
from tests.conftest import metric

ITEMS = [{"item_id": i} for i in (1, 2, 3, 4)]


@pytest.fixture
def trained(tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    store = make_store(tmp_path / "repo", {"type": "embedded"}, unique_project)
    fill(store)
    fake_export(store)
    store.train("taste", labels(seed=0))
    store.train("taste", labels(seed=1))
    store.train("explore", labels())
    yield store
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


@pytest.fixture
def client(trained: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(trained)) as c:
        yield c


def test_predict_returns_scores_in_input_order(client: TestClient, trained: FeatureStore) -> None:
    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": ITEMS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "taste" and body["model_version"] == 2 and len(body["prediction_id"]) == 32
    w = ModelStateStore(trained.online_store, "taste", 2).get_state(key(1)).w
    assert [s["item"] for s in body["scores"]] == ITEMS
    np.testing.assert_allclose([s["score"] for s in body["scores"]], [item_x(i["item_id"]) @ w for i in ITEMS], rtol=1e-12)
    assert all(s["status"] == "present" and "bonus" not in s for s in body["scores"])


def test_rollback_changes_the_next_http_response(client: TestClient, trained: FeatureStore) -> None:
    request = {"model": "taste", "user": {"user_id": 1}, "items": ITEMS}
    before = client.post("/predict", json=request).json()
    # What `featurestore models rollback` in another process does: one row in the registry.
    trained.model_versions.activate("taste", 1)
    after = client.post("/predict", json=request).json()
    assert (before["model_version"], after["model_version"]) == (2, 1)
    w1 = ModelStateStore(trained.online_store, "taste", 1).get_state(key(1)).w
    np.testing.assert_allclose([s["score"] for s in after["scores"]], [item_x(i["item_id"]) @ w1 for i in ITEMS], rtol=1e-12)


def test_top_k_and_linucb_bonus(client: TestClient) -> None:
    r = client.post("/predict", json={"model": "explore", "user": {"user_id": 2}, "items": ITEMS, "k": 2})
    scores = r.json()["scores"]
    assert len(scores) == 2 and all(s["bonus"] > 0 for s in scores)
    ranks = [s["score"] + s["bonus"] for s in scores]
    assert ranks == sorted(ranks, reverse=True)
    everything = client.post("/predict", json={"model": "explore", "user": {"user_id": 2}, "items": ITEMS}).json()["scores"]
    assert max(s["score"] + s["bonus"] for s in everything) == pytest.approx(ranks[0])


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"model": "taste", "user": {"user_id": 1}}, "items"),
        ({"model": "taste", "user": {"user_id": 1}, "items": []}, "items"),
        ({"model": "taste", "user": {"user_id": 1}, "items": ITEMS, "k": 0}, "k"),
        ({"model": "taste", "user": {"user_id": 1}, "items": [{"item_id": 1.5}]}, "items.0.item_id"),
        ({"model": "taste", "user": {"user_id": 1}, "items": ITEMS, "colour": "red"}, "colour"),
        ({"user": {"user_id": 1}, "items": ITEMS}, "model"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["fields"][0]["field"].startswith(field), error
    assert error["message"].startswith(f"field `{field}")


def test_unknown_model_is_404_with_the_nearest_name(client: TestClient) -> None:
    r = client.post("/predict", json={"model": "tastes", "user": {"user_id": 1}, "items": ITEMS})
    assert r.status_code == 404
    assert "did you mean 'taste'" in r.json()["error"]["message"]
    r = client.post("/predict", json={"model": "ctx", "user": {"user_id": 1}, "items": ITEMS})
    assert r.status_code == 404 and "has no trained version" in r.json()["error"]["message"]


def test_a_bad_join_key_is_a_422_naming_it(client: TestClient) -> None:
    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": [{"sku": 1}]})
    assert r.status_code == 422 and "`items.0` has no join key 'item_id'" in r.json()["error"]["message"]
    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 2**70}, "items": [{"item_id": 1}]})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "user.user_id"


def test_metrics_and_openapi(client: TestClient) -> None:
    for _ in range(2):
        client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": ITEMS})
    text = client.get("/metrics").text
    assert metric(text, "featurestore_predictions_total", model="taste", version="2") == 2
    assert metric(text, "featurestore_predicted_items_total", model="taste") == 8
    assert metric(text, "featurestore_feature_cache_lookups_total", result="hit") == 8
    assert metric(text, "featurestore_feature_cache_lookups_total", result="miss") == 8
    assert metric(text, "featurestore_feature_cache", stat="hit_rate") == 0.5
    assert metric(text, "featurestore_prediction_log", stat="pending") is not None
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_shutdown_writes_the_prediction_log(trained: FeatureStore) -> None:
    with TestClient(create_app(trained)) as c:
        pid = c.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": ITEMS}).json()["prediction_id"]
    log = trained.predictor.log
    assert log._thread is None and log.written >= 1
    log.forget_recent()
    record = log.get(pid)
    assert record is not None and record.items == ["1", "2", "3", "4"]


def test_the_http_client(client: TestClient) -> None:
    api = FeatureStoreClient("http://testserver", token="secret", http_client=client)
    body = api.predict("taste", {"user_id": 1}, ITEMS, k=1)
    assert len(body["scores"]) == 1 and body["model_version"] == 2
    features = api.features(["item_vec:vec"], [{"item_id": 1}])
    assert features["features"]["vec"]["values"] == [item_x(1)[:3].tolist()]
    assert api.health()["status"] == "ok"
    with pytest.raises(NotFoundError, match="did you mean 'taste'") as info:
        api.predict("tastes", {"user_id": 1}, ITEMS)
    assert info.value.hint
    with pytest.raises(ValidationError) as bad:
        api.predict("taste", {"user_id": 1}, ITEMS, k=0)
    assert bad.value.fields[0]["field"] == "k" and isinstance(bad.value, UserError)


def test_an_unreachable_server_is_store_unavailable() -> None:
    from featurestore import StoreUnavailableError

    with FeatureStoreClient("http://127.0.0.1:1", timeout=1) as api, pytest.raises(StoreUnavailableError, match="cannot be reached"):
        api.health()
