"""End to end: materialize() and the CLI on small repositories, memory and embedded stores."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.example.repo import small_config, write_example_repo
from featurestore.offline import layout
from featurestore.online.codec import ValueCodec, encode_entity_keys
from featurestore.online.memory import MemoryOnlineStore
from featurestore.store import FeatureStore
from materializers import materialize
from registry.errors import DataError, NotFoundError, UserError

UTC = timezone.utc
TS = pa.timestamp("us", tz="UTC")

ENTITIES = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
"""
VIEWS = """\
sources:
  - name: clicks_src
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
    created_timestamp_field: created
feature_views:
  - name: clicks
    entities: [user]
    source: clicks_src
    features:
      - {name: clicks, dtype: int32}
      - {name: score, dtype: float32}
"""


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


def us(value: datetime) -> int:
    return int(value.timestamp()) * 1_000_000 + value.microsecond


def write_source(repo: Path, name: str, rows: list[tuple]) -> None:
    """rows: (user_id, ts, created, clicks, score)."""
    ids, ts, created, clicks, score = (list(c) for c in zip(*rows))
    (repo / "data" / "src").mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "ts": pa.array(ts, TS),
                "created": pa.array(created, TS),
                "clicks": pa.array(clicks, pa.int64()),
                "score": pa.array(score, pa.float64()),
            }
        ),
        repo / "data" / "src" / name,
    )


def make_repo(root: Path, definitions: str = VIEWS, lookback: str = "1d") -> Path:
    (root / "features").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        "project: demo\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: embedded, path: data/online.db}\n"
        f"materialization: {{lookback: {lookback}}}\n"
    )
    (root / "features" / "entities.yaml").write_text(ENTITIES)
    (root / "features" / "views.yaml").write_text(definitions)
    (root / "data").mkdir(exist_ok=True)
    return root


@pytest.fixture
def memory_store(tmp_path: Path, unique_project: str):  # type: ignore[no-untyped-def]
    repo = make_repo(tmp_path / "repo")
    store = FeatureStore(
        repo, config_overrides={"online_store": {"type": "memory"}, "project": unique_project}
    )
    yield store
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


def offline_rows(store: FeatureStore, view: str) -> list[dict]:
    root = layout.view_dir(store.config.offline_path, store.project, view)
    return [
        r for p in sorted(root.glob("date=*/data.parquet")) for r in pq.read_table(p).to_pylist()
    ]


def online_values(store: FeatureStore, view: str, ids: list[int]) -> list:
    codec = ValueCodec([f.dtype for f in store.get_feature_view(view).features])
    keys = encode_entity_keys(["int64"], [pa.array(ids, pa.int64())])
    got = store.online_store.read_latest([(view, k) for k in keys])
    return [None if g is None else (g[0], codec.decode(g[1])) for g in got]


def test_example_repo_end_to_end_on_the_embedded_store(tmp_path: Path) -> None:
    write_example_repo(tmp_path / "ex", config=small_config())
    store = FeatureStore(tmp_path / "ex")
    store.apply()
    summaries = materialize(store, progress=False)
    assert [s.view for s in summaries] == ["item_embedding", "item_popularity", "user_activity"]
    for s in summaries:
        assert s.rows_read > 0 and s.rows_offline == s.rows_read and s.rows_rejected == 0
        assert len(offline_rows(store, s.view)) == s.rows_read
        assert store.materialization_log.watermark(s.view) == s.end
    embedding = summaries[0]
    assert embedding.rows_online == 200  # ttl 0: every item, latest value
    source = pq.read_table(tmp_path / "ex" / "data" / "source" / "item_factors.parquet").sort_by(
        "item_id"
    )
    got = online_values(store, "item_embedding", [1, 2, 200])
    expected = [source["factors"][i].as_py() for i in (0, 1, 199)]
    assert [list(v[1][0]) for v in got] == expected  # float32 both sides: exact
    store.close()


