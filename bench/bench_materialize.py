"""Benchmark: batch materialization of N source rows into Redis and the embedded store, next to
a reference that writes the same rows with a plain pyarrow read and a redis-py pipeline.

    python bench/bench_materialize.py                 # 1M and 4M rows, 100k entities
    python bench/bench_materialize.py --quick         # 100k rows, 10k entities
    python bench/bench_materialize.py --rows 1000000 --days 30   # one size

By default the events span 30 days, and 4M rows are also run over 120 days: the offline store is
written one UTC day (partition) at a time, so peak memory follows the largest day, not the
number of rows; the 120-day run has 1M's rows per day and shows that.

Every case runs in its own subprocess so its peak memory (ru_maxrss) is its own. The figures
are wall-clock rows per second over the whole job (pipeline start-up included) and peak RSS.
The featurestore job does more than the reference: it validates and casts every row, keeps
the full history in the offline store (Parquet), and writes only the latest row per entity
online, newer-only; the reference writes every row with SET, blindly.

Generated data is cached under bench/out/ (gitignored). Needs Redis at $BENCH_REDIS_URL
(default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
FEATURES = 10
FILE_ROWS = 500_000
BATCH_ROWS = 65_536


# -- data ------------------------------------------------------------------------------------------


def source_dir(rows: int, entities: int, days: int) -> Path:
    """Parquet files of ``rows`` rows over ``days`` days (cached): entity_id, event_ts,
    created_ts, f0..f9."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = OUT / f"source-{rows}-{entities}-{days}d"
    if (directory / "_done").exists():
        return directory
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rng = np.random.default_rng(42)
    start_us = 1_767_225_600_000_000  # 2026-01-01
    for part, offset in enumerate(range(0, rows, FILE_ROWS)):
        n = min(FILE_ROWS, rows - offset)
        ts = np.sort(rng.integers(start_us, start_us + days * 86_400_000_000, n))
        columns = {
            "entity_id": pa.array(rng.integers(0, entities, n), pa.int64()),
            "event_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
            "created_ts": pa.array(ts, pa.timestamp("us", tz="UTC")),
        }
        for i in range(FEATURES):
            columns[f"f{i}"] = pa.array(rng.random(n), pa.float64())
        pq.write_table(
            pa.table(columns), directory / f"part-{part:04d}.parquet", row_group_size=BATCH_ROWS
        )
    (directory / "_done").touch()
    return directory


def make_repo(case: str, rows: int, entities: int, days: int, project: str) -> Path:
    repo = OUT / f"repo-{case}-{rows}"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "features").mkdir(parents=True)
    online = (
        f"{{type: redis, url: '{REDIS_URL}'}}"
        if case == "redis"
        else "{type: embedded, path: data/online.db}"
    )
    (repo / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        f"offline_store: {{path: data/offline}}\nonline_store: {online}\n"
        f"materialization: {{batch_rows: {BATCH_ROWS}}}\n"
    )
    features = "\n".join(f"      - {{name: f{i}, dtype: float64}}" for i in range(FEATURES))
    (repo / "features" / "defs.yaml").write_text(
        "entities:\n  - name: entity\n    join_keys: [{name: entity_id, dtype: int64}]\n"
        "sources:\n  - name: events\n    type: parquet\n"
        f"    path: {source_dir(rows, entities, days)}/*.parquet\n"
        "    timestamp_field: event_ts\n    created_timestamp_field: created_ts\n"
        "feature_views:\n  - name: stats\n    entities: [entity]\n    source: events\n    ttl: 0\n"
        f"    features:\n{features}\n"
    )
    (repo / "data").mkdir()
    return repo


