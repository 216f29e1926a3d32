"""``POST /feedback`` and the admin routes over HTTP (TestClient), with tokens and roles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.config import TokenConfig
from featurestore.tokens import hash_token
from online_server import create_app
from tests.conftest import metric

WRITER, ADMIN = "fs_writer_token", "fs_admin_token"
W = {"Authorization": f"Bearer {WRITER}"}
A = {"Authorization": f"Bearer {ADMIN}"}
GOOD = {"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.5, "feedback_id": "g1"}


@pytest.fixture
def client(trained: FeatureStore) -> Iterator[TestClient]:
    tokens = [
        TokenConfig(name="writer", sha256=hash_token(WRITER), roles=["read", "write"]),
        TokenConfig(name="admin", sha256=hash_token(ADMIN), roles=["admin"]),
    ]
    server = trained.config.server.model_copy(update={"tokens": tokens})
    trained.config = trained.config.model_copy(update={"server": server})
    with TestClient(create_app(trained)) as c:
        yield c


def test_single_observation(client: TestClient) -> None:
    r = client.post("/feedback", json=GOOD, headers=W)
    assert r.status_code == 200, r.text
    assert r.json() == {"received": 1, "accepted": 1, "new": 1, "duplicates": 0, "deferred": 0, "rejected": [], "model_versions": {"taste": 2}}
    again = client.post("/feedback", json=GOOD, headers=W).json()
    assert (again["new"], again["duplicates"]) == (0, 1)


@pytest.mark.parametrize(
    ("change", "field", "text"),
    [
        ({"label": "high"}, "label", "valid number"),
        ({"colour": "red"}, "colour", "Extra inputs"),
        ({"feedback_id": ""}, "feedback_id", "at least 1"),
        ({"user": {"user_id": 1.5}}, "user.user_id", ""),
        ({"prediction_id": "f" * 32}, "prediction_id", "unknown prediction id"),
        ({"model": "ctx", "label": 2.0, "request_features": {"hour": 1.0}}, "label", "0 or 1"),
        ({"item": {"item_id": 20}}, "item", "missing features"),
        ({"model": "nope"}, "model", "no model named"),
        ({"slice": "web\u0000"}, "slice", "NUL"),
        ({"feedback_id": "a\u0000b"}, "feedback_id", "NUL"),
    ],
)
def test_a_bad_observation_is_a_422_naming_the_field(client: TestClient, change: dict, field: str, text: str) -> None:
    r = client.post("/feedback", json={**GOOD, **change}, headers=W)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    # A union-typed join key adds the branch tried (`user.user_id.int`): the field is a prefix.
    assert error["message"].startswith(f"field `{field}") and text in error["message"]
    assert error["fields"][0]["field"].startswith(field)


def test_a_batch_accepts_the_good_ones_and_lists_the_rest(client: TestClient) -> None:
    body = {"observations": [
        {**GOOD, "feedback_id": "b0"},
        {**GOOD, "feedback_id": "b1", "label": "x"},
        {**GOOD, "feedback_id": "b2", "item": {"item_id": 20}},
        {**GOOD, "feedback_id": "b3", "extra": 1},
        {**GOOD, "feedback_id": "b4", "user": {"user_id": 3}},
        {**GOOD, "feedback_id": "b0"},
    ]}
    r = client.post("/feedback", json=body, headers=W)
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["received"], out["accepted"], out["new"], out["duplicates"]) == (6, 3, 2, 1)
    assert [(x["index"], x["field"]) for x in out["rejected"]] == [
        (1, "observations.1.label"), (2, "observations.2.item"), (3, "observations.3.extra"),
    ]
    assert "missing features" in out["rejected"][1]["reason"]
    # The batch itself must be well formed.
    assert client.post("/feedback", json={"observations": []}, headers=W).status_code == 422
    r = client.post("/feedback", json={"observations": [GOOD], "more": 1}, headers=W)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "more"
    assert client.post("/feedback", content=b"{not json", headers={**W, "Content-Type": "application/json"}).status_code == 422
    assert client.post("/feedback", content=b"{not json", headers=W).status_code == 415  # JSON only


def test_metrics_show_counts_and_losses(client: TestClient) -> None:
    client.post("/feedback", json={**GOOD, "slice": "mobile"}, headers=W)
    client.post("/feedback", json={**GOOD, "feedback_id": "g2", "model": "nope"}, headers=W)
    text = client.get("/metrics").text
    assert metric(text, "featurestore_feedback_observations_total", model="taste", result="new") == 1
    assert metric(text, "featurestore_feedback_observations_total", model="(unknown)", result="rejected") == 1
    for predictor, slice_ in (("personalised", "all"), ("average_user", "known_users"), ("personalised", "device=mobile")):
        labels = {"model": "taste", "version": "2", "predictor": predictor, "slice": slice_, "loss": "squared_error"}
        assert metric(text, "featurestore_feedback_loss_count", **labels) == 1


def test_feedback_needs_write_and_admin_routes_need_admin(client: TestClient) -> None:
    assert client.post("/feedback", json=GOOD).status_code == 401
    assert client.post("/feedback", json=GOOD, headers=A).status_code == 403
    assert client.post("/models/taste/rollback", headers=W).status_code == 403
    r = client.post("/models/taste/rollback", headers=A)
    assert r.status_code == 200 and r.json() == {"model": "taste", "version": 1, "previous": 2}
    body = {"model": "taste", "user": {"user_id": 1}, "items": [{"item_id": 1}]}
    assert client.post("/predict", json=body, headers=W).json()["model_version"] == 1
    # Feedback goes to the version now active.
    assert client.post("/feedback", json=GOOD, headers=W).json()["model_versions"] == {"taste": 1}
    assert client.post("/models/taste/rollback", headers=A).status_code == 404
    r = client.post("/models/taste/activate", json={"version": 2}, headers=A)
    assert r.status_code == 200 and r.json() == {"model": "taste", "version": 2, "previous": 1}
    assert client.post("/predict", json=body, headers=W).json()["model_version"] == 2
    assert client.post("/models/taste/activate", json={"version": 9}, headers=A).status_code == 404
    assert client.post("/models/nope/activate", json={"version": 1}, headers=A).status_code == 404
    r = client.post("/models/taste/activate", json={"version": 1, "force": True}, headers=A)
    assert r.status_code == 422 and "force" in r.json()["error"]["message"]


def test_a_feedback_id_reused_for_another_observation_is_a_409(client: TestClient) -> None:
    assert client.post("/feedback", json=GOOD, headers=W).status_code == 200
    r = client.post("/feedback", json={**GOOD, "label": 1.0}, headers=W)
    assert r.status_code == 409, r.text
    error = r.json()["error"]
    assert error["type"] == "ConflictError" and error["fields"][0]["field"] == "feedback_id"
    # In a batch it is listed with the rejected ones; an exact retry is still a duplicate.
    body = client.post("/feedback", json={"observations": [GOOD, {**GOOD, "label": 1.0}]}, headers=W).json()
    assert (body["duplicates"], [r["field"] for r in body["rejected"]]) == (1, ["observations.1.feedback_id"])
