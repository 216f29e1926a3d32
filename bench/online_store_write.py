"""Online store throughput: ``write_latest`` beside raw SQLite ``executemany`` and raw Redis MSET.

Issue 19's row is the write a materialization of 1,000,000 rows (100,000 entities, 10 float64
features) makes: the 100,000 latest rows, one ``write_latest`` call per key bucket of the batch
job's combine (16), against raw sqlite3 ``executemany`` of the same encoded rows in one WAL
transaction (``synchronous=NORMAL``, into the same tables; ``INSERT OR REPLACE``, the least work
that leaves one row per key). Two more cases: all 1,000,000 rows (10 event times per entity,
shuffled) in the ``OnlineWriter``'s 50,000-row calls, and the 100,000 rows again over a file
already holding them (a re-run).

Each measurement runs in its own process, so its peak memory is its own; ours and the reference
alternate round by round and the ratio is the median of the per-round ratios (2 shared cores:
absolute times alone prove nothing). CPU is the process's user + system time over the write,
peak RSS its high-water mark during the write (reset after the input is built), input included.

    python3 bench/online_store_write.py [--rounds 3] [--quick] [--issue19] [--no-redis]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench._common import goal_line, median_ratio, round_ratios
from featurestore.online.codec import ValueCodec, encode_entity_keys
from featurestore.online.embedded import MIGRATIONS, EmbeddedOnlineStore

PROJECT, VIEW = "demo", "v"
FEATURES = 10
#: Rows per ``write_latest`` call in the batch job (``materializers.online_write.OnlineWriter``).
WRITER_CHUNK = 50_000
#: Key buckets of the batch job's combine (``WriteOnline(buckets=16)``): one call each.
BUCKETS = 16
GOAL = 1.5
CASES = {
    # name: (entities, rows per entity, label)
    "1m": (100_000, 10, "1M rows, 100k entities x 10 float64"),
    "latest": (100_000, 1, "100k latest rows, empty file"),
    "rerun": (100_000, 1, "100k latest rows again (all stored)"),
}


# -- one measurement, in a child process --------------------------------------------------------


def make_rows(entities: int, versions: int, seed: int = 0) -> list[tuple[bytes, int, int, bytes]]:
    """``entities * versions`` encoded rows, the versions of an entity shuffled among the rest."""
    rng = np.random.default_rng(seed)
    n = entities * versions
    ids = np.tile(np.arange(entities, dtype=np.int64), versions)[rng.permutation(n)]
    base = 1_780_000_000_000_000
    event_ts = base + rng.integers(0, 30 * 86_400_000_000, n)
    created_ts = event_ts + rng.integers(0, 3_600_000_000, n)
    codec = ValueCodec(["float64"] * FEATURES, [f"f{i}" for i in range(FEATURES)])
    payloads = codec.encode_rows([pa.array(rng.random(n)) for _ in range(FEATURES)])
    keys = encode_entity_keys(["int64"], [pa.array(ids)])
    return list(zip(keys, event_ts.tolist(), created_ts.tolist(), payloads))


def batches(case: str, rows: list) -> list[list]:
    """The calls the batch job would make: 50k-row chunks, or one call per key bucket."""
    if case == "1m":
        return [rows[s : s + WRITER_CHUNK] for s in range(0, len(rows), WRITER_CHUNK)]
    buckets: list[list] = [[] for _ in range(BUCKETS)]
    for row in rows:
        buckets[zlib.crc32(row[0]) % BUCKETS].append(row)
    return [b for b in buckets if b]


def ours(path: Path, calls: list[list]) -> int:
    store = EmbeddedOnlineStore(PROJECT, path)
    try:
        return sum(store.write_latest(VIEW, rows) for rows in calls)
    finally:
        store.close()


def raw_sqlite(path: Path, calls: list[list]) -> int:
    """The least work for the same bytes: one WAL transaction, one ``executemany``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'latest'").fetchone():
            for statement in (s for step in MIGRATIONS for s in step):
                conn.execute(statement)
        conn.execute("BEGIN")
        cursor = conn.executemany(
            f"INSERT OR REPLACE INTO latest VALUES ('{PROJECT}', '{VIEW}', ?, ?, ?, ?)",
            (row for rows in calls for row in rows),
        )
        conn.execute("COMMIT")
        return cursor.rowcount
    finally:
        conn.close()


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def child(case: str, side: str) -> dict[str, Any]:
    entities, versions, _ = CASES[case]
    calls = batches(case, make_rows(entities, versions))
    write = ours if side == "ours" else raw_sqlite
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "online.db"
        if case == "rerun":
            write(path, calls)
        try:  # reset the high-water mark: the peak below is the write's, not the input's
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
        rss_before = _status_kb("VmRSS:") / 1024
        cpu, wall = time.process_time(), time.perf_counter()
        written = write(path, calls)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        peak = _status_kb("VmHWM:") / 1024
        with sqlite3.connect(path) as conn:
            stored = conn.execute("SELECT count(*) FROM latest").fetchone()[0]
    if stored != entities:
        raise SystemExit(f"{side} {case}: {stored} rows stored, expected {entities}")
    return {"wall": wall, "cpu": cpu, "peak_mb": peak, "input_mb": rss_before, "written": written}


