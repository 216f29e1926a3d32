"""The stream job of a plain view on a Redis Cluster (``online_store.cluster: true``): pushed
events (with and without a push_id) are read from the stream in the cluster and written online
under the cluster layout, as on one Redis; an aggregated view's pane state lives in its stream's
slot (``redis_keys.cluster_stream_prefix``), so batch history and a stream tail compose there too."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from featurestore import FeatureStore
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions
from tests.conftest import delete_redis_cluster_project
from tests.streaming.helpers import expected_last, make_events, make_repo, online, streams_of

pytestmark = pytest.mark.integration


def test_a_plain_view_streams_on_a_cluster(tmp_path: Path, redis_cluster_url: str, unique_project: str) -> None:
    repo = make_repo(tmp_path / "repo", unique_project, redis_cluster_url)
    config = repo / "featurestore.yaml"
    config.write_text(config.read_text().replace("online_store: {type: redis,", "online_store: {type: redis, cluster: true,"))
    now = datetime.now(timezone.utc)
    events = make_events(300, now - timedelta(minutes=50), now - timedelta(minutes=20), seed=5)
    store = FeatureStore(repo)
    try:
        store.apply()
        assert store.online_store.cluster
        assert store.push("user_last", events[:100]).pushed == 100
        assert store.push("user_last", events[100:], push_id="rest").pushed == 200
        assert store.push("user_last", events[100:], push_id="rest").duplicate
        options = StreamOptions(consumer="cluster", generation_seconds=2.5, stats_seconds=60, grace_seconds=0)
        assert run_stream(store, ["user_last"], options=options, max_generations=1) == 1
        assert online(store, "user_last") == expected_last(events)
    finally:
        store.close()
        from redis.cluster import RedisCluster

        delete_redis_cluster_project(redis_cluster_url, unique_project)
        admin = RedisCluster.from_url(redis_cluster_url)
        for stream in streams_of(repo):
            admin.delete(stream)
            for key in admin.scan_iter(match=f"{{{stream}}}:*"):
                admin.delete(key)
        admin.close()


def test_an_aggregated_view_hands_over_between_batch_and_stream_on_a_cluster(
    tmp_path: Path, redis_cluster_url: str, unique_project: str
) -> None:
    """Issue 14's lambda sequence with the stream, its pane state and the online store in one
    Redis Cluster: every script of the hand-over (the stream job's commit, the batch run's
    staging and publication) touches keys of the stream's slot only (they would fail with
    CROSSSLOT otherwise), and the online values equal one batch job over all events."""
    from materializers import materialize
    from materializers.schema import ViewSchema
    from materializers.stream_state import state_prefix
    from tests.streaming.helpers import UTC, us
    from tests.streaming.lambda_helpers import (
        MIN,
        as_push,
        expected_online,
        make_lambda_events,
        make_lambda_repo,
        online_values,
        write_source,
    )

    now = datetime.now(UTC)
    start = us(now) - 50 * MIN
    events = make_lambda_events(11, 240, start, 28 * MIN)
    t1 = start + 9 * MIN + 17_000_123
    repo = make_lambda_repo(tmp_path / "lambda", unique_project, redis_cluster_url, online="cluster")
    store = FeatureStore(repo)
    from redis.cluster import RedisCluster

    admin = RedisCluster.from_url(redis_cluster_url)
    try:
        store.apply()
        assert store.online_store.cluster
        write_source(repo, [e for e in events if e["ts"] < t1])
        materialize(store, ["sliding"], end=datetime.fromtimestamp(t1 / 1e6, UTC), progress=False)
        tail = [e for e in events if e["ts"] >= t1]
        for first in range(0, len(tail), 200):
            store.push("sliding", as_push(tail[first : first + 200]))
        options = StreamOptions(consumer="job", generation_seconds=2.0, grace_seconds=0, stats_seconds=60)
        assert run_stream(store, ["sliding"], options, max_generations=1) == 1
        schema = ViewSchema.of(store.definitions(), "sliding")
        expected = expected_online(events, schema)
        assert online_values(store, "sliding") == expected
        # The source caught up: an incremental run moves the boundary again, on the cluster.
        write_source(repo, events)
        materialize(store, ["sliding"], incremental=True, progress=False)
        assert online_values(store, "sliding") == expected
        # The state sits behind the stream's tag, not under the single-Redis prefix.
        stream = store.definitions().feature_views["sliding"].stream_source.stream
        assert admin.exists(state_prefix(unique_project, "sliding", stream) + "batch_until")
        assert not admin.exists(state_prefix(unique_project, "sliding") + "batch_until")
    finally:
        store.close()
        delete_redis_cluster_project(redis_cluster_url, unique_project)
        for stream in streams_of(repo):
            admin.delete(stream)
            for key in admin.scan_iter(match=f"{{{stream}}}:*"):
                admin.delete(key)
        admin.close()
