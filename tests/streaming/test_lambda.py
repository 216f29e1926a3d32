"""Batch history + stream tail: whichever job saw an event, online values and offline windows equal
one batch job over all events (issue 14, "Batch and stream compose"; docs/streaming.md, "Batch
and stream").

The property test drives both jobs in-process (the batch job's functions without the runner,
the stream job's DoFns without the runner, tests/streaming/drive.py) so it can afford many
examples: random events split at a random time between a batch run and the stream job, often a
second batch run while the stream job is behind, random kill points, every aggregation kind,
sliding and tumbling windows, on the Redis and the embedded online store. One more test runs
the real Beam pipelines (``materialize``, ``run_stream``) through the issue's sequence.
"""

from __future__ import annotations

import random
import tempfile
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import FeatureStore
from featurestore.offline import layout
from materializers import materialize
from materializers.schema import ViewSchema
from materializers.stream import run_stream
from materializers.stream_plan import StreamOptions
from tests.streaming.drive import StreamDriver
from tests.streaming.helpers import UTC, streams_of, us
from tests.streaming.lambda_helpers import (
    MIN,
    STEP,
    VIEWS,
    as_push,
    batch_in_process,
    expected_online,
    make_lambda_events,
    make_lambda_repo,
    online_values,
    reference,
    rows_by_window,
    stream_files,
    write_source,
)

pytestmark = pytest.mark.integration


