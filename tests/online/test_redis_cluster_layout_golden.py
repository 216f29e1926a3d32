"""Golden test of the Redis Cluster layout (docs/redis-cluster.md): keys and values byte for
byte, read back with plain redis-py, and the bucket tag table.

Other programs read these keys (a JVM serving path computes the bucket of an entity key), so the
layout is a contract, versioned by ``redis_keys.CLUSTER_LAYOUT_VERSION``. If this test fails, the
layout changed: bump the version, write the move from the old layout, update the doc; do not
edit the bytes. The values are those of the single-Redis layout (test_redis_layout_golden.py).
"""

from __future__ import annotations

from binascii import crc_hqx

import pytest

from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.online.redis_cluster_store import RedisClusterOnlineStore
from featurestore.online.redis_keys import (
    BUCKET_SLOTS,
    BUCKET_TAGS,
    CLUSTER_LAYOUT_VERSION,
    bucket_of,
    cluster_stream_prefix,
    key_slot,
    stream_slot_prefix,
)
from tests.online.test_redis_layout_golden import (
    CREATED_TS,
    EVENT_TS,
    FEATURES,
    GOLDEN_NEWEST,
    GOLDEN_VALUE,
    NAMES,
)

# The 64 tags, in bucket order: the first "{i}.{n}" whose slot is in [256 i, 256 i + 256).
GOLDEN_TAGS = (
    "0.178 1.2 2.303 3.63 4.40 5.69 6.11 7.38 8.53 9.8 10.59 11.3 12.31 13.18 14.132 15.303 16.12 17.139 "
    "18.10 19.8 20.322 21.73 22.159 23.22 24.78 25.51 26.29 27.100 28.12 29.171 30.58 31.71 32.149 33.63 "
    "34.79 35.50 36.11 37.8 38.13 39.121 40.51 41.78 42.152 43.29 44.0 45.23 46.343 47.72 48.18 49.31 "
    "50.52 51.313 52.139 53.13 54.333 55.20 56.18 57.31 58.140 59.33 60.50 61.79 62.100 63.28"
)


def test_the_bucket_tags_are_pinned_and_spread_evenly_over_the_slots() -> None:
    assert CLUSTER_LAYOUT_VERSION == 1
    assert b" ".join(tag[1:-1] for tag in BUCKET_TAGS).decode() == GOLDEN_TAGS
    assert [slot // 256 for slot in BUCKET_SLOTS] == list(range(64))
    # Three primaries with the even ranges `redis-cli --cluster create` gives hold 21 or 22 each.
    shares = [sum(lo <= s <= hi for s in BUCKET_SLOTS) for lo, hi in ((0, 5460), (5461, 10922), (10923, 16383))]
    assert sorted(shares) == [21, 21, 22]
    # The bucket is CRC16/XMODEM of the entity key modulo 64.
    assert [bucket_of(k) for k in (b"42", b"43", b"1001|a\\|b", b"")] == [0, 33, 40, 0]
    assert all(bucket_of(b"%d" % i) == crc_hqx(b"%d" % i, 0) % 64 for i in range(10_000))


def test_stream_side_keys_share_their_streams_slot() -> None:
    assert stream_slot_prefix("clicks") == "{clicks}:"
    assert stream_slot_prefix("{eu}clicks") == "{eu}:"
    assert cluster_stream_prefix("demo", "user_agg", "clicks") == "{clicks}:demo:__stream__:user_agg:"
    for stream in ("clicks", "{eu}clicks", "a{b", "x.y:z"):
        assert key_slot((stream_slot_prefix(stream) + "demo:__push__:v:id").encode()) == key_slot(stream.encode())
    with pytest.raises(Exception, match="cannot be used on Redis Cluster"):
        stream_slot_prefix("a}b")


@pytest.mark.integration
def test_cluster_key_and_value_bytes(cluster_store: RedisClusterOnlineStore) -> None:
    project = cluster_store.project.encode()
    key = encode_entity_key(["int64", "string"], [1001, "a|b"])
    payload = ValueCodec(FEATURES, NAMES).encode_row([0.5, 3, "fr", [1.0, -2.0], None])
    assert cluster_store.write_latest("driver_stats", [(key, EVENT_TS, CREATED_TS, payload)]) == 1

    client = cluster_store.client
    row = project + b":driver_stats:{40.51}:1001|a\\|b"
    newest = project + b":__meta__:{40.51}:newest:driver_stats"
    writes = project + b":__meta__:{40.51}:writes:driver_stats"
    assert sorted(client.scan_iter(match=project + b":*")) == sorted([row, newest, writes])
    assert len({key_slot(k) for k in (row, newest, writes)}) == 1
    assert client.get(row) == GOLDEN_VALUE
    assert client.get(newest) == GOLDEN_NEWEST
    assert client.get(writes) == b"1"  # every winning script counts on a cluster
    cluster_store.write_latest("driver_stats", [(key, EVENT_TS, CREATED_TS, payload)], ttl_seconds=10**9)
    assert client.get(row) == GOLDEN_VALUE
    assert client.get(writes) == b"2"


@pytest.mark.integration
def test_cluster_blob_key_bytes(cluster_store: RedisClusterOnlineStore) -> None:
    project = cluster_store.project.encode()
    cluster_store.put_blobs("model_state/ctr", {b"user:42": b"\x01\x02"})
    key = project + b":__blob__:{8.53}:model_state/ctr:user:42"
    assert list(cluster_store.client.scan_iter(match=project + b":*")) == [key]
    assert cluster_store.client.get(key) == b"\x01\x02"
