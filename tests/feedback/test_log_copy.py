"""The PostgreSQL log's batch write (COPY, its fallback on a logged id, its kept connections),
checked against what the INSERT path records; SQLite runs the same assertions."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from featurestore.feedback import log as log_module
from featurestore.feedback.log import COPY_FROM_ROWS, FeedbackLog, Observation
from registry.db import create_engine, ensure_schema


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> FeedbackLog:
    url = f"sqlite:///{tmp_path / 'r.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    engine = create_engine(url)
    ensure_schema(engine)
    log = FeedbackLog(engine, "p")
    yield log
    log.close()
    engine.dispose()


def obs(i: int, user: str = "u1", label: float = 1.0, **extra: object) -> Observation:
    return Observation(
        feedback_id=f"f{i}", model="m", model_version=1, user_key=user, item_key=f"i{i}", label=label,
        features=np.array([i, 0.5, 1.0 / 3.0]), event_ts=datetime(2026, 1, 1, tzinfo=timezone.utc),
        prediction=0.25, baseline=None, slice="new", **extra,  # type: ignore[arg-type]
    )


BATCH = max(COPY_FROM_ROWS, 20)


def test_a_batch_gets_seqs_in_its_order_and_reads_back_exactly(log: FeedbackLog) -> None:
    batch = [obs(i, user=f"u{i % 3}", label=i / 7) for i in range(BATCH)]
    seqs = log.append_seqs(batch)
    assert all(s is not None for s in seqs) and seqs == sorted(seqs) and len(set(seqs)) == BATCH
    back = [o for b in log.read("m") for o in b]
    assert [o.feedback_id for o in back] == [o.feedback_id for o in batch]
    assert [o.seq for o in back] == seqs
    for a, b in zip(batch, back):
        np.testing.assert_array_equal(a.features, b.features)
        assert (b.label, b.prediction, b.baseline, b.slice, b.pending) == (a.label, 0.25, None, "new", True)
        assert b.event_ts == a.event_ts and b.received_at is not None


def test_a_batch_with_logged_ids_records_only_the_new_ones(log: FeedbackLog) -> None:
    assert log.append([obs(i) for i in range(0, BATCH, 2)]) == [True] * len(range(0, BATCH, 2))
    # Odd ids are new, even ones logged before; one new id twice in the call counts once.
    again = [obs(i) for i in range(BATCH)] + [obs(1)]
    flags = log.append(again)
    assert flags == [i % 2 == 1 for i in range(BATCH)] + [False]
    assert log.count("m") == BATCH
    back = [o for b in log.read("m") for o in b]
    assert sorted(o.feedback_id for o in back) == sorted(f"f{i}" for i in range(BATCH))


def test_a_float32_or_strided_x_is_logged_as_float64(log: FeedbackLog) -> None:
    wide = np.arange(3 * BATCH, dtype=np.float32).reshape(BATCH, 3)
    batch = [Observation(f"x{i}", "m", 1, "u", "i", 1.0, wide[i, ::-1], datetime(2026, 1, 1)) for i in range(BATCH)]
    log.append(batch)
    back = {o.feedback_id: o.features for b in log.read("m") for o in b}
    for i in range(BATCH):
        np.testing.assert_array_equal(back[f"x{i}"], wide[i, ::-1].astype(np.float64))


@pytest.mark.integration
def test_a_broken_kept_connection_is_replaced_and_nothing_is_lost(postgres_url: str) -> None:
    import sqlalchemy as sa

    engine = create_engine(postgres_url)
    ensure_schema(engine)
    log = FeedbackLog(engine, "p")
    try:
        assert log.append([obs(0)]) == [True]
        (kept,) = log._writers._idle
        pid = kept.dbapi_connection.info.backend_pid
        with engine.begin() as conn:  # the server drops the idle connection (a restart, a timeout)
            conn.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        assert log.append([obs(i) for i in range(1, BATCH + 1)]) == [True] * BATCH
        assert log.append([obs(BATCH + 1)]) == [True]
        assert log.count("m") == BATCH + 2
    finally:
        log.close()
        engine.dispose()


@pytest.mark.integration
def test_small_batches_take_the_insert_and_big_ones_the_copy(postgres_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine(postgres_url)
    ensure_schema(engine)
    log = FeedbackLog(engine, "p")
    used: list[str] = []
    for name in ("_copy_postgres", "_insert_postgres"):
        original = getattr(FeedbackLog, name)
        monkeypatch.setattr(FeedbackLog, name, lambda self, raw, rows, _o=original, _n=name: (used.append(_n), _o(self, raw, rows))[1])
    try:
        log.append([obs(i) for i in range(COPY_FROM_ROWS - 1)])
        log.append([obs(i) for i in range(100, 100 + COPY_FROM_ROWS)])
        log.append([obs(i) for i in range(100, 100 + COPY_FROM_ROWS + 1)])  # one new, the rest logged
        assert used == ["_insert_postgres", "_copy_postgres", "_copy_postgres", "_insert_postgres"]
        assert log.count("m") == 2 * COPY_FROM_ROWS
    finally:
        log.close()
        engine.dispose()
    assert log_module.COPY_FROM_ROWS == COPY_FROM_ROWS
