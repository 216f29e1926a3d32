"""The online server on a Redis Cluster, end to end through HTTP: ``/health`` (every node),
``/features``, ``/predict`` (features and the user's state read on the slot-aware asyncio path),
``/feedback`` (the state compare-and-swap, per bucket), ``/push`` with a push_id (its marker in
the stream's slot), ``/models/{model}/activate`` (a version whose states were lost is reloaded),
and the epoch marker noticing that the cluster lost its data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from featurestore.models.state_store import ModelStateStore, state_namespace
from featurestore.online.epoch import EPOCH_KEY, EPOCH_NAMESPACE, read_epoch
from featurestore.online.redis_keys import key_slot
from online_server import create_app
from tests.conftest import delete_redis_cluster_project
from tests.velox.conftest import ITEMS, item_vec, key
from tests.velox_feedback.conftest import DEFS, state, trained_store

pytestmark = pytest.mark.integration

STREAM_VIEW = """\
  - name: user_clicks
    entities: [user]
    source: src
    stream_source: {{type: redis_stream, stream: {stream}, group: fs}}
    features:
      - {{name: clicks, dtype: int64}}
"""


@pytest.fixture
def store(tmp_path: Path, redis_cluster_url: str, unique_project: str) -> Iterator[FeatureStore]:
    stream = f"{unique_project}_clicks"
    defs = DEFS.replace("models:\n", STREAM_VIEW.format(stream=stream) + "models:\n")
    online = {"type": "redis", "url": redis_cluster_url, "cluster": True}
    fs = trained_store(tmp_path / "repo", online, unique_project, defs)
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    delete_redis_cluster_project(redis_cluster_url, unique_project)
    from redis.cluster import RedisCluster

    admin = RedisCluster.from_url(redis_cluster_url)
    admin.delete(stream)
    for marker in admin.scan_iter(match=f"{{{stream}}}:*"):
        admin.delete(marker)
    admin.close()


@pytest.fixture
def client(store: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as c:
        yield c


def test_health_checks_every_node(client: TestClient, store: FeatureStore) -> None:
    r = client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["checks"]["online_store"] == "ok"
    assert body["online_data"]["epoch"] == read_epoch(store.online_store).epoch  # type: ignore[union-attr]
    assert len(store.online_store._nodes) == 6  # type: ignore[attr-defined]


def test_health_reports_a_weakened_cluster_as_degraded(
    client: TestClient, store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store.online_store, "check_health", lambda: ["replica 127.0.0.1:7004 does not answer"])
    body = client.get("/health").json()
    assert body["status"] == "degraded" and body["checks"]["online_store"] == "ok"
    assert body["checks"]["online_store_redundancy"] == "replica 127.0.0.1:7004 does not answer"


def test_features_predict_and_feedback(client: TestClient, store: FeatureStore) -> None:
    items = [{"item_id": i} for i in ITEMS[:10]]
    r = client.post("/features", json={"features": ["item_vec:vec", "item_pop:pop"], "entity_rows": items})
    assert r.status_code == 200, r.text
    vectors = r.json()["features"]["vec"]["values"]
    assert vectors == [pytest.approx(item_vec(i)) for i in ITEMS[:10]]

    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": items})
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["model_version"] == 2 and all(s["status"] == "present" for s in first["scores"])

    before = ModelStateStore(store.online_store, "taste", 2).get_state(key(1))
    feedback = [
        {"model": "taste", "user": {"user_id": u}, "item": {"item_id": i}, "label": 4.0, "feedback_id": f"f{u}-{i}"}
        for u in (1, 2, 3) for i in ITEMS[:5]
    ]
    r = client.post("/feedback", json={"observations": feedback})
    assert r.status_code == 200, r.text
    assert r.json()["new"] == 15
    after = ModelStateStore(store.online_store, "taste", 2).get_state(key(1))
    assert not np.allclose(after.w, before.w)
    again = client.post("/feedback", json={"observations": feedback}).json()
    assert (again["new"], again["duplicates"]) == (0, 15)

    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": items})
    assert r.json()["scores"] != first["scores"]  # the new state is served


def test_push_with_an_id_is_appended_once(client: TestClient, store: FeatureStore) -> None:
    rows = [{"user_id": 1, "ts": "2026-11-22T10:00:00Z", "clicks": 2}]
    body = {"view": "user_clicks", "rows": rows, "push_id": "batch-7"}
    first = client.post("/push", json=body)
    assert first.status_code == 200, first.text
    again = client.post("/push", json=body).json()
    assert (first.json()["pushed"], again["duplicate"], again["first_id"]) == (1, True, first.json()["first_id"])
    stream = f"{store.project}_clicks"
    marker = f"{{{stream}}}:{store.project}:__push__:user_clicks:batch-7"
    from redis.cluster import RedisCluster

    admin = RedisCluster.from_url(store.config.online_store.url)
    try:
        assert key_slot(marker.encode()) == key_slot(stream.encode())
        assert 0 < admin.ttl(marker) <= 86_400
        assert [json.loads(f[b"data"])["clicks"] for _, f in admin.xrange(stream)] == [2]
    finally:
        admin.close()


def test_activate_reloads_a_version_whose_states_are_gone(client: TestClient, store: FeatureStore) -> None:
    store.online_store.delete_namespace(state_namespace("taste", 1))
    assert not ModelStateStore(store.online_store, "taste", 1).exists()
    r = client.post("/models/taste/activate", json={"version": 1})
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "taste", "version": 1, "previous": 2}
    assert ModelStateStore(store.online_store, "taste", 1).exists()
    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 2}, "items": [{"item_id": 3}]})
    assert r.status_code == 200 and r.json()["model_version"] == 1


def test_a_cluster_that_lost_its_data_is_noticed_and_the_states_rebuilt(
    client: TestClient, store: FeatureStore, redis_cluster_url: str
) -> None:
    assert client.get("/health").json()["status"] == "ok"
    first = read_epoch(store.online_store)
    assert first is not None
    delete_redis_cluster_project(redis_cluster_url, store.project)  # every shard emptied
    assert store.online_store.get_blobs(EPOCH_NAMESPACE, [EPOCH_KEY]) == [None]
    status = store.online_guard.check()
    assert status.epoch != first.epoch and status.lost_at is not None
    assert set(status.rebuilt_models) == {"taste", "ctx"}
    assert ModelStateStore(store.online_store, "taste", 2).exists()
    r = client.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": [{"item_id": 1}]})
    assert r.status_code == 200, r.text


def _empty_one_primary(url: str, project: str, index: int) -> tuple[int, bool]:
    """Every key of ``project`` on the ``index``-th primary gone (its replica follows),
    as when that primary and its replica restart without persistence: (keys deleted, whether
    the epoch marker itself was among them)."""
    import redis
    from redis.cluster import RedisCluster

    cluster = RedisCluster.from_url(url)
    try:
        node = sorted(cluster.get_primaries(), key=lambda n: n.port)[index]
    finally:
        cluster.close()
    client = redis.Redis(host=node.host, port=node.port)
    try:
        keys = list(client.scan_iter(match=f"{project}:*", count=1_000))
        marker = any(k.endswith(b":" + EPOCH_NAMESPACE.encode() + b":" + EPOCH_KEY) for k in keys)
        pipe = client.pipeline(transaction=False)  # a cluster node refuses MULTI over several slots
        for k in keys:
            pipe.unlink(k)
        pipe.execute()
        return len(keys), marker
    finally:
        client.close()


@pytest.mark.parametrize("primary", [0, 1, 2])
def test_one_shard_that_lost_its_data_is_noticed_and_the_states_rebuilt(
    client: TestClient, store: FeatureStore, redis_cluster_url: str, primary: int
) -> None:
    """One primary of three emptied: the content left on the others must not hide the loss,
    whether or not the marker itself was on that shard."""
    assert client.get("/health").json()["status"] == "ok"
    first = read_epoch(store.online_store)
    assert first is not None and first.spread == 64
    client.post("/feedback", json={"model": "taste", "user": {"user_id": 2}, "item": {"item_id": 3}, "label": 4.5})
    before = {u: state(store, key(u)) for u in range(1, 7)}
    deleted, had_marker = _empty_one_primary(redis_cluster_url, store.project, primary)
    assert deleted > 0
    assert (read_epoch(store.online_store) is None) == had_marker
    status = store.online_guard.check()
    assert status.epoch != first.epoch and status.lost_at is not None
    assert set(status.rebuilt_models) == {"taste", "ctx"}
    marker = read_epoch(store.online_store)
    assert marker is not None and marker.after_loss and marker.epoch == status.epoch
    # Every user's state is back (trained + logged feedback), on every shard. (Item features on
    # the emptied shard wait for a materialization run, which /health names.)
    for u, old in before.items():
        new = state(store, key(u))
        assert (new.n, new.version) == (old.n, old.version), u
        np.testing.assert_allclose(new.w, old.w, rtol=1e-9, atol=1e-12)
    # Another check finds nothing more: the copies are whole again.
    again = store.online_guard.check()
    assert again.epoch == status.epoch and store.online_guard.losses == 1


def test_a_cluster_marker_written_before_copies_gets_them_and_is_no_loss(
    client: TestClient, store: FeatureStore
) -> None:
    from featurestore.online.epoch import Epoch, copy_keys

    first = read_epoch(store.online_store)
    assert first is not None
    old = Epoch(first.epoch, first.created_at, first.after_loss)  # no "spread": an older release's marker
    store.online_store.put_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: old.encode()})
    store.online_store.delete_namespace(EPOCH_NAMESPACE)
    store.online_store.put_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: old.encode()})
    status = store.online_guard.check()
    assert status.lost_at is None and status.rebuilt_models == {} and status.epoch == first.epoch
    upgraded = read_epoch(store.online_store)
    assert upgraded is not None and upgraded.spread == 64 and upgraded.epoch == first.epoch
    keys = copy_keys(store.online_store)
    assert len(keys) == 64 and all(b is not None for b in store.online_store.get_blobs(EPOCH_NAMESPACE, keys))
