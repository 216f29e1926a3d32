"""Self-healing feedback (issue 15, defect 7): a state update cut off after the log commit is
applied by the catch-up, exactly once, without racing a live update; on the embedded profile and
on Redis + PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from featurestore import FeatureStore
from featurestore.feedback import FeedbackInput, replay
from featurestore.feedback.catch_up import catch_up
from featurestore.feedback.log import FeedbackLog
from featurestore.models.artifacts import read_artifact
from featurestore.models.linear import UserState, new_user_state
from featurestore.online.memory import MemoryOnlineStore
from registry import tables as t
from registry.errors import StoreUnavailableError
from tests.velox.conftest import key
from tests.velox_feedback.conftest import apply_sequentially, assert_same_state, state, trained_store


@pytest.fixture(params=["embedded", "redis_pg"])
def store(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    if request.param == "embedded":
        fs = trained_store(tmp_path / "repo", {"type": "embedded"}, unique_project)
    else:
        from tests.online.conftest import delete_redis_project

        redis_url = request.getfixturevalue("redis_url")
        postgres_url = request.getfixturevalue("postgres_url")
        request.addfinalizer(lambda: delete_redis_project(redis_url, unique_project))
        fs = trained_store(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project,
                           registry=postgres_url)
    yield fs
    if "predictor" in fs.__dict__:
        fs.predictor.close()
    fs.close()
    MemoryOnlineStore.drop_project(unique_project)


def _obs(user: int, item: int, label: float, fid: str) -> FeedbackInput:
    return FeedbackInput("taste", {"user_id": user}, {"item_id": item}, label, fid)


def _start(store: FeatureStore, user: int) -> UserState:
    _, _, w_avg, base = read_artifact(Path(store.model_versions.get("taste", 2).artifact))
    return base.get(key(user), new_user_state(w_avg, 2.0))


def _logged(store: FeatureStore, user: int) -> list[Any]:
    rows = [o for b in FeedbackLog(store.registry.engine, store.project).read("taste") for o in b]
    return [o for o in rows if o.user_key == str(user)]


def _expected(store: FeatureStore, user: int) -> UserState:
    mine = _logged(store, user)
    return apply_sequentially(_start(store, user), np.stack([o.features for o in mine]), np.array([o.label for o in mine]))


def _set(store: FeatureStore, feedback_id: str, **values: Any) -> None:
    f = t.feedback
    with store.registry.engine.begin() as conn:
        conn.execute(sa.update(f).where(f.c.project == store.project, f.c.feedback_id == feedback_id).values(**values))


def _later() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


def test_an_update_cut_off_after_the_commit_is_applied_by_the_catch_up(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    before = state(store, key(1))
    online = store.online_store

    def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("the online store went away", hint="test")

    monkeypatch.setattr(online, "compare_and_swap_blobs", down)
    result = store.feedback_service.submit([_obs(1, 3, 4.5, "cut-1")])
    # Acknowledged (it is in the log), learned later: the request does not fail after the commit.
    assert (result.new, result.deferred, result.rejected) == (1, 1, ())
    monkeypatch.undo()
    assert_same_state(state(store, key(1)), before)
    assert [o.pending for o in _logged(store, 1)] == [True]

    # Not yet: the row is younger than the catch-up's wait.
    assert catch_up(store.context).users == 0
    done = catch_up(store.context, now=_later())
    assert (done.users, done.rows, done.waiting) == (1, 1, 0)
    assert_same_state(state(store, key(1)), _expected(store, 1))
    assert state(store, key(1)).n == before.n + 1
    assert [o.pending for o in _logged(store, 1)] == [False]
    assert catch_up(store.context, now=_later()).users == 0  # nothing left
    assert replay(store.context, "taste", write=False).mismatched == 0


def test_an_update_that_landed_before_the_crash_is_not_applied_twice(store: FeatureStore) -> None:
    service = store.feedback_service
    assert service.submit([_obs(2, 4, 1.0, "a"), _obs(2, 5, 5.0, "b")]).deferred == 0
    applied = state(store, key(2))
    service.log.flush_marks()  # the marks are queued off the request path
    assert [o.pending for o in _logged(store, 2)] == [False, False]
    _set(store, "b", pending=True)  # the crash came after the swap, before the mark

    done = catch_up(store.context, now=_later())
    assert (done.users, done.rows) == (1, 1)
    assert_same_state(state(store, key(2)), applied)
    assert_same_state(state(store, key(2)), _expected(store, 2))


def test_a_user_with_a_recent_pending_row_waits_for_a_later_round(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    service = store.feedback_service
    monkeypatch.setattr(store.online_store, "compare_and_swap_blobs", lambda namespace, swaps: list(swaps))
    service.apply_deadline_seconds = 0.0
    assert service.submit([_obs(3, 4, 2.0, "old")]).deferred == 1
    assert service.submit([_obs(3, 6, 3.0, "fresh")]).deferred == 1
    monkeypatch.undo()
    before = state(store, key(3))
    _set(store, "old", received_at=datetime.now(timezone.utc) - timedelta(hours=1))

    # "fresh" may be on its way to the store in some server: a rebuild now could race it.
    assert catch_up(store.context, older_than_seconds=60).users == 0
    assert_same_state(state(store, key(3)), before)
    done = catch_up(store.context, now=_later())
    assert (done.users, done.rows) == (1, 2)
    assert_same_state(state(store, key(3)), _expected(store, 3))


def test_a_writer_that_swaps_during_the_rebuild_wins_and_nothing_is_applied_twice(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = store.feedback_service
    monkeypatch.setattr(store.online_store, "compare_and_swap_blobs", lambda namespace, swaps: list(swaps))
    service.apply_deadline_seconds = 0.0
    assert service.submit([_obs(4, 4, 2.0, "cut")]).deferred == 1
    monkeypatch.undo()
    service.apply_deadline_seconds = 5.0

    original = FeedbackLog.read_users
    calls: list[int] = []

    def read_then_race(self: FeedbackLog, *args: Any, **kwargs: Any) -> Any:
        if not calls:
            calls.append(1)
            # A live server learns another observation of the user between the catch-up's
            # read of the state and its swap.
            assert service.submit([_obs(4, 7, 4.0, "live")]).deferred == 0
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeedbackLog, "read_users", read_then_race)
    raced = catch_up(store.context, now=_later())
    assert (raced.users, raced.waiting) == (0, 1)  # its swap lost: the user waits
    monkeypatch.undo()
    service.log.flush_marks()  # the live update's mark
    done = catch_up(store.context, now=_later())
    assert (done.users, done.rows) == (1, 1)
    after = state(store, key(4))
    assert_same_state(after, _expected(store, 4))
    assert after.n == _start(store, 4).n + 2


def test_a_swap_that_keeps_losing_gives_up_at_the_deadline_instead_of_failing(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = store.feedback_service
    monkeypatch.setattr(store.online_store, "compare_and_swap_blobs", lambda namespace, swaps: list(swaps))
    service.apply_deadline_seconds = 0.05
    result = service.submit([_obs(5, 4, 2.0, "x1"), _obs(6, 4, 3.0, "x2")])
    assert (result.new, result.deferred, result.rejected) == (2, 2, ())
    assert result.cas_retries >= 1
    assert service.counters.deferred == 2


def test_a_registry_outage_answers_503_before_anything_is_acknowledged(
    store: FeatureStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from online_server.app import create_app

    def down(self: FeedbackLog, observations: Any) -> Any:
        raise StoreUnavailableError("cannot write the feedback log", hint="check that the registry database is up")

    before = state(store, key(1))
    monkeypatch.setattr(FeedbackLog, "append_seqs", down)
    client = TestClient(create_app(store))
    r = client.post("/feedback", json={"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 3},
                                       "label": 4.0, "feedback_id": "down-1"})
    assert r.status_code == 503 and r.json()["error"]["retryable"] is True
    monkeypatch.undo()
    assert _logged(store, 1) == [] and state(store, key(1)).w.tolist() == before.w.tolist()
    # The client's retry, once the database is back, is learned once.
    r = client.post("/feedback", json={"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 3},
                                       "label": 4.0, "feedback_id": "down-1"})
    assert r.status_code == 200 and r.json()["new"] == 1
