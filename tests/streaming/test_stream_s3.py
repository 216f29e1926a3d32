"""The stream job with an ``s3://`` offline path (a real S3-compatible server, started by
.ci/run): its window files are objects beside the batch job's, holding the rows the batch job
writes for the same events, for a plain view and a view with aggregations."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from featurestore import FeatureStore
from featurestore.offline import layout, location
from materializers import materialize
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions
from tests.offline.s3_helpers import use_s3
from tests.streaming.helpers import UTC, make_events, make_repo, online, push_all, write_source

pytestmark = pytest.mark.integration


def offline_rows(store: FeatureStore, view: str, pattern: str) -> list[tuple]:
    root = layout.view_dir(store.config.offline_path, store.project, view)
    tables = [location.read_table(p) for p in sorted(root.glob(f"date=*/{pattern}"))]
    assert tables, f"no {pattern} files for {view} under {root}"
    return sorted(tuple(r.values()) for r in pa.concat_tables(tables).to_pylist())


def test_stream_window_files_on_s3_hold_what_the_batch_job_writes(
    tmp_path: Path,
    redis_url: str,
    unique_project: str,
    tidy: list,
    s3_bucket: str,
    s3_endpoint: str,
) -> None:
    now = datetime.now(UTC)
    events = make_events(300, now - timedelta(minutes=50), now - timedelta(minutes=20), seed=5)

    batch_repo = make_repo(tmp_path / "batch", unique_project + "b", redis_url)
    tidy.append((unique_project + "b", batch_repo))
    write_source(batch_repo, events)
    batch = FeatureStore(batch_repo)
    batch.apply()
    materialize(batch, progress=False)
    # The windows after the newest event are the stream job's (as in test_stream_vs_batch).
    run_stream(
        batch,
        ["user_agg"],
        StreamOptions(consumer="tail", generation_seconds=2.5, grace_seconds=0, stats_seconds=60),
        max_generations=1,
    )

    stream_repo = make_repo(tmp_path / "stream", unique_project + "s", redis_url)
    tidy.append((unique_project + "s", stream_repo))
    root = use_s3(stream_repo, f"{s3_bucket}/offline", s3_endpoint)
    stream = FeatureStore(stream_repo)
    try:
        assert stream.config.offline_path == root
        stream.apply()
        push_all(stream, events)
        options = StreamOptions(
            consumer="s3", generation_seconds=2.5, stats_seconds=60, grace_seconds=0
        )
        assert run_stream(stream, options=options, max_generations=2) == 2
        assert online(stream, "user_last") == online(batch, "user_last")
        assert online(stream, "user_agg") == online(batch, "user_agg")
        for view in ("user_last", "user_agg"):
            assert offline_rows(stream, view, "stream-*-s3.parquet") == offline_rows(
                batch, view, "*.parquet"
            )
        assert not (stream_repo / "data" / "offline").exists()  # all of it went to S3
        # A batch run over the same events writes its own objects beside them, the same rows.
        write_source(stream_repo, events)
        materialize(stream, progress=False)
        assert offline_rows(stream, "user_last", "stream-*.parquet") == offline_rows(
            stream, "user_last", "data.parquet"
        )
    finally:
        batch.close()
        stream.close()
