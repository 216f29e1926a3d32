"""A trained repository with logged predictions and feedback at known times: ``taste`` (squared
error, slice column ``device``, v1 and v2 with v2 active) and ``ctx`` (logistic). The expected
values of every test are computed from the log rows with numpy / scikit-learn, not through the
evaluation store."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from featurestore import FeatureStore
from featurestore.feedback.export import save_training_labels
from featurestore.feedback.log import FeedbackLog, LoggedObservation
from featurestore.online.memory import MemoryOnlineStore
from tests.velox.conftest import labels
from tests.velox_feedback.conftest import trained_store

NOW = datetime.now(timezone.utc).replace(microsecond=0)
KNOWN_ITEMS = list(range(1, 11))  # the kept training labels of taste v2 hold items 1..10 only


def send_feedback(store: FeatureStore, rng: np.random.Generator, n: int, *, prefix: str, days_ago: float,
                  users: list[int], version_note: str = "") -> None:
    obs = []
    for k in range(n):
        user = int(rng.choice(users))
        item = int(rng.integers(1, 20))
        ts = NOW - timedelta(days=days_ago, minutes=k)
        obs.append({
            "model": "taste", "user": {"user_id": user}, "item": {"item_id": item},
            "label": float(np.round(rng.normal(2.0, 1.0), 3)), "feedback_id": f"{prefix}{k}",
            "ts": ts.isoformat(), "slice": ("mobile" if k % 3 else "web"),
        })
    store.feedback_many(obs)


def send_clicks(store: FeatureStore, rng: np.random.Generator, n: int, *, days_ago: float) -> None:
    obs = []
    for k in range(n):
        obs.append({
            "model": "ctx", "user": {"user_id": int(rng.choice([1, 2, 3, 50]))},
            "item": {"item_id": int(rng.integers(1, 20))}, "label": float(rng.random() < 0.4),
            "feedback_id": f"c{k}", "ts": (NOW - timedelta(days=days_ago, minutes=k)).isoformat(),
            "request_features": {"hour": float(k % 24)},
        })
    store.feedback_many(obs)


def log_rows(store: FeatureStore, model: str) -> list[LoggedObservation]:
    return [o for batch in FeedbackLog(store.registry.engine, store.project).read(model) for o in batch]


def build_logged(root: Path, online: dict, project: str, registry: str | None = None) -> FeatureStore:
    """The repository of the module docstring, on any online store and registry database."""
    store = trained_store(root, online, project, registry=registry)
    save_training_labels(store.context, "taste", 2, labels(seed=1, items=KNOWN_ITEMS), "event_timestamp")
    rng = np.random.default_rng(7)
    # v2 is active: 60 observations 2 days ago, 40 observations 10 days ago; users 1-3 are known.
    send_feedback(store, rng, 60, prefix="recent", days_ago=2, users=[1, 2, 3, 90, 91])
    send_feedback(store, rng, 40, prefix="old", days_ago=10, users=[1, 2, 3, 92])
    send_clicks(store, rng, 80, days_ago=1)
    return store


@pytest.fixture(params=["embedded"])
def logged(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    store = build_logged(tmp_path / "repo", {"type": request.param}, unique_project)
    yield store
    if "predictor" in store.__dict__:
        store.predictor.close()
    store.close()
    MemoryOnlineStore.drop_project(unique_project)
