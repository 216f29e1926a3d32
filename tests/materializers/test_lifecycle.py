"""The batch job's lifecycle on any runner: wait once, metrics after the end, the stores verified
before a run is recorded. Runners that behave like remote ones are simulated in this process
(``ElsewhereRunner``: not the in-process runner, no metrics, optionally losing outputs); the real
portable runner is in test_portable_runner.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineResult, PipelineRunner, PipelineState

from featurestore.offline import layout
from featurestore.store import FeatureStore
from materializers import materialize
from materializers.lifecycle import StagingWatch
from materializers.verify import VerificationError
from registry.errors import FeatureStoreError, UserError
from tests.materializers.test_batch import make_repo, t, write_source

HERE = "tests.materializers.test_lifecycle"
ROWS = [
    (1, t(1, 5), t(1, 5), 10, 0.5),
    (1, t(1, 5), t(1, 9), 11, 0.5),  # a duplicate (key, event time): one row offline
    (1, t(2, 5), t(2, 5), 20, 0.5),
    (2, t(1, 6), t(1, 6), 30, 0.25),
    (3, t(3, 1), t(3, 1), 40, 0.75),
    (None, t(2, 1), t(2, 1), 50, 0.5),  # rejected: null join key
]


class _Ended(PipelineResult):
    """A finished job's result, as a runner without metrics gives it."""

    def __init__(self, state: str = PipelineState.DONE, error: Exception | None = None) -> None:
        super().__init__(state)
        self.error = error

    def wait_until_finish(self, duration: int | None = None) -> str:
        if self.error is not None:
            raise self.error
        return self._state

    def metrics(self) -> Any:
        raise NotImplementedError("no metrics on this runner")


class ElsewhereRunner(PipelineRunner):
    """Runs the job in this process with FnApiRunner but looks like a remote runner without
    metrics; ``damage`` runs after the job (a lost output), ``error`` fails the wait."""

    damage: ClassVar[Callable[[], None] | None] = None
    error: ClassVar[Exception | None] = None

    def run_pipeline(self, pipeline: Any, options: Any) -> PipelineResult:
        FnApiRunner().run_pipeline(pipeline, options).wait_until_finish()
        if ElsewhereRunner.damage is not None:
            ElsewhereRunner.damage()
        return _Ended(error=ElsewhereRunner.error)


ELSEWHERE = ["--runner", f"{HERE}.ElsewhereRunner"]


@pytest.fixture(autouse=True)
def _reset_runner() -> Any:
    yield
    ElsewhereRunner.damage = None
    ElsewhereRunner.error = None


def _store(root: Path) -> FeatureStore:
    repo = make_repo(root)
    write_source(repo, "a.parquet", ROWS)
    store = FeatureStore(repo)
    store.apply()
    return store


def _files(store: FeatureStore) -> dict[str, bytes]:
    root = layout.view_dir(store.config.offline_path, store.project, "clicks")
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def _online(store: FeatureStore) -> list[Any]:
    return store.online_store.read_latest([("clicks", k) for k in (b"1", b"2", b"3")])


def test_a_runner_without_metrics_records_what_the_stores_hold(tmp_path: Path) -> None:
    default, elsewhere = _store(tmp_path / "a"), _store(tmp_path / "b")
    [expected] = materialize(default, end=t(10), progress=False)
    [got] = materialize(elsewhere, end=t(10), pipeline_args=ELSEWHERE, progress=True)
    counts = (got.rows_read, got.rows_offline, got.rows_online, got.rows_rejected)
    assert counts == (6, 4, 3, 1)  # 5 valid rows staged + 1 rejected; one duplicate dropped
    assert counts == (
        expected.rows_read,
        expected.rows_offline,
        expected.rows_online,
        expected.rows_rejected,
    )
    [run] = elsewhere.materialization_log.runs("clicks")
    assert (run.rows_read, run.rows_offline, run.rows_online, run.rows_rejected) == counts
    assert elsewhere.materialization_log.watermark("clicks") == t(10)
    assert _files(elsewhere) == _files(default) and len(_files(default)) == 3
    assert _online(elsewhere) == _online(default)
    assert pq.read_table(got.rejects_path).num_rows == 1
    default.close()
    elsewhere.close()


