"""The evaluation store's window query over a million logged predictions with their feedback.

    PYTHONPATH=. python3 bench/bench_eval.py [--rows 1000000] [--registry URL]

Generates a repository with a trained-model record (its kept training labels name items
1..1000, so every item slice is computed) and ``--rows`` observations in the feedback log (``fs_feedback``: each a logged prediction with its label, the personalised and the
average-user prediction, the user's cohort and a slice value, spread over 30 days, 10,000 users
and 2,000 items), plus 20,000 logged predictions (``fs_predictions``, d = 9) for the drift query.
Then, each case in its own process (so its peak memory is its own), wall time, CPU time and
peak resident memory of:

* ``evaluate`` over the last 7 days and over everything, every slice, with the feedback view
  exported to Parquet (what a server keeps it as: every 10 s), read by DuckDB;
* the same with nothing exported, every row read from the registry database (the SQL tail);
* the reference: ``models status`` (``featurestore.feedback.model_status``), the existing SQL
  aggregation in the registry database over the same rows (all time, one slice family);
* ``feature_drift`` over the last hour against the 7 days before it.

Target from issue 18: a window query over a million logged predictions in about a second.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import peak_rss_mb, run_isolated

DEFS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
  - name: item
    join_keys: [{name: item_id, dtype: int64}]
sources:
  - {name: src, type: parquet, path: data/x.parquet, timestamp_field: ts}
feature_views:
  - name: item_vec
    entities: [item]
    source: src
    features:
      - {name: vec, dtype: "float32[8]"}
models:
  - name: taste
    user_entity: user
    item_entity: item
    features: [item_vec:vec]
    label: rating
    slice_column: device
"""
D = 9
NOW = datetime.now(timezone.utc).replace(microsecond=0)


def _store(root: Path, registry: str | None):
    from featurestore import FeatureStore

    overrides = {"online_store": {"type": "embedded"}}
    if registry:
        overrides["registry"] = registry
    return FeatureStore(root, config_overrides=overrides, registry_refresh_seconds=0)


def generate(root: Path, rows: int, registry: str | None) -> None:
    import sqlalchemy as sa

    from featurestore.models.state_store import FeatureBlock, ModelLayout
    from registry import tables as t

    (root / "features").mkdir(parents=True)
    (root / "features" / "defs.yaml").write_text(DEFS)
    (root / "featurestore.yaml").write_text(f"project: bench{uuid.uuid4().hex[:8]}\n")
    store = _store(root, registry)
    store.apply()
    project = store.project
    created = NOW - timedelta(days=31)
    artifact = store.context.artifact_dir("taste", 1)
    artifact.mkdir(parents=True)
    layout = ModelLayout("taste", "user", "item", (FeatureBlock("item_vec", "vec", "float32[8]", 8),), (), (),
                         True, "squared_error", 1.0)
    rng = np.random.default_rng(0)
    w_avg = rng.normal(size=D)
    (artifact / "manifest.json").write_text(json.dumps({"layout": layout.to_dict(), "average": w_avg.tolist()}))
    # The labels `featurestore train` keeps beside a version: its training items are 1..1000, so
    # the items=known / items=new slices are computed (a join against 1,000 keys).
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"user_id": pa.array(np.arange(5_000) % 10_000, pa.int64()),
                             "item_id": pa.array(np.arange(5_000) % 1_000 + 1, pa.int64()),
                             "rating": pa.array(np.full(5_000, 3.0))}), artifact / "labels.parquet")
    with store.registry.engine.begin() as conn:
        conn.execute(sa.insert(t.model_versions).values(
            project=project, model="taste", version=1, created_at=created, registry_version=1,
            data_start=created - timedelta(days=30), data_end=created,
            metrics=json.dumps({"objective": "squared_error", "loss": 0.8, "validation_loss": 0.9}),
            artifact=str(artifact)))
        conn.execute(sa.insert(t.active_models).values(project=project, model="taste", version=1, activated_at=created))
    started = time.perf_counter()
    batch = 100_000
    blob = np.zeros(D).tobytes()
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        users = rng.integers(0, 10_000, n)
        items = np.minimum(rng.zipf(1.3, n), 2_000)
        label = np.round(rng.normal(3.5, 1.0, n), 1)
        pred = label + rng.normal(0, 0.8, n)
        base = label + rng.normal(0, 1.0, n)
        ago_us = (np.arange(start, start + n) * (30 * 86_400e6 / rows)).astype(np.int64)
        records = [
            {"project": project, "feedback_id": f"f{start + k}", "model": "taste", "model_version": 1,
             "user_key": str(users[k]), "item_key": str(items[k]), "label": float(label[k]),
             "prediction_id": None, "features": blob, "prediction": float(pred[k]), "baseline": float(base[k]),
             "slice": ("new" if users[k] % 10 == 0 else "known") + ("|mobile" if k % 3 else "|web"),
             "event_ts": NOW - timedelta(microseconds=int(ago_us[k])), "received_at": NOW, "pending": False}
            for k in range(n)
        ]
        with store.registry.engine.begin() as conn:
            conn.execute(sa.insert(t.feedback), records)
    print(f"  generated {rows:,} feedback rows in {time.perf_counter() - started:.1f} s", flush=True)
    predictions = []
    for k in range(2_000):  # 20,000 candidate vectors: 10 per prediction
        x = rng.normal(size=(10, D)) + (0.5 if k < 1_000 else 0.0)
        at = NOW - (timedelta(minutes=k % 50) if k < 1_000 else timedelta(days=1 + k % 6))
        predictions.append({"prediction_id": uuid.uuid4().hex, "project": project, "model": "taste",
                            "model_version": 1, "user_key": "1", "items": json.dumps([str(i) for i in range(10)]),
                            "features": x.tobytes(), "dimension": D, "created_at": at})
    with store.registry.engine.begin() as conn:
        conn.execute(sa.insert(t.predictions), predictions)
    store.close()


