"""The batch job's hand-over to the stream job (materializers/batch_panes.py): where a run puts
the boundary B and which panes it replaces, and the pruning of a consumer's files when B moves."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from featurestore import FeatureStore
from featurestore.sources import EPOCH, Interval
from materializers.batch_panes import BatchPanes
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema
from materializers.stream_offline import prune_before, stream_file
from tests.streaming.helpers import TS, UTC
from tests.streaming.lambda_helpers import MIN, STEP, make_lambda_repo

NOW = 1_796_300_000_000_000 // STEP * STEP + 2 * MIN + 17  # inside a pane


def _run(schema: ViewSchema, start_us: int | None, end_us: int) -> SimpleNamespace:
    start = EPOCH if start_us is None else datetime.fromtimestamp(start_us / 1e6, UTC)
    interval = Interval.of(start, datetime.fromtimestamp(end_us / 1e6, UTC))
    return SimpleNamespace(schema=schema, interval=interval, run_id="r1")


@pytest.mark.integration
def test_where_a_run_puts_the_boundary(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    repo = make_lambda_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    schema = ViewSchema.of(store.definitions(), "sliding")  # 15-minute windows, 5-minute slides
    client = redis.Redis.from_url(redis_url)
    key = f"{unique_project}:__stream__:sliding:batch_until"

    def plan(start: int | None, end: int) -> BatchPanes:
        got = BatchPanes.plan(store, _run(schema, start, end), now_us=NOW)  # type: ignore[arg-type]
        assert got is not None
        return got

    try:
        first = plan(None, NOW - 7 * MIN)  # nothing published yet: B = the run's end
        assert first.cut_us == NOW - 7 * MIN and first.moves and first.straddle
        # The panes the stream may read: 3 (window) + 12 (an hour of lateness) + 1 before now.
        assert first.panes[0] == NOW // STEP + 1 - 3 - 12 - 1
        assert first.panes[-1] == first.cut_us // STEP and first.hi == first.cut_us // STEP
        assert plan(None, NOW + 60 * MIN).cut_us == NOW  # never after now

        old = NOW - 7 * MIN
        client.hset(key, mapping={"at": old, "version": 4, "run": "r0"})
        later = plan(old - 20 * MIN, NOW - 1 * MIN)  # incremental: reads back to B, later pane
        assert later.cut_us == NOW - 1 * MIN and later.version == 4 and later.old_at == old
        same = plan(old - 20 * MIN, old + 30_000_000)  # ends in B's pane: B stays
        assert same.cut_us == old and same.straddle and not same.moves
        gap = plan(old + 30 * MIN, NOW)  # reads from after B: B stays, no pane of B's
        assert gap.cut_us == old and not gap.straddle and not gap.panes
        back = plan(old - 50 * MIN, old - 10 * MIN)  # a backfill: whole panes before B only
        assert back.cut_us == old and not back.straddle
        assert back.panes and back.panes[-1] < (old - 10 * MIN) // STEP

        aligned = (NOW - 7 * MIN) // STEP * STEP
        client.hset(key, mapping={"at": aligned, "version": 5})
        # B on a pane's start: no batch partial in that pane yet, so B may move within it.
        assert plan(aligned - 20 * MIN, aligned + 60_000_000).cut_us == aligned + 60_000_000
    finally:
        client.close()
        store.close()


def test_prune_before_drops_only_this_consumers_rows_before_the_boundary(tmp_path: Path) -> None:
    schema = ViewSchema(
        view="v",
        source="s",
        join_keys=(("user_id", "int64"),),
        features=(("n", "int64"),),
        timestamp_field="ts",
    )
    day = 1_796_256_000_000_000  # a midnight
    ends = [day + 5 * MIN, day + 10 * MIN, day + 15 * MIN]

    def write(consumer: str, start: int, at: list[int]) -> Path:
        path = stream_file(tmp_path, "p", "v", start, consumer)
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = pa.array(at, pa.int64()).cast(TS)
        table = pa.table(
            {"user_id": pa.array([1] * len(at), pa.int64()), EVENT_TS: stamps, CREATED_TS: stamps,
             "n": pa.array([1] * len(at), pa.int64())}
        )
        pq.write_table(table.cast(schema.layout_schema()), path)
        return path

    mine = write("job-1", day, ends)
    later = write("job-1", day + 15 * MIN, [day + 15 * MIN])
    theirs = write("job-2", day, ends)
    assert prune_before(tmp_path, "p", "v", "job-1", day + 10 * MIN) == 1
    assert pq.read_table(mine).num_rows == 2 and pq.read_table(later).num_rows == 1
    assert pq.read_table(theirs).num_rows == 3
    assert prune_before(tmp_path, "p", "v", "job-1", day + 20 * MIN, since_us=day) == 3
    assert not mine.exists() and not later.exists() and pq.read_table(theirs).num_rows == 3
