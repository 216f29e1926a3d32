"""A run killed half-way, then run again, leaves the stores exactly as one clean run does.

The CLI runs in a subprocess with FEATURESTORE_TEST_CRASH_AFTER_PARTITIONS, a test-only hook
that hard-exits (os._exit, no cleanup, like a kill) after that many offline partitions.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.online.codec import encode_entity_keys
from featurestore.store import FeatureStore
from materializers import materialize
from materializers.transforms import CRASH_ENV

ROOT = Path(__file__).resolve().parents[2]
UTC = timezone.utc
START, END = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 7, tzinfo=UTC)
DEFINITIONS = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: events
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
    created_timestamp_field: created
feature_views:
  - name: a_clicks
    entities: [user]
    source: events
    features: [{name: clicks, dtype: int64}]
  - name: b_scores
    entities: [user]
    source: events
    features: [{name: score, dtype: float64}, {name: clicks, dtype: int32}]
"""
USERS = 40


def make_repo(path: Path) -> Path:
    (path / "features").mkdir(parents=True)
    (path / "data" / "src").mkdir(parents=True)
    (path / "featurestore.yaml").write_text(
        "project: demo\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: embedded, path: data/online.db}\n"
    )
    (path / "features" / "defs.yaml").write_text(DEFINITIONS)
    n = 600
    ts = [START + timedelta(minutes=13 * i) for i in range(n)]  # about 5.4 days: 6 partitions
    for part in range(3):
        rows = range(part, n, 3)
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array([i % USERS for i in rows], pa.int64()),
                    "ts": pa.array([ts[i] for i in rows], pa.timestamp("us", tz="UTC")),
                    "created": pa.array(
                        [ts[i] + timedelta(seconds=i % 7) for i in rows],
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "clicks": pa.array([i for i in rows], pa.int64()),
                    "score": pa.array([i / 7 for i in rows], pa.float64()),
                }
            ),
            path / "data" / "src" / f"part-{part}.parquet",
        )
    FeatureStore(path).apply()
    return path


def cli(repo: Path, crash_after: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_ENV}
    env["PYTHONPATH"] = str(ROOT)
    if crash_after is not None:
        env[CRASH_ENV] = str(crash_after)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "featurestore.cli.main",
            "-r",
            str(repo),
            "materialize",
            "--no-progress",
            "--start",
            START.isoformat(),
            "--end",
            END.isoformat(),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def snapshot(repo: Path) -> tuple[dict[str, list[dict]], dict[str, list]]:
    """Every file of the offline store with its rows, and every user's online value."""
    offline_root = repo / "data" / "offline"
    files = {}
    for dirpath, _, names in os.walk(offline_root):
        for name in names:
            path = Path(dirpath) / name
            # Parquet files with their rows; anything else (crash left-overs) by name only.
            rows = pq.read_table(path).to_pylist() if name.endswith(".parquet") else None
            files[str(path.relative_to(offline_root))] = rows
    keys = encode_entity_keys(["int64"], [pa.array(range(USERS), pa.int64())])
    with FeatureStore(repo) as store:
        online = {
            view: store.online_store.read_latest([(view, k) for k in keys])
            for view in ("a_clicks", "b_scores")
        }
    return files, online


def test_crash_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    base = make_repo(tmp_path / "base")
    clean = Path(shutil.copytree(base, tmp_path / "clean"))
    crashed = Path(shutil.copytree(base, tmp_path / "crashed"))

    with FeatureStore(clean) as store:
        summaries = materialize(store, start=START, end=END, progress=False)
    assert [s.rows_offline for s in summaries] == [600, 600]
    expected = snapshot(clean)
    assert len(expected[0]) == 12 and all(v is not None for v in expected[1]["b_scores"])

    # 6 partitions of a_clicks, then 3 of b_scores: a_clicks is done (and recorded), b is not.
    died = cli(crashed, crash_after=9)
    assert died.returncode == 75, died.stderr
    with FeatureStore(crashed) as store:
        assert store.materialization_log.watermark("a_clicks") == END
        assert store.materialization_log.watermark("b_scores") is None
    half_files, half_online = snapshot(crashed)
    assert len([f for f in half_files if f.startswith("demo/b_scores/")]) == 3
    assert any(f.startswith("demo/_staging/b_scores/") for f in half_files)  # what the kill left
    assert all(v is None for v in half_online["b_scores"])

    again = cli(crashed)
    assert again.returncode == 0, again.stderr
    assert snapshot(crashed) == expected
    with FeatureStore(crashed) as store:
        assert store.materialization_log.watermark("b_scores") == END
