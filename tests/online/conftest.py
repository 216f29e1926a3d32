"""The ``store`` fixture: every conformance test runs once per backend.

The redis parameters are marked ``integration``: ``redis`` uses the real Redis of
tests/conftest.py, ``redis_cluster`` its Redis Cluster (``online_store.cluster: true``); keys live
under a project name no other test uses and are deleted afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.config import OnlineStoreConfig
from featurestore.online.base import OnlineStore
from featurestore.online.factory import open_online_store
from featurestore.online.memory import MemoryOnlineStore
from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
from featurestore.online.redis_store import RedisOnlineStore
from tests.conftest import delete_redis_cluster_project

BACKENDS = [
    "memory",
    "embedded",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("redis_cluster", marks=pytest.mark.integration),
]


def store_config(backend: str, request: pytest.FixtureRequest) -> dict[str, object]:
    """The ``online_store`` section of a backend parameter (asks for the servers it needs)."""
    if backend == "redis":
        return {"type": "redis", "url": request.getfixturevalue("redis_url")}
    if backend == "redis_cluster":
        return {"type": "redis", "url": request.getfixturevalue("redis_cluster_url"), "cluster": True}
    return {"type": backend, "path": "data/online.db"}


def delete_redis_project(url: str, project: str) -> int:
    """Delete every key of ``project``; returns how many there were."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{project}:*", count=1_000))
        for start in range(0, len(keys), 1_000):
            client.unlink(*keys[start : start + 1_000])
        return len(keys)
    finally:
        client.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path, unique_project: str
) -> Iterator[OnlineStore]:
    section = store_config(backend, request)
    config = OnlineStoreConfig.model_validate(section)
    opened = open_online_store(config, unique_project, tmp_path)
    try:
        yield opened
    finally:
        opened.close()
        if backend == "redis":
            delete_redis_project(str(section["url"]), unique_project)
        elif backend == "redis_cluster":
            delete_redis_cluster_project(str(section["url"]), unique_project)
        elif backend == "memory":
            MemoryOnlineStore.drop_project(unique_project)


@pytest.fixture
def redis_store(redis_url: str, unique_project: str) -> Iterator[RedisOnlineStore]:
    """A Redis store alone, for the tests of Redis-only behaviour (expiry, round trips)."""
    opened = RedisOnlineStore(unique_project, redis_url)
    try:
        yield opened
    finally:
        opened.close()
        delete_redis_project(redis_url, unique_project)


@pytest.fixture
def cluster_store(redis_cluster_url: str, unique_project: str) -> Iterator[RedisClusterOnlineStore]:
    """A Redis Cluster store alone, for the tests of cluster-only behaviour (layout, seams)."""
    opened = RedisClusterOnlineStore(unique_project, redis_cluster_url)
    try:
        yield opened
    finally:
        opened.close()
        delete_redis_cluster_project(redis_cluster_url, unique_project)
