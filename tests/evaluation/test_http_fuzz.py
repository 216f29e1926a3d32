"""A bounded schemathesis run over the ``/eval`` operations (as tests/server/test_schemathesis.py
does for the rest of the server): whatever the parameters, never a 5xx, and every 4xx is the
server's error object."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from online_server import create_app, eval_http
from tests.evaluation.conftest import build_logged

BOUNDED = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
_declared = FastAPI()
_declared.include_router(eval_http.router(store=None))  # declaration only: the store is never used
SCHEMA = schemathesis.openapi.from_dict(_declared.openapi())


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import uuid

    store = build_logged(tmp_path_factory.mktemp("fuzz") / "repo", {"type": "embedded"}, "fz" + uuid.uuid4().hex[:8])
    application = create_app(store)
    application.include_router(eval_http.router(store))
    with TestClient(application):  # runs the lifespan once
        yield application
    store.close()


@SCHEMA.parametrize()
@BOUNDED
def test_eval_operations_never_fail_on_the_server(case: schemathesis.Case, app: Any) -> None:
    response = case.call(app=app)
    assert response.status_code < 500, (case.as_curl_command(), response.content)
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert set(body) == {"error"} and {"type", "message", "hint", "retryable"} <= set(body["error"]), body
