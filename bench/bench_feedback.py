"""Feedback throughput, durable: the log in PostgreSQL, the user states in Redis (issue: Velox
core, part 2).

    PYTHONPATH=. python3 bench/bench_feedback.py              # 100,000 users, 10,000 items, d = 16
    PYTHONPATH=. python3 bench/bench_feedback.py --quick      # 10,000 users, 2,000 items, shorter runs

A model over one float32[15] item vector + bias (d = 16); every user has a trained state in Redis,
the registry (and so the feedback log) is a fresh schema of the local PostgreSQL. Cases, each with
1 and 500 observations per request, every observation with a new feedback_id (so each one is
logged, committed, learned and compare-and-swapped):

* HTTP: ``POST /feedback`` on ``featurestore serve`` (1 worker) under wrk (one connection per
  request in flight, bounded); observations/s and p50/p99 per request;
* in-process: ``FeatureStore.feedback_many`` (the same FeedbackService), with where the time
  goes — states read, log commit, compare-and-swap, and the update's own CPU cost (decode,
  learn, encode), per observation;
* reference: a plain psycopg insert of the same rows into a copy of the log table (one commit per
  request), the durability floor;
* the maths alone at d = 16 (bench/bench_update.py): learn_one and learn_many;
* how soon a prediction sees an update: feedback over HTTP (server process), then ``predict`` in
  this process; the score must already use the new state.

Goals: >= 10,000 observations/s batched; the update at d = 16 under 20 µs for one observation and
under 5 µs per observation in a batch.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

import featurestore.feedback.service as feedback_module
from bench._common import OUT, delete_redis_project, peak_rss_mb, percentile, run_wrk, stop_servers
from bench.bench_online import free_port, wait_up
from bench.bench_predict import DEFS
from featurestore import FeatureStore
from featurestore.feedback import FeedbackInput
from featurestore.feedback.log import Observation
from featurestore.models.state_codec import BatchStateCodec
from featurestore.models.linear import UserState
from featurestore.models.state_store import ModelLayout, ModelStateStore
from featurestore.online.codec import ValueCodec, encode_entity_keys

D = 16
POSTGRES = os.environ.get("FEATURESTORE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BATCH_GOAL, SINGLE_US, BATCH_US = 10_000.0, 20.0, 5.0
LOG_MODEL = "bench_log"  # the log-alone rows: a model name no server learns or catches up


# -- setup ------------------------------------------------------------------------------------------


def build(root: Path, registry: str, redis_url: str, users: int, items: int) -> FeatureStore:
    project = "bench_feedback"
    if root.exists():
        shutil.rmtree(root)
    delete_redis_project(redis_url, project)
    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS.format(factors=D - 1))
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: '{registry}'\nonline_store: {{type: redis, url: '{redis_url}'}}\n"
    )
    store = FeatureStore(root)
    store.apply()
    rng = np.random.default_rng(0)
    online = store.online_store
    now = time.time_ns() // 1000
    keys = encode_entity_keys(["int64"], [pa.array(np.arange(1, items + 1), pa.int64())])
    vectors = rng.normal(size=(items, D - 1)).astype(np.float32) / 4
    payloads = ValueCodec([f"float32[{D - 1}]"]).encode_rows(
        [pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), D - 1)]
    )
    online.write_latest("item_emb", list(zip(keys, [now] * items, [now] * items, payloads)))
    defs = store.definitions()
    layout = ModelLayout.from_spec(defs, defs.models["taste"])
    version = store.model_versions.add(
        "taste", registry_version=store.watcher.version, data_start=None, data_end=None,
        metrics={"loss": 1.0}, activate=False,
    ).version
    states = ModelStateStore(online, "taste", version)
    user_keys = encode_entity_keys(["int64"], [pa.array(np.arange(1, users + 1), pa.int64())])
    # Full-size trained states: A⁻¹ = (xtx + λI)⁻¹ with xtx = 5I, five observations each.
    for start in range(0, users, 5_000):
        chunk = user_keys[start : start + 5_000]
        W = rng.normal(size=(len(chunk), D))
        states.put_states({k: UserState(W[i], np.eye(D) / 6.0, np.eye(D) * 5.0, W[i] * 6.0, 5, 0) for i, k in enumerate(chunk)}, d=D)
    states.publish(layout, rng.normal(size=D), {})
    store.model_versions.activate("taste", version)
    return store


def observations(prefix: str, n: int, users: int, items: int, seed: int) -> list[FeedbackInput]:
    rng = np.random.default_rng(seed)
    u, i, y = rng.integers(1, users + 1, n), rng.integers(1, items + 1, n), rng.uniform(1, 5, n)
    return [FeedbackInput("taste", {"user_id": int(a)}, {"item_id": int(b)}, float(c), f"{prefix}{k}")
            for k, (a, b, c) in enumerate(zip(u, i, y))]


# -- in-process -----------------------------------------------------------------------------------


class Timers:
    """Wraps methods to add up their time: where a feedback call spends it."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - t0

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original) if owner.__dict__.get(name) is timed else None)

    def restore(self) -> None:
        for undo in reversed(self._undo):
            undo()


