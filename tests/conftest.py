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
# .ci/run starts a 6-node Redis Cluster (.ci/redis_cluster.sh) and sets this; locally the
# default is where `.ci/redis_cluster.sh start DIR` puts it.
REDIS_CLUSTER_URL = os.environ.get("FEATURESTORE_TEST_REDIS_CLUSTER_URL")
LOCAL_REDIS_CLUSTER_URL = "redis://127.0.0.1:7000"
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


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """The URL of a node of the test Redis Cluster, checked to serve every slot. In CI a missing
    FEATURESTORE_TEST_REDIS_CLUSTER_URL or a cluster that does not serve fails the test;
    locally, without the variable and without a cluster on port 7000, the test is skipped."""
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException, RedisError

    ci = bool(os.environ.get("CI"))
    if REDIS_CLUSTER_URL is None and ci:
        pytest.fail("FEATURESTORE_TEST_REDIS_CLUSTER_URL is not set; .ci/run starts the cluster and sets it")
    url = REDIS_CLUSTER_URL or LOCAL_REDIS_CLUSTER_URL
    try:
        client = RedisCluster.from_url(url, socket_connect_timeout=2)
        try:
            state = client.cluster_info().get("cluster_state")
        finally:
            client.close()
        if state != "ok":
            raise RedisClusterException(f"cluster_state is {state}")
    except (RedisError, RedisClusterException) as exc:  # pragma: no cover - only when the cluster is down
        message = f"no Redis Cluster serving at {url} ({exc}); start one with `.ci/redis_cluster.sh start DIR`"
        if ci or REDIS_CLUSTER_URL is not None:
            pytest.fail(message)
        pytest.skip(message)
    return url


def delete_redis_cluster_project(url: str, project: str) -> int:
    """Delete every key of ``project`` from the cluster (every primary is scanned)."""
    from redis.cluster import RedisCluster

    client = RedisCluster.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{project}:*", count=1_000))
        for start in range(0, len(keys), 1_000):
            client.unlink(*keys[start : start + 1_000])
        return len(keys)
    finally:
        client.close()


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


# .ci/run starts an S3-compatible server (moto) on loopback and sets this to its URL.
S3_ENDPOINT = os.environ.get("FEATURESTORE_TEST_S3_ENDPOINT")
#: moto accepts any credentials; the AWS SDK only needs some (else it asks the EC2 metadata service).
S3_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "featurestore-test",
    "AWS_SECRET_ACCESS_KEY": "featurestore-test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """``http://host:port`` of an S3-compatible server. In CI a missing
    FEATURESTORE_TEST_S3_ENDPOINT or a server that does not answer fails the test; locally,
    without the variable, a moto server is started in this process (``moto[server]``, in the
    ``test`` extra). Test credentials are set in this process's environment when it has none."""
    import urllib.error
    import urllib.request

    for name, value in S3_TEST_CREDENTIALS.items():
        os.environ.setdefault(name, value)
    ci = bool(os.environ.get("CI"))
    if S3_ENDPOINT is None and ci:
        pytest.fail("FEATURESTORE_TEST_S3_ENDPOINT is not set; .ci/run starts moto_server and sets it")
    server = None
    endpoint = S3_ENDPOINT
    if endpoint is None:
        from moto.server import ThreadedMotoServer

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
    try:
        urllib.request.urlopen(endpoint, timeout=5).close()
    except urllib.error.HTTPError:
        pass  # it answered
    except OSError as exc:  # pragma: no cover - only when the server is down
        pytest.fail(f"no S3-compatible server answers at {endpoint} ({exc}); .ci/run starts one")
    yield endpoint
    if server is not None:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket on the test S3 server: ``s3://NAME``."""
    import pyarrow.fs as pafs

    name = "fs-" + uuid.uuid4().hex[:16]
    host = s3_endpoint.split("://", 1)[1]
    fs = pafs.S3FileSystem(
        endpoint_override=host, scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    fs.create_dir(name)
    return f"s3://{name}"


def metric(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (``GET /metrics``), or None when
    it is absent: ``metric(text, "featurestore_requests_total", endpoint="/features", status="200")``."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
