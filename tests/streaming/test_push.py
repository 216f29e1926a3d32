"""Push through the SDK and ``POST /push``: events land in the view's stream, bad ones are
refused naming the row and the column; and the stream job's freshness shows in /metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from featurestore import FeatureStore, NotFoundError, UserError
from featurestore.push import EventError, PushIdReusedError
from tests.conftest import metric
from tests.streaming.helpers import make_repo, streams_of

pytestmark = pytest.mark.integration

EXTRA = """\
  - name: user_plain
    entities: [user]
    source: events
    features: [{name: clicks, dtype: int64}]
"""


@pytest.fixture
def store(tmp_path: Path, redis_url: str, unique_project: str, tidy: list) -> FeatureStore:
    repo = make_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    with open(repo / "features" / "defs.yaml", "a") as f:
        f.write(EXTRA)
    store = FeatureStore(repo)
    store.apply()
    yield store
    store.close()


@pytest.fixture
def client(store: FeatureStore) -> TestClient:
    from online_server import create_app

    app = create_app(store)
    with TestClient(app) as c:
        yield c


def entries(store: FeatureStore, stream: str) -> list[dict]:
    client = redis.Redis.from_url(store.config.online_store.url)
    try:
        return [json.loads(fields[b"data"]) for _, fields in client.xrange(stream)]
    finally:
        client.close()


def test_sdk_push_appends_checked_events(store: FeatureStore) -> None:
    result = store.push(
        "user_last",
        [
            {"user_id": 1, "ts": "2026-11-22T10:00:00Z", "clicks": 2},
            {"user_id": 2, "ts": "2026-11-22T10:00:01Z"},
        ],
    )
    assert result.view == "user_last" and result.pushed == 2 and result.first_id < result.last_id
    stream = streams_of(store.repo_path)[0]
    assert entries(store, stream) == [
        {"user_id": 1, "ts": "2026-11-22T10:00:00.000000Z", "clicks": 2},
        {"user_id": 2, "ts": "2026-11-22T10:00:01.000000Z"},
    ]


def test_a_push_id_makes_a_retried_push_append_nothing(store: FeatureStore) -> None:
    rows = [{"user_id": 1, "ts": "2026-11-22T10:00:00Z", "clicks": 2}, {"user_id": 2, "ts": "2026-11-22T10:00:01Z"}]
    first = store.push("user_last", rows, push_id="batch-7")
    again = store.push("user_last", rows, push_id="batch-7")
    other = store.push("user_last", rows[:1], push_id="batch-8")
    assert not first.duplicate and first.pushed == 2 and first.first_id < first.last_id
    assert again.duplicate and (again.pushed, again.first_id, again.last_id) == (2, first.first_id, first.last_id)
    assert not other.duplicate and other.pushed == 1
    assert len(entries(store, streams_of(store.repo_path)[0])) == 3
    # The same id for other events is refused: appending would lose one of the two pushes.
    with pytest.raises(PushIdReusedError, match="batch-7") as info:
        store.push("user_last", rows[1:], push_id="batch-7")
    assert info.value.http_status == 409
    with pytest.raises(UserError, match="bad push_id"):
        store.push("user_last", rows, push_id="has space")
    assert len(entries(store, streams_of(store.repo_path)[0])) == 3
    # The marker lives next to the stream, under the project prefix, and expires after a day.
    client = redis.Redis.from_url(store.config.online_store.url)
    try:
        ttl = client.ttl(f"{store.project}:__push__:user_last:batch-7")
        assert 86_000 < ttl <= 86_400
    finally:
        client.close()


def test_http_push_id(client: TestClient, store: FeatureStore) -> None:
    body = {"view": "user_last", "push_id": "3f2c9a", "rows": [{"user_id": 3, "ts": "2026-11-22T10:00:00Z"}]}
    first, again = client.post("/push", json=body), client.post("/push", json=body)
    assert first.status_code == again.status_code == 200, again.text
    assert first.json()["duplicate"] is False and again.json() == {**first.json(), "duplicate": True}
    conflict = client.post("/push", json={**body, "rows": [{"user_id": 4, "ts": "2026-11-22T10:00:00Z"}]})
    assert conflict.status_code == 409 and "3f2c9a" in conflict.json()["error"]["message"]
    bad = client.post("/push", json={**body, "push_id": "no spaces"})
    assert bad.status_code == 422 and bad.json()["error"]["fields"][0]["field"] == "push_id"
    assert len(entries(store, streams_of(store.repo_path)[0])) == 1
    assert metric(client.get("/metrics").text, "featurestore_pushed_events_total", feature_view="user_last") == 1


def test_sdk_push_refuses_without_appending_anything(store: FeatureStore) -> None:
    with pytest.raises(NotFoundError, match="user_lsat"):
        store.push("user_lsat", [{"user_id": 1}])
    with pytest.raises(UserError, match="has no stream_source"):
        store.push("user_plain", [{"user_id": 1, "ts": "2026-11-22T10:00:00Z"}])
    with pytest.raises(EventError) as err:
        store.push(
            "user_last",
            [
                {"user_id": 1, "ts": "2026-11-22T10:00:00Z"},
                {"user_id": 1, "ts": "2026-11-22T10:00:00Z", "clicks": "two"},
            ],
        )
    assert err.value.field == "rows.1.clicks"
    with pytest.raises(EventError, match="row 0: column 'user_id' is missing"):
        store.push("user_agg", [{"ts": "2026-11-22T10:00:00Z", "clicks": 1}])
    assert entries(store, streams_of(store.repo_path)[0]) == []


def test_http_push(client: TestClient, store: FeatureStore) -> None:
    r = client.post(
        "/push",
        json={
            "view": "user_agg",
            "rows": [{"user_id": 3, "ts": "2026-11-22T10:00:00Z", "clicks": 4, "page": "home"}],
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["view"] == "user_agg" and body["pushed"] == 1 and body["first_id"] == body["last_id"]
    )
    assert entries(store, streams_of(store.repo_path)[1]) == [
        {"user_id": 3, "ts": "2026-11-22T10:00:00.000000Z", "clicks": 4, "page": "home"}
    ]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (
            {
                "view": "user_last",
                "rows": [{"user_id": 1, "ts": "2026-11-22T10:00:00Z", "amount": "x"}],
            },
            422,
            "rows.0.amount",
        ),
        (
            {
                "view": "user_last",
                "rows": [{"user_id": 1, "ts": "2026-11-22T10:00:00Z"}, {"user_id": 2}],
            },
            422,
            "rows.1.ts",
        ),
        (
            {
                "view": "user_last",
                "rows": [{"user_id": 1, "ts": "2026-11-22T10:00:00Z", "colour": 1}],
            },
            422,
            "rows.0.colour",
        ),
        ({"view": "user_last", "rows": []}, 422, "rows"),
        ({"view": "user_lsat", "rows": [{"user_id": 1}]}, 404, None),
        ({"view": "user_plain", "rows": [{"user_id": 1}]}, 400, None),
    ],
)
def test_http_push_errors(client: TestClient, body: dict, status: int, field: str | None) -> None:
    r = client.post("/push", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    if field is not None:
        assert error["fields"][0]["field"] == field
        assert field.split(".")[-1] in error["message"]


def test_metrics_show_the_stream_jobs_freshness(client: TestClient, store: FeatureStore) -> None:
    import numpy as np

    from materializers.freshness import LagStats, encode

    stats = LagStats("user_last")
    stats.add(np.array([0.01, 0.02, 0.5]), events=3)
    store.online_store.put_blobs("stream_stats", {b"user_last": encode(stats.report())})
    text = client.get("/metrics").text
    p99 = [
        line
        for line in text.splitlines()
        if line.startswith('featurestore_stream_lag_p99_seconds{feature_view="user_last"}')
    ]
    assert p99 and 0.5 <= float(p99[0].split()[-1]) < 0.55
    assert 'featurestore_stream_events_per_second{feature_view="user_last"}' in text
    assert 'featurestore_stream_stats_age_seconds{feature_view="user_last"}' in text
