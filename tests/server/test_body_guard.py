"""Request bodies are JSON of bounded size, checked before anything reads them (415, 413), and
a client's huge name is not echoed back whole."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from online_server import create_app
from tests.retrieval.conftest import fill, make_repo


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FeatureStore]:
    fs = make_repo(tmp_path / "repo", {"type": "embedded"})
    fill(fs)
    yield fs
    fs.close()


@pytest.fixture
def client(store: FeatureStore) -> Iterator[TestClient]:
    with TestClient(create_app(store)) as c:
        yield c


@pytest.fixture
def small(store: FeatureStore) -> Iterator[TestClient]:
    server = store.config.server.model_copy(update={"max_body_bytes": 4096})
    store.config = store.config.model_copy(update={"server": server})
    with TestClient(create_app(store)) as c:
        yield c


@pytest.mark.parametrize("path", ["/features", "/predict", "/feedback", "/push"])
def test_a_body_that_is_not_json_is_a_415_whatever_it_holds(small: TestClient, path: str) -> None:
    # What a cross-site form or fetch without a preflight sends: text/plain.
    r = small.post(path, content=b'{"features": ["user_stats:clicks"]}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"]["type"] == "UnsupportedMediaType"
    r = small.post(path, content=b"{}")  # no Content-Type at all
    assert r.status_code == 415


def test_json_with_a_charset_passes(small: TestClient) -> None:
    r = small.post("/features", content=b'{"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]}',
                   headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_a_body_over_the_limit_is_a_413_before_it_is_read(small: TestClient) -> None:
    big = b'{"features": ["' + b"x" * 10_000 + b'"], "entity_rows": [{"user_id": 1}]}'
    r = small.post("/features", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "at most 4,096" in r.json()["error"]["message"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(10):
            yield b" " * 1000
        yield b"{}"

    r = small.post("/feedback", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_a_body_less_post_passes(small: TestClient) -> None:
    assert small.post("/models/nope/rollback").status_code == 404


def test_a_huge_unknown_name_is_answered_fast_and_not_echoed_whole(client: TestClient) -> None:
    name = "v" * 2_000_000
    started = time.monotonic()
    r = client.post("/features", json={"features": [name], "entity_rows": [{"user_id": 1}]})
    assert r.status_code == 404 and time.monotonic() - started < 5
    assert len(r.content) < 2_000 and "2,000,000 characters" in r.json()["error"]["message"]
