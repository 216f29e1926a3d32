"""The stream job and the batch job give the same online values and offline rows for the same
events: a plain view (latest value) and a view with windowed aggregations."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore import FeatureStore
from featurestore.offline import layout
from materializers import materialize
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions
from tests.streaming.helpers import (
    UTC,
    expected_agg,
    expected_last,
    make_events,
    make_repo,
    online,
    push_all,
    write_source,
)

pytestmark = pytest.mark.integration


def offline_rows(store: FeatureStore, view: str, pattern: str) -> list[tuple]:
    root = layout.view_dir(store.config.offline_path, store.project, view)
    tables = [pq.read_table(p) for p in sorted(root.glob(f"date=*/{pattern}"))]
    assert tables, f"no {pattern} files for {view}"
    rows = pa.concat_tables(tables).to_pylist()
    return sorted(tuple(r.values()) for r in rows)


def test_stream_and_batch_agree_online_and_offline(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    now = datetime.now(UTC)
    # Old enough for every window to be closed, young enough to be within the allowed lateness.
    events = make_events(400, now - timedelta(minutes=50), now - timedelta(minutes=20), seed=3)

    batch_repo = make_repo(tmp_path / "batch", unique_project + "b", redis_url)
    tidy.append((unique_project + "b", batch_repo))
    write_source(batch_repo, events)
    batch = FeatureStore(batch_repo)
    batch.apply()
    summaries = materialize(batch, progress=False)
    assert {s.view: s.rows_rejected for s in summaries} == {"user_agg": 0, "user_last": 0}
    # The windows ending after the newest event are the stream job's (docs/streaming.md,
    # "Batch and stream"): a stream job with nothing to read writes them from the batch's panes.
    assert run_stream(
        batch,
        ["user_agg"],
        StreamOptions(consumer="tail", generation_seconds=2.5, grace_seconds=0, stats_seconds=60),
        max_generations=1,
    ) == 1

    stream_repo = make_repo(tmp_path / "stream", unique_project + "s", redis_url)
    tidy.append((unique_project + "s", stream_repo))
    stream = FeatureStore(stream_repo)
    stream.apply()
    push_all(stream, events)
    # Two pipeline runs: the first ends (writing every buffered window) and the next resumes.
    options = StreamOptions(
        consumer="agree", generation_seconds=2.5, stats_seconds=60, grace_seconds=0
    )
    assert run_stream(stream, options=options, max_generations=2) == 2
    try:
        assert online(stream, "user_last") == online(batch, "user_last") == expected_last(events)
        assert online(stream, "user_agg") == online(batch, "user_agg") == expected_agg(events, now)
        for view in ("user_last", "user_agg"):
            assert offline_rows(stream, view, "stream-*.parquet") == offline_rows(
                batch, view, "*.parquet"
            )
        # A later batch run over the same events rewrites only its own files and changes
        # nothing online.
        write_source(stream_repo, events)
        materialize(stream, progress=False)
        assert offline_rows(stream, "user_last", "stream-*.parquet") == offline_rows(
            stream, "user_last", "data.parquet"
        )
        assert online(stream, "user_agg") == online(batch, "user_agg")
    finally:
        batch.close()
        stream.close()
