"""Benchmark: stream materialization (``featurestore stream``, a subprocess) next to a plain
redis-py consumer that reads the same kind of stream and writes the same keys without Beam.

    python bench/bench_stream.py            # drain 200k events; 3 steady rates, 20 s each
    python bench/bench_stream.py --quick    # drain 40k events; 2 steady rates, 6 s each

Two measurements, each for both consumers:

* **capacity** (drain): N events already in the stream, the consumer started; events/s between
  10% and 90% read (the group's ``entries-read``), so start-up is not counted;
* **steady rate**: a producer process appends events at a fixed rate for a bounded time, each
  stamped with the time it is appended; the lag is the time from that stamp to the event's
  online write. The job's lags come from its own freshness histogram (the ``stream_stats``
  blob: the difference of the cumulative counts at the start and end of the phase); the plain
  consumer measures its own the same way (after its pipeline returns). The rates are fractions
  of the job's capacity; a rate is *sustained* when the backlog is drained at the end and p99
  is under 2 s.

The job does more than the reference: it validates and casts every event, keeps the latest per
entity newer-only (a Lua script), writes the offline store (Parquet, per 1-minute window) and
acknowledges only after both; the reference decodes JSON, encodes the same key and value,
MSETs and acknowledges. Needs Redis at $BENCH_REDIS_URL (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
USERS = 10_000
GOAL_P99 = 2.0

DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - name: events
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
feature_views:
  - name: user_last
    entities: [user]
    source: events
    stream_source: {{type: redis_stream, stream: {stream}, group: fs}}
    features:
      - {{name: clicks, dtype: int64}}
      - {{name: amount, dtype: float64}}
      - {{name: page, dtype: string}}
"""


def redis_client():  # type: ignore[no-untyped-def]
    import redis

    return redis.Redis.from_url(REDIS_URL)


def payload(i: int, ts: str) -> bytes:
    return (
        f'{{"user_id":{i % USERS},"ts":"{ts}","clicks":{i % 7},"amount":{(i % 13) * 0.5},'
        f'"page":"p{i % 5}"}}'
    ).encode()


def now_text() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def preload(stream: str, n: int) -> None:
    client = redis_client()
    ts = now_text()
    for start in range(0, n, 10_000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 10_000)):
            pipe.xadd(stream, {b"data": payload(i, ts)})
        pipe.execute()
    client.close()


def produce(stream: str, rate: float, seconds: float) -> None:
    """Append ``rate`` events/s for ``seconds``, in ticks of 10 ms, each stamped at its tick."""
    client = redis_client()
    tick = 0.01
    start = time.monotonic()
    sent = 0
    i = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int(rate * min(elapsed + tick, seconds))
        if due > sent:
            ts = now_text()
            pipe = client.pipeline(transaction=False)
            for _ in range(due - sent):
                pipe.xadd(stream, {b"data": payload(i, ts)})
                i += 1
            pipe.execute()
            sent = due
        time.sleep(max(0.0, start + elapsed + tick - time.monotonic()))
    client.close()


def group_info(stream: str, group: str) -> dict:
    client = redis_client()
    try:
        for info in client.xinfo_groups(stream):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name == group:
                return {
                    "read": int(info.get("entries-read") or 0),
                    "lag": int(info.get("lag") or 0),
                    "pending": int(info["pending"]),
                }
    finally:
        client.close()
    return {"read": 0, "lag": 0, "pending": 0}


def drain_rate(stream: str, group: str, n: int, timeout: float = 600) -> float:
    """Events/s between 10% and 90% of ``n`` read by ``group``."""
    marks: dict[float, float] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        read = group_info(stream, group)["read"]
        now = time.monotonic()
        if read >= 0.1 * n and 0.1 not in marks:
            marks[0.1] = now
            first = read
        if read >= 0.9 * n:
            return (read - first) / max(now - marks[0.1], 1e-9)
        time.sleep(0.02)
    raise SystemExit(f"{group} did not drain {n} events in {timeout} s")


