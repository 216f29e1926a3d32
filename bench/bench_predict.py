"""Prediction serving benchmark (issue: Velox core, part 1).

100,000 users with trained states and 10,000 items in Redis (loopback), a model over one
float32[d-1] item vector + bias (d = 16 and d = 64). For 100 and 1,000 candidate items per
request: requests/s and p50/p99 of ``POST /predict`` under a bounded load (wrk, a fixed number of
connections), beside ``POST /features`` of the same items in the same run (the plain feature
lookup a prediction replaces). Also the in-process ``FeatureStore.predict`` for reference.

Goals: p99 < 10 ms (100 items) and < 25 ms (1,000 items); predict costing at most 1.5x the
feature lookup of the same items.

    python3 bench/bench_predict.py                 # 100,000 users, 10,000 items, d = 16, 100 items
    python3 bench/bench_predict.py --quick         # 10,000 users, 2,000 items, shorter runs
    python3 bench/bench_predict.py --dims 16,64 --sizes 100,1000 --workers 1,2 --connections 8,32
    python3 bench/bench_predict.py --issue19       # issue 19's rows: ours vs a hand-written server

The HTTP cases run for each worker count (default 1 and 2) and each load (default wrk -c8 and
-c32): /predict and /features interleaved in the same run, their ratio, and the server's CPU
seconds per 1,000 requests (all its processes) and peak memory beside the latency.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

from bench._common import (
    OUT,
    delete_redis_project,
    goal_line,
    median_ratio,
    rotated_rounds,
    round_ratios,
    row,
    run_wrk,
    stop_servers,
    summary_ms,
    tree_cpu_seconds,
    tree_peak_rss_mb,
)
from bench.bench_online import free_port, wait_up
from featurestore import FeatureStore
from featurestore.models.linear import UserState
from featurestore.models.state_store import ModelLayout, ModelStateStore
from featurestore.online.codec import ValueCodec, encode_entity_keys

DEFS = """\
entities:
  - {{name: user, join_keys: [{{name: user_id, dtype: int64}}]}}
  - {{name: item, join_keys: [{{name: item_id, dtype: int64}}]}}
sources:
  - {{name: src, type: parquet, path: data/none.parquet, timestamp_field: ts}}
feature_views:
  - name: item_emb
    entities: [item]
    source: src
    features: [{{name: emb, dtype: "float32[{factors}]"}}]
models:
  - {{name: taste, user_entity: user, item_entity: item, features: [item_emb:emb], label: rating, l2: 1.0}}
"""
BODIES = 200  # distinct request bodies per case, picked at random by wrk




def build(root: Path, d: int, users: int, items: int, redis_url: str, project: str | None = None) -> FeatureStore:
    """A repository with the item vectors and every user's state written straight to Redis."""
    project = project or f"bench_predict_d{d}"
    if root.exists():
        shutil.rmtree(root)
    delete_redis_project(redis_url, project)
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS.format(factors=d - 1))
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nonline_store: {{type: redis, url: '{redis_url}'}}\n"
    )
    store = FeatureStore(root)
    store.apply()
    rng = np.random.default_rng(0)
    online = store.online_store
    now = time.time_ns() // 1000
    keys = encode_entity_keys(["int64"], [pa.array(np.arange(1, items + 1), pa.int64())])
    vectors = rng.normal(size=(items, d - 1)).astype(np.float32)
    payloads = ValueCodec([f"float32[{d - 1}]"]).encode_rows(
        [pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), d - 1)]
    )
    for start in range(0, items, 20_000):
        online.write_latest("item_emb", [(keys[i], now, now, payloads[i]) for i in range(start, min(items, start + 20_000))])

    defs = store.definitions()
    layout = ModelLayout.from_spec(defs, defs.models["taste"])
    assert layout.d == d
    version = store.model_versions.add(
        "taste", registry_version=store.registry.head_version(), data_start=None, data_end=None,
        metrics={"bench": True}, activate=False,
    ).version
    states = ModelStateStore(online, "taste", version)
    # Every user's state is full-size (d weights, two d x d triangles) as after training; the
    # matrices are shared, the weights differ.
    A_inv = np.eye(d) / 6.0
    xtx = np.eye(d) * 5.0
    user_keys = encode_entity_keys(["int64"], [pa.array(np.arange(1, users + 1), pa.int64())])
    for start in range(0, users, 5_000):
        chunk = user_keys[start : start + 5_000]
        W = rng.normal(size=(len(chunk), d))
        states.put_states(
            {k: UserState(W[i], A_inv, xtx, W[i] * 6.0, 5, 0) for i, k in enumerate(chunk)}, d=d
        )
    states.publish(layout, rng.normal(size=d), {})
    store.model_versions.activate("taste", version)
    return store


