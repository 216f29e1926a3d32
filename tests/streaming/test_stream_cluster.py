"""The stream job of a plain view on a Redis Cluster (``online_store.cluster: true``): pushed
events (with and without a push_id) are read from the stream in the cluster and written online
under the cluster layout, as on one Redis. The aggregated view's pane state needs its keys in the
stream's slot (``redis_keys.cluster_stream_prefix``), which is the stream job's to adopt."""

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
