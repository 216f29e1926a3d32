"""`demo`: the whole flow on the embedded default, through the real jobs and HTTP endpoints.

generate a MovieLens-like repository -> apply -> feature job (ALS item factors) -> Beam batch
materialize -> point-in-time training export -> train the per-user model -> start the server ->
/features and /predict latency -> stream the "future" ratings through /feedback -> held-out
error of the static model vs the online-updated one -> a report and the next commands.

A second run re-uses the repository (its data is regenerated identically from the same seed,
the registry and stores are re-used: apply finds nothing to change, materialization replaces
the same intervals, training records a new model version).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

SIZES = {
    # users, items, ratings, days: the default is MovieLens-like in shape, sized to finish in
    # well under two minutes on 2 cores; --fast is what CI runs.
    "default": dict(users=2_000, items=500, ratings=120_000, days=60),
    "fast": dict(users=400, items=150, ratings=16_000, days=30),
}
HOLDOUT_FRACTION = 0.5  # the second half of the time range is "the future"
TEST_FRACTION = 0.2  # of the future: the last part is held out; the rest streams as feedback


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("directory", nargs="?", default="velox-demo", help="where the example repository lives (default: velox-demo)")
    parser.add_argument("--fast", action="store_true", help="a smaller data set (what CI runs)")
    parser.add_argument("--fresh", action="store_true", help="delete the directory's data/ first instead of re-using it")
    parser.add_argument("--port", type=int, default=0, help="port of the demo server (default: a free one)")


class _Steps:
    def __init__(self, total: int) -> None:
        self.total, self.n, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"[{self.n}/{self.total} {time.perf_counter() - self.t0:5.1f}s] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    import shutil

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore.example.data import RatingsConfig
    from featurestore.example.repo import recent_start, write_example_data, write_example_repo
    from featurestore.store import FeatureStore

    materialize = _import_materialize()

    started = time.perf_counter()
    step = _Steps(9)
    root = Path(args.directory).resolve()
    size = SIZES["fast" if args.fast else "default"]
    config = replace(RatingsConfig(), **size, start=recent_start(size["days"]))
    reused = (root / "featurestore.yaml").exists()
    if args.fresh and (root / "data").exists():
        shutil.rmtree(root / "data")
    split_day = config.days * HOLDOUT_FRACTION
    holdout = root / "data" / "holdout" / "ratings.parquet"
    if not reused:
        step(f"Creating the example repository in {root}")
        summary = write_example_repo(root, config=config, holdout_from_day=split_day)
    elif not holdout.exists():
        step(f"Re-using the repository in {root} (definitions kept), generating its data")
        summary = write_example_data(root, config, holdout_from_day=split_day)
    else:
        step(f"Re-using the repository and data in {root} (pass --fresh to regenerate the data)")
        summary = {"ratings": sum(pq.read_metadata(p).num_rows for p in (root / "data" / "source" / "ratings").glob("*.parquet")),
                   "held_out": pq.read_metadata(holdout).num_rows}
    print(f"      {summary['ratings']:,} past ratings by {config.users:,} users of {config.items:,} items; "
          f"{summary['held_out']:,} future ratings held out")

    store = FeatureStore(root, registry_refresh_seconds=0.5)
    step("Applying the definitions to the registry")
    plan, info = store.apply()
    print(f"      {plan.summary()}" + (f" -> registry version {info.version}" if info else " (nothing to change)"))

    step("Running the feature job (ALS item factors, the Velox theta) and materializing with Beam")
    job = store.run_feature_job("item_factors")
    print(f"      {job.summary()}")
    summaries = materialize(store, progress=False)
    rows = sum(s.rows_read for s in summaries)
    seconds = sum(s.seconds for s in summaries)
    for s in summaries:
        print(f"      {s.view:16} {s.rows_read:>8,} rows read, {s.rows_offline:>8,} offline, {s.rows_online:>6,} online, "
              f"{s.rows_rejected} rejected, {s.rows_per_second:>9,.0f} rows/s")

    step("Exporting a point-in-time correct training set with DuckDB")
    past = pa.concat_tables(
        [pq.read_table(p) for p in sorted((root / "data" / "source" / "ratings").glob("*.parquet"))]
    )
    cutoff = config.start.timestamp() + split_day * 86400
    # Every past rating is a training example as of the training time (the end of the past):
    # the features are those known then, as a model trained at that moment would see them.
    as_of = pa.array([_ts(cutoff)] * past.num_rows, pa.timestamp("us", tz="UTC"))
    labels = past.select(["user_id", "item_id", "rating"]).append_column("event_timestamp", as_of)
    labels_path = root / "data" / "labels.parquet"
    pq.write_table(labels, labels_path)
    dataset = store.get_training_dataset(labels, ["item_embedding:factors", "item_popularity:mean_rating_1d"])
    train_path = root / "data" / "train.parquet"
    dataset.to_parquet(train_path)
    dataset.close()
    exported = pq.read_metadata(train_path).num_rows
    print(f"      {exported:,} rows with item_embedding:factors and item_popularity:mean_rating_1d -> {train_path.relative_to(root)}")

    step("Training the per-user model `taste` (ridge per user, centred on the average user)")
    result = store.train("taste", labels_path)
    print(f"      {result.summary()}")

    step("Starting the online server (FastAPI) on the embedded store")
    port = args.port or _free_port()
    server = _start_server(root, port)
    try:
        from featurestore.client import FeatureStoreClient

        client = FeatureStoreClient(f"http://127.0.0.1:{port}", timeout=30)
        _wait_healthy(client)
        step("Measuring /features and /predict latency through HTTP")
        rng = np.random.default_rng(1)
        user_ids = np.unique(past["user_id"].to_numpy())
        feature_ms, predict_ms = [], []
        for _ in range(200):
            items = [{"item_id": int(i)} for i in rng.integers(1, config.items + 1, 10)]
            t0 = time.perf_counter()
            client.features(["item_embedding:factors", "item_popularity:mean_rating_1d"], items)
            feature_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            client.predict("taste", {"user_id": int(rng.choice(user_ids))}, [{"item_id": int(i)} for i in rng.integers(1, config.items + 1, 100)], k=10)
            predict_ms.append((time.perf_counter() - t0) * 1e3)

        step("Streaming the future ratings through /feedback, then scoring the held-out part")
        future = pq.read_table(root / "data" / "holdout" / "ratings.parquet").sort_by("event_ts")
        n_test = int(future.num_rows * TEST_FRACTION)
        stream, test = future.slice(0, future.num_rows - n_test), future.slice(future.num_rows - n_test)
        static = _score(client, test)
        t0 = time.perf_counter()
        sent = _send_feedback(client, stream, run_id=f"{time.time_ns():x}")
        feedback_seconds = time.perf_counter() - t0
        time.sleep(1.2)  # let every worker notice nothing stale (the predictor polls each second)
        online = _score(client, test)
        truth = test["rating"].to_numpy()
        rmse_static = _rmse(static, truth)
        rmse_online = _rmse(online, truth)
    finally:
        server.terminate()
        server.wait(10)
    store.close()

    total = time.perf_counter() - started
    print()
    print("=" * 78)
    print("Report")
    print("=" * 78)
    print(f"  repository      {root}  (YAML in features/, `git init` it)")
    print(f"  registry        {store.config.registry_url}")
    print(f"  offline store   {store.config.offline_path}  (Parquet, partitioned by date)")
    print(f"  online store    {store.config.resolve(store.config.online_store.path)}  (embedded SQLite)")
    print(f"  model           taste v{result.version}, artifact in {store.config.artifacts_path / store.project / '_models' / 'taste'}")
    print(f"  materialized    {rows:,} rows in {seconds:.1f} s = {rows / max(seconds, 1e-9):,.0f} rows/s (Beam, in-process runner)")
    print(f"  online read     POST /features, 10 items: p50 {_pct(feature_ms, 50):.2f} ms, p99 {_pct(feature_ms, 99):.2f} ms")
    print(f"  predict         POST /predict, 100 items, top 10: p50 {_pct(predict_ms, 50):.2f} ms, p99 {_pct(predict_ms, 99):.2f} ms")
    print(f"  feedback        {sent:,} observations through POST /feedback in {feedback_seconds:.1f} s")
    gain = (rmse_static - rmse_online) / rmse_static * 100
    print(f"  held-out RMSE   static model {rmse_static:.4f}   online-updated {rmse_online:.4f}   ({gain:+.1f}% better)"
          f"  on {len(truth):,} future ratings")
    print(f"  total time      {total:.1f} s")
    print()
    print("Next commands to try:")
    r = f"featurestore -r {args.directory}"
    print(f"  {r} registry show")
    print(f"  {r} plan")
    print(f"  {r} models list taste")
    print(f"  {r} models status taste")
    print(f"  {r} materialize --incremental")
    print(f"  {r} export --entities {args.directory}/data/labels.parquet --service item_ranking --out /tmp/train.parquet")
    print(f"  {r} serve        # then open http://127.0.0.1:8080/docs")
    return 0


def _import_materialize() -> Any:
    """Beam logs warnings about optional cloud clients it cannot find; they mean nothing here,
    and the demo's output is its progress and report."""
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    from materializers.batch import materialize

    return materialize


