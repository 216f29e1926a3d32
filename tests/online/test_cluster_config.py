"""The cluster switch in the configuration layers: featurestore.yaml, FEATURESTORE__ONLINE_STORE__CLUSTER."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.online.factory import open_online_store
from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
from registry.errors import ConfigError


def _repo(tmp_path: Path, online: str) -> Path:
    (tmp_path / "featurestore.yaml").write_text(f"project: demo\nonline_store: {online}\n")
    return tmp_path


def test_the_environment_turns_the_cluster_on(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "{type: redis, url: 'redis://10.0.0.1:7000'}")
    assert not load_config(repo, environ={}).online_store.cluster
    config = load_config(repo, environ={"FEATURESTORE__ONLINE_STORE__CLUSTER": "true"})
    assert config.online_store.cluster
    store = open_online_store(config.online_store, "demo", repo)  # connects on first use only
    assert isinstance(store, RedisClusterOnlineStore) and store.cluster and store.kind == "redis"
    store.close()


def test_a_cluster_for_another_store_type_names_the_setting(tmp_path: Path) -> None:
    repo = _repo(tmp_path, "{type: embedded, cluster: true}")
    with pytest.raises(ConfigError, match="online_store.*cluster: true needs type: redis"):
        load_config(repo, environ={})