def _check_nothing_recorded(store: FeatureStore) -> None:
    assert store.materialization_log.runs("clicks") == []
    assert store.materialization_log.watermark("clicks") is None


def test_an_offline_partition_missing_rows_fails_and_nothing_is_recorded(tmp_path: Path) -> None:
    store = _store(tmp_path / "repo")
    day = layout.partition_dir(store.config.offline_path, store.project, "clicks", t(1).date())

    def lose_a_row() -> None:  # as Beam 2.77's DaskRunner did: DONE, rows missing
        path = day / layout.BATCH_FILE
        table = pq.read_table(path)
        pq.write_table(table.slice(0, table.num_rows - 1), path)

    ElsewhereRunner.damage = lose_a_row
    with pytest.raises(
        VerificationError, match=r"date=2026-01-01: 1 rows in the offline file, 2 staged"
    ):
        materialize(store, end=t(10), pipeline_args=ELSEWHERE, progress=False)
    _check_nothing_recorded(store)
    # The next run (here the in-process runner) rewrites the partition; now it is recorded.
    [s] = materialize(store, end=t(10), progress=False)
    assert s.rows_offline == 4 and store.materialization_log.watermark("clicks") == t(10)
    store.close()


def test_an_online_key_missing_fails_and_nothing_is_recorded(tmp_path: Path) -> None:
    store = _store(tmp_path / "repo")
    online_db = store.repo_path / "data" / "online.db"

    def lose_a_key() -> None:
        with sqlite3.connect(online_db) as conn:
            conn.execute("DELETE FROM latest WHERE entity_key = ?", (b"2",))

    ElsewhereRunner.damage = lose_a_key
    with pytest.raises(
        VerificationError, match=r"1 of 3 entities are missing online.*b'2' holds nothing"
    ):
        materialize(store, end=t(10), pipeline_args=ELSEWHERE, progress=False)
    _check_nothing_recorded(store)
    store.close()


def test_metrics_that_disagree_with_the_stores_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path / "repo")
    day = layout.partition_dir(store.config.offline_path, store.project, "clicks", t(3).date())

    class Runner(FnApiRunner):  # in-process, with metrics; one partition lost after the job
        def run_pipeline(self, pipeline: Any, options: Any) -> Any:
            result = super().run_pipeline(pipeline, options)
            (day / layout.BATCH_FILE).unlink()
            return result

    monkeypatch.setattr("materializers.batch.in_process_runner", Runner)
    with pytest.raises(VerificationError) as caught:
        materialize(store, end=t(10), progress=False)
    message = str(caught.value)
    assert "the runner counted 4 rows_offline, the stores hold 3" in message
    assert "date=2026-01-03: 0 rows in the offline file, 1 staged" in message
    assert "nothing was recorded and the watermark did not move" in message
    _check_nothing_recorded(store)
    store.close()


@pytest.mark.parametrize(
    "runner", ["DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"]
)
def test_the_dask_runner_is_refused_in_one_line(tmp_path: Path, runner: str) -> None:
    store = _store(tmp_path / "repo")
    with pytest.raises(UserError) as caught:
        materialize(store, pipeline_args=["--runner", runner], progress=False)
    assert "is refused: Beam's DaskRunner loses data silently" in caught.value.message
    assert "\n" not in str(caught.value)
    assert not (store.config.offline_path / store.project).exists()
    _check_nothing_recorded(store)
    store.close()


@pytest.mark.parametrize("mode", [[], ["--direct_running_mode", "multi_threading"], ["--direct_running_mode=in_memory"]])
def test_several_in_process_workers_on_threads_are_refused(tmp_path: Path, mode: list[str]) -> None:
    """Issue 19: with several workers on threads Beam 2.77's in-process runner lost or mixed
    outputs of parallel bundles (a 1M-row run DONE with entities missing or older online)."""
    store = _store(tmp_path / "repo")
    with pytest.raises(UserError) as caught:
        materialize(store, pipeline_args=["--direct_num_workers", "2", *mode], progress=False)
    assert "--direct_num_workers 2 with --direct_running_mode" in caught.value.message
    assert "is refused" in caught.value.message and "multi_processing" in (caught.value.hint or "")
    assert "\n" not in str(caught.value)
    assert not (store.config.offline_path / store.project).exists()
    _check_nothing_recorded(store)
    store.close()


