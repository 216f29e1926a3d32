"""The stream job on Beam's portable runner: a job server and an SDK worker pool on loopback
(the Fn API Flink, Spark and Dataflow use for Python), as in
tests/materializers/test_portable_runner.py, whose fixture starts them unless .ci/run did.

``featurestore stream -- --runner PortableRunner --job_endpoint ... --environment_type EXTERNAL
--environment_config ...`` must give, for the same pushed events, the online values and the
offline stream files (byte for byte) of the in-process runner, for a plain and an aggregated
view, acknowledge everything, print the workers' freshness lines and stop cleanly on SIGTERM
(the signal cannot reach the workers: the run in hand ends after its generation).

Why the job server gives an unbounded job one SDK worker, and why the in-process runner with
several workers is refused, is pinned by the last two tests: Beam 2.77's FnApiRunner with
several workers drops a splittable DoFn's ``defer_remainder()`` residual."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from featurestore import FeatureStore
from featurestore.cli.main import main
from featurestore.offline import layout
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions
from registry.errors import FeatureStoreError
from tests.materializers.test_portable_runner import portable  # noqa: F401 - the fixture
from tests.streaming.helpers import (
    UTC,
    expected_agg,
    expected_last,
    group_state,
    make_events,
    make_repo,
    online,
    push_all,
    streams_of,
    wait_for,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
VIEWS = ("user_last", "user_agg")


def _stream_files(store: FeatureStore) -> dict[str, bytes]:
    """Every offline stream file of both views, by path under the project, with its bytes."""
    out = {}
    for view in VIEWS:
        root = layout.view_dir(store.config.offline_path, store.project, view)
        for path in sorted(root.glob("date=*/stream-*.parquet")):
            out[f"{view}/{path.parent.name}/{path.name}"] = path.read_bytes()
    return out


def _portable_args(job: str, pool: str) -> list[str]:
    return [
        "--runner",
        "PortableRunner",
        "--job_endpoint",
        job,
        "--environment_type",
        "EXTERNAL",
        "--environment_config",
        pool,
    ]


def test_the_stream_job_on_the_portable_runner_writes_what_the_in_process_runner_writes(
    tmp_path: Path,
    redis_url: str,
    unique_project: str,
    tidy: list,
    portable: tuple[str, str],  # noqa: F811 - the imported fixture
) -> None:
    now = datetime.now(UTC)
    # Old enough for every window to be closed, young enough to be within the allowed lateness.
    events = make_events(400, now - timedelta(minutes=50), now - timedelta(minutes=20), seed=5)
    stores = {}
    for side in ("local", "portable"):
        repo = make_repo(tmp_path / side, unique_project + side[0], redis_url)
        tidy.append((unique_project + side[0], repo))
        stores[side] = FeatureStore(repo)
        stores[side].apply()
        push_all(stores[side], events)
    local, remote = stores["local"], stores["portable"]
    try:
        options = StreamOptions(
            consumer="same", generation_seconds=2.5, stats_seconds=60, grace_seconds=0
        )
        assert run_stream(local, options=options, max_generations=2) == 2

        # The CLI, as a user runs it: until SIGTERM, which ends the run in hand.
        log = tmp_path / "portable.log"
        with open(log, "w") as out:
            job = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "featurestore.cli.main",
                    "-r",
                    str(remote.repo_path),
                    "stream",
                    "--consumer",
                    "same",
                    "--grace",
                    "0s",
                    "--generation",
                    "4s",
                    "--stats-interval",
                    "1s",
                    "--",
                    *_portable_args(*portable),
                ],
                env={**os.environ, "PYTHONPATH": str(ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        try:
            expected = {"user_last": expected_last(events), "user_agg": expected_agg(events, now)}
            wait_for(
                lambda: (
                    all(online(remote, v) == expected[v] for v in VIEWS) or job.poll() is not None
                ),
                180,
                "the portable job's online values",
            )
            wait_for(
                lambda: "pipeline run 1 on" in log.read_text() or job.poll() is not None,
                120,
                "the end of the first pipeline run",
            )
            # Into the second run (submitted about 2 s after the first ended), then stop: it
            # ends after its 4 s of reading.
            time.sleep(4)
            job.send_signal(signal.SIGTERM)
            code = job.wait(120)
        finally:
            if job.poll() is None:
                job.kill()
        text = log.read_text()
        assert code == 0, text
        assert "stopping when this pipeline run ends" in text and "stopped streaming" in text
        # The workers' freshness lines, printed by the submitter from the stored figures, and
        # the job's metrics, read after each run's end.
        assert "user_last: " in text and "user_agg: " in text, text
        assert (
            "pipeline run 1 on PortableRunner ended; entries read: user_agg 400, user_last 400"
            in text
        )
        assert (
            "pipeline run 2 on PortableRunner ended; entries read: user_agg 0, user_last 0" in text
        )

        for view in VIEWS:
            assert online(remote, view) == online(local, view) == expected[view]
        files = _stream_files(local)
        assert len(files) > 30 and any(k.startswith("user_agg/") for k in files)
        assert _stream_files(remote) == files  # byte for byte
        for stream in streams_of(remote.repo_path) + streams_of(local.repo_path):
            assert group_state(redis_url, stream) == (0, 0)  # everything read and acknowledged
    finally:
        local.close()
        remote.close()


def test_the_in_process_runner_with_several_workers_is_refused(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list, capsys: pytest.CaptureFixture
) -> None:
    repo = make_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    assert main(["-r", str(repo), "apply"]) == 0
    capsys.readouterr()
    code = main(["-r", str(repo), "stream", "--", "--direct_num_workers", "2"])
    err = capsys.readouterr().err
    assert code == 1
    first = err.splitlines()[0]
    assert first.startswith("error: --direct_num_workers 2 is refused for the stream job")
    assert "defer_remainder" in first
    assert err.splitlines()[1].startswith("hint: leave --direct_num_workers out")


def _positions(workers: int) -> list[int]:
    """Positions an unbounded DoFn that self-checkpoints after each one yields on Beam's
    FnApiRunner with ``workers`` workers (the reason for the refusal above)."""
    import apache_beam as beam
    from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.transforms.core import RestrictionProvider

    class Five(RestrictionProvider):
        def initial_restriction(self, element: object) -> OffsetRange:
            return OffsetRange(0, 5)

        def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
            return OffsetRestrictionTracker(restriction)

        def restriction_size(self, element: object, restriction: OffsetRange) -> int:
            return 1

    class OnePerCall(beam.DoFn):
        @beam.DoFn.unbounded_per_element()
        def process(self, element, tracker=beam.DoFn.RestrictionParam(Five())):  # noqa: B008
            position = tracker.current_restriction().start
            if tracker.try_claim(position):
                yield position
                tracker.defer_remainder()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "seen"
        options = PipelineOptions(
            [f"--direct_num_workers={workers}", "--direct_running_mode=multi_threading"]
        )
        pipeline = beam.Pipeline(runner=FnApiRunner(), options=options)
        _ = (
            pipeline
            | beam.Impulse()
            | beam.ParDo(OnePerCall())
            | beam.Map(lambda p, out=out: out.open("a").write(f"{p} "))
        )
        pipeline.run().wait_until_finish()
        return sorted(int(p) for p in out.read_text().split()) if out.exists() else []


def test_beam_drops_the_self_checkpoint_with_several_workers() -> None:
    """Beam 2.77's ParallelBundleManager keeps only metrics and errors of its workers' bundle
    responses, not their residuals. When this fails, Beam fixed it: lift the refusal
    (materializers/stream.py) and the one-worker rule (materializers/portable_services.py)."""
    assert _positions(1) == [0, 1, 2, 3, 4]
    assert _positions(2) == [0]


def test_a_read_cut_short_by_the_runner_is_an_error_not_a_clean_end(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    """The job's safety net, whatever the runner: a run that is DONE although a view's read
    never reached its end (the metrics say so) fails instead of passing for a generation."""
    from materializers.batch import make_pipeline
    from materializers.lifecycle import Runner, run_to_end
    from materializers.stream import _check_ended, _read_counts, build_stream_pipeline
    from materializers.stream_plan import plan_stream

    repo = make_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    try:
        args = ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]
        runs = plan_stream(store, ["user_last"], StreamOptions(consumer="cut", stats_seconds=60))
        pipeline = make_pipeline([*args, "--streaming"])
        deadline = time.time() + 20
        build_stream_pipeline(pipeline, runs, deadline)
        runner = Runner.of(pipeline, args)
        result = run_to_end(pipeline, runner, "user_last")
        assert time.time() < deadline - 10  # DONE after one bundle of about a second
        with pytest.raises(
            FeatureStoreError, match="before the end of its run although the job is DONE"
        ):
            _check_ended(_read_counts(result), runner, ["user_last"], deadline)
    finally:
        store.close()
