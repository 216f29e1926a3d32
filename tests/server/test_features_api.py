"""The HTTP API through FastAPI's TestClient, on the same fixtures as the SDK tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from online_server import create_app
from tests.conftest import metric
from tests.retrieval.conftest import NOW_US, fill, make_repo


@pytest.fixture(params=["embedded", pytest.param("redis", marks=pytest.mark.integration)])
def client(request: pytest.FixtureRequest, tmp_path: Path) -> TestClient:
    """The server on the embedded store and on Redis (its asyncio read path)."""
    if request.param == "redis":
        online = {"type": "redis", "url": request.getfixturevalue("redis_url")}
        store = make_repo(tmp_path / "repo", online, request.getfixturevalue("unique_project"))
    else:
        store = make_repo(tmp_path / "repo", {"type": "embedded"})
    fill(store)
    with TestClient(create_app(store)) as c:
        yield c
    store.close()


def test_features_values_and_statuses(client: TestClient) -> None:
    r = client.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}, {"user_id": 2}, {"user_id": 3}]})
    assert r.status_code == 200
    body = r.json()
    assert body["entity_rows"] == 3 and body["registry_version"] == 1
    assert body["features"]["clicks"] == {"values": [5, None, None], "statuses": ["present", "expired", "not_found"]}


def test_feature_service_and_timestamps(client: TestClient) -> None:
    r = client.post("/features", json={"feature_service": "svc", "entity_rows": [{"user_id": 1, "item_id": 10}], "include_timestamps": True})
    assert r.status_code == 200
    features = r.json()["features"]
    assert features["vec"]["values"] == [[1.0, 2.0, 3.0]]
    assert features["score"]["event_timestamps"] == [NOW_US - 60_000_000]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"features": ["user_stats:clicks"]}, "entity_rows"),
        ({"features": ["user_stats:clicks"], "entity_rows": []}, "entity_rows"),
        ({"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1.5}]}, "entity_rows.0.user_id"),
        ({"features": ["x"], "entity_rows": [{"user_id": 1}], "colour": 1}, "colour"),
        ({"entity_rows": [{"user_id": 1}]}, "(body)"),
    ],
)
def test_bad_input_is_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    r = client.post("/features", json=body)
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["fields"][0]["field"].startswith(field), error
    assert error["message"].startswith(f"field `{field}")


def test_unknown_feature_is_404_with_suggestion(client: TestClient) -> None:
    r = client.post("/features", json={"features": ["user_stats:clickz"], "entity_rows": [{"user_id": 1}]})
    assert r.status_code == 404
    assert "did you mean 'user_stats:clicks'" in r.json()["error"]["message"]


def test_a_bad_join_key_is_a_422_naming_the_row_and_the_key(client: TestClient) -> None:
    r = client.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"item_id": 1}]})
    assert r.status_code == 422
    assert "`entity_rows.0` has no join key 'user_id'" in r.json()["error"]["message"]
    r = client.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 2**64}]})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["fields"] == [{"field": "entity_rows.0.user_id", "message": "(int64) is out of range: 18446744073709551616"}]


def test_an_unknown_path_or_method_answers_the_error_object(client: TestClient) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["type"] == "HTTPError"
    r = client.get("/features")
    assert r.status_code == 405 and set(r.json()["error"]) >= {"type", "message", "hint", "retryable"}
    assert "POST" in r.headers["allow"]


def test_health_and_metrics(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["online_data"]["lost_at"] is None and health["online_data"]["rematerialize"] == []
    del health["online_data"]
    assert health == {"status": "ok", "checks": {"online_store": "ok", "registry": "ok", "online_data": "ok"}, "registry_version": 1}
    client.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]})
    text = client.get("/metrics").text
    assert metric(text, "featurestore_requests_total", endpoint="/features", status="200") == 1
    assert metric(text, "featurestore_request_seconds_count", endpoint="/features") == 1
    assert metric(text, "featurestore_feature_freshness_seconds", feature_view="user_stats") is not None


def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/features", "/health", "/metrics"} <= set(spec["paths"])
    page = client.get("/docs")
    assert page.status_code == 200
    # Every asset from the server itself: this machine (and many servers) cannot reach a CDN.
    assert "/docs/assets/swagger-ui-bundle.js" in page.text and "cdn." not in page.text
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and len(script.content) > 1_000_000
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200
    assert client.get("/redoc").status_code == 404  # ReDoc would load from a CDN: not offered


@pytest.mark.integration
def test_store_down_is_503_with_a_clear_message(tmp_path: Path, unique_project: str) -> None:
    store = make_repo(tmp_path / "down", {"type": "redis", "url": "redis://127.0.0.1:1/0"}, unique_project)
    with TestClient(create_app(store)) as c:
        r = c.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]})
        assert r.status_code == 503
        error = r.json()["error"]
        assert error["retryable"] is True and "127.0.0.1:1" in error["message"]
        assert "Traceback" not in r.text
        health = c.get("/health")
        assert health.status_code == 503 and health.json()["checks"]["registry"] == "ok"
        assert metric(c.get("/metrics").text, "featurestore_store_errors_total", store="online") == 1
