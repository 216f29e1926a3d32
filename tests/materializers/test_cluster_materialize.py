"""The batch job's online writes on a Redis Cluster (``online_store.cluster: true``): the same
values as on the embedded store, and the view versions and newest times the servers poll."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.store import FeatureStore
from materializers import materialize
from tests.conftest import delete_redis_cluster_project
from tests.materializers.test_redis_vs_embedded import ITEMS, USERS, online_state, write_repo

pytestmark = pytest.mark.integration


def test_a_cluster_holds_what_the_embedded_store_holds(tmp_path: Path, redis_cluster_url: str, unique_project: str) -> None:
    repo = write_repo(tmp_path / "repo")
    states, newest = {}, {}
    cluster = {"online_store": {"type": "redis", "url": redis_cluster_url, "cluster": True}}
    try:
        for name, online in [("embedded", {}), ("cluster", cluster)]:
            with FeatureStore(repo, config_overrides={**online, "project": unique_project}) as store:
                store.apply()
                summaries = materialize(store, end="2026-03-01", progress=False)
                assert [s.rows_online for s in summaries] == [ITEMS, USERS], name
                states[name] = online_state(store)
                newest[name] = store.online_store.newest_event_ts(["user_state", "item_daily"])
                if name == "cluster":
                    assert store.online_store.cluster
                    before = store.online_store.view_versions(["user_state"])["user_state"]
                    # A second run rewrites the same rows (equal timestamps win): the version moves.
                    materialize(store, end="2026-03-01", progress=False)
                    after = store.online_store.view_versions(["user_state"])["user_state"]
                    assert after != before and after.newest_event_ts == before.newest_event_ts
                    assert online_state(store) == states["cluster"]
        assert states["cluster"] == states["embedded"]
        assert all(v is not None for values in states["cluster"].values() for v in values)
        assert newest["cluster"] == newest["embedded"]
    finally:
        delete_redis_cluster_project(redis_cluster_url, unique_project)
