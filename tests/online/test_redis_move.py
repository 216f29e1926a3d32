"""The move from the single-Redis layout to the cluster layout (featurestore/online/redis_move.py):
every row with its expiry and every blob arrive, nothing newer on the cluster is overwritten."""

from __future__ import annotations

import time

import pytest

from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
from featurestore.online.redis_keys import bucket_of
from featurestore.online.redis_move import move_to_cluster
from featurestore.online.redis_store import RedisOnlineStore

pytestmark = pytest.mark.integration

NOW_US = time.time_ns() // 1000


def test_move_copies_rows_with_their_expiry_and_blobs(
    redis_store: RedisOnlineStore, cluster_store: RedisClusterOnlineStore
) -> None:
    users = [(b"%d" % i, NOW_US - i, i, b"u%d" % i) for i in range(3_000)]
    assert redis_store.write_latest("users", users) == 3_000
    assert redis_store.write_latest("items", [(b"a|b", NOW_US, 0, b"item")], ttl_seconds=3600) == 1
    redis_store.put_blobs("model.taste.v1", {b"\\meta": b"{}", b"42": b"state-old", b"43": b"state"})
    redis_store.client.set(f"{redis_store.project}:__push__:v:p1", b"marker")
    # A writer already switched over: the cluster holds a newer row and a newer state.
    cluster_store.write_latest("users", [(b"7", NOW_US + 1, 0, b"newer")])
    cluster_store.put_blobs("model.taste.v1", {b"42": b"state-new"})

    summary = move_to_cluster(redis_store, cluster_store)
    assert (summary.rows, summary.blobs) == (3_000 - 1 + 1, 2)  # users but "7", the item; 2 blobs
    # Not copied: newest:users and writes:users (the write's later scripts did not raise the
    # newest time), newest:items, the push marker.
    assert summary.skipped == 4
    got = cluster_store.read_latest([("users", u[0]) for u in users])
    assert got == [(NOW_US + 1, b"newer") if u[0] == b"7" else (u[1], u[3]) for u in users]
    assert cluster_store.read_latest([("items", b"a|b")]) == [(NOW_US, b"item")]
    key = cluster_store.row_prefixes("items")[bucket_of(b"a|b")] + b"a|b"
    expire = cluster_store.client.execute_command("PEXPIRETIME", key)
    assert expire == -(-(NOW_US + 3600 * 1_000_000) // 1000)
    assert cluster_store.get_blobs("model.taste.v1", [b"\\meta", b"42", b"43"]) == [b"{}", b"state-new", b"state"]
    assert cluster_store.newest_event_ts(["users", "items"]) == {"users": NOW_US + 1, "items": NOW_US}
    # Twice is harmless.
    again = move_to_cluster(redis_store, cluster_store)
    assert again.blobs == 0 and cluster_store.read_latest([("users", b"7")]) == [(NOW_US + 1, b"newer")]


def _repo(root, project: str, online: str):
    root.mkdir(parents=True, exist_ok=True)
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        f"online_store: {online}\n"
    )
    return root


def test_the_cli_moves_the_configured_redis_into_the_cluster(
    tmp_path, redis_url: str, redis_store: RedisOnlineStore, cluster_store: RedisClusterOnlineStore, capsys
) -> None:
    from featurestore.cli.main import main

    users = [(b"%d" % i, NOW_US - i, 0, b"u%d" % i) for i in range(500)]
    redis_store.write_latest("users", users)
    redis_store.put_blobs("model.taste.v1", {b"42": b"state"})
    repo = _repo(tmp_path / "repo", redis_store.project, f"{{type: redis, url: '{redis_url}'}}")
    code = main(["-r", str(repo), "online", "move-to-cluster", "--to", cluster_store.url])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "copied 500 rows and 1 blobs" in out and "cluster: true" in out
    assert cluster_store.read_latest([("users", u[0]) for u in users]) == [(u[1], u[3]) for u in users]
    assert cluster_store.get_blobs("model.taste.v1", [b"42"]) == [b"state"]


def test_the_cli_refuses_what_is_not_a_single_redis_to_a_cluster(
    tmp_path, redis_url: str, redis_cluster_url: str, unique_project: str, capsys
) -> None:
    from featurestore.cli.main import main

    embedded = _repo(tmp_path / "embedded", unique_project, "{type: embedded, path: data/online.db}")
    assert main(["-r", str(embedded), "online", "move-to-cluster", "--to", "redis://127.0.0.1:7000"]) == 1
    err = capsys.readouterr().err
    assert "online_store is type 'embedded'" in err and "hint: pass --from" in err
    single = _repo(tmp_path / "single", unique_project, f"{{type: redis, url: '{redis_url}'}}")
    # --to a single Redis: refused before anything is copied, the hint naming --to.
    assert main(["-r", str(single), "online", "move-to-cluster", "--to", redis_url]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: --to {redis_url}") and "hint: pass --to" in err
    # --from a cluster node (or a config that points at one): refused, nothing copied.
    cluster_node = redis_cluster_url
    assert main(["-r", str(single), "online", "move-to-cluster", "--from", cluster_node, "--to", cluster_node]) == 1
    assert "is a Redis Cluster node" in capsys.readouterr().err