def test_several_in_process_worker_processes_are_allowed(tmp_path: Path) -> None:
    from materializers.lifecycle import Runner

    Runner.check_options(["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"])
    Runner.check_options(["--direct_num_workers", "1", "--direct_running_mode", "multi_threading"])


def test_the_latest_per_key_combine_never_changes_an_accumulator_it_was_given() -> None:
    """A runner may still hold (encode, hand over) an accumulator it passed to add_input."""
    import pyarrow as pa

    from materializers.online_write import LatestPerKey

    combine = LatestPerKey()
    first = combine.add_input(combine.create_accumulator(), pa.table({"x": [1]}))
    snapshot = list(first)
    second = combine.add_input(first, pa.table({"x": [2]}))
    assert first == snapshot and len(second) == 2


def test_the_memory_store_cannot_take_writes_from_workers_elsewhere(tmp_path: Path) -> None:
    store = _store(tmp_path / "repo")
    memory = FeatureStore(store.repo_path, config_overrides={"online_store": {"type": "memory"}})
    with pytest.raises(UserError, match="memory online store lives in this process"):
        materialize(memory, pipeline_args=ELSEWHERE, progress=False)
    memory.close()
    store.close()


def test_a_remote_failure_names_the_view_and_the_cause(tmp_path: Path) -> None:
    store = _store(tmp_path / "repo")
    ElsewhereRunner.error = RuntimeError(
        "Pipeline job-1 failed in state FAILED: Traceback (most recent call last):\n"
        '  File "x.py", line 1\nValueError: boom'
    )
    with pytest.raises(FeatureStoreError) as caught:
        materialize(store, end=t(10), pipeline_args=ELSEWHERE, progress=False)
    assert not isinstance(caught.value, UserError)
    assert caught.value.message == (
        "the pipeline of feature view 'clicks' failed on ElsewhereRunner: ValueError: boom"
    )
    _check_nothing_recorded(store)
    store.close()


def test_a_failed_jar_download_is_a_user_error_with_a_hint(tmp_path: Path) -> None:
    store = _store(tmp_path / "repo")
    args = [
        "--runner",
        "FlinkRunner",
        "--flink_job_server_jar",
        "http://127.0.0.1:9/job-server.jar",
    ]
    with pytest.raises(UserError) as caught:
        materialize(store, end=t(10), pipeline_args=args, progress=False)
    assert "could not download its job server jar" in caught.value.message
    assert "--flink_job_server_jar" in str(caught.value.hint)
    _check_nothing_recorded(store)
    store.close()


def test_an_unreachable_job_service_fails_at_once(tmp_path: Path) -> None:
    import socket

    store = _store(tmp_path / "repo")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--runner", "PortableRunner", f"--job_endpoint=127.0.0.1:{port}"]
    with pytest.raises(UserError, match=f"cannot reach the Beam job service at 127.0.0.1:{port}"):
        materialize(store, end=t(10), pipeline_args=args, progress=False)
    store.close()


def test_staging_watch_counts_rows_staged_and_partitions_written(tmp_path: Path) -> None:
    staging, view_dir = tmp_path / "staging", tmp_path / "view"
    watch = StagingWatch(staging, view_dir, since=0.0)
    assert watch() == {"read": 0, "partitions": 0}
    day = staging / "offline" / "date=2026-01-01"
    day.mkdir(parents=True)
    batch = pa.record_batch({"x": pa.array(range(7))})
    for name in ("a", "b"):
        with (
            pa.OSFile(str(day / f"{name}.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, batch.schema) as w,
        ):
            w.write_batch(batch)
    (day / "c.arrow").write_bytes(b"ARROW1")  # still being written: not counted yet
    (view_dir / "date=2026-01-01").mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), view_dir / "date=2026-01-01" / "data.parquet")
    assert watch() == {"read": 14, "partitions": 1}