def export(root: Path, registry: str | None) -> None:
    from featurestore.feedback.export import export_feedback

    store = _store(root, registry)
    started = time.perf_counter()
    result = export_feedback(store.context, "taste")
    print(f"  exported the feedback view in {time.perf_counter() - started:.1f} s: {result.summary()}", flush=True)
    store.close()


def case(root: Path, registry: str | None, name: str) -> dict:
    from featurestore.evaluation import evaluate, feature_drift
    from featurestore.feedback import model_status

    store = _store(root, registry)
    store.watcher.refresh(force=True)
    import duckdb  # noqa: F401 - import cost is not the query's

    wall, cpu = time.perf_counter(), time.process_time()
    if name in ("window_7d", "window_7d_sql"):
        table = evaluate(store, models=["taste"], window="7d")
    elif name in ("all_time", "all_time_sql"):
        table = evaluate(store, models=["taste"], window="all")
    elif name == "reference_status":
        status = model_status(store.context, "taste", min_observations=1)
        table = None
        rows = status.overall.count
    else:
        table = feature_drift(store, "taste", window="1h", reference="7d")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    if table is not None:
        counts = [r["count"] for r in table.to_pylist() if r.get("slice") == "all"] if "count" in table.column_names else []
        rows = counts[0] if counts else int((table.schema.metadata or {}).get(b"window_vectors", b"0"))
    store.close()
    return {"wall": wall, "cpu": cpu, "peak_mb": peak_rss_mb(), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--registry", default=None, help="a registry URL (default: the embedded SQLite file)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repo", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(case(Path(args.repo), args.registry, args.case)))
        return
    root = Path(tempfile.mkdtemp(prefix="bench-eval-")) / "repo"
    extra = ["--registry", args.registry] if args.registry else []
    try:
        print(f"evaluation store, {args.rows:,} logged predictions with feedback over 30 days "
              f"({'embedded SQLite' if not args.registry else 'registry ' + args.registry.split('@')[-1]})")
        generate(root, args.rows, args.registry)
        this = str(Path(__file__).resolve())
        results = {}
        for name in ("window_7d_sql", "all_time_sql", "reference_status"):
            results[name] = run_isolated([this, "--case", name, "--repo", str(root), *extra])
        export(root, args.registry)
        for name in ("window_7d", "all_time", "drift_1h"):
            results[name] = run_isolated([this, "--case", name, "--repo", str(root), *extra])
        labels = {
            "window_7d": "evaluate, last 7d, Parquet view",
            "all_time": "evaluate, all time, Parquet view",
            "window_7d_sql": "evaluate, last 7d, nothing exported (SQL)",
            "all_time_sql": "evaluate, all time, nothing exported (SQL)",
            "reference_status": "reference: models status (SQL group-by)",
            "drift_1h": "feature_drift, last 1h vs 7d before",
        }
        print(f"  {'case':44} {'rows':>10} {'wall s':>8} {'cpu s':>8} {'peak MB':>8}")
        for name in ("window_7d", "all_time", "window_7d_sql", "all_time_sql", "reference_status", "drift_1h"):
            r = results[name]
            print(f"  {labels[name]:44} {r['rows']:>10,} {r['wall']:>8.3f} {r['cpu']:>8.3f} {r['peak_mb']:>8.0f}")
    finally:
        shutil.rmtree(root.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
