"""`featurestore serve` as users run it: a real uvicorn process with several workers."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.cli.serve_cmd import nodelay_config
from tests.conftest import metric
from tests.retrieval.conftest import fill, make_repo

ROOT = Path(__file__).resolve().parents[2]


def test_the_listening_socket_has_tcp_nodelay() -> None:
    """Accepted connections inherit it; without it a multi-worker server stalls 40 ms per
    response (Nagle against the client's delayed ACK), see serve_cmd.serve."""
    config = nodelay_config("online_server.app:app_from_environment", factory=True,
                            host="127.0.0.1", port=0, workers=2)
    sock = config.bind_socket()
    try:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_two_workers_serve_features_from_redis(tmp_path: Path, redis_url: str, unique_project: str) -> None:
    store = make_repo(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project)
    fill(store)
    store.close()
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEATURESTORE__ONLINE_STORE__TYPE="redis",
               FEATURESTORE__ONLINE_STORE__URL=redis_url)
    server = subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(tmp_path / "repo"), "serve",
         "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        conn = _connect(port, server)
        body = json.dumps({"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}, {"user_id": 3}]})
        for _ in range(20):  # one keep-alive connection, many requests
            conn.request("POST", "/features", body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            assert response.status == 200, payload
            assert payload["features"]["clicks"] == {"values": [5, None], "statuses": ["present", "not_found"]}
        conn.request("GET", "/health")
        health = conn.getresponse()
        assert health.status == 200 and json.loads(health.read())["checks"]["online_store"] == "ok"
        conn.close()
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)
            pytest.fail("the server did not stop on SIGINT")


@pytest.mark.integration
def test_metrics_of_two_workers_count_every_request(tmp_path: Path, redis_url: str, unique_project: str) -> None:
    """Whichever worker answers GET /metrics reports the requests of both (issue 18: before,
    each worker reported only itself behind one port)."""
    store = make_repo(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project)
    fill(store)
    store.close()
    port = _free_port()
    shared = tmp_path / "metrics"
    shared.mkdir()
    (shared / "counter_1.db").write_bytes(b"stale")  # a previous server's file: removed at start
    env = dict(os.environ, PYTHONPATH=str(ROOT), FEATURESTORE__ONLINE_STORE__TYPE="redis",
               FEATURESTORE__ONLINE_STORE__URL=redis_url, PROMETHEUS_MULTIPROC_DIR=str(shared))
    server = subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(tmp_path / "repo"), "serve",
         "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        _connect(port, server).close()
        body = json.dumps({"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]})
        pids: set[str] = set()
        sent = 0
        deadline = time.monotonic() + 60
        # A new connection per request, until both workers have timed some request (each
        # worker writes its own histogram file) and 40 were sent.
        while len(pids) < 2 or sent < 40:
            assert time.monotonic() < deadline, f"only workers {pids} answered"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/features", body, {"Content-Type": "application/json"})
            assert conn.getresponse().status == 200
            conn.close()
            sent += 1
            pids = {p.name.split("_")[1].split(".")[0] for p in shared.glob("histogram_*.db")}
        for _ in range(6):  # scrapes land on either worker
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            assert metric(text, "featurestore_requests_total", endpoint="/features", status="200") == sent
            assert metric(text, "featurestore_request_seconds_count", endpoint="/features") == sent
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def _connect(port: int, server: subprocess.Popen[str]) -> http.client.HTTPConnection:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"serve exited with {server.returncode}: {server.stdout.read() if server.stdout else ''}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/health")
            conn.getresponse().read()
            return conn
        except OSError:
            time.sleep(0.2)
    pytest.fail("serve did not answer within 30 s")


def test_workers_freeze_their_start_up_objects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full collection over the start-up objects stalled requests for 70 ms (see app.py)."""
    import gc

    from online_server.app import app_from_environment

    make_repo(tmp_path / "repo", {"type": "embedded"}).close()
    monkeypatch.setenv("FEATURESTORE_REPO", str(tmp_path / "repo"))
    before = gc.get_freeze_count()
    try:
        app = app_from_environment()
        assert gc.get_freeze_count() > max(before, 50_000)
        app.state.store.close()
    finally:
        gc.unfreeze()


@pytest.mark.integration
def test_a_metrics_directory_that_does_not_exist_is_refused_in_one_line(
    tmp_path: Path, redis_url: str, unique_project: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from featurestore.cli.main import main

    make_repo(tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project).close()
    monkeypatch.setenv("FEATURESTORE__ONLINE_STORE__TYPE", "redis")
    monkeypatch.setenv("FEATURESTORE__ONLINE_STORE__URL", redis_url)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "missing"))
    assert main(["-r", str(tmp_path / "repo"), "serve", "--port", str(_free_port()), "--workers", "2"]) == 1
    err = capsys.readouterr().err
    assert "PROMETHEUS_MULTIPROC_DIR" in err and "is not a directory" in err and "hint:" in err
