"""Benchmark (issue 16): online reads from a 6-node Redis Cluster (3 primaries + 3 replicas),
beside the reference, one Redis, in the same run.

    python3 bench/bench_cluster.py                # 100,000 entities, 3 rounds, SDK + HTTP
    python3 bench/bench_cluster.py --quick        # 10,000 entities, 1 round, shorter
    python3 bench/bench_cluster.py --no-http      # SDK only
    python3 bench/bench_cluster.py --cluster-url redis://127.0.0.1:7000 --redis-url redis://127.0.0.1:6379/0

The data of bench_online.py (10 float32 features in 2 views, one row per entity and view),
loaded through the store into each backend (docs/redis-cluster.md: 64 bucket tags per view).

* SDK: `get_online_features` of 1 and of 100 random entities per call, warm, p50/p99 of the
  call's wall time and its CPU time per call; each (backend, batch) case runs in its own
  subprocess, so its peak memory (ru_maxrss) is its own.
* HTTP: `featurestore serve` (uvicorn, 1 worker) under `wrk -t2 -c32` from a second process,
  POST /features of 1 entity: requests/s, p50/p99, the server's CPU per request and its peak
  memory (VmHWM of the server's processes).

The two backends alternate round by round (single, cluster, single, ...); each ratio is cluster
/ single per round, then the median over rounds. Both run on this machine's loopback: the
cluster's six nodes share its 2 cores with the client, so this measures the client's cost of a
cluster (slot routing, one MGET per slot, one pipeline per primary), not a cluster's capacity.
Needs Redis at --redis-url and a cluster at --cluster-url (.ci/redis_cluster.sh starts one).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import (
    OUT,
    delete_cluster_project,
    delete_redis_project,
    median_ratio,
    round_ratios,
    run_wrk,
    summary_ms,
    tree_cpu_seconds,
    tree_peak_rss_mb,
)
from bench.bench_online import DEFS, FEATURES, LUA, REFS, VIEWS, free_port, wait_up

BACKENDS = ("single", "cluster")
LABELS = {"single": "reference: one Redis", "cluster": "Redis Cluster, 3+3 nodes"}
PROJECT = {"single": "bench_single", "cluster": "bench_cluster"}


def repo_dir(backend: str) -> Path:
    return OUT / f"cluster_bench_{backend}"


def online_config(backend: str, args: argparse.Namespace) -> str:
    if backend == "single":
        return f"{{type: redis, url: '{args.redis_url}'}}"
    return f"{{type: redis, url: '{args.cluster_url}', cluster: true}}"


def drop(backend: str, args: argparse.Namespace) -> None:
    if backend == "single":
        delete_redis_project(args.redis_url, PROJECT[backend])
    else:
        delete_cluster_project(args.cluster_url, PROJECT[backend])


def build(backend: str, args: argparse.Namespace) -> float:
    """The repository and its online rows; returns the seconds the load took."""
    import numpy as np
    import pyarrow as pa

    from featurestore import FeatureStore
    from featurestore.online.codec import ValueCodec, encode_entity_keys

    root = repo_dir(backend)
    shutil.rmtree(root, ignore_errors=True)
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS)
    (root / "featurestore.yaml").write_text(
        f"project: {PROJECT[backend]}\nonline_store: {online_config(backend, args)}\n"
    )
    drop(backend, args)
    store = FeatureStore(root)
    store.apply()
    entities = args.entities
    keys = encode_entity_keys(["int64"], [pa.array(np.arange(1, entities + 1), pa.int64())])
    codec = ValueCodec(["float32"] * FEATURES)
    rng = np.random.default_rng(0)
    now = time.time_ns() // 1000
    started = time.perf_counter()
    for view in VIEWS:
        columns = [pa.array(rng.random(entities, dtype=np.float32)) for _ in range(FEATURES)]
        payloads = codec.encode_rows(columns)
        for start in range(0, entities, 20_000):
            stop = min(entities, start + 20_000)
            store.online_store.write_latest(
                view, [(keys[i], now, now, payloads[i]) for i in range(start, stop)]
            )
    seconds = time.perf_counter() - started
    # Every value is there, through the SDK.
    got = store.get_online_features(REFS, [{"user_id": 1}, {"user_id": entities}])
    assert all(s == "present" for st in got.statuses.values() for s in st), got.statuses
    store.close()
    return seconds


# -- SDK, one case per process -------------------------------------------------------------------


def sdk_case(backend: str, batch: int, calls: int, entities: int) -> dict[str, float]:
    from featurestore import FeatureStore

    store = FeatureStore(repo_dir(backend))
    rng = random.Random(1)
    for _ in range(50):  # warm: plan compiled, connections and the slot map open
        store.get_online_features(
            REFS, [{"user_id": rng.randint(1, entities)} for _ in range(batch)]
        )
    samples = []
    cpu0 = time.process_time()
    for _ in range(calls):
        rows = [{"user_id": rng.randint(1, entities)} for _ in range(batch)]
        t0 = time.perf_counter_ns()
        store.get_online_features(REFS, rows)
        samples.append(time.perf_counter_ns() - t0)
    cpu_ms = (time.process_time() - cpu0) * 1000 / calls
    store.close()
    return {
        **summary_ms(samples),
        "cpu_ms": cpu_ms,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_sdk(backend: str, batch: int, calls: int, entities: int) -> dict[str, float]:
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--sdk-case",
            backend,
            "--batch",
            str(batch),
            "--calls",
            str(calls),
            "--entities",
            str(entities),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"SDK case {backend} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- HTTP ----------------------------------------------------------------------------------------


def run_http(backend: str, script: Path, seconds: int) -> dict[str, float]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurestore.cli.main",
            "-r",
            str(repo_dir(backend)),
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_up(port)
        time.sleep(1.0)
        run_wrk(port, script, 2, connections=32, threads=2)  # warm up
        cpu0 = tree_cpu_seconds(server.pid)
        result = run_wrk(port, script, seconds, connections=32, threads=2)
        cpu = tree_cpu_seconds(server.pid) - cpu0
        result["cpu_us"] = cpu / (result["rps"] * seconds) * 1e6
        result["peak_mb"] = tree_peak_rss_mb(server.pid)
        return result
    finally:
        server.terminate()
        server.wait(10)


# -- report --------------------------------------------------------------------------------------


def report(title: str, results: dict[str, list[dict]], fields: list[tuple[str, str, str]]) -> None:
    print(f" {title}")
    for key, label, unit in fields:
        ref = [r[key] for r in results["single"]]
        ours = [r[key] for r in results["cluster"]]
        print(
            f"  {label:22} cluster {statistics.median(ours):10.3f} {unit:7} single "
            f"{statistics.median(ref):10.3f} {unit:7} ratio {median_ratio(ours, ref):5.2f} "
            f"{round_ratios(ours, ref)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 entities, 1 round")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument(
        "--redis-url", default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--cluster-url",
        default=os.environ.get("FEATURESTORE_TEST_REDIS_CLUSTER_URL", "redis://127.0.0.1:7000"),
    )
    parser.add_argument("--sdk-case", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=1000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.sdk_case:
        print(json.dumps(sdk_case(args.sdk_case, args.batch, args.calls, args.entities)))
        return
    if args.quick:
        args.entities, args.rounds = 10_000, 1
    calls = {1: 500 if args.quick else 3000, 100: 200 if args.quick else 1000}
    seconds = 3 if args.quick else 8
    OUT.mkdir(parents=True, exist_ok=True)
    print(
        f"online reads: {args.entities:,} entities, {len(REFS)} float32 features in {len(VIEWS)} "
        f"views; one Redis {args.redis_url} vs a Redis Cluster at {args.cluster_url}; "
        f"{args.rounds} round(s), backends interleaved; {os.cpu_count()} CPUs"
    )
    for backend in BACKENDS:
        print(
            f"[{backend}] loaded {args.entities * len(VIEWS):,} rows in {build(backend, args):.1f} s"
        )
    try:
        for batch in (1, 100):
            results: dict[str, list[dict]] = {b: [] for b in BACKENDS}
            for _ in range(args.rounds):
                for backend in BACKENDS:
                    results[backend].append(run_sdk(backend, batch, calls[batch], args.entities))
            noun = "entity" if batch == 1 else "entities"
            report(
                f"SDK get_online_features, {batch} {noun}/call, {calls[batch]} calls per round; "
                "ratio = cluster / single",
                results,
                [
                    ("p50", "p50", "ms"),
                    ("p99", "p99", "ms"),
                    ("cpu_ms", "cpu per call", "ms"),
                    ("peak_mb", "peak memory", "MB"),
                ],
            )
        if args.no_http:
            return
        if shutil.which("wrk") is None:
            print(" (HTTP skipped: wrk is not installed; `apt-get install wrk`)")
            return
        script = OUT / "cluster_features.lua"
        script.write_text(LUA % (args.entities, ", ".join(f'"{r}"' for r in REFS)))
        results = {b: [] for b in BACKENDS}
        for _ in range(args.rounds):
            for backend in BACKENDS:
                results[backend].append(run_http(backend, script, seconds))
        report(
            f"HTTP POST /features, 1 entity, 1 worker, wrk -t2 -c32 -d{seconds}s from a second "
            "process; ratio = cluster / single",
            results,
            [
                ("rps", "requests/s", "req/s"),
                ("p50", "p50", "ms"),
                ("p99", "p99", "ms"),
                ("cpu_us", "server cpu per request", "us"),
                ("peak_mb", "server peak memory", "MB"),
            ],
        )
    finally:
        for backend in BACKENDS:
            drop(backend, args)
            shutil.rmtree(repo_dir(backend), ignore_errors=True)


if __name__ == "__main__":
    main()
