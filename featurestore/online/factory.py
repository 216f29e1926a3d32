"""Open the configured online store: a ``type`` -> ``"module:Class"`` map, imported by
``featurestore.plugins.load_class``.

Backends are imported only when chosen, so redis-py loads only for the redis store.
"""

from __future__ import annotations

from pathlib import Path

from featurestore.config import OnlineStoreConfig
from featurestore.online.base import OnlineStore
from featurestore.plugins import load_class
from registry.errors import ConfigError

BACKENDS: dict[str, str] = {
    "memory": "featurestore.online.memory:MemoryOnlineStore",
    "embedded": "featurestore.online.embedded:EmbeddedOnlineStore",
    "redis": "featurestore.online.redis_store:RedisOnlineStore",
}
#: ``type: redis`` with ``cluster: true`` (docs/redis-cluster.md).
CLUSTER_BACKENDS: dict[str, str] = {
    "redis": "featurestore.online.redis_cluster_store:RedisClusterOnlineStore",
}


def load_backend(type_: str, *, cluster: bool = False) -> type[OnlineStore]:
    """The store class registered for ``type_`` (its cluster variant with ``cluster``),
    checked to be an ``OnlineStore``."""
    target = (CLUSTER_BACKENDS if cluster else BACKENDS).get(type_)
    if target is None:
        raise ConfigError(
            f"unknown online_store.type {type_!r}",
            hint="use one of " + ", ".join(sorted(BACKENDS)),
        )
    return load_class(
        target,
        OnlineStore,
        what="online store backend",
        hint="fix featurestore.online.factory.BACKENDS",
    )


def open_online_store(config: OnlineStoreConfig, project: str, root: Path) -> OnlineStore:
    """Open the online store a repository's config names, for one project.

    Relative paths (the embedded store's file) are taken from ``root``, the repository root.

    >>> store = open_online_store(OnlineStoreConfig(type="memory"), "demo", Path("."))
    >>> type(store).__name__
    'MemoryOnlineStore'
    """
    return load_backend(config.type, cluster=config.cluster).from_config(config, project, Path(root))
