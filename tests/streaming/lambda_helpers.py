"""Batch history + stream tail ("lambda") test kit: a repository with two aggregated views
(sliding and tumbling, every aggregation kind, a created timestamp), events, the batch job run
in-process, and the reference every combination must equal: one batch job over all events.

The in-process batch run calls what the Beam batch job's steps call, without the runner
(seconds per run): ``validate_batch`` on the source rows, ``window_rows`` for the interval's
windows (``AggregateByDate``), ``latest_per_entity`` + ``OnlineWriter`` (``WriteOnline``), and
``BatchPanes`` (plan, staged partials, publish). ``test_lambda.py`` also runs the real pipelines.
"""

from __future__ import annotations

import random
import uuid
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore import FeatureStore
from featurestore.offline import layout
from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.sources import EPOCH, Interval, with_ordinal
from featurestore.streams.redis_streams import connect
from materializers.aggregate_transforms import read_interval
from materializers.aggregates import (
    PANE,
    merge_partials,
    pane_partials,
    slide_us,
    window_ends,
    window_rows,
)
from materializers.batch_panes import BatchPanes, Published
from materializers.online_write import OnlineWriter, latest_per_entity
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema
from materializers.validate import validate_batch
from tests.streaming.helpers import TS, UTC, us

MIN = 60_000_000
STEP = 5 * MIN
USERS = 4
VIEWS = ("sliding", "tumbling")

DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{{name: user_id, dtype: int64}}]
sources:
  - name: events
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
    created_timestamp_field: created
feature_views:
  - name: sliding
    entities: [user]
    source: events
    stream_source: {{type: redis_stream, stream: {stream}_sliding, group: fs{url}}}
    features:
      - {{name: n_15m, dtype: int64, aggregation: {{function: count, window: 15m, slide: 5m}}}}
      - {{name: clicks_10m, dtype: int64, aggregation: {{function: sum, column: clicks, window: 10m, slide: 5m}}}}
      - {{name: amount_10m, dtype: float64, aggregation: {{function: mean, column: amount, window: 10m, slide: 5m}}}}
      - {{name: low_15m, dtype: int64, aggregation: {{function: min, column: clicks, window: 15m, slide: 5m}}}}
      - {{name: high_5m, dtype: float64, aggregation: {{function: max, column: amount, window: 5m, slide: 5m}}}}
      - {{name: page_15m, dtype: string, aggregation: {{function: last, column: page, window: 15m, slide: 5m}}}}
  - name: tumbling
    entities: [user]
    source: events
    stream_source: {{type: redis_stream, stream: {stream}_tumbling, group: fs{url}}}
    features:
      - {{name: n_5m, dtype: int64, aggregation: {{function: count, column: amount, window: 5m}}}}
      - {{name: clicks_5m, dtype: int64, aggregation: {{function: sum, column: clicks, window: 5m}}}}
      - {{name: amount_5m, dtype: float64, aggregation: {{function: mean, column: amount, window: 5m}}}}
      - {{name: low_5m, dtype: float64, aggregation: {{function: min, column: amount, window: 5m}}}}
      - {{name: high_5m, dtype: int64, aggregation: {{function: max, column: clicks, window: 5m}}}}
      - {{name: page_5m, dtype: string, aggregation: {{function: last, column: page, window: 5m}}}}
