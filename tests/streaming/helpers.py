"""A small streaming repository: a plain view and an aggregated view fed by one event source
(Parquet for the batch job, a Redis Stream per view for the stream job), and helpers to make
events, read the online store and wait for a job."""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from featurestore import FeatureStore
from featurestore.online.codec import ValueCodec, encode_entity_key

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")
USERS = 12

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
    stream_source: {{type: redis_stream, stream: {stream}_last, group: fs}}
    features:
      - {{name: clicks, dtype: int64}}
      - {{name: amount, dtype: float64}}
      - {{name: page, dtype: string}}
  - name: user_agg
    entities: [user]
    source: events
    stream_source: {{type: redis_stream, stream: {stream}_agg, group: fs}}
    features:
      - {{name: n_10m, dtype: int64, aggregation: {{function: count, window: 10m, slide: 5m}}}}
      - {{name: clicks_10m, dtype: int64, aggregation: {{function: sum, column: clicks, window: 10m, slide: 5m}}}}
      - {{name: amount_5m, dtype: float64, aggregation: {{function: mean, column: amount, window: 5m, slide: 5m}}}}
      - {{name: top_10m, dtype: int64, aggregation: {{function: max, column: clicks, window: 10m, slide: 5m}}}}
      - {{name: page_10m, dtype: string, aggregation: {{function: last, column: page, window: 10m, slide: 5m}}}}
"""


def make_repo(root: Path, project: str, redis_url: str, stream: str | None = None) -> Path:
    """A repository whose streams are named ``{stream}_last`` and ``{stream}_agg``."""
    stream = stream or f"fs_test_{uuid.uuid4().hex[:10]}"
    (root / "features").mkdir(parents=True)
    (root / "data" / "src").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\n"
        f"online_store: {{type: redis, url: '{redis_url}'}}\n"
    )
    (root / "features" / "defs.yaml").write_text(DEFINITIONS.format(stream=stream))
    return root


def make_events(n: int, start: datetime, end: datetime, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` events spread over [start, end), distinct (user, time); values exact in binary."""
    rng = random.Random(seed)
    span = int((end - start).total_seconds() * 1_000_000)
    stamps = sorted(rng.sample(range(span), n))
    return [
        {
            "user_id": rng.randrange(USERS),
            "ts": start + timedelta(microseconds=s),
            "clicks": rng.randrange(1, 9),
            "amount": rng.choice([0.25, 0.5, 1.0, 2.5]),
            "page": rng.choice(["home", "cart", "item"]),
        }
        for s in stamps
    ]


def write_source(repo: Path, events: list[dict[str, Any]]) -> None:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([e["user_id"] for e in events], pa.int64()),
                "ts": pa.array([e["ts"] for e in events], TS),
                "clicks": pa.array([e["clicks"] for e in events], pa.int64()),
                "amount": pa.array([e["amount"] for e in events], pa.float64()),
                "page": pa.array([e["page"] for e in events], pa.string()),
            }
        ),
        repo / "data" / "src" / "events.parquet",
    )


def push_all(store: FeatureStore, events: list[dict[str, Any]], chunk: int = 500) -> None:
    """Every event to both views' streams (the aggregated view reads only its columns)."""
    for start in range(0, len(events), chunk):
        part = events[start : start + chunk]
        store.push("user_last", part)
        store.push(
            "user_agg",
            [{k: e[k] for k in ("user_id", "ts", "clicks", "amount", "page")} for e in part],
        )


def online(store: FeatureStore, view: str) -> dict[int, tuple[int, tuple]]:
    """user -> (event time µs, decoded values) of every user with a value."""
    spec = store.get_feature_view(view)
    codec = ValueCodec([f.dtype for f in spec.features])
    keys = [encode_entity_key(["int64"], [u]) for u in range(USERS)]
    got = store.online_store.read_latest([(view, k) for k in keys])
    return {u: (g[0], codec.decode(g[1])) for u, g in zip(range(USERS), got) if g is not None}


def group_state(redis_url: str, stream: str, group: str = "fs") -> tuple[int, int]:
    """(entries not delivered yet, delivered but not acknowledged) of a consumer group."""
    client = redis.Redis.from_url(redis_url)
    try:
        for info in client.xinfo_groups(stream):
            if info["name"] in (group, group.encode()):
                return int(info.get("lag") or 0), int(info["pending"])
        return client.xlen(stream), 0
    except redis.ResponseError:
        return 0, 0
    finally:
        client.close()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def us(value: datetime) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def expected_last(events: list[dict[str, Any]]) -> dict[int, tuple[int, tuple]]:
    out: dict[int, tuple[int, tuple]] = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        out[e["user_id"]] = (us(e["ts"]), (e["clicks"], e["amount"], e["page"]))
    return out


def expected_agg(events: list[dict[str, Any]], now: datetime) -> dict[int, tuple[int, tuple]]:
    """The online value of the aggregated view, computed directly: each user's latest window
    that has started (ending at min(latest pane + 2, current end), 5-minute slides)."""
    step = 300_000_000
    current_end = us(now) // step + 1
    out = {}
    for user in {e["user_id"] for e in events}:
        mine = [e for e in events if e["user_id"] == user and us(e["ts"]) // step < current_end]
        if not mine:
            continue
        end = min(max(us(e["ts"]) // step for e in mine) + 2, current_end)
        big = [e for e in mine if end - 2 <= us(e["ts"]) // step < end]
        small = [e for e in mine if end - 1 <= us(e["ts"]) // step < end]
        last = max(big, key=lambda e: e["ts"])
        mean = sum(e["amount"] for e in small) / len(small) if small else None
        out[user] = (
            end * step,
            (
                len(big),
                sum(e["clicks"] for e in big),
                mean,
                max(e["clicks"] for e in big),
                last["page"],
            ),
        )
    return out


def streams_of(repo: Path) -> list[str]:
    """The stream names of the repository's views, in declaration order."""
    text = (Path(repo) / "features" / "defs.yaml").read_text()
    return [
        line.split("stream: ")[1].split(",")[0] for line in text.splitlines() if "stream: " in line
    ]
