"""The batch job on Beam's portable runner: a job server and an SDK worker pool (2 worker
processes per job) on loopback, the same Fn API Flink, Spark and Dataflow use for Python.
``featurestore materialize -- --runner PortableRunner ...`` must write exactly what the default
runner writes (every offline file byte for byte, every online value) and record the same counts.

.ci/run starts the two services and exports FEATURESTORE_TEST_BEAM_JOB_ENDPOINT and
FEATURESTORE_TEST_BEAM_WORKER_POOL; without them (a developer machine) the fixture starts them
from this checkout. Never skipped."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.cli.main import main
from featurestore.example.repo import small_config, write_example_repo
from featurestore.store import FeatureStore
from materializers import materialize
from materializers.portable_services import CODE_ROOT, check

JOB_ENV = "FEATURESTORE_TEST_BEAM_JOB_ENDPOINT"
POOL_ENV = "FEATURESTORE_TEST_BEAM_WORKER_POOL"
#: An aggregated view (AggregateByDate on the portable runner) beside the example's three.
AGGREGATED = """\
feature_views:
  - name: user_rating_stats
    entities: [user]
    source: ratings
    ttl: 0
    features:
      - {name: ratings_2d, dtype: int64, aggregation: {function: count, window: 2d, slide: 1d}}
      - {name: rating_sum_2d, dtype: float64, aggregation: {function: sum, column: rating, window: 2d, slide: 1d}}
"""


def _start(command: list[str], log: Path, port_file: Path) -> tuple[subprocess.Popen, int]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "materializers.portable_services",
                *command,
                "--port",
                "0",
                "--port-file",
                str(port_file),
            ],
            cwd=CODE_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{command[0]} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return process, int(port_file.read_text())


@contextmanager
def beam_services(logs: Path) -> Iterator[tuple[str, str]]:
    """``(job endpoint, worker pool address)``: .ci/run's services, else started here (logs in
    ``logs``) and stopped afterwards; the workers inherit this process's environment."""
    job, pool = os.environ.get(JOB_ENV), os.environ.get(POOL_ENV)
    started: list[subprocess.Popen] = []
    if not (job and pool):
        server, job_port = _start(
            ["job-server", "--workers", "2"], logs / "job.log", logs / "job.port"
        )
        started.append(server)
        workers, pool_port = _start(["worker-pool"], logs / "pool.log", logs / "pool.port")
        started.append(workers)
        job, pool = f"localhost:{job_port}", f"127.0.0.1:{pool_port}"
    try:
        check(job, pool)  # the SDK workers import this checkout with this Python
        yield job, pool
    finally:
        for process in started:
            process.terminate()
            process.wait(30)


@pytest.fixture(scope="module")
def portable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    with beam_services(tmp_path_factory.mktemp("beam-services")) as found:
        yield found


def _example(root: Path) -> Path:
    write_example_repo(root, config=small_config())
    (root / "features" / "aggregated.yaml").write_text(AGGREGATED)
    ratings = root / "data" / "source" / "ratings"
    bad = pq.read_table(min(ratings.glob("*.parquet"))).slice(0, 1)
    bad = bad.set_column(0, "user_id", pa.array([None], pa.int64()))  # rejected by two views
    pq.write_table(bad, ratings / "zz-bad.parquet")
    return root


def _offline(repo: Path) -> dict[str, bytes]:
    root = repo / "data" / "offline" / "demo"
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*.parquet"))
        if "_rejects" not in p.parts
    }


def _rejects(repo: Path) -> dict[str, list[dict]]:
    root = repo / "data" / "offline" / "demo" / "_rejects"
    return {p.parent.name: pq.read_table(p).to_pylist() for p in sorted(root.glob("*/*.parquet"))}


def _online(repo: Path) -> dict[str, list[tuple]]:
    with sqlite3.connect(repo / "data" / "online.db") as conn:
        return {
            "latest": conn.execute(
                "SELECT project, view, entity_key, event_ts, created_ts, payload FROM latest "
                "ORDER BY project, view, entity_key"
            ).fetchall(),
            "meta": conn.execute("SELECT * FROM meta ORDER BY project, view").fetchall(),
        }


def _runs(store: FeatureStore) -> dict[str, tuple[int, int, int, int]]:
    return {
        r.feature_view: (r.rows_read, r.rows_offline, r.rows_online, r.rows_rejected)
        for r in store.materialization_log.runs()
    }


def test_the_portable_runner_writes_what_the_default_runner_writes(
    tmp_path: Path, portable: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    job, pool = portable
    end = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=1)
    default_repo = _example(tmp_path / "default")
    portable_repo = tmp_path / "portable"
    shutil.copytree(default_repo, portable_repo)  # the same generated data

    default = FeatureStore(default_repo)
    default.apply()
    expected = {s.view: s for s in materialize(default, end=end, progress=False)}
    assert main(["-r", str(portable_repo), "apply"]) == 0
    started = time.monotonic()
    code = main(
        [
            "-r",
            str(portable_repo),
            "materialize",
            "--end",
            end.isoformat(),
            "--",
            "--runner",
            "PortableRunner",
            "--job_endpoint",
            job,
            "--environment_type",
            "EXTERNAL",
            "--environment_config",
            pool,
        ]
    )
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "user_rating_stats" in out and "rejected rows (with a reason)" in out
    print(f"portable runner: 4 views in {seconds:.1f} s")

    assert _offline(portable_repo) == _offline(default_repo)  # byte for byte
    assert len(_offline(default_repo)) > 60
    assert _rejects(portable_repo) == _rejects(default_repo)
    assert sorted(_rejects(default_repo)) == ["user_activity", "user_rating_stats"]
    assert _online(portable_repo) == _online(default_repo)  # every online value
    assert len(_online(default_repo)["latest"]) > 1_000

    remote = FeatureStore(portable_repo)
    runs = _runs(remote)
    assert runs == _runs(default)
    assert runs == {
        v: (s.rows_read, s.rows_offline, s.rows_online, s.rows_rejected)
        for v, s in expected.items()
    }
    assert all(offline > 0 and online > 0 for _, offline, online, _ in runs.values())
    assert runs["user_activity"][3] == 1 and runs["user_rating_stats"][3] == 1
    for view in expected:
        assert remote.materialization_log.watermark(view) == end
    # The progress line ends with the job's metrics, read once after the end.
    assert f"user_activity: {runs['user_activity'][0]:,} rows read" in err
    default.close()
    remote.close()