"""


def make_lambda_repo(
    root: Path, project: str, redis_url: str, online: str = "redis", registry: str | None = None
) -> Path:
    """The repository; ``online`` is ``redis``, ``cluster`` (``redis_url`` is then a node of a
    Redis Cluster, which holds the streams too) or ``embedded`` (the streams and their state are
    in Redis either way); ``registry`` a database URL (PostgreSQL for the production profile),
    else SQLite in the repository."""
    stream = f"fs_lambda_{uuid.uuid4().hex[:10]}"
    (root / "features").mkdir(parents=True)
    (root / "data" / "src").mkdir(parents=True)
    store = {
        "redis": f"{{type: redis, url: '{redis_url}'}}",
        "cluster": f"{{type: redis, cluster: true, url: '{redis_url}'}}",
        "embedded": "{type: embedded, path: data/online.db}",
    }[online]
    (root / "featurestore.yaml").write_text(
        f"project: {project}\nregistry: {registry or 'sqlite:///data/registry.db'}\ndefinitions: [features]\n"
        f"offline_store: {{path: data/offline}}\nonline_store: {store}\n"
    )
    url = "" if online in ("redis", "cluster") else f", url: '{redis_url}'"
    (root / "features" / "defs.yaml").write_text(DEFINITIONS.format(stream=stream, url=url))
    return root


def make_lambda_events(seed: int, n: int, start_us: int, span_us: int) -> list[dict[str, Any]]:
    """``n`` events in [start, start + span): distinct times, values exact in binary, some nulls."""
    rng = random.Random(seed)
    stamps = sorted(rng.sample(range(span_us), n))
    return [
        {
            "user_id": rng.randrange(USERS),
            "ts": start_us + s,
            "created": start_us + s + rng.randrange(0, 4) * 1_000_000,
            "clicks": rng.choice([1, 2, 3, 5, 8]),
            "amount": rng.choice([None, 0.25, 0.5, 1.0, 2.5, -1.5]),
            "page": rng.choice([None, "home", "cart", "item"]),
        }
        for s in stamps
    ]


def _dt(value_us: int) -> datetime:
    return datetime.fromtimestamp(value_us / 1_000_000, UTC)


def as_push(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**e, "ts": _dt(e["ts"]), "created": _dt(e["created"])} for e in events]


def source_table(events: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([e["user_id"] for e in events], pa.int64()),
            "ts": pa.array([e["ts"] for e in events], pa.int64()).cast(TS),
            "created": pa.array([e["created"] for e in events], pa.int64()).cast(TS),
            "clicks": pa.array([e["clicks"] for e in events], pa.int64()),
            "amount": pa.array([e["amount"] for e in events], pa.float64()),
            "page": pa.array([e["page"] for e in events], pa.string()),
        }
    )


def write_source(repo: Path, events: list[dict[str, Any]]) -> None:
    pq.write_table(source_table(events), repo / "data" / "src" / "events.parquet")


# -- the batch job, in-process ---------------------------------------------------------------------


def batch_in_process(
    store: FeatureStore,
    view: str,
    events: list[dict[str, Any]],
    end_us: int,
    publish: bool = True,
    start_us: int | None = None,
) -> tuple[pa.Table, Published | None]:
    """A batch run of ``view`` over [epoch or ``start_us``, end) with ``events`` as its
    source, as the pipeline does it (``NewestEvent``, the window limit, the staged panes): its
    window rows (what it writes offline) and what it handed to the stream job."""
    schema = ViewSchema.of(store.definitions(), view)
    interval = Interval.of(EPOCH if start_us is None else _dt(start_us), _dt(end_us))
    run = SimpleNamespace(schema=schema, interval=interval, run_id=f"run-{uuid.uuid4().hex[:8]}")
    panes = BatchPanes.plan(store, run)  # type: ignore[arg-type]
    assert panes is not None
    batch = with_ordinal(source_table(events).to_batches()[0], 0, 0) if events else None
    valid = (
        pa.Table.from_batches(
            [validate_batch(batch, schema.event_schema(), read_interval(schema, interval)).valid]
        )
        if batch is not None
        else schema.event_schema().validated_schema().empty_table()
    )
    newest = (
        pc.max(pc.cast(valid.column(EVENT_TS), pa.int64())).as_py()
        if valid.num_rows
        else None
    )
    lo, hi = window_ends(us_of(interval.start), end_us, schema)
    limit = panes.window_limit(newest)
    rows = window_rows(
        pane_partials(valid, schema), schema, lo=lo, hi=hi if limit is None else min(hi, limit)
    )
    for _ in OnlineWriter(schema, store.online_store).write(latest_per_entity(rows, schema)):
        pass
    partials = panes.resolved(newest).partials(valid)
    client = connect(panes.stream_url)
    try:
        pane = partials.column(PANE).to_numpy()
        for p in np.unique(pane).tolist():
            picked = partials.filter(pa.array(pane == p))
            panes.write_stage(client, p, merge_partials(picked, schema))
        if newest is not None:
            panes.record_newest(client, newest)
    finally:
        client.close()
    return rows, panes.publish(store.online_store) if publish else None


# -- reading what the jobs wrote, and the reference ------------------------------------------------


def online_values(store: FeatureStore, view: str) -> dict[int, tuple[int, dict[str, Any]]]:
    """user -> (event time µs, {feature: value})."""
    spec = store.get_feature_view(view)
    names = [f.name for f in spec.features]
    codec = ValueCodec([f.dtype for f in spec.features])
    keys = [encode_entity_key(["int64"], [u]) for u in range(USERS)]
    got = store.online_store.read_latest([(view, k) for k in keys])
    return {
        u: (g[0], dict(zip(names, codec.decode(g[1]))))
        for u, g in zip(range(USERS), got)
        if g is not None
    }


def rows_by_window(table: pa.Table, schema: ViewSchema) -> dict[tuple[int, int], dict[str, Any]]:
    """(user, window end µs) -> features and created µs; no (user, end) twice."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    ends = pc.cast(table.column(EVENT_TS), pa.int64()).to_pylist()
    created = pc.cast(table.column(CREATED_TS), pa.int64()).to_pylist()
    for row, end, c in zip(table.to_pylist(), ends, created):
        key = (row["user_id"], end)
        assert key not in out, f"window {key} written twice"
        out[key] = {**{f: row[f] for f in schema.feature_names}, CREATED_TS: c}
    return out


