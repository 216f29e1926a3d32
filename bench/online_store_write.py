"""Online store throughput: encode + write_latest of 1,000,000 rows of 10 float32 features.

Each figure is printed next to a reference that does the least possible work for the same
bytes (raw executemany INSERT into an empty SQLite table; raw pipelined MSET to Redis), so the
cost of newer-only semantics is visible.

    PYTHONPATH=. python3 bench/online_store_write.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa

from featurestore.online.codec import ValueCodec, encode_entity_keys
from featurestore.online.embedded import EmbeddedOnlineStore
from featurestore.online.redis_store import RedisOnlineStore


def timed(label: str, fn, n: int, ref: float | None = None):
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    extra = f"   (reference {ref:6.2f} s, x{seconds / ref:4.1f})" if ref else ""
    print(f"{label:<44} {seconds:6.2f} s  {n / seconds / 1e3:8.0f}k rows/s{extra}")
    return out, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    n = parser.parse_args().rows
    rng = np.random.default_rng(0)
    ids = pa.array(np.arange(n, dtype=np.int64))
    features = [pa.array(rng.random(n, dtype=np.float32)) for _ in range(10)]
    codec = ValueCodec(["float32"] * 10)
    now = time.time_ns() // 1000
    print(f"{n:,} rows, 10 float32 features")

    keys, _ = timed("encode_entity_keys (int64)", lambda: encode_entity_keys(["int64"], [ids]), n)
    payloads, _ = timed("ValueCodec.encode_rows", lambda: codec.encode_rows(features), n)
    _, ref = timed(
        "  reference: one-row encode_row loop",
        lambda: [codec.encode_row(r) for r in zip(*(f.to_pylist() for f in features))][:0],
        n,
    )
    timed("ValueCodec.decode_many", lambda: codec.decode_many(payloads), n)
    rows, _ = timed(
        "build row tuples", lambda: list(zip(keys, [now] * n, [now] * n, payloads)), n
    )
    print(f"payload {len(payloads[0])} bytes, key e.g. {keys[12345]!r}")

    with tempfile.TemporaryDirectory() as tmp:
        conn = sqlite3.connect(Path(tmp) / "ref.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(
            "CREATE TABLE t (p TEXT, v TEXT, k BLOB, e INT, c INT, x BLOB, "
            "PRIMARY KEY (p, v, k)) WITHOUT ROWID"
        )

        def raw_sqlite() -> None:
            for s in range(0, n, 5000):
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO t VALUES ('demo', 'v', ?, ?, ?, ?)", rows[s:s + 5000]
                )
                conn.execute("COMMIT")

        _, ref = timed("reference: raw SQLite INSERT, empty table", raw_sqlite, n)
        store = EmbeddedOnlineStore("demo", Path(tmp) / "online.db")
        timed("embedded write_latest, empty", lambda: store.write_latest("v", rows), n, ref)
        timed("embedded write_latest, all keys exist", lambda: store.write_latest("v", rows), n, ref)
        sample = [("v", keys[i]) for i in rng.integers(0, n, 300)]
        start = time.perf_counter()
        for _ in range(200):
            store.read_latest(sample)
        print(f"embedded read_latest 300 keys: {(time.perf_counter() - start) / 200 * 1e3:.2f} ms")
        store.close()

    project = "bench" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(project, parser.parse_args().redis)
    client = store.client

    def raw_redis() -> None:
        prefix = f"{project}ref:v:".encode()
        for s in range(0, n, 5000):
            pipe = client.pipeline(transaction=False)
            flat = []
            for k, e, c, p in rows[s:s + 5000]:
                flat += (prefix + k, p)
            pipe.execute_command("MSET", *flat)
            pipe.execute()

    try:
        _, ref = timed("reference: raw pipelined MSET", raw_redis, n)
        timed("redis write_latest, empty", lambda: store.write_latest("v", rows), n, ref)
        timed("redis write_latest, all keys exist", lambda: store.write_latest("v", rows), n, ref)
        timed(
            "redis write_latest, ttl=1d",
            lambda: store.write_latest("w", rows, ttl_seconds=86400),
            n,
            ref,
        )
        sample = [("v", keys[i]) for i in rng.integers(0, n, 300)]
        start = time.perf_counter()
        for _ in range(200):
            store.read_latest(sample)
        print(f"redis read_latest 300 keys: {(time.perf_counter() - start) / 200 * 1e3:.2f} ms")
        info = client.info("memory")
        print(f"redis used_memory {info['used_memory_human']}")
    finally:
        for pattern in (f"{project}:*", f"{project}ref:*"):
            batch = []
            for key in client.scan_iter(match=pattern, count=10_000):
                batch.append(key)
                if len(batch) >= 10_000:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
        store.close()


if __name__ == "__main__":
    main()
