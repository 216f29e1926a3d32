"""Benchmark: point-in-time export vs one hand-written DuckDB ASOF JOIN over the same files.

    python bench/bench_export.py            # 10M feature rows, 1M and 4M entity rows
    python bench/bench_export.py --quick    # 1M feature rows, 100k and 400k entity rows
    python bench/bench_export.py --issue19  # issue 19's row: 1M entity rows, whole processes

Data: 100,000 entities x 10 float32 features over 30 days, written in the offline layout
(``layout.replace_interval``), and entity rows (id, time, label) uniform over the 30 days.
The view's ttl is 7 days. Data is cached under bench/out/ and reused; it has no two rows with
the same key and event time, so the export orders by event time alone (pit.has_key_time_ties);
the line "if the files had ties" forces the plan that breaks ties by created timestamp.

Each side is a whole process, measured from outside: Python start-up, its imports, (ours) the
registry definitions and the planning, the query and writing the Parquet result. The
reference process imports DuckDB alone and runs the hand-written query; ours calls
``get_training_dataset(...).to_parquet``. Wall time is the parent's clock around the child;
CPU time (user + system) and peak RSS are the child's own, from ``wait4``. Both get the same
DuckDB memory limit (--memory-limit) and threads (DuckDB's default: every core).
The sides alternate within each round (the order flips every round), so load from other work
on a shared machine falls on both; ratios are medians of the per-round ratios ours / reference.
Both write the same Parquet output, and the script checks that the two files are equal row
for row.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PROJECT = "bench"
VIEW = "stats"
ENTITIES = 100_000
FEATURES = 10
DAYS = 30
TTL_DAYS = 7
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


# -- data -------------------------------------------------------------------------------------
def data_dir(out: Path, feature_rows: int) -> Path:
    return out / f"features-{feature_rows}"


def ensure_features(out: Path, feature_rows: int) -> Path:
    """The offline store of one view with ``feature_rows`` rows, generated once."""
    import numpy as np
    import pyarrow as pa

    from featurestore.offline import layout

    root = data_dir(out, feature_rows)
    done = root / ".complete"
    if done.exists():
        return root
    rng = np.random.default_rng(1)
    schema = layout.layout_schema(
        [("entity_id", pa.int64())], [(f"f{i}", pa.float32()) for i in range(FEATURES)]
    )
    per_day = feature_rows // DAYS
    started = time.perf_counter()
    for day in range(DAYS):
        day_start = START + timedelta(days=day)
        base = int(day_start.timestamp() * 1e6)
        t = np.sort(rng.integers(0, 86_400_000_000, per_day)) + base
        columns = {
            "entity_id": rng.integers(0, ENTITIES, per_day),
            layout.EVENT_TS: pa.array(t, layout.TS_TYPE),
            layout.CREATED_TS: pa.array(
                t + rng.integers(0, 3_600_000_000, per_day), layout.TS_TYPE
            ),
            **{f"f{i}": rng.random(per_day, dtype=np.float32) for i in range(FEATURES)},
        }
        table = pa.table(columns, schema=schema)
        layout.replace_interval(
            root / "offline", PROJECT, VIEW, table, day_start, day_start + timedelta(days=1)
        )
    done.write_text("ok\n")
    print(
        f"  generated {per_day * DAYS:,} feature rows in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    return root


def ensure_entities(out: Path, rows: int) -> Path:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = out / f"entities-{rows}.parquet"
    if path.exists():
        return path
    rng = np.random.default_rng(2)
    low = int(START.timestamp() * 1e6)
    high = int((START + timedelta(days=DAYS)).timestamp() * 1e6)
    table = pa.table(
        {
            "entity_id": rng.integers(0, ENTITIES, rows),
            "event_timestamp": pa.array(
                rng.integers(low, high, rows), pa.timestamp("us", tz="UTC")
            ),
            "label": rng.random(rows),
        }
    )
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.rename(path)
    return path


# -- the two sides, each run in a child process ---------------------------------------------------
def run_ours(root: Path, entities: Path, target: Path, memory_limit: str, exclude: bool) -> int:
    from featurestore.config import OfflineStoreConfig, RepoConfig
    from featurestore.export import get_training_dataset
    from registry.definitions import Definitions
    from registry.spec import EntitySpec, FeatureViewSpec, ParquetSource

    config = RepoConfig(
        project=PROJECT, offline_store=OfflineStoreConfig(path=str(root / "offline"))
    )
    definitions = Definitions(
        entities={
            "entity": EntitySpec(name="entity", join_keys=[{"name": "entity_id", "dtype": "int64"}])
        },
        sources={"src": ParquetSource(name="src", type="parquet", path="-", timestamp_field="ts")},
        feature_views={
            VIEW: FeatureViewSpec(
                name=VIEW,
                entities=["entity"],
                source="src",
                ttl=f"{TTL_DAYS}d",
                features=[{"name": f"f{i}", "dtype": "float32"} for i in range(FEATURES)],
            )
        },
    )
    with get_training_dataset(
        config,
        definitions,
        str(entities),
        [VIEW],
        memory_limit=memory_limit,
        exclude_created_after=exclude,
    ) as ds:
        return ds.to_parquet(target).rows


def reference_sql(root: Path, entities: Path, target: Path) -> str:
    """What one would write by hand: ASOF on (key, time), ttl as a CASE, input order kept."""
    glob = root / "offline" / PROJECT / VIEW / "date=*" / "*.parquet"
    features = ",\n       ".join(
        f"CASE WHEN f.event_timestamp > e.event_timestamp - INTERVAL {TTL_DAYS} DAY "
        f"THEN f.f{i} END AS f{i}"
        for i in range(FEATURES)
    )
    return f"""