def drop_redis_project(project: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{project}:*", count=10_000))
    for i in range(0, len(keys), 10_000):
        client.unlink(*keys[i : i + 10_000])


# -- cases (each runs in its own process) ----------------------------------------------------------


def case_featurestore(backend: str, rows: int, entities: int, days: int) -> dict[str, object]:
    sys.path.insert(0, str(ROOT))
    from featurestore.store import FeatureStore
    from materializers.batch import materialize

    project = "bench" + uuid.uuid4().hex[:8]
    repo = make_repo(backend, rows, entities, days, project)
    store = FeatureStore(repo)
    store.apply()
    started = time.perf_counter()
    [summary] = materialize(store, progress=False)
    seconds = time.perf_counter() - started
    store.close()
    if backend == "redis":
        drop_redis_project(project)
    shutil.rmtree(repo, ignore_errors=True)
    return {
        "rows": summary.rows_read,
        "seconds": seconds,
        "online_rows": summary.rows_online,
        "offline_rows": summary.rows_offline,
    }


def case_reference(rows: int, entities: int, days: int) -> dict[str, object]:
    """pyarrow batches -> one SET per row (key: entity id, value: the packed features)."""
    import numpy as np
    import pyarrow.parquet as pq
    import redis

    directory = source_dir(rows, entities, days)
    project = "benchref" + uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(REDIS_URL)
    started = time.perf_counter()
    written = 0
    for path in sorted(directory.glob("*.parquet")):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            ids = batch.column(0).to_pylist()
            values = np.column_stack(
                [batch.column(3 + i).to_numpy() for i in range(FEATURES)]
            ).astype("<f8")
            payloads = values.view(f"V{8 * FEATURES}").ravel().tolist()
            pipe = client.pipeline(transaction=False)
            for start in range(0, len(ids), 10_000):
                for key, payload in zip(
                    ids[start : start + 10_000], payloads[start : start + 10_000]
                ):
                    pipe.set(f"{project}:stats:{key}", payload)
                pipe.execute()
            written += len(ids)
    seconds = time.perf_counter() - started
    drop_redis_project(project)
    return {"rows": written, "seconds": seconds, "online_rows": written, "offline_rows": 0}


def run_case(case: str, rows: int, entities: int, days: int) -> dict[str, object]:
    """Run one case in a fresh interpreter; returns its figures and peak RSS."""
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--case",
            case,
            "--rows",
            str(rows),
            "--entities",
            str(entities),
            "--days",
            str(days),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="100k rows, 10k entities")
    parser.add_argument("--rows", type=int, help="source rows (one size)")
    parser.add_argument("--days", type=int, default=30, help="days the events span (with --rows)")
    parser.add_argument("--entities", type=int, default=None)
    parser.add_argument(
        "--case", choices=["redis", "embedded", "reference"], help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.case:
        entities = args.entities or 100_000
        if args.case == "reference":
            result = case_reference(args.rows, entities, args.days)
        else:
            result = case_featurestore(args.case, args.rows, entities, args.days)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    if args.rows:
        sizes = [(args.rows, args.days)]
    elif args.quick:
        sizes = [(100_000, 30)]
    else:
        sizes = [(1_000_000, 30), (4_000_000, 30), (4_000_000, 120)]
    entities = args.entities or (10_000 if args.quick else 100_000)
    OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"{FEATURES} float64 features, {entities:,} entities, batches of {BATCH_ROWS:,} rows, "
        f"{os.cpu_count()} CPUs; rows/s = source rows / wall time of the whole job"
    )
    print(
        f"{'case':34} {'rows':>10} {'days':>5} {'rows/day':>9} {'seconds':>8} {'rows/s':>10} "
        f"{'vs ref':>7} {'peak RSS':>9}  rows written online"
    )
    for rows, days in sizes:
        source_dir(rows, entities, days)
        reference = run_case("reference", rows, entities, days)
        ref_rate = reference["rows"] / reference["seconds"]
        cases = [
            ("reference: pyarrow + redis-py SET", reference),
            ("featurestore -> redis", run_case("redis", rows, entities, days)),
            ("featurestore -> embedded (SQLite)", run_case("embedded", rows, entities, days)),
        ]
        for label, r in cases:
            rate = r["rows"] / r["seconds"]
            print(
                f"{label:34} {r['rows']:>10,} {days:>5} {rows // days:>9,} {r['seconds']:>8.1f} "
                f"{rate:>10,.0f} {rate / ref_rate:>6.2f}x {r['peak_rss_mb']:>6.0f} MB  {r['online_rows']:,}",
                flush=True,
            )


if __name__ == "__main__":
    main()
