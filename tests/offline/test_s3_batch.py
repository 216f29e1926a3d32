"""The batch job with an ``s3://`` offline path, against a real S3-compatible server (moto,
started by .ci/run): it writes the objects a local run writes byte for byte, verifies and records
the same counts, survives a kill half-way (no half-written partition; the re-run gives the same
objects), carries an incremental run across a schema change, and the point-in-time export reads
the same answers from S3 as from a local store."""

from __future__ import annotations

import shutil
from datetime import timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.store import FeatureStore
from materializers import materialize
from tests.materializers.test_crash_rerun import END, START, cli, make_repo
from tests.offline.s3_helpers import local_files, objects, partitions, use_s3

UTC = timezone.utc


def _with_rejects(repo: Path) -> Path:
    bad = pa.table(
        {
            "user_id": pa.array([None], pa.int64()),
            "ts": pa.array([START + timedelta(hours=5)], pa.timestamp("us", tz="UTC")),
            "created": pa.array([START + timedelta(hours=5)], pa.timestamp("us", tz="UTC")),
            "clicks": pa.array([1], pa.int64()),
            "score": pa.array([0.5], pa.float64()),
        }
    )
    pq.write_table(bad, repo / "data" / "src" / "part-9-bad.parquet")
    return repo


def _runs(store: FeatureStore) -> dict[str, tuple[int, int, int, int]]:
    return {
        r.feature_view: (r.rows_read, r.rows_offline, r.rows_online, r.rows_rejected)
        for r in store.materialization_log.runs()
    }


def _rejects(files: dict[str, bytes]) -> dict[str, list[dict]]:
    """The rejects file of each view, by view (their names hold the run id)."""
    out = {}
    for key, data in files.items():
        if "/_rejects/" in key:
            out[key.split("/")[2]] = pq.read_table(pa.BufferReader(data)).to_pylist()
    return out


def test_batch_into_s3_writes_what_a_local_run_writes(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    local = _with_rejects(make_repo(tmp_path / "local"))
    remote = Path(shutil.copytree(local, tmp_path / "remote"))
    root = use_s3(remote, f"{s3_bucket}/offline", s3_endpoint)

    with FeatureStore(local) as store:
        expected = materialize(store, start=START, end=END, progress=False)
        local_runs = _runs(store)
    with FeatureStore(remote) as store:
        assert store.config.offline_path == root
        got = materialize(store, start=START, end=END, progress=False)
        assert _runs(store) == local_runs  # verified from the objects, then recorded
        assert store.materialization_log.watermark("b_scores") == END
    assert [(s.rows_offline, s.rows_rejected) for s in got] == [(600, 1), (600, 1)]
    assert [s.rows_offline for s in got] == [s.rows_offline for s in expected]
    assert got[0].rejects_path is not None and got[0].rejects_path.startswith(f"{s3_bucket}/")

    want = local_files(local / "data" / "offline")
    have = objects(root)
    assert partitions(have) == partitions(want)  # byte for byte
    assert len(partitions(have)) == 12
    assert _rejects(have) == _rejects(want) and len(_rejects(have)) == 2
    assert not any("/_staging/" in k for k in have)  # the run's scratch objects are gone
    assert not (remote / "data" / "offline").exists()  # nothing went to the local disk


def test_a_kill_half_way_leaves_whole_partitions_and_the_rerun_the_same_objects(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    base = make_repo(tmp_path / "base")
    clean = Path(shutil.copytree(base, tmp_path / "clean"))
    crashed = Path(shutil.copytree(base, tmp_path / "crashed"))
    clean_root = use_s3(clean, f"{s3_bucket}/clean", s3_endpoint)
    crashed_root = use_s3(crashed, f"{s3_bucket}/crashed", s3_endpoint)

    assert cli(clean).returncode == 0
    expected = partitions(objects(clean_root))
    assert len(expected) == 12

    # 6 partitions of a_clicks, then 3 of b_scores: the process dies like a kill (os._exit).
    died = cli(crashed, crash_after=9)
    assert died.returncode == 75, died.stderr
    half = objects(crashed_root)
    written = partitions(half)
    assert len([k for k in written if k.startswith("demo/b_scores/")]) == 3
    for key, data in written.items():  # every partition object is whole: the clean one
        assert data == expected[key], key
    assert any(k.startswith("demo/_staging/b_scores/") for k in half)  # what the kill left
    with FeatureStore(crashed) as store:
        assert store.materialization_log.watermark("b_scores") is None

    again = cli(crashed)
    assert again.returncode == 0, again.stderr
    after = objects(crashed_root)
    assert partitions(after) == expected
    assert not any("/_staging/" in k for k in after)


def test_incremental_runs_across_an_added_feature_match_a_local_store(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    local = make_repo(tmp_path / "local")
    remote = Path(shutil.copytree(local, tmp_path / "remote"))
    root = use_s3(remote, f"{s3_bucket}/offline", s3_endpoint)
    middle = START + timedelta(days=3, hours=7)

    for repo in (local, remote):
        with FeatureStore(repo) as store:
            materialize(store, start=START, end=middle, progress=False)
        defs = repo / "features" / "defs.yaml"
        defs.write_text(
            defs.read_text().replace(
                "features: [{name: score, dtype: float64}, {name: clicks, dtype: int32}]",
                "features: [{name: score, dtype: float64}, {name: clicks, dtype: int32}, "
                "{name: clicks_again, dtype: int64}]",
            )
        )
        # The added feature reads the source's clicks column under another name.
        for part in sorted((repo / "data" / "src").glob("*.parquet")):
            table = pq.read_table(part)
            pq.write_table(table.append_column("clicks_again", table["clicks"]), part)
        with FeatureStore(repo) as store:
            store.apply()
            materialize(store, end=END, incremental=True, progress=False)

    want = partitions(local_files(local / "data" / "offline"))
    have = partitions(objects(root))
    assert have == want and len(have) == 12
    newest = pq.read_table(pa.BufferReader(have["demo/b_scores/date=2026-01-01/data.parquet"]))
    assert "clicks_again" in newest.column_names  # the backfill rewrote the old partitions
    with FeatureStore(local) as a, FeatureStore(remote) as b:
        assert [r.rows_offline for r in a.materialization_log.runs()] == [
            r.rows_offline for r in b.materialization_log.runs()
        ]


def test_the_export_from_s3_equals_the_export_from_a_local_store(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    local = make_repo(tmp_path / "local")
    remote = Path(shutil.copytree(local, tmp_path / "remote"))
    use_s3(remote, f"{s3_bucket}/offline", s3_endpoint)
    entities = pa.table(
        {
            "user_id": pa.array([i % 45 for i in range(300)], pa.int64()),
            "event_timestamp": pa.array(
                [START + timedelta(minutes=29 * i) for i in range(300)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )
    results = []
    for repo in (local, remote):
        with FeatureStore(repo) as store:
            materialize(store, start=START, end=END, progress=False)
            with store.get_training_dataset(entities, ["a_clicks:clicks", "b_scores:score"]) as ds:
                table = ds.to_arrow()
                summary = ds.to_parquet(tmp_path / f"{repo.name}.parquet")
            results.append((table, summary.rows, summary.coverage))
    (local_table, rows, coverage), (remote_table, remote_rows, remote_coverage) = results
    assert remote_table.equals(local_table)
    assert (remote_rows, remote_coverage) == (rows, coverage) and rows == 300
    assert coverage["clicks"] > 250  # features were found, not all null
