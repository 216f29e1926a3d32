"""The production pairing: the feedback log in PostgreSQL, the states in Redis. Idempotency,
the SQL aggregation of the status (log loss included), the offline view and replay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback import model_status, replay
from featurestore.feedback.export import export_feedback, read_feedback_view
from tests.velox.conftest import fake_export, fill, labels
from tests.velox_feedback.conftest import DEFS

pytestmark = pytest.mark.integration


@pytest.fixture
def store(tmp_path: Path, unique_project: str, redis_url: str, postgres_url: str) -> Iterator[FeatureStore]:
    from tests.online.conftest import delete_redis_project

    root = tmp_path / "repo"
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS)
    (root / "featurestore.yaml").write_text(f"project: {unique_project}\n")
    fs = FeatureStore(root, config_overrides={"online_store": {"type": "redis", "url": redis_url}, "registry": postgres_url},
                      registry_refresh_seconds=0)
    fs.apply()
    fill(fs)
    fake_export(fs)
    fs.train("taste", labels(seed=0))
    fs.train("ctx", labels(seed=2))
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    delete_redis_project(redis_url, unique_project)


def test_feedback_on_postgres_and_redis(store: FeatureStore) -> None:
    rng = np.random.default_rng(0)
    batch = [
        {"model": "taste", "user": {"user_id": int(rng.integers(1, 6))}, "item": {"item_id": int(rng.integers(1, 20))},
         "label": float(rng.normal(3, 1)), "feedback_id": f"t{k}", "slice": "web" if k % 2 else "mobile"}
        for k in range(50)
    ]
    assert store.feedback_many(batch).new == 50
    assert (store.feedback_many(batch[:10]).duplicates, store.feedback_service.counts()[("taste", "new")]) == (10, 50)
    clicks = [
        {"model": "ctx", "user": {"user_id": 1}, "item": {"item_id": i}, "label": i % 2, "feedback_id": f"c{i}",
         "request_features": {"hour": 9.0}}
        for i in range(1, 11)
    ]
    assert store.feedback_many(clicks).new == 10

    taste = model_status(store.context, "taste", min_observations=1)
    losses = store.feedback_service.losses()
    for name, summary in (("all", taste.overall), ("device=web", taste.slices["device=web"])):
        acc = losses[("taste", 1, "personalised", name)]
        assert summary.count == acc.count and summary.personalised == pytest.approx(acc.mean, rel=1e-9)
    ctx = model_status(store.context, "ctx", min_observations=1)
    assert ctx.loss_name == "log_loss" and ctx.overall.count == 10
    assert ctx.overall.personalised == pytest.approx(losses[("ctx", 1, "personalised", "all")].mean, rel=1e-9)

    assert export_feedback(store.context, "taste").rows == 50
    view = read_feedback_view(store.context, "taste")
    assert view is not None and sorted(view["feedback_id"].to_pylist()) == sorted(o["feedback_id"] for o in batch)
    check = replay(store.context, "taste", write=False)
    assert (check.observations, check.changed) == (50, 0)


@pytest.mark.parametrize("field", ["feedback_id", "slice", "prediction_id"])
def test_a_nul_character_is_rejected_on_postgres_as_on_the_embedded_profile(store: FeatureStore, field: str) -> None:
    good = {"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.0}
    result = store.feedback_many([{**good, "feedback_id": "n0", field: "a\x00b"}, {**good, "feedback_id": "n1"}])
    assert (result.new, [(r.index, r.field) for r in result.rejected]) == (1, [(0, field)])
