"""No update is lost when two processes learn feedback for the same users at the same time: the
final states equal applying every observation one by one (squared error: the result does not
depend on the order, so within float tolerance), on the embedded store and on Redis. Another
process's next prediction sees the result."""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback import replay
from featurestore.feedback.log import FeedbackLog
from featurestore.online.memory import MemoryOnlineStore
from tests.velox.conftest import item_x, key
from tests.velox_feedback.conftest import (
    apply_sequentially,
    assert_same_state,
    state,
    trained_store,
)

USERS = (1, 2, 60)  # two trained users and one never seen
PER_WORKER = 90


def _observations(worker: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(ord(worker))
    return [
        {"model": "taste", "user": {"user_id": int(rng.choice(USERS))}, "item": {"item_id": int(rng.integers(1, 20))},
         "label": float(rng.normal(3, 1)), "feedback_id": f"{worker}{k}"}
        for k in range(PER_WORKER)
    ]


def _worker(root: str, online: dict[str, Any], worker: str, barrier: Any, retries: Any) -> None:
    store = FeatureStore(root, config_overrides={"online_store": online})
    observations = _observations(worker)
    # Warm up (registry, layout, connections) so that both start learning at the same moment.
    store.predict("taste", {"user_id": 1}, [{"item_id": 1}])
    _ = store.feedback_service
    barrier.wait(timeout=60)
    sizes = [1, 3, 7, 2, 5]
    k = i = 0
    while i < len(observations):
        size = sizes[k % len(sizes)]
        result = store.feedback_many(observations[i : i + size])
        assert result.new == len(observations[i : i + size])
        i, k = i + size, k + 1
    retries.put(store.feedback_service.cas_retries)
    store.predictor.close()
    store.close()


def _run_two_processes(store: FeatureStore, online: dict[str, Any]) -> int:
    starts = {u: state(store, key(u)) for u in USERS}
    predictor = store.predictor
    predictor.predict("taste", {"user_id": 1}, [{"item_id": 1}])  # layout and average now cached here
    ctx = multiprocessing.get_context("spawn")
    barrier, retries = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_worker, args=(str(store.repo_path), online, w, barrier, retries), daemon=True)
        for w in "ab"
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(120)
            assert p.exitcode == 0
    finally:
        for p in procs:  # never leave a child behind: pytest would wait for it at exit
            if p.is_alive():
                p.kill()
    total_retries = retries.get(timeout=5) + retries.get(timeout=5)

    observations = _observations("a") + _observations("b")
    assert FeedbackLog(store.registry.engine, store.project).count("taste") == 2 * PER_WORKER
    for u in USERS:
        mine = [o for o in observations if o["user"]["user_id"] == u]
        X = np.stack([item_x(o["item"]["item_id"]) for o in mine])
        y = np.array([o["label"] for o in mine])
        final = state(store, key(u))
        assert_same_state(final, apply_sequentially(starts[u], X, y), tol=1e-9)
        # This process predicted before the updates; its next prediction sees them.
        scores = predictor.predict("taste", {"user_id": u}, [{"item_id": 1}, {"item_id": 2}]).scores
        np.testing.assert_allclose(scores, [item_x(1) @ final.w, item_x(2) @ final.w], rtol=1e-12)
    # The live states are what a replay of the log rebuilds (up to the rounding of the order).
    check = replay(store.context, "taste", write=False)
    assert (check.observations, check.mismatched) == (2 * PER_WORKER, 0) and check.max_weight_diff < 1e-9
    return total_retries


def test_two_processes_same_users_embedded(tmp_path: Path, unique_project: str) -> None:
    online = {"type": "embedded"}
    store = trained_store(tmp_path / "repo", online, unique_project)
    try:
        _run_two_processes(store, online)
    finally:
        store.predictor.close()
        store.close()
        MemoryOnlineStore.drop_project(unique_project)


@pytest.mark.integration
def test_two_processes_same_users_redis(tmp_path: Path, unique_project: str, redis_url: str) -> None:
    from tests.online.conftest import delete_redis_project

    online = {"type": "redis", "url": redis_url}
    store = trained_store(tmp_path / "repo", online, unique_project)
    try:
        _run_two_processes(store, online)
    finally:
        store.predictor.close()
        store.close()
        delete_redis_project(redis_url, unique_project)
