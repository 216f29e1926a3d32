"""With no tokens the console and ``/eval`` answer only a loopback ``Host``: the guard against
DNS rebinding (a page whose own name is re-pointed at 127.0.0.1 reading the console)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from online_server.console.routes import standalone_app
from tests.velox.conftest import make_store


@pytest.fixture()
def console(tmp_path: Path):
    store = make_store(tmp_path / "repo", {"type": "embedded"}, "host" + uuid.uuid4().hex[:8])
    try:
        yield standalone_app(store)
    finally:
        store.close()


@pytest.mark.parametrize("base", ["http://127.0.0.1:8090", "http://localhost:8090", "http://[::1]:8090"])
def test_a_loopback_host_is_served(console, base: str) -> None:
    with TestClient(console, base_url=base) as client:
        page = client.get("/ui/")
    assert page.status_code == 200 and "Project host" in page.text


@pytest.mark.parametrize("base", ["http://rebound.example:8090", "http://192.168.1.20:8090", "http://testserver"])
def test_another_host_is_refused_with_the_error_object(console, base: str) -> None:
    with TestClient(console, base_url=base) as client:
        page = client.get("/ui/registry")
    assert page.status_code == 403
    error = page.json()["error"]
    assert error["type"] == "AccessDenied" and "loopback" in error["message"]
    assert "server.tokens" in error["hint"]