def test_latest_created_wins_offline_and_online(memory_store: FeatureStore) -> None:
    repo = memory_store.repo_path
    write_source(
        repo,
        "a.parquet",
        [
            (1, t(1, 5), t(1, 5), 10, 0.5),
            (1, t(1, 5), t(1, 9), 11, 0.5),  # same (key, event time), created later: wins
            (1, t(2, 5), t(2, 5), 20, 0.5),
            (2, t(1, 6), t(1, 6), 30, 0.25),
        ],
    )
    write_source(repo, "b.parquet", [(1, t(1, 5), t(1, 7), 12, 0.5)])  # created earlier than 11's
    memory_store.apply()
    [s] = materialize(memory_store, progress=False)
    assert (s.rows_read, s.rows_offline, s.rows_online, s.rows_rejected) == (5, 3, 2, 0)
    rows = offline_rows(memory_store, "clicks")
    assert [(r["user_id"], r["event_timestamp"], r["clicks"]) for r in rows] == [
        (1, t(1, 5), 11),
        (2, t(1, 6), 30),
        (1, t(2, 5), 20),
    ]
    assert online_values(memory_store, "clicks", [1, 2, 3]) == [
        (us(t(2, 5)), (20, 0.5)),
        (us(t(1, 6)), (30, 0.25)),
        None,
    ]


def test_rerun_of_the_same_interval_gives_the_same_files(memory_store: FeatureStore) -> None:
    write_source(
        memory_store.repo_path,
        "a.parquet",
        [(i, t(1 + i % 3, i % 24), t(1, 0), i, 0.5) for i in range(50)],
    )
    memory_store.apply()
    materialize(memory_store, end=t(10), progress=False)
    first = {p: p.read_bytes() for p in (memory_store.config.offline_path).rglob("*.parquet")}
    materialize(memory_store, end=t(10), progress=False)
    second = {p: p.read_bytes() for p in (memory_store.config.offline_path).rglob("*.parquet")}
    assert len(first) == 3 and first == second


def test_incremental_runs_pick_up_late_data_within_the_lookback(memory_store: FeatureStore) -> None:
    repo = memory_store.repo_path
    write_source(
        repo, "a.parquet", [(1, t(1, 12), t(1, 12), 1, 0.5), (2, t(3, 6), t(3, 6), 2, 0.5)]
    )
    memory_store.apply()
    [first] = materialize(memory_store, end=t(4), progress=False)
    assert first.rows_read == 2 and memory_store.materialization_log.watermark("clicks") == t(4)
    write_source(
        repo,
        "late.parquet",
        [
            (3, t(3, 12), t(4, 1), 3, 0.5),  # late, but within 1d of the watermark: picked up
            (4, t(2, 12), t(4, 1), 4, 0.5),  # later than the lookback: left for a full run
            (1, t(4, 6), t(4, 6), 5, 0.5),  # new
        ],
    )
    [second] = materialize(memory_store, end=t(5), incremental=True, progress=False)
    assert (second.start, second.end) == (t(3), t(5))
    assert second.rows_read == 3  # the 01-03 row of a.parquet is re-read too
    assert memory_store.materialization_log.watermark("clicks") == t(5)
    assert sorted(r["user_id"] for r in offline_rows(memory_store, "clicks")) == [1, 1, 2, 3]
    assert online_values(memory_store, "clicks", [1, 3, 4]) == [
        (us(t(4, 6)), (5, 0.5)),
        (us(t(3, 12)), (3, 0.5)),
        None,
    ]
    [third] = materialize(memory_store, end=t(5), incremental=True, progress=False)
    assert (third.start, third.rows_read) == (t(4), 1)
    runs = memory_store.materialization_log.runs("clicks")
    assert [(r.start, r.end) for r in runs] == [
        (t(4), t(5)),
        (t(3), t(5)),
        (layout._utc(datetime(1970, 1, 1)), t(4)),
    ]