def run_child(case: str, side: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", case, side],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{side} {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the comparison -----------------------------------------------------------------------------


def compare(case: str, rounds: int) -> tuple[dict[str, list[dict]], float]:
    samples: dict[str, list[dict]] = {"ours": [], "ref": []}
    for r in range(rounds):
        for side in ("ours", "ref") if r % 2 == 0 else ("ref", "ours"):
            samples[side].append(run_child(case, side))
    ours_s = [s["wall"] for s in samples["ours"]]
    ref_s = [s["wall"] for s in samples["ref"]]
    ratio = median_ratio(ours_s, ref_s)
    label = CASES[case][2]
    print(f"{label}: write_latest vs raw executemany, one WAL transaction")
    for key, unit, name in (
        ("wall", "s", "wall"),
        ("cpu", "s", "CPU"),
        ("peak_mb", "MB", "peak RSS"),
    ):
        o = float(np.median([s[key] for s in samples["ours"]]))
        f = float(np.median([s[key] for s in samples["ref"]]))
        print(f"  {name:9} ours {o:8.2f} {unit:2}  ref {f:8.2f} {unit:2}  ratio {o / f:5.2f}")
    print(
        f"  wall ratio, median of rounds {ratio:.2f} {round_ratios(ours_s, ref_s)}; "
        f"input {samples['ours'][0]['input_mb']:.0f} MB; rows written ours "
        f"{samples['ours'][0]['written']:,} ref {samples['ref'][0]['written']:,}"
    )
    return samples, ratio


def redis_section(url: str, n: int) -> None:
    """``write_latest`` to Redis of ``n`` distinct keys beside raw pipelined MSET."""
    from featurestore.online.redis_store import RedisOnlineStore

    rows = make_rows(n, 1)

    def timed(label: str, fn, ref: float | None = None) -> float:
        start = time.perf_counter()
        fn()
        seconds = time.perf_counter() - start
        extra = f"   (reference {ref:6.2f} s, x{seconds / ref:4.1f})" if ref else ""
        print(f"  {label:<40} {seconds:6.2f} s  {n / seconds / 1e3:8.0f}k rows/s{extra}")
        return seconds

    project = "bench" + uuid.uuid4().hex[:8]
    store = RedisOnlineStore(project, url)
    client = store.client

    def raw_redis() -> None:
        prefix = f"{project}ref:v:".encode()
        for s in range(0, n, 5000):
            flat: list[bytes] = []
            for k, _, _, p in rows[s : s + 5000]:
                flat += (prefix + k, p)
            client.execute_command("MSET", *flat)

    print(f"redis: {n:,} distinct keys, 10 float64 features")
    try:
        ref = timed("reference: raw pipelined MSET", raw_redis)
        timed("redis write_latest, empty", lambda: store.write_latest("v", rows), ref)
        timed("redis write_latest, all keys exist", lambda: store.write_latest("v", rows), ref)
        # A TTL that keeps every row (the rows' event times lie in 2026-06): Redis expires each key.
        ttl = 2 * 365 * 86_400
        timed("redis write_latest, ttl=2y", lambda: store.write_latest("w", rows, ttl), ref)
    finally:
        for pattern in (f"{project}:*", f"{project}ref:*"):
            batch: list[bytes] = []
            for key in client.scan_iter(match=pattern, count=10_000):
                batch.append(key)
                if len(batch) >= 10_000:
                    client.unlink(*batch)
                    batch = []
            if batch:
                client.unlink(*batch)
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 round, no re-run case, no Redis")
    parser.add_argument(
        "--issue19", action="store_true", help="no re-run case, no Redis; the GOAL| row"
    )
    parser.add_argument("--no-redis", action="store_true", help="skip the Redis section")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.quick:
        args.rounds = 1
    short = args.quick or args.issue19
    results = {case: compare(case, args.rounds) for case in CASES if case != "rerun" or not short}
    if not short and not args.no_redis:
        redis_section(args.redis, 1_000_000)
    if args.issue19:
        # The row is the write the batch job makes: the 100k latest rows of the 1M, in buckets.
        samples, ratio = results["latest"]

        def figure(side: str) -> str:
            med = {
                k: float(np.median([s[k] for s in samples[side]]))
                for k in ("wall", "cpu", "peak_mb")
            }
            return f"{med['wall']:.2f} s, {med['cpu']:.2f} s CPU, {med['peak_mb']:.0f} MB"

        print(
            goal_line(
                "materialize 1M rows, 100k entities x 10 float64 -> embedded write_latest "
                f"of the 100k latest rows in {BUCKETS} bucket calls",
                f"raw sqlite3 executemany, one WAL transaction: {figure('ref')}",
                figure("ours"),
                ratio,
                f"wall <= {GOAL}x",
                ratio <= GOAL,
            )
        )


if __name__ == "__main__":
    main()