COPY (
  SELECT e.entity_id, e.event_timestamp, e.label,
       {features}
  FROM (SELECT *, file_row_number AS rn FROM read_parquet('{entities}', file_row_number = true)) e
  ASOF LEFT JOIN read_parquet('{glob}') f
    ON e.entity_id = f.entity_id AND e.event_timestamp >= f.event_timestamp
  ORDER BY e.rn
) TO '{target}' (FORMAT parquet)"""


def run_reference(root: Path, entities: Path, target: Path, memory_limit: str) -> int:
    import tempfile

    import duckdb

    with tempfile.TemporaryDirectory(prefix="bench-export-ref-") as spill:
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{spill}'")
        rows = con.execute(reference_sql(root, entities, target)).fetchall()[0][0]
        con.close()
    return int(rows)


def child(args: argparse.Namespace) -> None:
    """One side, as the whole process: nothing is imported before this runs but argparse & co.
    (the reference needs only DuckDB; ours imports what a user's script would)."""
    if args.child == "reference":
        rows = run_reference(
            Path(args.root), Path(args.entities), Path(args.target), args.memory_limit
        )
    else:
        if args.child == "ours-ties":
            # As if the files had (keys, event time) ties: the plan that breaks them by created.
            from featurestore.export import pit

            pit.has_key_time_ties = lambda *_args, **_options: True
        rows = run_ours(
            Path(args.root),
            Path(args.entities),
            Path(args.target),
            args.memory_limit,
            args.child == "ours-exclude",
        )
    print(json.dumps({"rows": rows}))


def measure(
    side: str, root: Path, entities: Path, target: Path, args: argparse.Namespace
) -> dict[str, float]:
    """Run one side in its own process: wall seconds, CPU seconds and peak RSS (MB) of it."""
    command = [
        sys.executable,
        __file__,
        "--child",
        side,
        "--root",
        str(root),
        "--entities",
        str(entities),
        "--target",
        str(target),
        "--memory-limit",
        args.memory_limit,
    ]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=out, stderr=err)
        # Reaped here, not by Popen.wait(), which would discard the child's resource usage.
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{side} failed:\n{err.read()[-3000:]}")
        result = out.read()
    rows = json.loads(result.strip().splitlines()[-1])["rows"]
    return {
        "rows": rows,
        "seconds": seconds,
        "cpu": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,  # KiB on Linux
    }


def same_output(a: Path, b: Path) -> bool:
    import duckdb

    con = duckdb.connect()
    columns = ["entity_id", "event_timestamp", "label", *(f"f{i}" for i in range(FEATURES))]
    differ = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in columns)
    rows_a, rows_b = (
        con.execute(f"SELECT count(*) FROM read_parquet('{p}')").fetchall()[0][0] for p in (a, b)
    )
    bad = con.execute(
        f"SELECT count(*) FROM (SELECT * FROM read_parquet('{a}')) a "
        f"POSITIONAL JOIN (SELECT * FROM read_parquet('{b}')) b WHERE {differ}"
    ).fetchall()[0][0]
    con.close()
    return rows_a == rows_b and bad == 0


