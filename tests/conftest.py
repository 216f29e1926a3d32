"""Shared fixtures. Unit tests need nothing running; tests marked ``integration`` use the real
Redis and PostgreSQL that .ci/run starts, and *fail* (never skip) when those are down."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI a skipped test is a failure: integration tests must run against the real services."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped and os.environ.get("CI") and exitstatus == 0:
        reporter.write_line(f"FAILED: {skipped} test(s) skipped; CI allows none", red=True)
        session.exitstatus = 1

REDIS_URL = os.environ.get("FEATURESTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "FEATURESTORE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:  # pragma: no cover - only when the service is down
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); start it with .ci/run")
    return REDIS_URL


@pytest.fixture
def unique_project() -> str:
    """A project name no other test uses, so key spaces never collide."""
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A URL whose search_path is a fresh schema, dropped after the test."""
    import sqlalchemy as sa

    schema = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(POSTGRES_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as exc:  # pragma: no cover - only when the service is down
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_URL} ({exc}); start it with .ci/run")
    sep = "&" if "?" in POSTGRES_URL else "?"
    yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()