def in_process(store: FeatureStore, users: int, items: int, n: int, calls: int) -> dict[str, float]:
    rnd = random.Random(1)
    sets = [[{"item_id": rnd.randint(1, items)} for _ in range(n)] for _ in range(20)]
    for s in sets:  # warm the feature cache with every item used
        store.predict("taste", {"user_id": 1}, s)
    samples = []
    for _ in range(calls):
        user = {"user_id": rnd.randint(1, users)}
        chosen = sets[rnd.randrange(len(sets))]
        t0 = time.perf_counter_ns()
        store.predict("taste", user, chosen)
        samples.append(time.perf_counter_ns() - t0)
    return summary_ms(samples)


def lua_script(path: Path, endpoint: str, bodies: list[str]) -> Path:
    lines = ["local bodies = {"] + [f"[==[{b}]==]," for b in bodies] + ["}"]
    lines += [
        "math.randomseed(7)",
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
        "request = function()",
        f'  return wrk.format(nil, "{endpoint}", nil, bodies[math.random(1, #bodies)])',
        "end",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def bodies_for(users: int, items: int, n: int) -> tuple[list[str], list[str]]:
    rnd = random.Random(n)
    predict, features = [], []
    for _ in range(BODIES):
        chosen = ",".join(f'{{"item_id":{rnd.randint(1, items)}}}' for _ in range(n))
        predict.append(f'{{"model":"taste","user":{{"user_id":{rnd.randint(1, users)}}},"items":[{chosen}]}}')
        features.append(f'{{"features":["item_emb:emb"],"entity_rows":[{chosen}]}}')
    return predict, features




def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def http_cases(
    root: Path, users: int, items: int, sizes: list[int], seconds: int, connections: list[int], workers: list[int]
) -> None:
    """For each worker count and load: /predict and /features of the same items, interleaved,
    with the server's CPU seconds per 1,000 requests and its peak memory (all workers)."""
    if shutil.which("wrk") is None:
        print("  (HTTP skipped: wrk is not installed; `apt-get install wrk`)")
        return
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    for w in workers:
        port = free_port()
        cmd = [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve", "--port", str(port), "--workers", str(w)]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_up(port)
            time.sleep(1.0)
            for n in sizes:
                predict_bodies, feature_bodies = bodies_for(users, items, n)
                p_script = lua_script(OUT / f"predict_{n}.lua", "/predict", predict_bodies)
                f_script = lua_script(OUT / f"predict_features_{n}.lua", "/features", feature_bodies)
                run_wrk(port, p_script, 2, max(connections))  # warm: every item of the bodies cached
                run_wrk(port, f_script, 2, max(connections))
                for c in connections:
                    ours = _measured(proc.pid, port, p_script, seconds, c)
                    ref = _measured(proc.pid, port, f_script, seconds, c)
                    ratio = ours["rps"] / ref["rps"] if ref["rps"] else 0.0
                    print(f" HTTP /predict, {n} candidate items, {w} worker(s), wrk -t1 -c{c} -d{seconds}s; "
                          "ref: POST /features of the same items")
                    print(row("requests/s", ours["rps"], ref["rps"], "req/s", higher_is_better=True))
                    print(row("p50", ours["p50"], ref["p50"], "ms"))
                    print(row("p99", ours["p99"], ref["p99"], "ms"))
                    print(row("server CPU per 1,000 requests", ours["cpu_per_k"], ref["cpu_per_k"], "s"))
                    print(f"  /predict at {ratio:.2f}x the req/s of /features; server peak RSS {tree_peak_rss_mb(proc.pid):,.0f} MB")
        finally:
            stop_servers([proc])


def _measured(pid: int, port: int, script: Path, seconds: int, connections: int) -> dict[str, float]:
    cpu = tree_cpu_seconds(pid)
    result = run_wrk(port, script, seconds, connections)
    used = tree_cpu_seconds(pid) - cpu
    requests = result["rps"] * seconds
    return {**result, "cpu_per_k": 1000 * used / requests if requests else float("nan")}


def issue19(redis_url: str, rounds: int, seconds: int) -> None:
    """Issue 19, row (a): ``POST /predict`` of 100 candidates against ``predict_reference_app``
    (FastAPI + redis.asyncio + numpy, the same scoring on the same keys), both served by
    ``serve_cmd.serve`` (with 2 workers each accepts one connection per wake-up,
    ``uvicorn_nodelay.FairAcceptLoop``). All the servers (ours and the reference, 1 and 2 workers) run at once and
    every round measures each in turn, the order rotated, so load from elsewhere on the box
    falls on all of them; the figures are medians over the rounds, the ratios medians of the
    per-round ratios."""
    d, users, items, n, connections = 16, 20_000, 2_000, 100, 32
    root = OUT / "predict_issue19"
    project = f"bench_issue19_predict_d{d}"  # not bench_predict_d16: another run may use that
    store = build(root, d, users, items, redis_url, project)
    version = store.model_versions.active_versions()["taste"]
    store.predictor.close()
    store.close()
    script = lua_script(OUT / "predict_issue19.lua", "/predict", bodies_for(users, items, n)[0])
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), REF_REDIS_URL=redis_url,
               REF_PROJECT=project, REF_MODEL="taste", REF_VERSION=str(version), REF_D=str(d))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for w in (1, 2):
            for who in ("ours", "ref"):
                port = free_port()
                if who == "ours":
                    cmd = [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve",
                           "--port", str(port), "--workers", str(w)]
                else:
                    cmd = [sys.executable, "-m", "bench.predict_reference_app", "--port", str(port), "--workers", str(w)]
                servers[f"{who}{w}"] = (subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                         stderr=subprocess.DEVNULL), port)
        for proc, port in servers.values():
            wait_up(port, timeout=120)  # four servers starting at once on a busy box
        time.sleep(1.0)
        for proc, port in servers.values():
            run_wrk(port, script, 2, connections)  # warm: connections open, every item cached
        got = rotated_rounds(
            list(servers), rounds, lambda name: _measured(servers[name][0].pid, servers[name][1], script, seconds, connections)
        )
        rss = {name: tree_peak_rss_mb(proc.pid) for name, (proc, _) in servers.items()}
    finally:
        stop_servers(proc for proc, _ in servers.values())
        delete_redis_project(redis_url, project)

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in got[name])

    def figure(name: str) -> str:
        return (f"{med(name, 'rps'):,.0f} req/s, p99 {med(name, 'p99'):.1f} ms, "
                f"{med(name, 'cpu_per_k'):.2f} s CPU/1k req, peak RSS {rss[name]:,.0f} MB")

    print(f" issue 19 (a): POST /predict, {n} candidates, d = {d}, {users:,} users, {items:,} items; "
          f"wrk -t1 -c{connections}, {rounds} rounds x {seconds} s per server, interleaved")
    for w in (1, 2):
        ours, ref = f"ours{w}", f"ref{w}"
        print(f"  {w} worker(s): ours {figure(ours)}")
        print(f"  {w} worker(s): ref  {figure(ref)}")
        ratio = median_ratio([m["rps"] for m in got[ours]], [m["rps"] for m in got[ref]])
        print(f"  {w} worker(s): req/s ours/ref {ratio:.2f} "
              f"{round_ratios([m['rps'] for m in got[ours]], [m['rps'] for m in got[ref]])}")
        cpu = median_ratio([m["cpu_per_k"] for m in got[ours]], [m["cpu_per_k"] for m in got[ref]])
        print(f"  {w} worker(s): server CPU per request ours/ref {cpu:.2f} "
              f"{round_ratios([m['cpu_per_k'] for m in got[ours]], [m['cpu_per_k'] for m in got[ref]])}")
        print(goal_line(f"POST /predict, 100 candidates, {w} worker(s), -c{connections}",
                        f"FastAPI + redis.asyncio + numpy: {figure(ref)}", figure(ours), ratio,
                        "req/s >= 0.8x", ratio >= 0.8))
    two = median_ratio([m["rps"] for m in got["ours2"]], [m["rps"] for m in got["ours1"]])
    print(f"  ours, 2 workers / 1 worker: {two:.2f} "
          f"{round_ratios([m['rps'] for m in got['ours2']], [m['rps'] for m in got['ours1']])}")
    print(goal_line(f"POST /predict, 100 candidates, 2 workers vs 1, -c{connections}",
                    f"ours, 1 worker: {med('ours1', 'rps'):,.0f} req/s",
                    f"ours, 2 workers: {med('ours2', 'rps'):,.0f} req/s, p99 {med('ours2', 'p99'):.1f} ms",
                    two, "2 workers faster than 1 (> 1.0x)", two > 1.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 users, 2,000 items, 3 s runs")
    parser.add_argument("--dims", default="16")
    parser.add_argument("--sizes", default="100", help="candidate items per request")
    parser.add_argument("--connections", default="8,32", help="concurrent wrk connections (the bounded loads)")
    parser.add_argument("--workers", default="1,2", help="server worker processes")
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the data in Redis afterwards")
    parser.add_argument("--issue19", action="store_true",
                        help="issue 19's rows only: ours vs a hand-written FastAPI + redis.asyncio server")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of --issue19")
    args = parser.parse_args()
    if args.issue19:
        OUT.mkdir(parents=True, exist_ok=True)
        issue19(args.redis_url, args.rounds, args.seconds or 3)
        return
    users = 10_000 if args.quick else 100_000
    items = 2_000 if args.quick else 10_000
    seconds = args.seconds or (3 if args.quick else 8)
    sizes = [int(s) for s in args.sizes.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"prediction serving: {users:,} users with states, {items:,} items, Redis at {args.redis_url}")
    for d in (int(x) for x in args.dims.split(",")):
        root = OUT / f"predict_d{d}"
        t0 = time.perf_counter()
        store = build(root, d, users, items, args.redis_url)
        print(f"[d={d}] loaded in {time.perf_counter() - t0:.1f} s (state {22 + 8 * (2 * d + d * (d + 1)):,} bytes/user)")
        for n in sizes:
            s = in_process(store, users, items, n, 300 if args.quick else 1000)
            print(f"  in-process FeatureStore.predict, {n} items (warm cache): p50 {s['p50']:.3f} ms  p99 {s['p99']:.3f} ms")
        store.predictor.close()
        store.close()
        if not args.no_http:
            http_cases(root, users, items, sizes, seconds, [int(c) for c in args.connections.split(",")],
                       [int(w) for w in args.workers.split(",")])
        if not args.keep:
            delete_redis_project(args.redis_url, f"bench_predict_d{d}")


if __name__ == "__main__":
    main()
