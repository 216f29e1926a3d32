"""Redis restarted empty (issue 15, defect 8): the loss is noticed (epoch marker), reported by
/health and /metrics, the model states are rebuilt from the artifacts and the feedback log with
no manual step, and the views to re-materialize are named until they are. Real Redis and
PostgreSQL; the last test runs a real server process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.feedback import replay
from featurestore.feedback.recovery import OnlineStoreGuard
from featurestore.models.state_store import ModelStateStore
from featurestore.online.epoch import read_epoch
from online_server.app import create_app
from tests.online.conftest import delete_redis_project
from tests.conftest import metric
from tests.velox.conftest import key
from tests.velox_feedback.conftest import state, trained_store

pytestmark = pytest.mark.integration
NOW = datetime.now(timezone.utc)


def wipe(url: str, project: str) -> int:
    """Every key of the project gone at once (MULTI/EXEC), as a Redis restart does: a key-by-key
    delete would let a check see half a store."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{project}:*", count=1_000))
        pipe = client.pipeline(transaction=True)
        for start in range(0, len(keys), 1_000):
            pipe.unlink(*keys[start : start + 1_000])
        pipe.execute()
        return len(keys)
    finally:
        client.close()


@pytest.fixture(autouse=True)
def no_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    # The catch-up's wait (300 s) is what it must be in production; here every row is old enough.
    monkeypatch.setattr("featurestore.feedback.catch_up.CATCH_UP_AFTER_SECONDS", -1.0)


@pytest.fixture
def store(tmp_path: Path, unique_project: str, redis_url: str, postgres_url: str) -> Iterator[FeatureStore]:
    fs = trained_store(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project, registry=postgres_url)
    # The views were written (fill): record it as a materialization run would.
    for view in ("item_vec", "user_stats"):
        fs.materialization_log.record(view, NOW - timedelta(days=1), NOW, rows_read=5, rows_offline=5,
                                      rows_online=5, rows_rejected=0, registry_version=1)
    rng = np.random.default_rng(3)
    fs.feedback_many([
        {"model": "taste", "user": {"user_id": int(rng.integers(1, 7))}, "item": {"item_id": int(rng.integers(1, 20))},
         "label": float(rng.normal(3, 1)), "feedback_id": f"f{k}"}
        for k in range(40)
    ])
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    delete_redis_project(redis_url, unique_project)


def test_an_emptied_redis_is_noticed_reported_and_the_states_rebuilt(store: FeatureStore, redis_url: str) -> None:
    guard = OnlineStoreGuard(store.context)
    first = guard.check()
    assert first.ok and first.lost_at is None and guard.losses == 0
    live = {u: state(store, key(u)) for u in range(1, 7)}

    assert wipe(redis_url, store.project) > 0  # Redis restarted without persistence
    assert read_epoch(store.online_store) is None

    client = TestClient(create_app(store))
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "degraded"
    assert body["online_data"]["rematerialize"] == ["item_vec", "user_stats"]
    assert body["online_data"]["rebuilt_models"] == {"ctx": 1, "taste": 2}
    assert "re-materialize: item_vec, user_stats" in body["checks"]["online_data"]
    # The states are back: trained + every logged observation, as before the loss.
    assert ModelStateStore(store.online_store, "taste", 2).exists()
    for u, before in live.items():
        after = state(store, key(u))
        assert (after.n, after.version) == (before.n, before.version)
        np.testing.assert_allclose(after.w, before.w, rtol=1e-9, atol=1e-12)
    assert replay(store.context, "taste", write=False).mismatched == 0
    metrics = client.get("/metrics").text
    assert metric(metrics, "featurestore_online_store_data_losses_total") == 1
    assert metric(metrics, "featurestore_online_store_view_lost", feature_view="item_vec") == 1

    # Another process reports the same loss, and does not rebuild again.
    other = OnlineStoreGuard(store.context).check()
    assert other.lost_at == body_lost_at(body) and other.rebuilt_models == {}
    # An incremental run refills only its own interval: the view stays listed.
    store.materialization_log.record("item_vec", NOW, NOW + timedelta(hours=1), rows_read=5, rows_offline=5,
                                     rows_online=5, rows_rejected=0, registry_version=1)
    assert client.get("/health").json()["online_data"]["rematerialize"] == ["item_vec", "user_stats"]
    # A view re-materialized over its whole range since the loss is no longer listed.
    store.materialization_log.record("item_vec", NOW - timedelta(days=1), NOW + timedelta(hours=1), rows_read=5,
                                     rows_offline=5, rows_online=5, rows_rejected=0, registry_version=1)
    again = client.get("/health").json()
    assert again["online_data"]["rematerialize"] == ["user_stats"] and again["status"] == "degraded"
    store.materialization_log.record("user_stats", NOW - timedelta(days=2), NOW + timedelta(hours=1), rows_read=5,
                                     rows_offline=5, rows_online=5, rows_rejected=0, registry_version=1)
    assert client.get("/health").json()["status"] == "ok"


def body_lost_at(body: dict) -> datetime:
    return datetime.fromisoformat(body["online_data"]["lost_at"])


def test_a_store_written_before_markers_existed_is_not_a_loss(store: FeatureStore) -> None:
    from featurestore.online.epoch import EPOCH_KEY, EPOCH_NAMESPACE

    store.online_store.delete_namespace(EPOCH_NAMESPACE)
    assert store.online_store.get_blobs(EPOCH_NAMESPACE, [EPOCH_KEY]) == [None]
    status = OnlineStoreGuard(store.context).check()
    assert status.ok and status.lost_at is None and status.rebuilt_models == {}
    marker = read_epoch(store.online_store)
    assert marker is not None and not marker.after_loss


def test_a_model_whose_states_alone_went_is_rebuilt(store: FeatureStore) -> None:
    guard = OnlineStoreGuard(store.context)
    guard.check()
    before = state(store, key(2))
    store.online_store.delete_namespace(ModelStateStore(store.online_store, "taste", 2).namespace)
    status = guard.check()
    assert status.rebuilt_models == {"taste": 2} and status.lost_at is None
    after = state(store, key(2))
    np.testing.assert_allclose(after.w, before.w, rtol=1e-9, atol=1e-12)


def test_a_running_server_rebuilds_by_itself(store: FeatureStore, redis_url: str, postgres_url: str) -> None:
    from tests.velox_feedback.test_crash import _free_port, _serve

    before = state(store, key(3))
    server = _serve(
        store.repo_path, _free_port(), FEATURESTORE__ONLINE_STORE__TYPE="redis", FEATURESTORE__ONLINE_STORE__URL=redis_url,
        FEATURESTORE__REGISTRY=postgres_url, FEATURESTORE_FEEDBACK_CATCH_UP_EVERY_SECONDS="0.2",
        FEATURESTORE_FEEDBACK_CATCH_UP_AFTER_SECONDS="0",
    )
    try:
        import time

        deadline = time.monotonic() + 30
        while read_epoch(store.online_store) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        wipe(redis_url, store.project)
        # No request to the server: its maintenance thread notices and rebuilds.
        while not ModelStateStore(store.online_store, "taste", 2).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        marker = read_epoch(store.online_store)
        assert marker is not None and marker.after_loss
        while state(store, key(3)).n != before.n and time.monotonic() < deadline:
            time.sleep(0.1)
        np.testing.assert_allclose(state(store, key(3)).w, before.w, rtol=1e-9, atol=1e-12)
    finally:
        server.kill()
        server.wait(10)
