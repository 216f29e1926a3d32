"""The move from the single-Redis layout (layout 1) to the Redis Cluster layout (cluster layout 1).

The online store is derived data, so the plain move is to point ``online_store`` at the cluster
and let the stores refill it (docs/redis-cluster.md, "Moving to a cluster"). This copies instead,
for a switch without a gap: every row of the project, with its expiry, and every blob.

- Rows go through the cluster's newer-only script, so a row the cluster already holds in a newer
  version (a writer already switched over) is kept, and copying twice is harmless. The view's
  newest time and version follow from the rows written.
- Blobs are written only where the cluster has none (a compare-and-swap against "absent"): a
  model state a server already updated on the cluster is never overwritten by an older copy.
- Push markers (``__push__``: retries within a day) and the stream job's state (``__stream__``,
  which lives next to its stream and moves with it) are not copied; nor are the meta keys, which
  the rows rebuild.

    >>> move_to_cluster(RedisOnlineStore("demo", old_url), RedisClusterOnlineStore("demo", new_url))  # doctest: +SKIP
    MoveSummary(rows=120000, blobs=5012, skipped=3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from featurestore.online.redis_store import HEADER, HEADER_SIZE, _glob_escape

if TYPE_CHECKING:
    from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
    from featurestore.online.redis_store import RedisOnlineStore

_BATCH = 2_000
_SKIPPED = (b"__meta__", b"__push__", b"__stream__")


@dataclass(frozen=True)
class MoveSummary:
    rows: int  # rows written to the cluster (a row it held in a newer version is not counted)
    blobs: int  # blobs written (those the cluster already had are not)
    skipped: int  # keys not copied: meta keys, push markers, stream state


def move_to_cluster(source: RedisOnlineStore, target: RedisClusterOnlineStore) -> MoveSummary:
    """Copy every key of ``source.project`` from a single Redis into a Redis Cluster store."""
    if source.cluster or not target.cluster or source.project != target.project:
        raise ValueError("move_to_cluster copies a single-Redis store into a cluster store of the same project")
    prefix = source.project.encode() + b":"
    rows = blobs = skipped = 0
    pending: list[bytes] = []
    with source._guard("reading"):
        keys = source.client.scan_iter(match=_glob_escape(prefix) + b"*", count=1_000)
        for key in keys:
            kind = key[len(prefix) :].split(b":", 1)[0]
            if kind in _SKIPPED:
                skipped += 1
                continue
            pending.append(key)
            if len(pending) >= _BATCH:
                rows, blobs = _copy(source, target, prefix, pending, rows, blobs)
                pending = []
    if pending:
        rows, blobs = _copy(source, target, prefix, pending, rows, blobs)
    return MoveSummary(rows, blobs, skipped)


def _copy(
    source: RedisOnlineStore, target: RedisClusterOnlineStore, prefix: bytes, keys: list[bytes], rows: int, blobs: int
) -> tuple[int, int]:
    with source._guard("reading"):
        pipe = source.client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.execute_command("PEXPIRETIME", key)
        replies = pipe.execute()
    by_view: dict[str, tuple[list[tuple[bytes, int, int, bytes]], list[int]]] = {}
    plain: dict[str, list[tuple[bytes, int, int, bytes]]] = {}
    by_namespace: dict[str, dict[bytes, tuple[None, bytes]]] = {}
    for key, value, expire_at in zip(keys, replies[::2], replies[1::2]):
        if value is None:  # expired or deleted since the scan
            continue
        head, _, rest = key[len(prefix) :].partition(b":")
        if head == b"__blob__":
            namespace, _, blob_key = rest.partition(b":")
            by_namespace.setdefault(namespace.decode(), {})[blob_key] = (None, value)
            continue
        event_ts, created_ts = HEADER.unpack_from(value)
        row = (rest, event_ts, created_ts, value[HEADER_SIZE:])
        if expire_at is not None and int(expire_at) > 0:
            expiring = by_view.setdefault(head.decode(), ([], []))
            expiring[0].append(row)
            expiring[1].append(int(expire_at))
        else:
            plain.setdefault(head.decode(), []).append(row)
    for view, view_rows in plain.items():
        rows += target.write_latest(view, view_rows)
    for view, (view_rows, expiries) in by_view.items():
        rows += target.write_expiring(view, view_rows, expiries)
    for namespace, swaps in by_namespace.items():
        blobs += len(swaps) - len(target.compare_and_swap_blobs(namespace, swaps))
    return rows, blobs
