from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from featurestore.cli.main import main
from featurestore.config import TokenConfig
from featurestore.tokens import hash_token
from online_server import create_app
from tests.retrieval.conftest import fill, make_repo

READER, WRITER = "fs_reader_token", "fs_writer_token"


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    store = make_repo(tmp_path / "repo", {"type": "memory"})
    fill(store)
    tokens = [
        {"name": "reader", "sha256": hash_token(READER), "roles": ["read"]},
        {"name": "writer", "sha256": hash_token(WRITER), "roles": ["write"]},
    ]
    server = store.config.server.model_copy(update={"tokens": [TokenConfig(**t) for t in tokens]})
    store.config = store.config.model_copy(update={"server": server})
    with TestClient(create_app(store)) as c:
        yield c


BODY = {"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]}


def test_missing_unknown_and_wrong_role(client: TestClient) -> None:
    r = client.post("/features", json=BODY)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert client.post("/features", json=BODY, headers={"Authorization": "Bearer nope"}).status_code == 401
    r = client.post("/features", json=BODY, headers={"Authorization": f"Bearer {WRITER}"})
    assert r.status_code == 403 and "`read` role" in r.json()["error"]["message"]


def test_right_role_passes_and_health_stays_open(client: TestClient) -> None:
    r = client.post("/features", json=BODY, headers={"Authorization": f"Bearer {READER}"})
    assert r.status_code == 200 and r.json()["features"]["clicks"]["values"] == [5]
    assert client.get("/health").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_token_create_prints_hash_not_stored_token(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--name", "svc", "--roles", "read,write"]) == 0
    out = capsys.readouterr().out.splitlines()
    token = out[0].split(": ")[1]
    assert out[2] == f"  - {{name: svc, sha256: {hash_token(token)}, roles: [read, write]}}"
    assert main(["token", "create", "--name", "svc", "--roles", "root"]) == 1
