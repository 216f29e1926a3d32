"""`online move-to-cluster`: copy the online store from a single Redis into a Redis Cluster.

The online store is derived data: pointing ``online_store`` at a cluster and re-materializing
refills it (docs/redis-cluster.md, "Moving to a cluster"). This verb copies instead, so the switch
has no gap: every row with its expiry through the cluster's newer-only script, every blob only
where the cluster has none (``featurestore.online.redis_move``). It may run while writers switch
over, and twice.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    move = sub.add_parser(
        "move-to-cluster",
        help="copy every row and blob of the project from the configured single Redis into a cluster",
        description="Copy the project's online rows (with their expiry, newer-only) and blobs (model "
        "states, only where the cluster has none) from the single Redis of online_store.url (or "
        "--from) into the Redis Cluster at --to, in the cluster key layout. Then set "
        "online_store.cluster: true and online_store.url to the cluster. Stream-job state and push "
        "markers are not copied (docs/redis-cluster.md).",
    )
    move.add_argument("--to", required=True, metavar="URL", help="any node of the cluster, e.g. redis://10.0.0.5:7000")
    move.add_argument(
        "--from", dest="source", default=None, metavar="URL",
        help="the single Redis to copy from (default: online_store.url of featurestore.yaml)",
    )


def run(args: argparse.Namespace) -> int:
    from featurestore.config import load_config
    from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
    from featurestore.online.redis_move import move_to_cluster
    from featurestore.online.redis_store import RedisOnlineStore, redact
    from registry.errors import ConfigError, FeatureStoreError

    config = load_config(args.repo)
    online = config.online_store
    if args.source is None and (online.type != "redis" or online.cluster):
        what = "a Redis Cluster already" if online.cluster else f"type {online.type!r}"
        raise ConfigError(
            f"online_store is {what}: move-to-cluster copies from a single Redis",
            hint="pass --from redis://HOST:PORT/DB to name the single Redis to copy from",
        )
    source_url = args.source or online.url
    source = RedisOnlineStore(config.project, source_url)
    target = None
    try:
        # Both ends are asked what they are before anything is copied.
        with source._guard("asking what it is"):
            is_cluster = bool(source.client.info("cluster").get("cluster_enabled"))
        if is_cluster:
            raise ConfigError(
                f"{source.address} is a Redis Cluster node: move-to-cluster copies from a single Redis",
                hint="pass --from the single Redis the online store is in now",
            )
        try:
            target = RedisClusterOnlineStore(config.project, args.to)
            target.ping()
        except FeatureStoreError as exc:
            raise ConfigError(
                f"--to {redact(args.to)}: {exc.message}",
                hint="pass --to the address of any node of a running Redis Cluster (every slot served)",
            ) from None
        print(f"copying project {config.project!r} from {source.address} to the cluster at {target.address} ...",
              file=sys.stderr)
        summary = move_to_cluster(source, target)
    finally:
        source.close()
        if target is not None:
            target.close()
    print(f"copied {summary.rows} rows and {summary.blobs} blobs; {summary.skipped} keys not copied "
          "(meta keys, push markers, stream-job state)")
    print(f"next: set online_store: {{type: redis, cluster: true, url: '{args.to}'}} in featurestore.yaml "
          "(or FEATURESTORE__ONLINE_STORE__CLUSTER=true and FEATURESTORE__ONLINE_STORE__URL) and restart "
          "the servers and jobs")
    return 0