def _ts(seconds: float) -> Any:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(root: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    return subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli.main", "-r", str(root), "serve", "--port", str(port), "--workers", "1"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait_healthy(client: Any, timeout: float = 60) -> None:
    from registry.errors import FeatureStoreError

    deadline = time.time() + timeout
    while True:
        try:
            client.health()
            return
        except (FeatureStoreError, OSError) as exc:
            if time.time() > deadline:
                raise FeatureStoreError(f"the demo server did not start: {exc}") from None
            time.sleep(0.2)


def _score(client: Any, test: Any) -> Any:
    """Scores of the held-out (user, item) pairs, one /predict per user."""
    import numpy as np

    users = test["user_id"].to_numpy()
    items = test["item_id"].to_numpy()
    scores = np.full(len(users), np.nan)
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for group in np.split(order, bounds):
        if len(group) == 0:
            continue
        response = client.predict("taste", {"user_id": int(users[group[0]])}, [{"item_id": int(i)} for i in items[group]])
        scores[group] = [np.nan if s.get("score") is None else s["score"] for s in response["scores"]]
    return scores


def _send_feedback(client: Any, stream: Any, run_id: str, batch: int = 500) -> int:
    users = stream["user_id"].to_pylist()
    items = stream["item_id"].to_pylist()
    ratings = stream["rating"].to_pylist()
    times = stream["event_ts"].to_pylist()
    sent = 0
    for start in range(0, len(users), batch):
        observations = [
            {"model": "taste", "user": {"user_id": u}, "item": {"item_id": i}, "label": r,
             "feedback_id": f"demo-{run_id}-{start + j}", "ts": t.isoformat()}
            for j, (u, i, r, t) in enumerate(zip(users[start:start + batch], items[start:start + batch],
                                                  ratings[start:start + batch], times[start:start + batch]))
        ]
        response = client._post("/feedback", {"observations": observations})
        sent += int(response.get("accepted", len(observations)))
    return sent


def _rmse(pred: Any, truth: Any) -> float:
    import numpy as np

    mask = ~np.isnan(pred)
    return float(np.sqrt(np.mean((np.clip(pred[mask], 1, 5) - truth[mask]) ** 2)))


def _pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q))
