"""Two real server processes keep an item's features in their ``/predict`` caches; a write that
is not a recorded materialization run changes the item (the stream job fed by a push, or a
writer calling ``write_latest``): both servers must score with the new features within about
two seconds (issue 14, item 7). Run on the embedded store and on Redis + PostgreSQL.

The servers follow the online store's newest event time per view on their registry watcher's
thread (``registry_refresh_seconds`` = 1 s on a server); see docs/serving.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from featurestore import FeatureStore
from featurestore.online.memory import MemoryOnlineStore
from tests.velox.conftest import VEC, item_vec, key
from tests.velox_feedback.conftest import DEFS, trained_store
from tests.velox_feedback.test_crash import _free_port, _serve

ROOT = Path(__file__).resolve().parents[2]
USER = {"user_id": 1}
ITEMS = [{"item_id": i} for i in (1, 2, 3)]
NEW_VEC = [1.5, -2.0, 0.75]  # exactly representable in float32
assert NEW_VEC != item_vec(1)
DEADLINE_S = 2.5  # the poll interval is 1 s; a little slack for a loaded machine
ITEM_VEC = "  - name: item_vec\n    entities: [item]\n    source: src\n"
assert ITEM_VEC in DEFS


@dataclass
class Setup:
    store: FeatureStore  # this test's own handle on the repository (writes, expected scores)
    env: dict[str, str]  # what the server processes need to reach the same stores
    stream: str | None  # the item_vec stream, when the view has one


@pytest.fixture(
    params=[
        pytest.param(("embedded", "write_latest"), id="embedded-write_latest"),
        pytest.param(("embedded", "stream"), id="embedded-stream", marks=pytest.mark.integration),
        pytest.param(("redis", "write_latest"), id="redis+postgresql-write_latest", marks=pytest.mark.integration),
        pytest.param(("redis", "stream"), id="redis+postgresql-stream", marks=pytest.mark.integration),
    ]
)
def setup(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[Setup]:
    backend, writer = request.param
    defs, stream = DEFS, None
    if writer == "stream":
        redis_url = request.getfixturevalue("redis_url")
        stream = f"fs_cache_{uuid.uuid4().hex[:10]}"
        defs = DEFS.replace(
            ITEM_VEC, ITEM_VEC + f"    stream_source: {{type: redis_stream, stream: {stream}, group: fs, url: '{redis_url}'}}\n"
        )
    if backend == "embedded":
        store = trained_store(tmp_path / "repo", {"type": "embedded"}, unique_project, defs)
        env: dict[str, str] = {}
    else:
        redis_url, postgres_url = request.getfixturevalue("redis_url"), request.getfixturevalue("postgres_url")
        store = trained_store(
            tmp_path / "repo", {"type": "redis", "url": redis_url}, unique_project, defs, registry=postgres_url
        )
        env = {
            "FEATURESTORE__ONLINE_STORE__TYPE": "redis",
            "FEATURESTORE__ONLINE_STORE__URL": redis_url,
            "FEATURESTORE__REGISTRY": postgres_url,
        }
    yield Setup(store, env, stream)
    store.close()
    MemoryOnlineStore.drop_project(unique_project)
    if stream is not None:
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        client.delete(stream)
        client.close()
    if backend == "redis":
        import redis

        client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
        keys = list(client.scan_iter(match=f"{unique_project}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _score(client: httpx.Client) -> float:
    r = client.post("/predict", json={"model": "taste", "user": USER, "items": ITEMS})
    assert r.status_code == 200, r.text
    (first,) = [s for s in r.json()["scores"] if s["item"] == ITEMS[0]]
    assert first["status"] == "present", first
    return float(first["score"])


def _cache_hits(client: httpx.Client) -> float:
    text = client.get("/metrics").text
    match = re.search(r'^featurestore_feature_cache_lookups_total\{result="hit"\} (\S+)$', text, re.M)
    assert match, text[-2000:]
    return float(match.group(1))


def _expected_score(store: FeatureStore) -> float:
    """What a cache that has never seen item 1 scores (this process's own predictor, emptied)."""
    store.predictor.cache.invalidate()
    prediction = store.predict("taste", USER, ITEMS)
    return float(prediction.scores[0])


def _start_stream_job(repo: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(repo), "stream", "item_vec",
         "--consumer", "job-1", "--block-ms", "50", "--grace", "0s", "--stats-interval", "1s"],
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _write(setup: Setup, event_ts_us: int) -> subprocess.Popen[str] | None:
    """Change item 1's vector, by a writer that records no materialization run."""
    store = setup.store
    if setup.stream is None:
        store.online_store.write_latest("item_vec", [(key(1), event_ts_us, event_ts_us, VEC.encode_row([NEW_VEC]))])
        return None
    job = _start_stream_job(store.repo_path, setup.env)
    ts = datetime.fromtimestamp(event_ts_us / 1e6, timezone.utc).isoformat()
    store.push("item_vec", [{"item_id": 1, "ts": ts, "vec": NEW_VEC}])
    return job


def _wait_for_online_value(setup: Setup, job: subprocess.Popen[str] | None, timeout: float) -> float:
    """When the new value is in the online store, as this process sees it (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    online = setup.store.online_store
    while time.monotonic() < deadline:
        hit = online.read_latest([("item_vec", key(1))])[0]
        if hit is not None and list(VEC.decode(hit[1])[0]) == NEW_VEC:
            return time.monotonic()
        if job is not None and job.poll() is not None:
            pytest.fail(f"the stream job exited {job.returncode}: {job.stdout.read() if job.stdout else ''}")
        time.sleep(0.005)
    pytest.fail("the new value never reached the online store")


def test_both_servers_score_with_the_new_features_within_two_seconds(setup: Setup) -> None:
    store = setup.store
    old_expected = _expected_score(store)
    servers: list[subprocess.Popen] = []
    clients: list[httpx.Client] = []
    job = None
    try:
        for _ in range(2):
            port = _free_port()
            servers.append(_serve(store.repo_path, port, **setup.env))
            clients.append(httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
        # Warm both caches: the second call's items come from memory.
        for client in clients:
            assert _score(client) == pytest.approx(old_expected, rel=1e-9)
            hits = _cache_hits(client)
            assert _score(client) == pytest.approx(old_expected, rel=1e-9)
            assert _cache_hits(client) >= hits + len(ITEMS)

        job = _write(setup, time.time_ns() // 1000)
        written = _wait_for_online_value(setup, job, timeout=60)
        new_expected = _expected_score(store)
        assert new_expected != pytest.approx(old_expected, rel=1e-6)  # the change is visible in a score

        lag: dict[int, float] = {}
        while len(lag) < len(clients) and time.monotonic() < written + DEADLINE_S:
            for i, client in enumerate(clients):
                if i not in lag and _score(client) == pytest.approx(new_expected, rel=1e-9):
                    lag[i] = time.monotonic() - written
        print(f"seconds from the write to the new score, per server: {lag}")
        assert len(lag) == len(clients), f"server(s) {set(range(len(clients))) - set(lag)} still score the old item"
        for client in clients:  # and they stay new
            assert _score(client) == pytest.approx(new_expected, rel=1e-9)
    finally:
        for client in clients:
            client.close()
        for proc in [*servers, *([job] if job is not None else [])]:
            proc.terminate()
        for proc in [*servers, *([job] if job is not None else [])]:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
