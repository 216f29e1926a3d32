"""``POST /predict`` and ``POST /features`` are served ahead of FastAPI's routing
(``online_server.app._FastPath``): the same bodies, errors, statuses and metrics as the declared
routes, a body in several chunks, and the other methods and paths left to FastAPI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.online.memory import MemoryOnlineStore
from online_server import create_app
from tests.conftest import metric
from tests.velox.conftest import fake_export, fill, labels, make_store

ITEMS = [{"item_id": i} for i in (1, 2, 3, 4)]
PREDICT = {"model": "taste", "user": {"user_id": 1}, "items": ITEMS}


@pytest.fixture
def trained(tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    store = make_store(tmp_path / "repo", {"type": "embedded"}, unique_project)
    fill(store)
    fake_export(store)
    store.train("taste", labels(seed=0))
    yield store
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


@pytest.fixture
def client(trained: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(trained)) as c:
        yield c


def test_predict_fast_path_answers_the_predictors_bytes(client: TestClient, trained: FeatureStore) -> None:
    fast = client.post("/predict", json=PREDICT)
    assert fast.status_code == 200 and fast.headers["content-type"] == "application/json"
    direct = trained.predictor.predict("taste", {"user_id": 1}, ITEMS)
    # Byte for byte what the declared route sends (``Prediction.to_json``), but the id.
    assert fast.content.replace(fast.json()["prediction_id"].encode(), b"") == direct.to_json().replace(
        direct.prediction_id.encode(), b""
    )


@pytest.mark.parametrize(
    ("body", "status", "kind"),
    [
        ({"model": "taste", "user": {"user_id": 1}}, 422, "ValidationError"),
        ({"model": "taste", "user": {"user_id": 1}, "items": ITEMS, "k": 0}, 422, "ValidationError"),
        ({"model": "nope", "user": {"user_id": 1}, "items": ITEMS}, 404, "NotFoundError"),
    ],
)
def test_predict_fast_path_errors_keep_their_shape(client: TestClient, body: dict, status: int, kind: str) -> None:
    r = client.post("/predict", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == kind and set(error) >= {"type", "message", "hint", "retryable"}


def test_not_json_is_a_422_naming_the_body(client: TestClient) -> None:
    r = client.post("/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "ValidationError"


def test_a_body_in_several_chunks_is_read_whole(client: TestClient) -> None:
    body = json.dumps(PREDICT).encode()
    chunks = [body[:7], body[7:20], body[20:]]

    def parts() -> Iterator[bytes]:
        yield from chunks

    r = client.post("/predict", content=parts(), headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert [s["item"] for s in r.json()["scores"]] == ITEMS


def test_other_methods_and_paths_reach_fastapi(client: TestClient) -> None:
    assert client.get("/predict").status_code == 405
    assert client.get("/features").status_code == 405
    assert client.post("/predict/x", json=PREDICT).status_code == 404


def test_fast_path_requests_are_counted_under_their_route(client: TestClient) -> None:
    client.post("/predict", json=PREDICT)
    client.post("/predict", json={"model": "nope", "user": {"user_id": 1}, "items": ITEMS})
    text = client.get("/metrics").text
    assert metric(text, "featurestore_requests_total", endpoint="/predict", status="200") == 1
    assert metric(text, "featurestore_requests_total", endpoint="/predict", status="404") == 1
