"""The batch job on Beam's portable runner writing to an ``s3://`` offline path: the SDK workers
(other processes, as on Flink, Spark or Dataflow) stage, merge and replace partitions as objects,
with no filesystem shared with the submitting process. The objects must be byte for byte the
files a local run on the default runner writes, and the verified counts the same.

.ci/run starts the S3 server (moto), the job server and the worker pool, exporting the AWS test
credentials before the worker pool starts (its workers need them); without the variables the
fixtures start all of it here. Never skipped."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.cli.main import main
from featurestore.store import FeatureStore
from materializers import materialize
from tests.materializers.test_crash_rerun import END, START, make_repo
from tests.materializers.test_portable_runner import _online, beam_services
from tests.offline.s3_helpers import local_files, objects, partitions, use_s3
from tests.offline.test_s3_batch import _rejects, _runs, _with_rejects


@pytest.fixture(scope="module")
def portable_s3(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str]]:
    """``(job endpoint, worker pool address)`` whose workers hold the S3 test credentials:
    .ci/run's services, else started here (after ``s3_endpoint`` put them in the environment)."""
    with beam_services(tmp_path_factory.mktemp("beam-services-s3")) as found:
        yield found


def test_portable_workers_write_to_s3_what_the_default_runner_writes_locally(
    tmp_path: Path,
    s3_bucket: str,
    s3_endpoint: str,
    portable_s3: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    job, pool = portable_s3
    local = _with_rejects(make_repo(tmp_path / "local"))
    remote = Path(shutil.copytree(local, tmp_path / "remote"))
    root = use_s3(remote, f"{s3_bucket}/offline", s3_endpoint)

    with FeatureStore(local) as store:
        materialize(store, start=START, end=END, progress=False)
        expected_runs = _runs(store)
    code = main(
        [
            "-r",
            str(remote),
            "materialize",
            "--start",
            START.isoformat(),
            "--end",
            END.isoformat(),
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
    _, err = capsys.readouterr()
    assert code == 0, err

    want = local_files(local / "data" / "offline")
    have = objects(root)
    assert partitions(have) == partitions(want)  # byte for byte, written by the workers
    assert len(partitions(have)) == 12
    assert _rejects(have) == _rejects(want) and len(_rejects(have)) == 2
    assert not any("/_staging/" in k for k in have)
    assert not (remote / "data" / "offline").exists()
    assert _online(remote) == _online(local)
    with FeatureStore(remote) as store:
        assert _runs(store) == expected_runs  # verified from the objects, then recorded
        assert store.materialization_log.watermark("b_scores") == END
