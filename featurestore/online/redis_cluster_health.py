"""What ``GET /health`` says about a Redis Cluster: every node asked, not only the one a PING
happens to reach.

A cluster answers PING while it cannot serve a third of its keys (a primary down before its
replica took over: ``cluster_state:fail``), so the check reads the cluster's own view
(``CLUSTER NODES`` from any node) and then asks every node itself (``PING`` and
``CLUSTER INFO``):

- **cannot serve** (``/health`` answers 503): a slot without a primary, a primary with slots that
  does not answer or is flagged ``fail``, a node that says ``cluster_state`` is not ``ok``;
- **serves with less redundancy** (``/health`` answers 200 with status ``degraded``): a replica
  that does not answer or is flagged failed, a primary with slots and no replica in sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis

from featurestore.online.redis_keys import HASH_SLOTS


def cluster_health(
    nodes: Mapping[str, Mapping[str, Any]], node_client: Callable[[str], redis.Redis]
) -> tuple[list[str], list[str]]:
    """``(fatal, warnings)`` sentences, given ``CLUSTER NODES`` as redis-py parses it (address ->
    ``flags``, ``node_id``, ``master_id``, ``slots``) and a client per node address."""
    fatal: list[str] = []
    warnings: list[str] = []
    covered = 0
    replicas: dict[str, int] = {}
    primaries: dict[str, str] = {}
    for address, node in sorted(nodes.items()):
        flags = set(str(node.get("flags", "")).split(","))
        if "noaddr" in flags or "handshake" in flags:
            continue
        primary = "master" in flags
        slots = _count(node.get("slots") or [])
        failed = "fail" in flags
        problem = _ask(node_client, address)
        if failed and problem is None:
            problem = "flagged failed by the cluster"
        if primary and slots:
            primaries[str(node.get("node_id"))] = address
            if problem is not None:
                fatal.append(f"primary {address} ({slots} slots) {problem}")
            else:
                covered += slots
        elif not primary:
            if problem is not None:
                warnings.append(f"replica {address} {problem}")
            else:
                master = str(node.get("master_id"))
                replicas[master] = replicas.get(master, 0) + 1
    if covered < HASH_SLOTS and not fatal:
        fatal.append(f"{HASH_SLOTS - covered} of {HASH_SLOTS} hash slots have no primary")
    for node_id, address in sorted(primaries.items(), key=lambda item: item[1]):
        if not replicas.get(node_id):
            warnings.append(f"primary {address} has no replica that answers")
    return fatal, warnings


def _ask(node_client: Callable[[str], redis.Redis], address: str) -> str | None:
    """None when the node answers PING and says the cluster is ok; else what is wrong."""
    try:
        client = node_client(address)
        client.ping()
        info = client.execute_command("CLUSTER INFO")
    except redis.RedisError as exc:
        return f"does not answer ({exc})"
    if isinstance(info, Mapping):  # redis-py parses the reply into a dict
        state = str(info.get("cluster_state", "?"))
    else:
        text = info.decode() if isinstance(info, bytes) else str(info)
        state = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("cluster_state:")), "?")
    return None if state == "ok" else f"says cluster_state:{state}"


def _count(ranges: list[Any]) -> int:
    total = 0
    for item in ranges:
        bounds = [int(x) for x in item] if isinstance(item, (list, tuple)) else [int(item)]
        total += bounds[-1] - bounds[0] + 1
    return total