def stream_files(store: FeatureStore, view: str) -> pa.Table | None:
    root = layout.view_dir(store.config.offline_path, store.project, view)
    tables = [pq.read_table(p) for p in sorted(root.glob("date=*/stream-*.parquet"))]
    return pa.concat_tables(tables) if tables else None


def reference(events: list[dict[str, Any]], schema: ViewSchema) -> dict[tuple[int, int], dict]:
    """(user, window end µs) -> features and created: every window with an event, computed the
    obvious way: what one batch job over all events must write."""
    step = slide_us(schema)
    k_max = max(a.panes for a in schema.aggregates)
    ends = {(e["user_id"], e["ts"] // step + 1 + j) for e in events for j in range(k_max)}
    out = {}
    for user, end in ends:
        mine = [e for e in events if e["user_id"] == user]
        values: dict[str, Any] = {}
        for a in schema.aggregates:
            inside = [e for e in mine if end - a.panes <= e["ts"] // step < end]
            having = [e for e in inside if a.column is None or e[a.column] is not None]
            vals = [e[a.column] for e in having] if a.column else []
            if a.function == "count":
                values[a.feature] = len(having)
            elif a.function == "sum":
                values[a.feature] = sum(vals)
            elif a.function == "mean":
                values[a.feature] = sum(vals) / len(vals) if vals else None
            elif a.function == "min":
                values[a.feature] = min(vals, default=None)
            elif a.function == "max":
                values[a.feature] = max(vals, default=None)
            else:
                best = max(having, key=lambda e: (e["ts"], e["created"]), default=None)
                values[a.feature] = None if best is None else best[a.column]
        largest = [e for e in mine if end - k_max <= e["ts"] // step < end]
        values[CREATED_TS] = max(e["created"] for e in largest)
        out[(user, end * step)] = values
    return out


def expected_online(
    events: list[dict[str, Any]], schema: ViewSchema
) -> dict[int, tuple[int, dict[str, Any]]]:
    """Each user's latest window (every event here is old enough for it to be closed)."""
    windows = reference(events, schema)
    k_max = max(a.panes for a in schema.aggregates)
    step = slide_us(schema)
    out = {}
    for user in {e["user_id"] for e in events}:
        end = (max(e["ts"] for e in events if e["user_id"] == user) // step + k_max) * step
        values = dict(windows[(user, end)])
        values.pop(CREATED_TS)
        out[user] = (end, values)
    return out


def us_of(value: datetime) -> int:
    return us(value)