# -- the plain consumer ----------------------------------------------------------------------------


def plain_consumer(stream: str, project: str, stop_at: float, lags_out: str) -> None:
    """XREADGROUP -> json -> the online store's key and value -> MSET -> XACK; records lags."""
    sys.path.insert(0, str(ROOT))
    import struct

    import redis

    from featurestore.online.codec import ValueCodec, encode_entity_key

    client = redis_client()
    try:
        client.xgroup_create(stream, "plain", id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
    codec = ValueCodec(["int64", "float64", "string"])
    header = struct.Struct("<qq")
    prefix = f"{project}:user_last:".encode()
    lags: list[np.ndarray] = []
    while time.time() < stop_at:
        reply = client.xreadgroup("plain", "c1", {stream: ">"}, count=4000, block=100)
        if not reply:
            continue
        entries = reply[0][1]
        flat: list[bytes] = []
        stamps = []
        for _, fields in entries:
            event = json.loads(fields[b"data"])
            ts = datetime.fromisoformat(event["ts"])
            ts_us = int(ts.timestamp() * 1_000_000)
            stamps.append(ts_us)
            key = prefix + encode_entity_key(["int64"], [event["user_id"]])
            value = header.pack(ts_us, ts_us) + codec.encode_row(
                [event["clicks"], event["amount"], event["page"]]
            )
            flat += (key, value)
        pipe = client.pipeline(transaction=False)
        pipe.execute_command("MSET", *flat)
        pipe.xack(stream, "plain", *[e[0] for e in entries])
        pipe.execute()
        lags.append(time.time() - np.array(stamps) / 1e6)
    np.save(lags_out, np.concatenate(lags) if lags else np.zeros(0))
    client.close()


# -- the job ---------------------------------------------------------------------------------------


def make_repo(stream: str) -> tuple[Path, str]:
    project = "bench" + uuid.uuid4().hex[:8]
    repo = OUT / f"stream-{project}"
    shutil.rmtree(repo, ignore_errors=True)
    (repo / "features").mkdir(parents=True)
    (repo / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\n"
        f"online_store: {{type: redis, url: '{REDIS_URL}'}}\n"
    )
    (repo / "features" / "defs.yaml").write_text(DEFINITIONS.format(stream=stream))
    (repo / "data").mkdir()
    from featurestore import FeatureStore

    with FeatureStore(repo) as store:
        store.apply()
    return repo, project


def start_job(repo: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurestore.cli.main",
            "-r",
            str(repo),
            "stream",
            "--consumer",
            "bench",
            "--stats-interval",
            "1s",
            "--window",
            "1m",
            "--grace",
            "1s",
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def job_histogram(project: str) -> np.ndarray:
    from materializers.freshness import histogram_counts

    client = redis_client()
    raw = client.get(f"{project}:__blob__:stream_stats:user_last".encode())
    client.close()
    return histogram_counts(json.loads(raw)) if raw else histogram_counts({})


def quantiles_of(counts: np.ndarray) -> tuple[float | None, float | None]:
    from materializers.freshness import quantile

    return quantile(counts, 0.5), quantile(counts, 0.99)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    drain_n = 80_000 if args.quick else 200_000
    seconds = 6.0 if args.quick else 20.0
    fractions = (0.3, 0.7) if args.quick else (0.25, 0.5, 0.8, 1.0)
    OUT.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    stream = f"bench_stream_{tag}"
    plain_stream = f"bench_plain_{tag}"
    repo, project = make_repo(stream)
    rows: list[tuple] = []
    client = redis_client()
    job = None
    try:
        # -- capacity ---------------------------------------------------------------------------
        preload(stream, drain_n)
        # Both read the same entries, each through its own group, one after the other.
        client.xgroup_create(stream, "plain", id="0")
        done = OUT / f"lags-{tag}.npy"
        plain = mp.Process(
            target=plain_consumer, args=(stream, project + "p", time.time() + 600, str(done))
        )
        plain.start()
        plain_capacity = drain_rate(stream, "plain", drain_n)
        plain.terminate()
        plain.join()
        job = start_job(repo)
        job_capacity = drain_rate(stream, "fs", drain_n)
        rows.append(("capacity (drain)", "featurestore stream", "-", job_capacity, None, None, "-"))
        rows.append(("capacity (drain)", "plain redis-py", "-", plain_capacity, None, None, "-"))

        # -- steady rates ------------------------------------------------------------------------
        sustained = 0.0
        for fraction in fractions:
            rate = round(job_capacity * fraction, -2)
            # featurestore stream
            time.sleep(2.0)
            before = job_histogram(project)
            producer = mp.Process(target=produce, args=(stream, rate, seconds))
            producer.start()
            producer.join()
            time.sleep(2.5)  # the last events' lags reach the job's stats blob
            counts = job_histogram(project) - before
            info = group_info(stream, "fs")
            p50, p99 = quantiles_of(counts)
            handled = counts.sum() / seconds
            rows.append(
                (
                    f"steady {int(fraction * 100)}%",
                    "featurestore stream",
                    rate,
                    handled,
                    p50,
                    p99,
                    info["lag"],
                )
            )
            if info["lag"] == 0 and p99 is not None and p99 < GOAL_P99:
                sustained = max(sustained, rate)
            # plain consumer, on its own stream, job paused
            job.send_signal(signal.SIGSTOP)
            lag_file = OUT / f"lags-{tag}-{fraction}.npy"
            plain = mp.Process(
                target=plain_consumer,
                args=(plain_stream, project + "p", time.time() + seconds + 2.5, str(lag_file)),
            )
            plain.start()
            time.sleep(0.5)
            producer = mp.Process(target=produce, args=(plain_stream, rate, seconds))
            producer.start()
            producer.join()
            plain.join()
            job.send_signal(signal.SIGCONT)
            lags = np.load(lag_file)
            lag_file.unlink()
            pinfo = group_info(plain_stream, "plain")
            rows.append(
                (
                    f"steady {int(fraction * 100)}%",
                    "plain redis-py",
                    rate,
                    len(lags) / seconds,
                    float(np.percentile(lags, 50)) if len(lags) else None,
                    float(np.percentile(lags, 99)) if len(lags) else None,
                    pinfo["lag"],
                )
            )
    finally:
        if job is not None:
            job.send_signal(signal.SIGCONT)
            job.send_signal(signal.SIGTERM)
            try:
                job.wait(timeout=60)
            except subprocess.TimeoutExpired:
                job.kill()
        for key in client.scan_iter(match=f"{project}*"):
            client.delete(key)
        client.delete(stream, plain_stream)
        client.close()
        shutil.rmtree(repo, ignore_errors=True)

    print(
        f"events: user_id (of {USERS:,}), ts, clicks int64, amount float64, page string; "
        f"drain {drain_n:,} events; steady phases {seconds:.0f} s each"
    )
    header = (
        "phase",
        "consumer",
        "rate ev/s",
        "handled ev/s",
        "lag p50 s",
        "lag p99 s",
        "backlog at end",
    )
    table = [header] + [
        (p, c, r if isinstance(r, str) else f"{r:,.0f}", f"{h:,.0f}", fmt(a), fmt(b), str(g))
        for p, c, r, h, a, b, g in rows
    ]
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for r in table:
        print(
            "  ".join(
                str(v).ljust(w) if i < 2 else str(v).rjust(w)
                for i, (v, w) in enumerate(zip(r, widths))
            )
        )
    ratio = sustained / plain_capacity if plain_capacity else float("nan")
    print(
        f"highest steady rate the job sustained with p99 < {GOAL_P99:.0f} s: {sustained:,.0f} ev/s "
        f"= {ratio:.2f}x the plain consumer's capacity ({plain_capacity:,.0f} ev/s); "
        f"job capacity {job_capacity:,.0f} ev/s = {job_capacity / plain_capacity:.2f}x"
    )


if __name__ == "__main__":
    main()
