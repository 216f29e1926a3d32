"""Online retrieval benchmark (issue: online retrieval).

SDK, warm, in process: p50/p99 of get_online_features for 1 and 100 entities (10 float32
features in 2 views), beside raw redis-py (one MGET of the same keys, decoded with struct) and
raw sqlite3 (one SELECT of the same keys) in the same run. HTTP: requests/s and p50/p99 of
POST /features (1 entity) under wrk, beside a bare FastAPI endpoint returning a constant.

    python3 bench/bench_online.py                 # 100,000 entities, redis + embedded, SDK + HTTP
    python3 bench/bench_online.py --quick         # 10,000 entities, fewer calls
    python3 bench/bench_online.py --no-http       # SDK only
    python3 bench/bench_online.py --issue19       # issue 19's rows: HTTP only, ours vs bare, interleaved
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from bench._common import (  # noqa: E402
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
from featurestore import FeatureStore  # noqa: E402
from featurestore.online.codec import ValueCodec, encode_entity_keys  # noqa: E402

VIEWS = ("profile_a", "profile_b")
FEATURES = 5  # per view: 10 in all

DEFS = "entities:\n  - name: user\n    join_keys: [{name: user_id, dtype: int64}]\n" \
    "sources:\n  - {name: src, type: parquet, path: data/none.parquet, timestamp_field: ts}\n" \
    "feature_views:\n" + "".join(
        f"  - name: {v}\n    entities: [user]\n    source: src\n    features:\n"
        + "".join(f"      - {{name: {v[-1]}{i}, dtype: float32}}\n" for i in range(FEATURES))
        for v in VIEWS
    )
REFS = [f"{v}:{v[-1]}{i}" for v in VIEWS for i in range(FEATURES)]


def build(root: Path, backend: str, entities: int, redis_url: str, project: str | None = None) -> FeatureStore:
    project = project or f"bench_{backend}"
    if root.exists():
        shutil.rmtree(root)
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS)
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nonline_store: {{type: {backend}, url: '{redis_url}'}}\n"
    )
    store = FeatureStore(root)
    store.apply()
    ids = pa.array(np.arange(1, entities + 1), pa.int64())
    keys = encode_entity_keys(["int64"], [ids])
    codec = ValueCodec(["float32"] * FEATURES)
    rng = np.random.default_rng(0)
    now = time.time_ns() // 1000
    online = store.online_store
    if backend == "redis":
        delete_redis_project(redis_url, project)
    for view in VIEWS:
        columns = [pa.array(rng.random(entities, dtype=np.float32)) for _ in range(FEATURES)]
        payloads = codec.encode_rows(columns)
        for start in range(0, entities, 20_000):
            online.write_latest(
                view, [(keys[i], now, now, payloads[i]) for i in range(start, min(entities, start + 20_000))]
            )
    return store


def sdk_issue19(redis_url: str, rounds: int, calls: int) -> None:
    """Issue 19, row (a): ``get_online_features`` on Redis for 1 and 100 entities against the
    reference (``redis_reference``: one raw redis-py MGET of the same keys + struct decode), in
    one process, call by call interleaved (who goes first alternates). Each round gives a p50
    and a p99 of both; the ratios are medians of the per-round ratios."""
    import statistics

    import redis

    entities = 10_000
    project = "bench_issue19_sdk"  # its own keys: not bench_redis, nor the HTTP rows' project
    store = build(OUT / "online_issue19_sdk", "redis", entities, redis_url, project)
    client = redis.Redis.from_url(redis_url)
    prefixes = [f"{project}:{v}:".encode() for v in VIEWS]

    def ref(ids: list[int], rows: list[dict[str, int]]) -> list:
        keys = [p + str(i).encode() for p in prefixes for i in ids]
        raw = client.execute_command("MGET", *keys)
        return [None if v is None else (_HEADER.unpack_from(v)[0], _VALUES.unpack_from(v, 16)[1:]) for v in raw]

    def ours(ids: list[int], rows: list[dict[str, int]]) -> object:
        return store.get_online_features(REFS, rows)

    rng = random.Random(1)
    try:
        for batch in (1, 100):
            n = calls if batch == 1 else max(200, calls // 5)
            got: dict[str, list[dict[str, float]]] = {"ours": [], "ref": []}
            for _ in range(rounds):
                samples: dict[str, list[int]] = {"ours": [], "ref": []}
                for k in range(50 + n):  # the first 50 calls of a round warm up
                    ids = [rng.randint(1, entities) for _ in range(batch)]
                    rows = [{"user_id": i} for i in ids]
                    for name, fn in (("ours", ours), ("ref", ref)) if k % 2 else (("ref", ref), ("ours", ours)):
                        t0 = time.perf_counter_ns()
                        fn(ids, rows)
                        if k >= 50:
                            samples[name].append(time.perf_counter_ns() - t0)
                for name, s in samples.items():
                    got[name].append(summary_ms(s))
            o50, r50 = [m["p50"] for m in got["ours"]], [m["p50"] for m in got["ref"]]
            o99, r99 = [m["p99"] for m in got["ours"]], [m["p99"] for m in got["ref"]]
            ratio50, ratio99 = median_ratio(o50, r50), median_ratio(o99, r99)
            label = f"{batch} entit{'y' if batch == 1 else 'ies'}"
            print(f" issue 19 (a): get_online_features, Redis, {label}/call, {len(REFS)} features; {rounds} rounds "
                  f"x {n} calls, interleaved; ref: raw redis-py MGET + struct decode")
            print(f"  p50 ours/ref {ratio50:.2f} {round_ratios(o50, r50)}")
            print(f"  p99 ours/ref {ratio99:.2f} {round_ratios(o99, r99)}")

            def figure(name: str) -> str:
                return (f"p50 {statistics.median(m['p50'] for m in got[name]) * 1000:.0f} us, "
                        f"p99 {statistics.median(m['p99'] for m in got[name]) * 1000:.0f} us")

            worse = max(ratio50, ratio99)
            print(goal_line(f"get_online_features, Redis, {label}", f"raw redis-py MGET + decode: {figure('ref')}",
                            figure("ours"), worse, "p50 and p99 <= 1.2x", worse <= 1.2))
    finally:
        client.close()
        store.close()
        delete_redis_project(redis_url, project)


def sdk_latency(store: FeatureStore, entities: int, batch: int, calls: int) -> dict[str, float]:
    rng = random.Random(1)
    for _ in range(50):  # warm: plan compiled, connections open
        store.get_online_features(REFS, [{"user_id": rng.randint(1, entities)} for _ in range(batch)])
    samples = []
    for _ in range(calls):
        rows = [{"user_id": rng.randint(1, entities)} for _ in range(batch)]
        t0 = time.perf_counter_ns()
        store.get_online_features(REFS, rows)
        samples.append(time.perf_counter_ns() - t0)
    return summary_ms(samples)


_HEADER = struct.Struct("<qq")
_VALUES = struct.Struct("<2s" + "f" * FEATURES)


def redis_reference(redis_url: str, entities: int, batch: int, calls: int) -> dict[str, float]:
    import redis

    client = redis.Redis.from_url(redis_url)
    prefixes = [f"bench_redis:{v}:".encode() for v in VIEWS]
    rng = random.Random(1)

    def once(ids: list[int]) -> list:
        keys = [p + str(i).encode() for p in prefixes for i in ids]
        raw = client.execute_command("MGET", *keys)
        return [None if v is None else (_HEADER.unpack_from(v)[0], _VALUES.unpack_from(v, 16)[1:]) for v in raw]

    for _ in range(50):
        once([rng.randint(1, entities) for _ in range(batch)])
    samples = []
    for _ in range(calls):
        ids = [rng.randint(1, entities) for _ in range(batch)]
        t0 = time.perf_counter_ns()
        once(ids)
        samples.append(time.perf_counter_ns() - t0)
    return summary_ms(samples)


def sqlite_reference(path: Path, entities: int, batch: int, calls: int) -> dict[str, float]:
    conn = sqlite3.connect(path)
    rng = random.Random(1)

    sql = "SELECT event_ts, payload FROM latest WHERE project = ? AND view = ? AND entity_key = ?"

    def once(ids: list[int]) -> list:
        # One prepared point lookup per key: the least work SQLite can do for these rows.
        out = []
        for v in VIEWS:
            for i in ids:
                row = conn.execute(sql, ("bench_embedded", v, str(i).encode())).fetchone()
                out.append(None if row is None else (row[0], _VALUES.unpack_from(row[1])[1:]))
        return out

    for _ in range(50):
        once([rng.randint(1, entities) for _ in range(batch)])
    samples = []
    for _ in range(calls):
        ids = [rng.randint(1, entities) for _ in range(batch)]
        t0 = time.perf_counter_ns()
        once(ids)
        samples.append(time.perf_counter_ns() - t0)
    return summary_ms(samples)


# -- HTTP ------------------------------------------------------------------------------------------
LUA = """
math.randomseed(7)
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  local id = math.random(1, %d)
  local body = '{"features": [%s], "entity_rows": [{"user_id": ' .. id .. '}]}'
  return wrk.format(nil, "/features", nil, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"server on port {port} did not start")