# -- the report ---------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="1M feature rows, 100k/400k entity rows"
    )
    parser.add_argument(
        "--issue19",
        action="store_true",
        help="issue 19's row only: 1M entity rows, ours vs the reference, one GOAL line",
    )
    parser.add_argument(
        "--memory-limit", default="1GB", help="DuckDB memory limit of both sides (default 1GB)"
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds per size (default 3)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument(
        "--child",
        choices=["ours", "ours-ties", "ours-exclude", "reference"],
        help=argparse.SUPPRESS,
    )
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--entities", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import duckdb

    from bench._common import goal_line, median_ratio, round_ratios

    feature_rows = 1_000_000 if args.quick else 10_000_000
    if args.issue19:
        sizes, extras = [1_000_000], ()
    else:
        sizes = [100_000, 400_000] if args.quick else [1_000_000, 4_000_000]
        extras = ("ours-ties", "ours-exclude")
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_export: {feature_rows:,} feature rows ({ENTITIES:,} entities x {FEATURES} "
        f"float32 features, {DAYS} days, ttl {TTL_DAYS}d); DuckDB {duckdb.__version__}, "
        f"memory_limit {args.memory_limit}, {args.repeat} interleaved rounds of whole processes",
        flush=True,
    )
    root = ensure_features(args.out, feature_rows)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    for size in sizes:
        entities = ensure_entities(args.out, size)
        targets = {
            side: args.out / f"result-{side}-{size}.parquet" for side in ("ours", "reference")
        }
        for round_ in range(args.repeat):
            order = ("reference", "ours") if round_ % 2 == 0 else ("ours", "reference")
            for side in order:
                results.setdefault((side, size), []).append(
                    measure(side, root, entities, targets[side], args)
                )
            ours, ref = results[("ours", size)][-1], results[("reference", size)][-1]
            print(
                f"  {size:,} entity rows, round {round_ + 1}: wall {ours['seconds']:.2f} / "
                f"{ref['seconds']:.2f} s, cpu {ours['cpu']:.2f} / {ref['cpu']:.2f} s "
                "(ours / reference)",
                flush=True,
            )
        for extra in extras:
            results[(extra, size)] = [
                measure(extra, root, entities, args.out / f"result-{extra}.parquet", args)
            ]
        same = same_output(targets["ours"], targets["reference"])
        print(f"  {size:,} entity rows: outputs identical: {'yes' if same else 'NO'}", flush=True)
        produced = (args.out / f"result-{e}.parquet" for e in extras)
        for result in (*targets.values(), *produced):
            result.unlink(missing_ok=True)  # only the inputs are worth caching
        if not same:
            raise SystemExit("the two outputs differ")

    print()
    print(
        f"{'whole process':<34} {'entity rows':>11} {'wall s':>7} {'cpu s':>6} "
        f"{'peak MB':>7}   (medians; peak: max)"
    )
    labels = {
        "reference": "hand-written ASOF JOIN",
        "ours": "get_training_dataset().to_parquet",
        "ours-ties": "  ... if the files had ties",
        "ours-exclude": "  ... exclude_created_after=True",
    }
    for size in sizes:
        for side in ("reference", "ours", *extras):
            runs = results[(side, size)]
            wall = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            peak = max(r["peak_mb"] for r in runs)
            print(f"{labels[side]:<34} {size:>11,} {wall:>7.2f} {cpu:>6.2f} {peak:>7.0f}")
    print()
    for size in sizes:
        ours, ref = (results[(side, size)] for side in ("ours", "reference"))
        for what, key in (("wall", "seconds"), ("CPU", "cpu"), ("peak RSS", "peak_mb")):
            o, r = [x[key] for x in ours], [x[key] for x in ref]
            print(
                f"{size:,} entity rows, ours / hand-written, {what}: {median_ratio(o, r):.2f}x "
                f"{round_ratios(o, r)}"
            )
    if args.issue19:
        size = sizes[0]
        ours, ref = (results[(side, size)] for side in ("ours", "reference"))

        def figure(runs: list[dict[str, float]]) -> str:
            wall = statistics.median(r["seconds"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            peak = max(r["peak_mb"] for r in runs) / 1024
            return f"{wall:.1f} s, {cpu:.1f} s CPU, {peak:.2f} GB"

        ratio = median_ratio([r["seconds"] for r in ours], [r["seconds"] for r in ref])
        print(
            goal_line(
                f"point-in-time export, {size // 1_000_000}M entity rows x {FEATURES} features "
                f"({feature_rows // 1_000_000}M feature rows), whole process",
                figure(ref),
                figure(ours),
                ratio,
                "wall <= 1.2x the hand-written ASOF JOIN",
                ratio <= 1.2,
            )
        )


if __name__ == "__main__":
    main()