def in_process(store: FeatureStore, users: int, items: int, size: int, total: int) -> dict[str, Any]:
    service = store.feedback_service
    warm = observations(f"w{size}-", size * 3, users, items, seed=size)
    for lo in range(0, len(warm), size):
        service.submit(warm[lo : lo + size])
    obs = observations(f"p{size}-{uuid.uuid4().hex[:6]}-", total, users, items, seed=size + 1)
    timers = Timers()
    online = store.online_store
    timers.wrap(online, "get_blobs", "read states (Redis)")
    timers.wrap(online, "compare_and_swap_blobs", "compare-and-swap (Redis)")
    timers.wrap(service.log, "append_seqs" if hasattr(service.log, "append_seqs") else "append", "log commit (PostgreSQL)")
    if hasattr(service.log, "mark_applied"):  # since the catch-up (issue 15): rows leave `pending`
        timers.wrap(service.log, "mark_applied", "mark applied (PostgreSQL, async commit)")
    timers.wrap(BatchStateCodec, "decode", "update: decode states")
    timers.wrap(feedback_module, "learn_encode", "update: learn + encode states")
    samples = []
    retries = service.cas_retries
    t0 = time.perf_counter()
    try:
        for lo in range(0, total, size):
            s = time.perf_counter()
            result = service.submit(obs[lo : lo + size])
            samples.append(time.perf_counter() - s)
            assert result.new == len(obs[lo : lo + size]), result
    finally:
        elapsed = time.perf_counter() - t0
        timers.restore()
    return {
        "rate": total / elapsed, "p50": percentile(samples, 50) * 1e3, "p99": percentile(samples, 99) * 1e3,
        "per_obs_us": elapsed / total * 1e6, "parts": {k: v / total * 1e6 for k, v in timers.seconds.items()},
        "retries": service.cas_retries - retries,
    }


# -- the reference: plain psycopg into a copy of the log table ---------------------------------------


def log_observations(prefix: str, n: int, users: int, items: int, seed: int) -> list[Observation]:
    """Rows as the service logs them (x included), for the log write alone and the reference."""
    rng = np.random.default_rng(seed)
    u, i, y = rng.integers(1, users + 1, n), rng.integers(1, items + 1, n), rng.uniform(1, 5, n)
    X = rng.normal(size=(n, D))
    ts = datetime.now(timezone.utc)
    return [Observation(f"{prefix}{k}", LOG_MODEL, 1, str(int(u[k])), str(int(i[k])), float(y[k]), X[k], ts,
                        None, 3.0, 3.1, "known") for k in range(n)]


def plain_rows(obs: list[Observation], project: str) -> list[tuple]:
    """The same rows as tuples (the reference's own input; building them is not timed)."""
    now = datetime.now(timezone.utc)
    return [(project, o.feedback_id, o.model, o.model_version, o.user_key, o.item_key, o.label, o.prediction_id,
             o.features.tobytes(), o.prediction, o.baseline, o.slice, o.event_ts, now, True) for o in obs]


