"""``online_server.http``: the error body, validation errors and shutdown hooks, and that the app
built by ``create_app`` stops what its routes started."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from featurestore.online.memory import MemoryOnlineStore
from online_server import create_app
from online_server.http import error_response, on_shutdown, validation_response
from tests.velox_feedback.conftest import trained_store


def test_the_error_body() -> None:
    r = error_response(503, "StoreUnavailableError", "redis is down", "start redis", retryable=True)
    assert r.status_code == 503
    assert r.body == (
        b'{"error":{"type":"StoreUnavailableError","message":"redis is down","hint":"start redis","retryable":true}}'
    )


def test_a_validation_error_names_the_first_field() -> None:
    r = validation_response([
        {"loc": ("body", "entity_rows", 0, "user_id"), "msg": "bad int"},
        {"loc": ("body",), "msg": "other"},
    ])
    assert r.status_code == 422
    assert r.body.startswith(b'{"error":{"type":"ValidationError","message":"field `entity_rows.0.user_id`: bad int"')
    fields = b'[{"field":"entity_rows.0.user_id","message":"bad int"},{"field":"(body)","message":"other"}]'
    assert b'"fields":' + fields in r.body


@asynccontextmanager
async def _own_lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    app.state.calls.append("own lifespan")


@pytest.mark.parametrize(
    ("lifespan", "include", "expected"),
    [
        (None, False, ["first", "second"]),
        # include_router puts a lifespan of its own in place of the default (FastAPI >= 0.112.2).
        (None, True, ["first", "second"]),
        (_own_lifespan, True, ["first", "second", "own lifespan"]),
    ],
)
def test_shutdown_callbacks_run_once_in_the_order_given(lifespan: object, include: bool, expected: list[str]) -> None:
    app = FastAPI(lifespan=lifespan)  # type: ignore[arg-type]
    app.state.calls = calls = []
    if include:
        app.include_router(APIRouter())
    on_shutdown(app, lambda: calls.append("first"), lambda: calls.append("second"))
    with TestClient(app):
        assert calls == []
    assert calls == expected


def test_the_app_stops_the_prediction_log_and_the_feedback_thread(tmp_path: Path, unique_project: str) -> None:
    def threads() -> dict[str, int]:
        names = [t.name for t in threading.enumerate()]
        return {name: names.count(name) for name in ("prediction-log-writer", "feedback-maintenance")}

    store = trained_store(tmp_path / "repo", {"type": "memory"}, unique_project)
    try:
        before = threads()
        with TestClient(create_app(store)) as c:
            c.post("/predict", json={"model": "taste", "user": {"user_id": 1}, "items": [{"item_id": 1}]})
            feedback = {"model": "taste", "user": {"user_id": 1}, "item": {"item_id": 2}, "label": 3.5}
            assert c.post("/feedback", json={**feedback, "feedback_id": "a"}).status_code == 200
            assert threads() == {name: n + 1 for name, n in before.items()}
        assert threads() == before
        assert store.predictor.log.pending == 0 and store.predictor.log.written >= 1
    finally:
        store.close()
        MemoryOnlineStore.drop_project(unique_project)
