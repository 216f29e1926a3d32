"""Golden test of the Redis layout: keys and values byte for byte, read back with plain redis-py.

Other programs (a JVM serving path, a debugging session in redis-cli) read these keys, so the
layout is a contract; docs/online-store.md shows the same bytes as its worked example. If this
test fails, the layout changed: bump the format byte and update the docs, do not edit the bytes.
"""

from __future__ import annotations

import pytest

from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.online.redis_store import RedisOnlineStore

pytestmark = pytest.mark.integration

EVENT_TS = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z in microseconds
CREATED_TS = EVENT_TS + 1
FEATURES = ["float32", "int64", "string", "float32[2]", "bool"]
NAMES = ["ctr", "clicks", "country", "emb", "active"]

GOLDEN_KEY_TAIL = b":driver_stats:1001|a\\|b"
GOLDEN_VALUE = bytes.fromhex(
    "00401e18240a0600"  # event_ts_us, int64 little-endian
    "01401e18240a0600"  # created_ts_us
    "02"  # format 2
    "cf3b3d0a"  # layout id of (ctr float32, clicks int64, country string, emb float32[2], active bool)
    "10"  # null bitmap: feature 4 (active) is null
    "0000003f"  # ctr = 0.5 (float32)
    "0300000000000000"  # clicks = 3 (int64)
    "02000000"  # country: 2 bytes of data in the tail (uint32)
    "0000803f000000c0"  # emb = [1.0, -2.0] (float32[2])
    "00"  # active: null, zero-filled
    "6672"  # tail: "fr"
)
GOLDEN_NEWEST = bytes.fromhex("00401e18240a0600")


def test_redis_key_and_value_bytes(redis_store: RedisOnlineStore) -> None:
    project = redis_store.project.encode()
    key = encode_entity_key(["int64", "string"], [1001, "a|b"])
    payload = ValueCodec(FEATURES, NAMES).encode_row([0.5, 3, "fr", [1.0, -2.0], None])
    assert redis_store.write_latest("driver_stats", [(key, EVENT_TS, CREATED_TS, payload)]) == 1

    client = redis_store.client
    assert sorted(client.keys(project + b":*")) == [
        project + b":__meta__:newest:driver_stats",
        project + GOLDEN_KEY_TAIL,
    ]
    assert client.get(project + GOLDEN_KEY_TAIL) == GOLDEN_VALUE
    assert client.get(project + b":__meta__:newest:driver_stats") == GOLDEN_NEWEST
    # The same bytes are written when the row has a TTL.
    redis_store.write_latest(
        "driver_stats", [(key, EVENT_TS, CREATED_TS, payload)], ttl_seconds=10**9
    )
    assert client.get(project + GOLDEN_KEY_TAIL) == GOLDEN_VALUE


def test_redis_blob_key_bytes(redis_store: RedisOnlineStore) -> None:
    project = redis_store.project.encode()
    redis_store.put_blobs("model_state/ctr", {b"user:42": b"\x01\x02"})
    assert redis_store.client.keys(project + b":*") == [
        project + b":__blob__:model_state/ctr:user:42"
    ]
    assert redis_store.client.get(project + b":__blob__:model_state/ctr:user:42") == b"\x01\x02"