def _forget(redis_url: str, project: str, repo: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{project}:*", count=1000)) + streams_of(repo)
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def _push(store: FeatureStore, view: str, events: list[dict]) -> None:
    for start in range(0, len(events), 200):
        store.push(view, as_push(events[start : start + 200]))


@pytest.mark.parametrize("online", ["redis", "embedded"], ids=["redis+postgresql", "embedded"])
def test_batch_history_and_stream_tail_equal_one_batch_job(
    online: str, tmp_path: Path, redis_url: str, request: pytest.FixtureRequest
) -> None:
    """Flows: a batch run over the history before t1 (or none), then the stream job over the
    tail (and a random part of the history again: a stream sees everything), then maybe a
    second batch run over everything before t2 while the stream job is a few micro-batches
    behind and only part of the tail has arrived; kill points anywhere in the stream job, and
    a batch run that dies between staging its panes and publishing them."""

    # The production profile: Redis online, PostgreSQL registry (one schema, a project per example).
    registry = request.getfixturevalue("postgres_url") if online == "redis" else None

    @settings(max_examples=12, deadline=None, database=None)
    @given(
        view=st.sampled_from(VIEWS),
        seed=st.integers(0, 2**32),
        n=st.integers(1, 60),
        first_batch=st.booleans(),
        split=st.floats(0, 1),
        aligned=st.booleans(),
        replayed=st.floats(0, 1),
        second=st.one_of(st.none(), st.floats(0, 1)),
        arrived=st.floats(0, 1),
        behind=st.integers(0, 4),
        max_entries=st.integers(2, 25),
        shuffled=st.booleans(),
        kills=st.dictionaries(
            st.integers(1, 8), st.sampled_from(["before_commit", "after_commit"]), max_size=2
        ),
        crashed_batch=st.booleans(),
        open_end=st.booleans(),
        begin=st.one_of(st.none(), st.floats(0, 1)),
    )
    def example(
        view: str,
        seed: int,
        n: int,
        first_batch: bool,
        split: float,
        aligned: bool,
        replayed: float,
        second: float | None,
        arrived: float,
        behind: int,
        max_entries: int,
        shuffled: bool,
        kills: dict[int, str],
        crashed_batch: bool,
        open_end: bool,
        begin: float | None,
    ) -> None:
        rng = random.Random(seed)
        now = us(datetime.now(UTC))
        # Old enough that every window is closed, young enough for the allowed lateness (1 h).
        start, span = now - 50 * MIN, 28 * MIN
        events = make_lambda_events(seed, n, start, span)
        t1 = start + int(split * span)
        if aligned:
            t1 = t1 // STEP * STEP
        t2 = None if second is None else t1 + int(second * (start + span - t1))
        if first_batch:
            history = [e for e in events if e["ts"] < t1]
            tail = [e for e in events if e["ts"] >= t1]
            tail += [e for e in history if rng.random() < replayed]  # the batch's already
        else:
            history, tail = [], list(events)
        tail.sort(key=lambda e: e["ts"])
        if shuffled:
            rng.shuffle(tail)
        project = "t" + uuid.uuid4().hex[:12]
        repo = make_lambda_repo(
            Path(tempfile.mkdtemp(dir=tmp_path)) / "repo", project, redis_url, online, registry
        )
        store = FeatureStore(repo)
        try:
            store.apply()
            schema = ViewSchema.of(store.definitions(), view)
            rows = None
            # With an open end (the default `--end`, now), a run's source still ends at t1 or
            # t2: the tail it never holds is the stream job's (review finding 1a).
            end1 = now if open_end else t1
            handed_over = False
            if first_batch:
                if crashed_batch:  # staged its panes, died before publishing: run again
                    batch_in_process(store, view, history, end1, publish=False)
                rows, first = batch_in_process(store, view, history, end1)
                handed_over = first is not None  # None: nothing read, or not back far enough
            kept: dict = {}
            options = StreamOptions(consumer="lambda", grace_seconds=0, max_entries=max_entries)
            with StreamDriver(store, view, options, kills=kills) as job:
                if t2 is None:
                    _push(store, view, tail)
                    job.drain()
                else:
                    # The source catches up to t2 while part of the tail has yet to arrive and
                    # the stream job is a few micro-batches behind: a second batch run.
                    cut = int(arrived * len(tail))
                    _push(store, view, tail[:cut])
                    job.steps_for(behind)
                    # A second run from the epoch, or from a start: with a first run, one that
                    # still reads back to B; without, a first hand-over after a stream-only
                    # period, which happens only when the run reads back to the panes the
                    # stream job still reads (review finding 1c).
                    end2 = now if open_end else t2
                    s2 = None
                    if begin is not None:
                        s2 = start + int(begin * ((t1 if first_batch else t2) - start))
                        if rows is not None:  # the first run's rows before s2 stay
                            kept = {
                                k: v for k, v in rows_by_window(rows, schema).items() if k[1] < s2
                            }
                    source = [e for e in events if e["ts"] < t2]
                    if crashed_batch and not first_batch:
                        batch_in_process(store, view, source, end2, publish=False, start_us=s2)
                    rows, published = batch_in_process(store, view, source, end2, start_us=s2)
                    handed_over = handed_over or published is not None
                    _push(store, view, tail[cut:])
                    job.drain()
            assert online_values(store, view) == expected_online(events, schema)
            batch = {**kept, **(rows_by_window(rows, schema) if rows is not None else {})}
            written = stream_files(store, view)
            streamed = rows_by_window(written, schema) if written is not None else {}
            _check_offline(batch, streamed, reference(events, schema), handed_over)
        finally:
            store.close()
            _forget(redis_url, project, repo)

    example()


def _check_offline(batch: dict, streamed: dict, expected: dict, handed_over: bool) -> None:
    """The two jobs' files together hold every window once, right. Without a hand-over (B never
    published) both jobs may write a window, from the same events: then both rows agree."""
    common = set(batch) & set(streamed)
    if handed_over:
        assert not common, "a window in both jobs' files"
    else:
        assert {k: batch[k] for k in common} == {k: streamed[k] for k in common}
    assert {**batch, **streamed} == expected


def _offline(store: FeatureStore, view: str) -> dict:
    schema = ViewSchema.of(store.definitions(), view)
    root = layout.view_dir(store.config.offline_path, store.project, view)
    tables = [pq.read_table(p) for p in sorted(root.glob("date=*/*.parquet"))]
    return rows_by_window(pa.concat_tables(tables), schema)


def test_materialize_then_stream_then_incremental_materialize(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    """The issue's sequence with the real pipelines: history by the batch job, new events by
    the stream job, then (the stream job stopped) an incremental batch run once the source
    caught up, then the stream job again: online and offline equal one batch job over all."""
    now = datetime.now(UTC)
    start = us(now) - 50 * MIN
    events = make_lambda_events(7, 240, start, 28 * MIN)
    t1 = start + 9 * MIN + 17_000_123  # inside a pane
    t2 = start + 19 * MIN + 41_000_007
    views = ["sliding"]

    repo = make_lambda_repo(tmp_path / "lambda", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    write_source(repo, [e for e in events if e["ts"] < t1])
    materialize(store, views, end=datetime.fromtimestamp(t1 / 1e6, UTC), progress=False)
    _push(store, "sliding", [e for e in events if e["ts"] >= t1])
    options = StreamOptions(consumer="job", generation_seconds=2.0, grace_seconds=0, stats_seconds=60)
    assert run_stream(store, views, options, max_generations=1) == 1
    schema = ViewSchema.of(store.definitions(), "sliding")
    expected = expected_online(events, schema)
    assert online_values(store, "sliding") == expected

    # The source caught up to t2; the stream job is stopped: the batch run alone corrects
    # the online values the stream job wrote with later event times.
    write_source(repo, [e for e in events if e["ts"] < t2])
    materialize(
        store, views, incremental=True, end=datetime.fromtimestamp(t2 / 1e6, UTC), progress=False
    )
    assert online_values(store, "sliding") == expected
    # The default end (now) while the source still ends at t2: the events after t2 that only
    # the stream job saw stay counted (review finding 1a: B moved to now and replaced them).
    materialize(store, views, incremental=True, progress=False)
    assert online_values(store, "sliding") == expected
    assert run_stream(store, views, options, max_generations=1) == 1
    assert online_values(store, "sliding") == expected

    one = make_lambda_repo(tmp_path / "one", unique_project + "o", redis_url)
    tidy.append((unique_project + "o", one))
    single = FeatureStore(one)
    single.apply()
    write_source(one, events)
    materialize(single, views, progress=False)
    # Windows that end after the newest event a batch run read are the stream job's (the
    # stream may hold later events): the batch run alone writes none of them offline ...
    last = max(e["ts"] for e in events)
    assert all(end <= last for _, end in _offline(single, "sliding"))
    # ... and a stream job with nothing new to read writes them from the batch's panes.
    assert run_stream(single, views, options, max_generations=1) == 1
    try:
        assert online_values(single, "sliding") == expected
        assert _offline(store, "sliding") == _offline(single, "sliding") == reference(events, schema)
    finally:
        store.close()
        single.close()


def test_events_before_the_boundary_are_left_to_the_batch_job(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    """An event the stream job reads after a batch run covered its time is acknowledged and
    counted as late, not counted twice."""
    start = us(datetime.now(UTC)) - 40 * MIN
    events = make_lambda_events(3, 30, start, 10 * MIN)
    t1 = start + 10 * MIN
    repo = make_lambda_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    schema = ViewSchema.of(store.definitions(), "tumbling")
    batch_in_process(store, "tumbling", events, t1)
    late = [{**e, "created": e["created"] + 1} for e in events[:5]]  # seen again by the stream
    options = StreamOptions(consumer="job", grace_seconds=0)
    with StreamDriver(store, "tumbling", options) as job:
        _push(store, "tumbling", late)
        job.drain()
        assert job.late == 5
    assert online_values(store, "tumbling") == expected_online(events, schema)
    store.close()


def test_a_new_boundary_reaches_a_running_stream_job(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    """A batch run that corrects history (the source has an event the stream never saw) while
    the stream job runs: the job recomputes every entity it holds, though it wrote them with
    later event times, and drops the windows it wrote before B from its files."""
    start = us(datetime.now(UTC)) - 45 * MIN
    events = make_lambda_events(11, 60, start, 20 * MIN)
    repo = make_lambda_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    schema = ViewSchema.of(store.definitions(), "sliding")
    t2 = start + 12 * MIN + 5_000_000
    # In a pane wholly before B's: in B's own pane the stream job, having counted the entity
    # there, keeps its partial (docs/streaming.md, "B's pane").
    missed = {"user_id": 0, "ts": start + 5 * MIN, "created": start + 5 * MIN, "clicks": 99,
              "amount": 0.25, "page": "item"}
    options = StreamOptions(consumer="job", grace_seconds=0)
    with StreamDriver(store, "sliding", options) as job:
        _push(store, "sliding", events)
        job.drain()
        assert online_values(store, "sliding") == expected_online(events, schema)
        every = sorted([*events, missed], key=lambda e: e["ts"])
        rows, published = batch_in_process(store, "sliding", [e for e in every if e["ts"] < t2], t2)
        # B: just after the newest event the run read (its source ends there, not at t2).
        newest = max(e["ts"] for e in every if e["ts"] < t2)
        assert published is not None and published.at_us == newest + 1
        job.drain()
        assert online_values(store, "sliding") == expected_online(every, schema)
    batch = rows_by_window(rows, schema)
    streamed = rows_by_window(stream_files(store, "sliding"), schema)
    assert min(end for _, end in streamed) >= newest + 1 and not set(batch) & set(streamed)
    assert {**batch, **streamed} == reference(every, schema)
    store.close()


def test_no_batch_run_changes_nothing(tmp_path: Path, redis_url: str, unique_project: str, tidy: list) -> None:
    """Without a batch run there is no boundary: every event is the stream job's."""
    start = us(datetime.now(UTC)) - 40 * MIN
    events = make_lambda_events(5, 40, start, 15 * MIN)
    repo = make_lambda_repo(tmp_path / "repo", unique_project, redis_url, online="embedded")
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    with StreamDriver(store, "tumbling", StreamOptions(consumer="j", grace_seconds=0)) as job:
        _push(store, "tumbling", events)
        job.drain()
    schema = ViewSchema.of(store.definitions(), "tumbling")
    assert online_values(store, "tumbling") == expected_online(events, schema)
    assert rows_by_window(stream_files(store, "tumbling"), schema) == reference(events, schema)
    store.close()



@pytest.mark.parametrize("online", ["redis", "embedded"], ids=["redis+postgresql", "embedded"])
def test_a_first_hand_over_with_a_start_keeps_the_stream_jobs_earlier_counts(
    online: str, tmp_path: Path, redis_url: str, unique_project: str, tidy: list, request: pytest.FixtureRequest
) -> None:
    """A stream-only period, then a first batch run with a start inside it (review finding
    1c). While the run does not read back to the panes the stream job still reads, B stays
    unset (the stream job may yet see events there that the run never read); once it does, B
    moves and the stream job drops from its files only the windows the batch run wrote, from
    its start, not the earlier ones."""
    start = us(datetime.now(UTC)) - 50 * MIN
    events = make_lambda_events(13, 80, start, 30 * MIN)
    registry = request.getfixturevalue("postgres_url") if online == "redis" else None
    repo = make_lambda_repo(tmp_path / "repo", unique_project, redis_url, online, registry)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    schema = ViewSchema.of(store.definitions(), "sliding")
    begin = start + 22 * MIN + 1_234_567  # more than a window after the first event
    t2 = start + 30 * MIN
    source = [e for e in events if e["ts"] < t2]
    expected = reference(events, schema)
    with StreamDriver(store, "sliding", StreamOptions(consumer="job", grace_seconds=0)) as job:
        _push(store, "sliding", events)
        job.drain()
        before = rows_by_window(stream_files(store, "sliding"), schema)
        assert min(end for _, end in before) < begin - schema.max_window_seconds * 1_000_000
        rows, published = batch_in_process(store, "sliding", source, t2, start_us=begin)
        assert published is None  # an hour of lateness: the stream's panes reach further back
        job.drain()
        assert online_values(store, "sliding") == expected_online(events, schema)
    streamed = rows_by_window(stream_files(store, "sliding"), schema)
    assert streamed == before
    _check_offline(rows_by_window(rows, schema), streamed, expected, handed_over=False)

    # A stream job with 5 minutes of lateness: the same run (up to now, the default) reads
    # back far enough. The stream job keeps less than the time since t2: the batch job writes
    # the windows the stream job can no longer compute.
    options = StreamOptions(consumer="job", grace_seconds=0, lateness_seconds=300)
    with StreamDriver(store, "sliding", options) as job:
        job.drain()
        now = us(datetime.now(UTC))
        rows, published = batch_in_process(store, "sliding", source, now, start_us=begin)
        assert published is not None and published.at_us == max(e["ts"] for e in source) + 1
        job.drain()
        assert online_values(store, "sliding") == expected_online(events, schema)
    streamed = rows_by_window(stream_files(store, "sliding"), schema)
    assert {k: v for k, v in before.items() if k[1] < begin} == {
        k: v for k, v in streamed.items() if k[1] < begin
    }, "the stream job's windows before the run's start must stay"
    _check_offline(rows_by_window(rows, schema), streamed, expected, handed_over=True)
    store.close()
