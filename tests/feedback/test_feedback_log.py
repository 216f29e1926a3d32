"""The durable feedback log on both registry databases: idempotent, ordered, concurrent-safe."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from featurestore.feedback.log import FeedbackLog, Observation
from registry.db import create_engine, ensure_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> FeedbackLog:
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    ensure_schema(engine)
    yield FeedbackLog(engine, "p")
    engine.dispose()


def obs(i: int, user: str = "u1", label: float = 1.0) -> Observation:
    return Observation(
        feedback_id=f"f{i}", model="m", model_version=1, user_key=user, item_key=f"i{i}", label=label,
        features=np.array([i, 0.5, 1.0]), event_ts=datetime(2026, 1, 1, tzinfo=timezone.utc),
        prediction=0.25, baseline=0.5, slice="new",
    )


def test_append_is_idempotent_on_feedback_id(log: FeedbackLog) -> None:
    assert log.append([obs(1), obs(2)]) == [True, True]
    assert log.append([obs(2), obs(3), obs(3)]) == [False, True, False]
    assert log.count("m") == 3


def test_read_in_acceptance_order_with_exact_features(log: FeedbackLog) -> None:
    log.append([obs(i) for i in range(5)])
    batches = list(log.read("m", batch=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    flat = [o for b in batches for o in b]
    assert [o.feedback_id for o in flat] == [f"f{i}" for i in range(5)]
    assert [o.seq for o in flat] == sorted(o.seq for o in flat)
    np.testing.assert_array_equal(flat[3].features, [3, 0.5, 1.0])
    assert (flat[0].prediction, flat[0].baseline, flat[0].slice) == (0.25, 0.5, "new")
    assert list(log.read("m", after_seq=flat[3].seq))[0][0].feedback_id == "f4"


def test_concurrent_appends_of_the_same_ids_record_each_once(log: FeedbackLog) -> None:
    results: list[list[bool]] = []

    def worker() -> None:
        results.append(log.append([obs(i) for i in range(50)]))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert log.count("m") == 50
    assert sum(sum(r) for r in results) == 50
