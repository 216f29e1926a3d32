"""The stream job's parts without Redis: its validation transform (TestPipeline), offline
window files, freshness figures, options and command line."""

from __future__ import annotations

from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from featurestore.cli.stream_cmd import split_rest
from featurestore.config import OnlineStoreConfig
from featurestore.sources import ORDINAL
from featurestore.streams.base import StreamRead
from featurestore.streams.encoding import decode_events, encode_events
from featurestore.streams.schema import EventSchema
from materializers.batch import in_process_runner
from materializers.freshness import LagStats, format_line, histogram_counts, quantile
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema
from materializers.stream_offline import WindowBuffer, merge_into_file, stream_file
from materializers.stream_plan import StreamOptions, StreamRun
from materializers.stream_transforms import MicroBatch, ValidateEvents
from registry.errors import ConfigError

TS = pa.timestamp("us", tz="UTC")
SCHEMA = ViewSchema(
    view="v",
    source="s",
    join_keys=(("user_id", "int64"),),
    features=(("clicks", "int32"),),
    timestamp_field="ts",
)
EVENTS = EventSchema("v", (("user_id", "int64"),), "ts", None, (("clicks", "int32"),))


def run_of(tmp_path: Path) -> StreamRun:
    return StreamRun(
        schema=SCHEMA,
        events=EVENTS,
        source=None,
        stream_url="redis://unused",
        project="p",
        offline_path=tmp_path,
        online_config=OnlineStoreConfig(type="memory"),
        root=tmp_path,
        options=StreamOptions(consumer="c"),
    )


def rows(pairs: list[tuple[int, int, int]]) -> pa.Table:
    """(user, event second, clicks) -> validated rows."""
    return pa.table(
        {
            "user_id": pa.array([p[0] for p in pairs], pa.int64()),
            EVENT_TS: pa.array([p[1] * 1_000_000 for p in pairs], pa.int64()).cast(TS),
            CREATED_TS: pa.array([p[1] * 1_000_000 for p in pairs], pa.int64()).cast(TS),
            "clicks": pa.array([p[2] for p in pairs], pa.int32()),
            ORDINAL: pa.array(range(len(pairs)), pa.int64()),
        }
    )


def test_validate_events_splits_valid_rows_and_rejects(tmp_path: Path) -> None:
    payloads = encode_events([{"user_id": 1, "ts": "2026-11-22T10:00:00Z", "clicks": 5}], EVENTS)
    payloads += [
        b'{"user_id": null, "ts": "2026-11-22T10:00:00Z"}',
        b'{"user_id": 2, "ts": "x", "clicks": 1}',
        b"{",
    ]
    ids = [f"1795000000000-{i}".encode() for i in range(len(payloads))]
    decoded = decode_events([(i, {b"data": p}) for i, p in zip(ids, payloads)], EVENTS)
    element = MicroBatch("v", StreamRead(ids, decoded.batch, decoded.rejected), 0.0)

    def check(out: list[MicroBatch]) -> None:
        [mb] = out
        assert mb.valid is not None and mb.valid.column("clicks").to_pylist() == [5]
        assert mb.valid_ids == [ids[0]] and sorted(mb.rejected_ids) == sorted(ids[1:])
        assert mb.rejects is not None
        reasons = dict(
            zip(
                mb.rejects.column("__entry_id").to_pylist(), mb.rejects.column("reason").to_pylist()
            )
        )
        assert (
            reasons[ids[1]] == "null join key user_id"
            and reasons[ids[2]] == "unparseable event timestamp ts"
        )

    with test_pipeline.TestPipeline(runner=in_process_runner()) as p:
        assert_that(p | beam.Create([element]) | ValidateEvents(run_of(tmp_path)), check)


def test_merge_into_file_is_idempotent_and_adds_late_rows(tmp_path: Path) -> None:
    path = stream_file(tmp_path, "p", "v", 1_795_000_000_000_000, "job 1")
    assert path.parent.name == "date=2026-11-18" and path.name.startswith("stream-20261118T")
    assert merge_into_file(path, rows([(1, 10, 1), (2, 11, 2)]), SCHEMA) == 2
    assert merge_into_file(path, rows([(1, 10, 1), (2, 11, 2)]), SCHEMA) == 2  # delivered again
    assert merge_into_file(path, rows([(1, 10, 7), (3, 12, 3)]), SCHEMA) == 3  # a tie: the new wins
    got = pq.read_table(path)
    assert got.schema == SCHEMA.layout_schema()
    assert got.column("clicks").to_pylist() == [7, 2, 3]


def test_window_buffer_writes_closed_windows_and_keeps_entry_ids() -> None:
    buffer = WindowBuffer(window_seconds=10, grace_seconds=2)
    buffer.add(rows([(1, 3, 1), (2, 14, 1), (3, 5, 1)]), [b"a", b"b", b"c"])
    assert buffer.rows == 3 and buffer.due(now_us=11_000_000) == []
    assert buffer.due(now_us=12_000_000) == [0]
    start, table, ids = buffer.pop(0)
    assert start == 0 and table.num_rows == 2 and ids == [b"a", b"c"]
    assert buffer.due(now_us=0, everything=True) == [1] and buffer.rows == 1


def test_lag_quantiles_and_the_printed_line() -> None:
    stats = LagStats("v")
    stats.add(np.array([0.010] * 98 + [1.0, 2.0]), events=100, rejected=1)
    snap = stats.report(now=stats.started + 10, pending=7)
    assert 0.010 <= snap["lag_p50_seconds"] < 0.011 and 1.0 <= snap["lag_p99_seconds"] < 1.08
    assert snap["events_per_second"] == pytest.approx(10.0) and snap["lag_max_seconds"] == 2.0
    assert format_line(snap).startswith("v: 10 events/s, lag p50 0.010 s p99 1.0")
    assert histogram_counts(snap).sum() == 100
    assert stats.report()["events"] == 0 and quantile(np.zeros(3), 0.5) is None


def test_stream_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="does not divide a day"):
        StreamOptions(consumer="c", window_seconds=7)
    with pytest.raises(ConfigError, match="consumer"):
        StreamOptions(consumer="")


def test_command_line_splits_views_options_and_beam_arguments() -> None:
    assert split_rest(["a", "--window=10s", "b", "--runner=DirectRunner", "--", "--x", "1"]) == (
        ["a", "b"],
        {"window": "10s"},
        ["--runner=DirectRunner", "--x", "1"],
    )


def test_command_refuses_views_it_cannot_stream(tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    from featurestore import FeatureStore
    from featurestore.cli import main as cli
    from tests.streaming.helpers import make_repo

    monkeypatch.setitem(cli.VERBS, "stream", ("featurestore.cli.stream_cmd", "run the stream job"))
    repo = make_repo(tmp_path / "repo", "p", "redis://127.0.0.1:1/0")
    with open(repo / "features" / "defs.yaml", "a") as f:
        f.write("  - {name: plain, entities: [user], source: events, features: [{name: x, dtype: int64}]}\n")
    with FeatureStore(repo) as store:
        store.apply()
    assert cli.main(["-r", str(repo), "stream", "user_lsat"]) == 1
    assert "no feature view named 'user_lsat'" in capsys.readouterr().err
    assert cli.main(["-r", str(repo), "stream", "plain", "--window=7s"]) == 1
    assert "--window 7s does not divide a day" in capsys.readouterr().err
    assert cli.main(["-r", str(repo), "stream", "plain"]) == 1
    assert "feature view 'plain' has no stream_source" in capsys.readouterr().err