def test_bad_rows_are_counted_and_written_with_a_reason(memory_store: FeatureStore) -> None:
    write_source(
        memory_store.repo_path,
        "a.parquet",
        [
            (1, t(1), t(1), 1, 0.5),
            (None, t(1), t(1), 2, 0.5),
            (3, None, t(1), 3, 0.5),
            (4, t(1), t(1), 2**40, 0.5),
        ],
    )
    memory_store.apply()
    [s] = materialize(memory_store, progress=False)
    assert (s.rows_read, s.rows_offline, s.rows_rejected) == (4, 1, 3)
    expected = (
        memory_store.config.offline_path
        / memory_store.project
        / "_rejects"
        / "clicks"
        / f"{s.run_id}.parquet"
    )
    assert s.rejects_path == str(expected)
    rejects = pq.read_table(expected)
    assert rejects.column_names == ["user_id", "ts", "created", "clicks", "score", "reason"]
    assert sorted(zip(rejects["clicks"].to_pylist(), rejects["reason"].to_pylist())) == [
        (2, "null join key user_id"),
        (3, "null event timestamp ts"),
        (2**40, "feature clicks does not fit int32"),
    ]
    assert not (memory_store.config.offline_path / memory_store.project / "_staging").exists()


def test_schema_mismatch_fails_before_anything_is_written(tmp_path: Path) -> None:
    definitions = (
        VIEWS
        + """\
  - name: broken
    entities: [user]
    source: broken_src
    features:
      - {name: missing_col, dtype: float64}
      - {name: clicks, dtype: "float32[4]"}
"""
    )
    definitions = definitions.replace(
        "feature_views:",
        """\
  - name: broken_src
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
feature_views:""",
    )
    repo = make_repo(tmp_path / "repo", definitions)
    write_source(repo, "a.parquet", [(1, t(1), t(1), 1, 0.5)])
    store = FeatureStore(repo)
    store.apply()
    with pytest.raises(DataError) as info:
        materialize(store, progress=False)
    message = str(info.value)
    assert "'missing_col' is missing (expected float64)" in message
    assert "'clicks' has type int64, expected float32[4]" in message
    # The good view came first but was not run either.
    assert not (repo / "data" / "offline").exists()
    assert store.materialization_log.watermark("clicks") is None
    store.close()


def test_argument_errors(memory_store: FeatureStore) -> None:
    with pytest.raises(UserError, match="nothing is applied"):
        materialize(memory_store, progress=False)
    write_source(memory_store.repo_path, "a.parquet", [(1, t(1), t(1), 1, 0.5)])
    memory_store.apply()
    with pytest.raises(NotFoundError, match="clicks"):
        materialize(memory_store, ["clickz"], progress=False)
    with pytest.raises(UserError, match="--incremental and --start"):
        materialize(memory_store, incremental=True, start="2026-01-01", progress=False)
    with pytest.raises(UserError, match="bad time"):
        materialize(memory_store, start="yesterday-ish", progress=False)


def test_cli_passes_unknown_options_to_beam_and_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner

    from featurestore.cli.main import main
    from featurestore.cli.materialize_cmd import split_rest
    from materializers.batch import make_pipeline

    repo = make_repo(tmp_path / "repo")
    write_source(repo, "a.parquet", [(1, t(1), t(1), 1, 0.5), (2, t(2), t(2), 2, 0.5)])
    assert main(["-r", str(repo), "apply"]) == 0
    code = main(
        [
            "-r",
            str(repo),
            "materialize",
            "clicks",
            "--start",
            "2026-01-02",
            "--",
            "--direct_num_workers=1",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "clicks" in out and "rows read" in out
    assert "clicks: 1 rows read" in err  # the progress line
    assert split_rest(["v", "--runner", "FlinkRunner", "--end=2026-01-01"]) == (
        ["v"],
        {"end": "2026-01-01"},
        ["--runner", "FlinkRunner"],
    )
    # DirectRunner would try Prism (a download); the in-process runner is used instead.
    assert isinstance(make_pipeline(["--runner", "DirectRunner"]).runner, FnApiRunner)
    assert main(["-r", str(repo), "materialize", "nope"]) == 1
