"""Verification (materializers/verify.py) counts from the objects of an ``s3://`` offline store:
a runner without metrics is recorded with what the objects hold (progress read from the staged
objects meanwhile), and a partition object that lost a row fails the run before it is recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.offline import layout, location
from featurestore.store import FeatureStore
from materializers import materialize
from materializers.rejects import rejects_path
from materializers.verify import VerificationError
from tests.materializers.test_batch import make_repo, t, write_source
from tests.materializers.test_lifecycle import ELSEWHERE, ROWS, ElsewhereRunner, _reset_runner
from tests.offline.s3_helpers import local_files, objects, partitions, use_s3

__all__ = ["_reset_runner"]  # the autouse fixture that resets ElsewhereRunner


def _store(root: Path, s3: tuple[str, str] | None = None) -> FeatureStore:
    repo = make_repo(root)
    write_source(repo, "a.parquet", ROWS)
    if s3 is not None:
        use_s3(repo, *s3)
    store = FeatureStore(repo)
    store.apply()
    return store


def test_a_runner_without_metrics_is_recorded_with_what_the_objects_hold(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    default = _store(tmp_path / "a")
    remote = _store(tmp_path / "b", (f"{s3_bucket}/offline", s3_endpoint))
    try:
        [expected] = materialize(default, end=t(10), progress=False)
        [got] = materialize(remote, end=t(10), pipeline_args=ELSEWHERE, progress=True)
        counts = (got.rows_read, got.rows_offline, got.rows_online, got.rows_rejected)
        assert counts == (6, 4, 3, 1)
        assert counts == (
            expected.rows_read,
            expected.rows_offline,
            expected.rows_online,
            expected.rows_rejected,
        )
        [run] = remote.materialization_log.runs("clicks")
        assert (run.rows_read, run.rows_offline, run.rows_online, run.rows_rejected) == counts
        root = remote.config.offline_path
        assert partitions(objects(root)) == partitions(local_files(default.config.offline_path))
        target = rejects_path(root, remote.project, "clicks", got.run_id)
        assert got.rejects_path == str(target) and location.parquet_rows(target) == 1
    finally:
        default.close()
        remote.close()


def test_a_partition_object_missing_a_row_fails_and_nothing_is_recorded(
    tmp_path: Path, s3_bucket: str, s3_endpoint: str
) -> None:
    store = _store(tmp_path / "repo", (f"{s3_bucket}/offline", s3_endpoint))
    target = (
        layout.partition_dir(store.config.offline_path, store.project, "clicks", t(1).date())
        / layout.BATCH_FILE
    )

    def lose_a_row() -> None:  # as Beam 2.77's DaskRunner did: DONE, rows missing
        table = location.read_table(target)
        layout.write_atomic(table.slice(0, table.num_rows - 1), target)

    ElsewhereRunner.damage = lose_a_row
    try:
        with pytest.raises(
            VerificationError, match=r"date=2026-01-01: 1 rows in the offline file, 2 staged"
        ) as caught:
            materialize(store, end=t(10), pipeline_args=ELSEWHERE, progress=False)
        assert f"{s3_bucket}/offline/demo/_staging/clicks/" in str(caught.value.hint)
        assert store.materialization_log.runs("clicks") == []
        assert store.materialization_log.watermark("clicks") is None
        # The next run (the in-process runner) rewrites the partition; now it is recorded.
        [s] = materialize(store, end=t(10), progress=False)
        assert s.rows_offline == 4 and store.materialization_log.watermark("clicks") == t(10)
        assert location.read_table(target).num_rows == 2
    finally:
        store.close()
