"""Bearer tokens over their life: expiry, revocation in the registry and edits of
featurestore.yaml reach a running server within seconds, without a restart; a bad edit or an
unreachable database never opens it. On both registry backends (SQLite, PostgreSQL)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from featurestore.cli.main import main
from featurestore.config import TokenConfig
from featurestore.store import FeatureStore
from featurestore.tokens import hash_token, revocations, revoke, revoked_digests
from online_server.auth import Denial, TokenAuth
from tests.server.token_app import build, watching_auth

ROOT = Path(__file__).resolve().parents[2]
READER, WRITER, SPARE = "fs_reader_token", "fs_writer_token", "fs_spare_token"
DEADLINE = 3.0  # the promise: a change is in force within 3 s (the watcher ticks every second)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    return request.getfixturevalue("postgres_url")


def entry(name: str, token: str, roles: list[str], expires_at: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "sha256": hash_token(token), "roles": roles}
    if expires_at is not None:
        out["expires_at"] = expires_at
    return out


READER_ENTRY = entry("reader", READER, ["read"])
WRITER_ENTRY = entry("writer", WRITER, ["write"])


class Repo:
    """A repository whose featurestore.yaml the test rewrites, as an operator would."""

    def __init__(self, root: Path, registry_url: str, project: str) -> None:
        self.root, self.registry_url, self.project = root, registry_url, project
        (root / "features").mkdir(parents=True, exist_ok=True)

    def write(self, tokens: list[dict[str, Any]] | None = None, *, text: str | None = None) -> None:
        if text is None:
            config = {"project": self.project, "registry": self.registry_url, "server": {"tokens": tokens or []}}
            text = json.dumps(config, indent=2)  # JSON is YAML
        # Written aside and renamed over, as editors and config management do.
        tmp = self.root / ".featurestore.yaml.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.root / "featurestore.yaml")


@pytest.fixture
def repo(tmp_path: Path, registry_url: str, unique_project: str) -> Repo:
    repo = Repo(tmp_path / "repo", registry_url, unique_project)
    repo.write([READER_ENTRY, WRITER_ENTRY])
    return repo


@pytest.fixture
def serve(repo: Repo) -> Iterator[Callable[[], TestClient]]:
    """Start the in-process app on the repository as it is now (call after the last set-up edit)."""
    opened: list[tuple[FeatureStore, TokenAuth, TestClient]] = []

    def start() -> TestClient:
        store = FeatureStore(repo.root)
        auth = watching_auth(store)
        auth.start()
        client = TestClient(build(auth))
        opened.append((store, auth, client))
        return client

    yield start
    for store, auth, client in opened:
        client.close()
        auth.close()
        store.close()


def get(client: TestClient | httpx.Client, token: str | None, path: str = "/features") -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.get(path, headers=headers)


def eventually(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took. Never a fixed sleep."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


def refused(client: Any, token: str | None, message: str, path: str = "/features") -> Callable[[], bool]:
    def check() -> bool:
        r = get(client, token, path)
        return r.status_code == 401 and r.json()["error"]["message"] == message

    return check


def logged(caplog: pytest.LogCaptureFixture, text: str) -> Callable[[], bool]:
    return lambda: any(text in record.getMessage() for record in caplog.records)


# -- revocation, removal, expiry --------------------------------------------------------------
def test_revoke_from_the_cli_is_refused_within_seconds(
    repo: Repo, serve: Callable[[], TestClient], capsys: pytest.CaptureFixture[str]
) -> None:
    client = serve()
    assert get(client, READER).status_code == 200
    assert main(["-r", str(repo.root), "token", "revoke", "reader", "--reason", "leaked"]) == 0
    out = capsys.readouterr().out
    assert "revoked token 'reader'" in out and "2 seconds" in out and "featurestore.yaml" in out
    eventually(refused(client, READER, "token revoked"), "the revoked token is refused")
    r = get(client, READER)
    assert "featurestore token create" in r.json()["error"]["hint"] and r.headers["www-authenticate"] == "Bearer"
    assert get(client, WRITER, "/push").status_code == 200  # the others are untouched
    # The entry may now leave featurestore.yaml: the token stays refused.
    repo.write([WRITER_ENTRY])
    eventually(refused(client, READER, "unknown token"), "the removed token is unknown")


def test_token_removed_from_the_config_is_refused_within_seconds(repo: Repo, serve: Callable[[], TestClient]) -> None:
    client = serve()
    assert get(client, READER).status_code == 200
    repo.write([WRITER_ENTRY, entry("spare", SPARE, ["read"])])
    eventually(refused(client, READER, "unknown token"), "the removed token is refused")
    assert get(client, SPARE).status_code == 200  # a token added by the same edit works
    assert get(client, WRITER, "/push").status_code == 200


def test_expired_token_is_refused_with_a_hint(repo: Repo, serve: Callable[[], TestClient]) -> None:
    past = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    repo.write([entry("reader", READER, ["read"], past), entry("writer", WRITER, ["write"], future)])
    client = serve()
    r = get(client, READER)
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "token expired"
    assert "featurestore token create" in r.json()["error"]["hint"]
    assert get(client, WRITER, "/push").status_code == 200


def test_a_token_expires_while_the_server_runs() -> None:
    now = [1_000.0]
    token = TokenConfig(
        name="svc", sha256=hash_token(READER), roles=["read"],
        expires_at=datetime.fromtimestamp(1_001.0, timezone.utc).replace(tzinfo=None),  # naive: UTC
    )
    auth = TokenAuth([token], clock=lambda: now[0])
    assert auth.check(READER) == frozenset({"read"})
    now[0] = 1_001.0
    verdict = auth.check(READER)
    assert isinstance(verdict, Denial) and verdict.message == "token expired"
    assert auth.roles_of(READER) is None


# -- failing safe ----------------------------------------------------------------------------
@pytest.mark.parametrize("broken", [
    "project: [unclosed\n",
    "project: p\nserver:\n  tokens:\n    - {name: reader, sha256: not-hex, roles: [read]}\n",
])
def test_a_broken_config_edit_keeps_the_previous_tokens(
    repo: Repo, serve: Callable[[], TestClient], caplog: pytest.LogCaptureFixture, broken: str
) -> None:
    caplog.set_level(logging.WARNING, logger="online_server.auth")
    client = serve()
    repo.write(text=broken)
    eventually(logged(caplog, "keeping the previous tokens"), "the bad edit is noticed and logged")
    assert get(client, READER).status_code == 200
    assert get(client, WRITER, "/push").status_code == 200
    assert get(client, None).status_code == 401  # still enforcing, never opened
    # Fixed: the new content is in force.
    repo.write([WRITER_ENTRY])
    eventually(refused(client, READER, "unknown token"), "the fixed config is read")


def test_removing_every_token_refuses_everything_instead_of_opening(
    repo: Repo, serve: Callable[[], TestClient]
) -> None:
    client = serve()
    repo.write([])
    eventually(refused(client, READER, "no valid tokens configured"), "an empty token list refuses all")
    assert refused(client, None, "missing bearer token")()
    assert refused(client, WRITER, "no valid tokens configured", "/push")()
    assert "featurestore token create" in get(client, READER).json()["error"]["hint"]
    assert get(client, None, "/health").status_code == 200  # open paths stay open


def test_tokens_added_to_a_server_started_without_any_are_enforced(
    repo: Repo, serve: Callable[[], TestClient]
) -> None:
    repo.write([])
    client = serve()
    assert get(client, None).status_code == 200  # no tokens: no auth (bound to loopback)
    repo.write([READER_ENTRY])
    eventually(refused(client, None, "missing bearer token"), "the new token list is enforced")
    assert get(client, READER).status_code == 200


def test_an_unreachable_database_keeps_the_last_known_revocations(
    repo: Repo, serve: Callable[[], TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="online_server.auth")
    client = serve()
    assert main(["-r", str(repo.root), "token", "revoke", "reader"]) == 0
    eventually(refused(client, READER, "token revoked"), "the revocation is read")
    # The revocations can no longer be read: the last known set stays in force.
    engine = sa.create_engine(repo.registry_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE fs_token_revocations"))
    engine.dispose()
    eventually(logged(caplog, "cannot read token revocations"), "the failed read is logged")
    assert refused(client, READER, "token revoked")()
    assert get(client, WRITER, "/push").status_code == 200


# -- storage and CLI -------------------------------------------------------------------------
def test_revoke_is_idempotent_and_listed(registry_url: str, unique_project: str, tmp_path: Path) -> None:
    from registry.sql_registry import SqlRegistry

    reg = SqlRegistry(registry_url, unique_project)
    try:
        digest = hash_token(READER)
        assert revoke(reg.engine, unique_project, "reader", digest, "leaked") is True
        assert revoke(reg.engine, unique_project, "reader", digest, "again") is False
        assert revoked_digests(reg.engine, unique_project) == frozenset({digest})
        assert revoked_digests(reg.engine, "other") == frozenset()
        [listed] = revocations(reg.engine, unique_project)
        assert (listed.name, listed.sha256, listed.reason) == ("reader", digest, "leaked")
        assert listed.revoked_at.tzinfo is not None
    finally:
        reg.close()


def test_token_list_shows_every_state(repo: Repo, capsys: pytest.CaptureFixture[str]) -> None:
    past = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    repo.write([READER_ENTRY, WRITER_ENTRY, entry("old", SPARE, ["read"], past)])
    assert main(["-r", str(repo.root), "token", "revoke", "writer", "--reason", "rotated"]) == 0
    gone = entry("gone", "fs_gone_token", ["admin"])
    repo.write([READER_ENTRY, WRITER_ENTRY, entry("old", SPARE, ["read"], past), gone])
    assert main(["-r", str(repo.root), "token", "revoke", "gone"]) == 0
    repo.write([READER_ENTRY, WRITER_ENTRY, entry("old", SPARE, ["read"], past)])
    capsys.readouterr()

    assert main(["-r", str(repo.root), "token", "list", "--format", "json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert {name: r["state"] for name, r in rows.items()} == {
        "reader": "active", "writer": "revoked", "old": "expired", "gone": "revoked",
    }
    assert rows["writer"]["reason"] == "rotated" and rows["writer"]["roles"] == ["write"]
    assert rows["gone"]["in_config"] is False and rows["gone"]["sha256"] == hash_token("fs_gone_token")
    assert rows["old"]["expires_at"].endswith("Z") and rows["reader"]["expires_at"] is None

    assert main(["-r", str(repo.root), "token", "list"]) == 0
    table = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert " active" in table["reader"] and " expired" in table["old"]
    assert "rotated" in table["writer"] and "not in featurestore.yaml" in table["gone"]


def test_token_revoke_of_an_unknown_name_lists_the_known_ones(
    repo: Repo, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["-r", str(repo.root), "token", "revoke", "nope"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == ["error: no token named 'nope' in server.tokens", "hint: known names: reader, writer"]


def test_token_create_with_expiry(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "create", "--name", "svc", "--expires-at", "2099-01-02T03:04:05"]) == 0
    line = capsys.readouterr().out.splitlines()[2]
    assert line.endswith(", roles: [read], expires_at: 2099-01-02T03:04:05Z}")
    import yaml

    [parsed] = yaml.safe_load(line)
    assert TokenConfig(**parsed).expires_at == datetime(2099, 1, 2, 3, 4, 5, tzinfo=timezone.utc)

    before = datetime.now(timezone.utc)
    assert main(["token", "create", "--name", "svc", "--expires-in", "12h"]) == 0
    [parsed] = yaml.safe_load(capsys.readouterr().out.splitlines()[2])
    assert timedelta(hours=11, minutes=59) < TokenConfig(**parsed).expires_at - before <= timedelta(hours=12)

    assert main(["token", "create", "--name", "svc", "--expires-in", "soon"]) == 1
    assert "--expires-in" in capsys.readouterr().err
    assert main(["token", "create", "--name", "svc", "--expires-at", "2001-01-01"]) == 1
    assert "in the past" in capsys.readouterr().err


@pytest.mark.parametrize("verb", [[], ["create"], ["list"], ["revoke"]])
def test_every_token_verb_has_help(verb: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["token", *verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: featurestore token" in capsys.readouterr().out


# -- a real server in another process --------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(repo: Repo) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FEATURESTORE_REPO": str(repo.root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.server.token_app:app_from_environment", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"the server did not start: {proc.communicate()[1].decode()[-2000:]}")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_running_server_process_follows_revocations_and_config_edits(repo: Repo, server: str) -> None:
    with httpx.Client(base_url=server, timeout=5) as client:
        assert get(client, READER).status_code == 200
        assert get(client, WRITER, "/push").status_code == 200
        assert main(["-r", str(repo.root), "token", "revoke", "reader"]) == 0
        eventually(refused(client, READER, "token revoked"), "the server process refuses the revoked token")
        repo.write([READER_ENTRY])
        eventually(refused(client, WRITER, "unknown token", "/push"), "the server process drops the removed token")
        repo.write([])
        eventually(refused(client, READER, "no valid tokens configured"), "an empty list refuses all")
        assert refused(client, None, "missing bearer token")()  # still enforcing, never opened