def wrk(port: int, script: Path, seconds: int) -> dict[str, float]:
    return run_wrk(port, script, seconds, connections=32, threads=2)


def http_case(cmd: list[str], port: int, script: Path, seconds: int, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(port)
        time.sleep(1.0)
        wrk(port, script, 2)  # warm up
        return wrk(port, script, seconds)
    finally:
        proc.terminate()
        proc.wait(10)


def http_bench(repo: Path, entities: int, seconds: int, workers: int) -> None:
    if shutil.which("wrk") is None:
        print("  (HTTP skipped: wrk is not installed; `apt-get install wrk`)")
        return
    script = OUT / "features.lua"
    script.write_text(LUA % (entities, ", ".join(f'"{r}"' for r in REFS)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    p1, p2 = free_port(), free_port()
    ours = http_case(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(repo), "serve", "--port", str(p1), "--workers", str(workers)],
        p1, script, seconds, env,
    )
    bare = http_case(
        [sys.executable, "-m", "bench.bare_app", "--port", str(p2), "--workers", str(workers)],
        p2, script, seconds, env,
    )
    print(f" HTTP POST /features, 1 entity, {workers} worker(s), wrk -t2 -c32 -d{seconds}s:")
    print(row("requests/s", ours["rps"], bare["rps"], "req/s", higher_is_better=True))
    print(row("p50", ours["p50"], bare["p50"], "ms"))
    print(row("p99", ours["p99"], bare["p99"], "ms"))


def issue19(redis_url: str, rounds: int, seconds: int) -> None:
    """Issue 19, row (b): ``POST /features`` of 1 entity, wrk -t2 -c32, ours against the bare
    endpoint answering the same bytes (``bare_app`` with ``BARE_BODY``: the body ours gave for
    one entity), both served by ``serve_cmd.serve``. The four servers (ours and bare, 1 and 2
    workers) run at once; every round measures each in turn, the order rotated; figures are
    medians over the rounds, ratios medians of the per-round ratios. With 2 workers both accept
    one connection per wake-up (``serve``'s ``uvicorn_nodelay.FairAcceptLoop``)."""
    import json
    import statistics
    import urllib.request

    entities = 10_000
    root = OUT / "online_issue19"
    project = "bench_issue19_online"  # not bench_redis: the SDK rows may be measured meanwhile
    build(root, "redis", entities, redis_url, project).close()
    script = OUT / "features_issue19.lua"
    script.write_text(LUA % (entities, ", ".join(f'"{r}"' for r in REFS)))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    servers: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        for w in (1, 2):
            port = free_port()
            servers[f"ours{w}"] = (subprocess.Popen(
                [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve", "--port", str(port),
                 "--workers", str(w)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)
        wait_up(servers["ours1"][1], timeout=120)
        request = urllib.request.Request(
            f"http://127.0.0.1:{servers['ours1'][1]}/features", method="POST",
            data=json.dumps({"features": REFS, "entity_rows": [{"user_id": 1}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = urllib.request.urlopen(request, timeout=30).read()
        env["BARE_BODY"] = body.decode()
        for w in (1, 2):
            port = free_port()
            servers[f"bare{w}"] = (subprocess.Popen(
                [sys.executable, "-m", "bench.bare_app", "--port", str(port), "--workers", str(w)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port)
        for proc, port in servers.values():
            wait_up(port, timeout=120)
        time.sleep(1.0)
        for proc, port in servers.values():
            wrk(port, script, 2)  # warm up

        def measure(name: str) -> dict[str, float]:
            proc, port = servers[name]
            cpu = tree_cpu_seconds(proc.pid)
            result = wrk(port, script, seconds)
            used = tree_cpu_seconds(proc.pid) - cpu
            return {**result, "cpu_ms": 1000 * used / (result["rps"] * seconds)}

        got = rotated_rounds(list(servers), rounds, measure)
        rss = {name: tree_peak_rss_mb(proc.pid) for name, (proc, _) in servers.items()}
    finally:
        stop_servers(proc for proc, _ in servers.values())
        delete_redis_project(redis_url, project)

    def med(name: str, key: str) -> float:
        return statistics.median(m[key] for m in got[name])

    def figure(name: str) -> str:
        return (f"{med(name, 'rps'):,.0f} req/s, p99 {med(name, 'p99'):.1f} ms, "
                f"{med(name, 'cpu_ms'):.3f} ms CPU/req, peak RSS {rss[name]:,.0f} MB")

    print(f" issue 19 (b): POST /features, 1 entity, {len(REFS)} features; wrk -t2 -c32, {rounds} rounds x "
          f"{seconds} s per server, interleaved; ref: bare FastAPI endpoint answering the same {len(body)} bytes")
    for w in (1, 2):
        ours, bare = f"ours{w}", f"bare{w}"
        print(f"  {w} worker(s): ours {figure(ours)}")
        print(f"  {w} worker(s): bare {figure(bare)}")
        o, b = [m["rps"] for m in got[ours]], [m["rps"] for m in got[bare]]
        ratio = median_ratio(o, b)
        print(f"  {w} worker(s): req/s ours/bare {ratio:.2f} {round_ratios(o, b)}")
        oc, bc = [m["cpu_ms"] for m in got[ours]], [m["cpu_ms"] for m in got[bare]]
        print(f"  {w} worker(s): server CPU per request ours/bare {median_ratio(oc, bc):.2f} {round_ratios(oc, bc)}")
        print(goal_line(f"POST /features, 1 entity, {w} worker(s), -c32", f"bare FastAPI: {figure(bare)}",
                        figure(ours), ratio, "req/s >= 0.9x", ratio >= 0.9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--backends", default="redis,embedded")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--issue19", action="store_true",
                        help="issue 19's rows only: the SDK against raw redis-py, interleaved, then "
                        "HTTP POST /features against the bare endpoint (skipped with --no-http)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds of --issue19")
    args = parser.parse_args()
    if args.issue19:
        OUT.mkdir(parents=True, exist_ok=True)
        sdk_issue19(args.redis_url, args.rounds, 500 if args.quick else 2000)
        if not args.no_http:
            issue19(args.redis_url, args.rounds, 3)
        return
    entities = 10_000 if args.quick else 100_000
    calls = {1: 500 if args.quick else 3000, 100: 200 if args.quick else 1000}
    seconds = 3 if args.quick else 8
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"online retrieval: {entities:,} entities, {len(REFS)} float32 features in {len(VIEWS)} views")
    for backend in args.backends.split(","):
        root = OUT / f"online_{backend}"
        t0 = time.perf_counter()
        store = build(root, backend, entities, args.redis_url)
        print(f"[{backend}] loaded in {time.perf_counter() - t0:.1f} s")
        for batch in (1, 100):
            ours = sdk_latency(store, entities, batch, calls[batch])
            if backend == "redis":
                ref = redis_reference(args.redis_url, entities, batch, calls[batch])
                ref_name = "raw redis-py MGET + struct decode"
            else:
                ref = sqlite_reference(root / "data" / "online.db", entities, batch, calls[batch])
                ref_name = "raw sqlite3 point SELECTs + struct decode"
            print(f" SDK get_online_features, {batch} entit{'y' if batch == 1 else 'ies'}/call, {calls[batch]} calls; ref: {ref_name}")
            print(row("p50", ours["p50"], ref["p50"], "ms"))
            print(row("p99", ours["p99"], ref["p99"], "ms"))
        store.close()
        if not args.no_http:
            for workers in (1, 2):
                http_bench(root, entities, seconds, workers)


if __name__ == "__main__":
    main()