_PLAIN_COLS = ("project, feedback_id, model, model_version, user_key, item_key, label, prediction_id, features, "
               "prediction, baseline, slice, event_ts, received_at, pending")
_PLAIN_TYPES = ["text", "text", "text", "int4", "text", "text", "float8", "text", "bytea", "float8", "float8", "text",
                "timestamptz", "timestamptz", "bool"]


class Plain:
    """The durability floor: a plain psycopg connection writing the same rows into ``bench_plain``
    (``LIKE fs_feedback INCLUDING ALL``: same columns, indexes, unique constraint, sequence).
    ``copy`` is one binary COPY + COMMIT per batch; ``insert`` one INSERT + COMMIT per row."""

    def __init__(self, registry: str) -> None:
        import psycopg

        self.conn = psycopg.connect(registry.replace("postgresql+psycopg://", "postgresql://"))
        self.conn.execute("DROP TABLE IF EXISTS bench_plain")
        self.conn.execute("CREATE TABLE bench_plain (LIKE fs_feedback INCLUDING ALL)")
        self.conn.commit()

    def copy(self, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            with cur.copy(f"COPY bench_plain ({_PLAIN_COLS}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_PLAIN_TYPES)
                for row in rows:
                    copy.write_row(row)
        self.conn.commit()

    def insert(self, rows: list[tuple]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(f"INSERT INTO bench_plain ({_PLAIN_COLS}) VALUES ({', '.join(['%s'] * 15)}) "
                            "ON CONFLICT DO NOTHING", rows)
        self.conn.commit()

    def close(self) -> None:
        self.conn.execute("DROP TABLE bench_plain")
        self.conn.commit()
        self.conn.close()


def plain_insert(registry: str, size: int, total: int, users: int, items: int) -> dict[str, float]:
    """The same rows into a copy of fs_feedback with psycopg, one COPY (or, one per request, an
    INSERT) and one commit per request."""
    plain = Plain(registry)
    rows = plain_rows(log_observations(f"plain{size}-", total, users, items, seed=size), "bench_feedback")
    samples = []
    try:
        t0 = time.perf_counter()
        for lo in range(0, total, size):
            s = time.perf_counter()
            (plain.insert if size == 1 else plain.copy)(rows[lo : lo + size])
            samples.append(time.perf_counter() - s)
        elapsed = time.perf_counter() - t0
    finally:
        plain.close()
    return {"rate": total / elapsed, "p50": percentile(samples, 50) * 1e3, "p99": percentile(samples, 99) * 1e3}


# -- HTTP ---------------------------------------------------------------------------------------


def lua(path: Path, size: int, users: int, items: int, prefix: str) -> Path:
    path.write_text(f"""
local counter = 0
math.randomseed({size})
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local function one()
  counter = counter + 1
  return string.format('{{"model":"taste","user":{{"user_id":%d}},"item":{{"item_id":%d}},"label":%.3f,"feedback_id":"{prefix}%d"}}',
    math.random(1, {users}), math.random(1, {items}), 1 + 4 * math.random(), counter)
end
request = function()
  if {size} == 1 then
    return wrk.format(nil, "/feedback", nil, one())
  end
  local parts = {{}}
  for i = 1, {size} do parts[i] = one() end
  return wrk.format(nil, "/feedback", nil, '{{"observations":[' .. table.concat(parts, ",") .. ']}}')
end
""")
    return path




def http_cases(root: Path, registry: str, users: int, items: int, seconds: int, store: FeatureStore) -> dict[int, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               FEATURESTORE_FEEDBACK_FLUSH_SECONDS="0", FEATURESTORE_FEEDBACK_CHECK_SECONDS="0")
    port = free_port()
    cmd = [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    out: dict[int, dict[str, float]] = {}
    try:
        wait_up(port)
        time.sleep(1.0)
        for size, connections in ((1, 8), (500, 2)):
            warm = lua(OUT / f"feedback_{size}_warm.lua", size, users, items, f"w{size}-{uuid.uuid4().hex[:8]}-")
            run_wrk(port, warm, 2, connections)  # warm-up: feature cache, connections
            mid = store.feedback_service.log.count("taste")
            script = lua(OUT / f"feedback_{size}.lua", size, users, items, f"r{size}-{uuid.uuid4().hex[:8]}-")
            result = run_wrk(port, script, seconds, connections)
            logged = store.feedback_service.log.count("taste") - mid
            result["obs_rate"] = result["rps"] * size
            result["connections"] = connections
            result["logged"] = logged
            out[size] = result
        out[0] = visibility(port, store, users)
    finally:
        stop_servers([proc])
    return out


def visibility(port: int, store: FeatureStore, users: int, trials: int = 200) -> dict[str, float]:
    """Feedback over HTTP (the server process), then predict here: is the update used at once?"""
    import httpx

    rng = np.random.default_rng(5)
    seen = 0
    lag = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        for k in range(trials):
            user = int(rng.integers(1, users + 1))
            item = [{"item_id": int(rng.integers(1, 50))}]
            before = store.predict("taste", {"user_id": user}, item).scores[0]
            r = client.post("/feedback", json={"model": "taste", "user": {"user_id": user}, "item": item[0],
                                               "label": float(before) + 3.0, "feedback_id": f"vis-{uuid.uuid4().hex}"})
            assert r.status_code == 200, r.text
            t0 = time.perf_counter()
            after = store.predict("taste", {"user_id": user}, item).scores[0]
            lag.append(time.perf_counter() - t0)
            seen += int(after > before)  # the label was above the prediction: the score must rise
    return {"trials": trials, "seen": seen, "p50": percentile(lag, 50) * 1e3, "p99": percentile(lag, 99) * 1e3}


# -- issue 19: the log write beside a plain COPY, interleaved -----------------------------------------


def _timed(run: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU of this process) seconds of ``run()``."""
    w, c = time.perf_counter(), time.process_time()
    run()
    return time.perf_counter() - w, time.process_time() - c


def _paired(ref: Callable[[list], object], ref_rows: list, ours: Callable[[list], object], our_rows: list,
            step: int, runs: dict[str, list[tuple[float, float, int]]], ours_case: str) -> tuple[float, float, int]:
    """Calls of ``ref`` and ``ours`` alternating, ``step`` rows each; appends ours to
    ``runs[ours_case]`` and returns the reference's (wall, CPU, rows)."""
    totals = [0.0, 0.0, 0.0, 0.0]
    for lo in range(0, len(ref_rows), step):
        wall, cpu = _timed(lambda: ref(ref_rows[lo : lo + step]))
        totals[0] += wall
        totals[1] += cpu
        wall, cpu = _timed(lambda: ours(our_rows[lo : lo + step]))
        totals[2] += wall
        totals[3] += cpu
    runs[ours_case].append((totals[2], totals[3], len(our_rows)))
    return totals[0], totals[1], len(ref_rows)


def issue19(store: FeatureStore, root: Path, registry: str, users: int, items: int, rounds: int,
            seconds: int, size: int, log_rows: int, single_rows: int, service_obs: int) -> None:
    """Per round: plain COPY and our log write (batches of ``size``) alternating call by call,
    plain INSERT and our log write one row per commit likewise, then FeedbackService in
    process, then HTTP under wrk. Ratios are per round (paired), their median printed; obs/s
    and CPU per observation are the best round of each."""
    from bench._common import goal_line, median_ratio, round_ratios, tree_cpu_seconds, tree_peak_rss_mb
    from featurestore.feedback.log import FeedbackLog

    plain = Plain(registry)
    log = FeedbackLog(store.context.engine, store.project)
    service = store.feedback_service
    runs: dict[str, list[tuple[float, float, int]]] = defaultdict(list)  # wall, cpu, observations

    def batches(write: Callable[[list], object], rows: list, step: int) -> Callable[[], None]:
        return lambda: [write(rows[lo : lo + step]) for lo in range(0, len(rows), step)]  # type: ignore[func-returns-value]

    # Warm-up: the log's sequence lookup, the service's caches, the pools.
    log.append_seqs(log_observations("warm-", size, users, items, 99))
    plain.copy(plain_rows(log_observations("warmp-", size, users, items, 98), store.project))
    warm = observations("warm-svc-", size * 2, users, items, 97)
    batches(service.submit, warm, size)()

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]),
               FEATURESTORE_FEEDBACK_FLUSH_SECONDS="0", FEATURESTORE_FEEDBACK_CHECK_SECONDS="0")
    port = free_port()
    cmd = [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_up(port)
        time.sleep(1.0)
        run_wrk(port, lua(OUT / "i19_warm.lua", size, users, items, f"i19w-{uuid.uuid4().hex[:8]}-"), 2, 2)
        for r in range(rounds):
            tag = f"{r}-{uuid.uuid4().hex[:6]}-"
            # The log write and its reference alternate call by call, so a burst of other work on
            # the machine slows both alike.
            rows = plain_rows(log_observations(f"ref{tag}", log_rows, users, items, r), store.project)
            obs = log_observations(f"log{tag}", log_rows, users, items, r)
            runs["copy"].append(_paired(plain.copy, rows, log.append_seqs, obs, size, runs, "log"))
            rows = plain_rows(log_observations(f"ref1{tag}", single_rows, users, items, r), store.project)
            obs = log_observations(f"log1{tag}", single_rows, users, items, r)
            runs["insert1"].append(_paired(plain.insert, rows, log.append_seqs, obs, 1, runs, "log1"))
            inputs = observations(f"svc{tag}", service_obs, users, items, 100 + r)
            runs["service"].append((*_timed(batches(service.submit, inputs, size)), service_obs))
            before = tree_cpu_seconds(proc.pid)
            mid = log.count("taste")
            result = run_wrk(port, lua(OUT / "i19.lua", size, users, items, f"i19{tag}"), seconds, 2)
            logged = log.count("taste") - mid
            runs["http"].append((seconds, tree_cpu_seconds(proc.pid) - before, logged))
            print(f"  round {r}: copy {log_rows / runs['copy'][-1][0]:,.0f}, log {log_rows / runs['log'][-1][0]:,.0f}, "
                  f"insert1 {single_rows / runs['insert1'][-1][0]:,.0f}, log1 {single_rows / runs['log1'][-1][0]:,.0f}, "
                  f"service {service_obs / runs['service'][-1][0]:,.0f}, HTTP {logged / seconds:,.0f} obs/s "
                  f"(wrk {result['rps'] * size:,.0f}, p50 {result['p50']:.1f} ms)", flush=True)
        server_rss = tree_peak_rss_mb(proc.pid)
    finally:
        stop_servers([proc])
        plain.close()
        log.close()

    def rate(case: str) -> list[float]:
        return [n / wall for wall, _, n in runs[case]]

    def cpu_us(case: str) -> float:
        return min(c / n for _, c, n in runs[case]) * 1e6

    def time_ratio(ours: str, ref: str) -> float:  # ours / ref in time per observation
        return median_ratio([1 / x for x in rate(ours)], [1 / x for x in rate(ref)])

    rss = peak_rss_mb()
    print(f"\n  {'case (best round; CPU per observation, best round)':58} {'obs/s':>10} {'CPU µs/obs':>11}")
    for case, what in (("copy", f"reference: plain COPY + COMMIT, {size}/commit"),
                       ("log", f"ours: FeedbackLog.append_seqs, {size}/call"),
                       ("insert1", "reference: plain INSERT + COMMIT, 1/commit"),
                       ("log1", "ours: FeedbackLog.append_seqs, 1/call"),
                       ("service", f"ours: FeedbackService.submit in process, {size}/call"),
                       ("http", f"ours: HTTP POST /feedback, {size}/request, 1 worker (server CPU)")):
        print(f"  {what:58} {max(rate(case)):>10,.0f} {cpu_us(case):>11.1f}")
    print(f"  peak RSS: this process (reference, log, service) {rss:,.0f} MB; server {server_rss:,.0f} MB")
    print(f"  log/COPY time ratio per round {round_ratios([1 / x for x in rate('log')], [1 / x for x in rate('copy')])}; "
          f"log1/INSERT {round_ratios([1 / x for x in rate('log1')], [1 / x for x in rate('insert1')])}")
    copy_best, log_ratio = max(rate("copy")), time_ratio("log", "copy")
    http_best, service_best = max(rate("http")), max(rate("service"))
    print(goal_line("feedback log write alone, PostgreSQL, batches of %d, in process" % size,
                    f"plain COPY + COMMIT {copy_best:,.0f} obs/s", f"{max(rate('log')):,.0f} obs/s, "
                    f"{cpu_us('log'):.1f} µs CPU/obs (COPY {cpu_us('copy'):.1f})", log_ratio,
                    "time <= 1.5x COPY", log_ratio <= 1.5))
    print(goal_line("feedback log write alone, PostgreSQL, 1 per commit, in process",
                    f"plain INSERT + COMMIT {max(rate('insert1')):,.0f} obs/s", f"{max(rate('log1')):,.0f} obs/s",
                    time_ratio("log1", "insert1"), "time <= 1.5x INSERT", time_ratio("log1", "insert1") <= 1.5))
    print(goal_line(f"durable feedback in process (FeedbackService), batches of {size}",
                    f"plain COPY + COMMIT {copy_best:,.0f} obs/s", f"{service_best:,.0f} obs/s, "
                    f"{cpu_us('service'):.0f} µs CPU/obs, {rss:,.0f} MB peak", time_ratio("service", "copy"),
                    ">= 20,000 obs/s batched", service_best >= 20_000))
    print(goal_line(f"durable feedback over HTTP, PostgreSQL log, 1 worker, batches of {size}",
                    f"plain COPY + COMMIT {copy_best:,.0f} obs/s", f"{http_best:,.0f} obs/s, "
                    f"server {cpu_us('http'):.0f} µs CPU/obs, {server_rss:,.0f} MB peak",
                    median_ratio([1 / x for x in rate("http")], [1 / x for x in rate("copy")]),
                    ">= 20,000 obs/s batched", http_best >= 20_000))


# -- main ---------------------------------------------------------------------------------------


def maths() -> tuple[float, float]:
    from bench.bench_update import bench_batch, bench_single

    rng = np.random.default_rng(0)
    return bench_single(D, 20_000, rng)[0], bench_batch(D, rng)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 users, 2,000 items, 3 s runs")
    parser.add_argument("--seconds", type=int, default=None)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--issue19", action="store_true",
                        help="only issue 19's rows: the log write beside a plain COPY, the service, HTTP (interleaved)")
    parser.add_argument("--rounds", type=int, default=3, help="--issue19: interleaved rounds")
    parser.add_argument("--size", type=int, default=500, help="--issue19: observations per call/request")
    args = parser.parse_args()
    users, items = (10_000, 2_000) if args.quick else (100_000, 10_000)
    seconds = args.seconds or (3 if args.quick else 8)
    OUT.mkdir(parents=True, exist_ok=True)

    import sqlalchemy as sa

    schema = "bench_fb_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(POSTGRES)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    registry = f"{POSTGRES}{'&' if '?' in POSTGRES else '?'}options=-csearch_path%3D{schema}"
    root = OUT / "feedback_repo"
    started = time.perf_counter()
    try:
        store = build(root, registry, args.redis_url, users, items)
        print(f"feedback: {users:,} users with trained states (d = {D}), {items:,} items; log in PostgreSQL "
              f"(schema {schema}), states in Redis at {args.redis_url}; loaded in {time.perf_counter() - started:.1f} s")
        if args.issue19:
            issue19(store, root, registry, users, items, args.rounds, seconds, args.size,
                    log_rows=20_000 if args.quick else 50_000, single_rows=300 if args.quick else 1_000,
                    service_obs=10_000 if args.quick else 30_000)
            store.predictor.close()
            store.close()
            return
        single_maths, batch_maths = maths()
        local = {size: in_process(store, users, items, size, total)
                 for size, total in ((1, 1_000 if args.quick else 3_000), (500, 20_000 if args.quick else 100_000))}
        plain = {size: plain_insert(registry, size, total, users, items)
                 for size, total in ((1, 1_000 if args.quick else 3_000), (500, 20_000 if args.quick else 100_000))}
        http = {} if args.no_http else http_cases(root, registry, users, items, seconds, store)
        store.predictor.close()
        store.close()
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        delete_redis_project(args.redis_url, "bench_feedback")

    print(f"\n  {'case':46} {'obs/s':>10} {'p50 ms':>8} {'p99 ms':>8}   reference: plain psycopg COPY (1/request: INSERT), same rows")
    for size in (1, 500):
        ref = plain[size]
        if size in http:
            h = http[size]
            label = f"HTTP POST /feedback, {size}/request (wrk -c{int(h['connections'])})"
            print(f"  {label:46} {h['obs_rate']:>10,.0f} {h['p50']:>8.2f} {h['p99']:>8.2f}   "
                  f"logged {int(h['logged']):,} (= {h['logged'] / max(h['obs_rate'] * seconds, 1):.2f} x obs/s x {seconds} s)")
        s = local[size]
        label = f"in-process FeedbackService, {size}/call"
        print(f"  {label:46} {s['rate']:>10,.0f} {s['p50']:>8.2f} {s['p99']:>8.2f}   "
              f"plain insert {ref['rate']:>9,.0f} obs/s, p50 {ref['p50']:.2f} ms, p99 {ref['p99']:.2f} ms "
              f"(ours/ref {s['rate'] / ref['rate']:.2f} in throughput)")
    print("\n  where an in-process call spends its time, µs per observation:")
    names = sorted({k for s in local.values() for k in s["parts"]})
    print(f"    {'':34} {'1/call':>10} {'500/call':>10}")
    for name in names:
        print(f"    {name:34} {local[1]['parts'].get(name, 0):>10.1f} {local[500]['parts'].get(name, 0):>10.1f}")
    other = {size: local[size]["per_obs_us"] - sum(local[size]["parts"].values()) for size in (1, 500)}
    print(f"    {'checks, features, metrics, other':34} {other[1]:>10.1f} {other[500]:>10.1f}")
    print(f"    {'total':34} {local[1]['per_obs_us']:>10.1f} {local[500]['per_obs_us']:>10.1f}")
    update = {size: sum(v for k, v in local[size]["parts"].items() if k.startswith("update")) for size in (1, 500)}
    print(f"    compare-and-swap retries: {local[1]['retries']} and {local[500]['retries']} (one writer: none expected)")
    print(f"\n  the update at d = {D}, µs per observation       maths (bench_update)   service (decode+learn+encode)   target")
    print(f"    one observation                          {single_maths:>10.2f}   {update[1]:>26.2f}   < {SINGLE_US:g}")
    print(f"    in a batch of 500                        {batch_maths:>10.2f}   {update[500]:>26.2f}   < {BATCH_US:g}")
    if 0 in http:
        v = http[0]
        print(f"\n  feedback (HTTP, server process) then predict (this process): the update was used by "
              f"{int(v['seen'])}/{int(v['trials'])} immediate predictions (predict p50 {v['p50']:.2f} ms, p99 {v['p99']:.2f} ms)")
    best = max([local[500]["rate"]] + ([http[500]["obs_rate"]] if 500 in http else []))
    batched_http = http[500]["obs_rate"] if 500 in http else float("nan")
    print("\n  goals:")
    print(f"    >= {BATCH_GOAL:,.0f} obs/s batched: HTTP {batched_http:,.0f}, in-process {local[500]['rate']:,.0f} "
          f"-> {'met' if best >= BATCH_GOAL and (500 not in http or batched_http >= BATCH_GOAL) else 'NOT met'}")
    print(f"    the update < {SINGLE_US:g} µs for one observation (the maths): {single_maths:.1f} -> "
          f"{'met' if single_maths < SINGLE_US else 'NOT met'}; in the service, with decoding and encoding "
          f"the state between two round trips: {update[1]:.1f}")
    print(f"    the update < {BATCH_US:g} µs per observation batched (the maths): {batch_maths:.2f} -> "
          f"{'met' if batch_maths < BATCH_US else 'NOT met'}; in the service, decode + learn + encode: {update[500]:.2f}")
    print(f"  total run {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
