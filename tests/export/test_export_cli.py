"""`featurestore export` end to end on the example repository, with offline data written here."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.arrow_types import arrow_type
from featurestore.cli.export_cmd import ProgressBar
from featurestore.cli.main import main
from featurestore.example.repo import small_config, write_example_repo
from featurestore.offline import layout
from featurestore.store import FeatureStore
from tests.export.reference import View, reference_join

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 10


def daily_rows(key: str, ids: range, scale: float) -> list[dict[str, object]]:
    """One row per id and day; id 7 skips even days, so some lookups find nothing."""
    rows: list[dict[str, object]] = []
    for day in range(DAYS):
        t = START + timedelta(days=day)
        for i in ids:
            if i == 7 and day % 2 == 0:
                continue
            rows.append(
                {
                    key: i,
                    layout.EVENT_TS: t,
                    layout.CREATED_TS: t + timedelta(hours=1),
                    "ratings_1d": day * i,
                    "mean_rating_1d": i * scale + day / 10,
                }
            )
    return rows


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export_cli") / "repo"
    write_example_repo(root, config=small_config())
    with FeatureStore(root) as store:
        store.apply()
        defs = store.definitions()
        offline = store.config.offline_path
        project = store.project
    for view, key, scale in (
        ("user_activity", "user_id", 0.1),
        ("item_popularity", "item_id", 0.01),
    ):
        spec = defs.feature_views[view]
        schema = layout.layout_schema(
            [(key, pa.int64())], [(f.name, arrow_type(f.dtype)) for f in spec.features]
        )
        table = pa.Table.from_pylist(daily_rows(key, range(1, 11), scale), schema=schema)
        layout.replace_interval(offline, project, view, table, START, START + timedelta(days=DAYS))
    return root


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {
            "user_id": 1 + n % 12,
            "item_id": 1 + n * 7 % 11,
            "rating": float(n % 5 + 1),
            "event_timestamp": START + timedelta(hours=5 + 7 * n),
        }
        for n in range(40)
    ]
    path = tmp_path_factory.mktemp("labels") / "labels.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def export(repo: Path, *args: str) -> int:
    return main(["-r", str(repo), "export", *args])


def test_export_writes_point_in_time_features_and_a_summary(
    repo: Path, labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train" / "train.parquet"
    code = export(
        repo,
        "--entities",
        str(labels),
        "--features",
        "user_activity:ratings_1d,item_popularity",
        "--full-names",
        "--out",
        str(out),
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    table = pq.read_table(out)
    assert table.schema.names == [
        "user_id",
        "item_id",
        "rating",
        "event_timestamp",
        "user_activity__ratings_1d",
        "item_popularity__ratings_1d",
        "item_popularity__mean_rating_1d",
    ]
    users = View(
        "user_activity",
        [("user_id", "int64")],
        [("ratings_1d", "int64")],
        7 * 86400,
        daily_rows("user_id", range(1, 11), 0.1),
    )
    items = View(
        "item_popularity",
        [("item_id", "int64")],
        [("ratings_1d", "int64"), ("mean_rating_1d", "float64")],
        30 * 86400,
        daily_rows("item_id", range(1, 11), 0.01),
    )
    expected = reference_join(pq.read_table(labels).to_pylist(), [users, items], full_names=True)
    assert table.to_pylist() == expected
    found = sum(r["user_activity__ratings_1d"] is not None for r in expected)
    assert 0 < found < 40
    assert f"Wrote 40 rows x 7 columns to {out}" in captured.out
    coverage = {
        line.split()[0]: line.split()[1:]
        for line in captured.out.splitlines()
        if line.startswith("  ")
    }
    assert coverage["user_activity:ratings_1d"] == [
        f"{found}",
        f"{100 * found / 40:.1f}%",
        "->",
        "user_activity__ratings_1d",
    ]
    assert "export 40 rows: 100%" in captured.err


def test_a_service_export_is_stable_and_warns_about_views_without_data(
    repo: Path, labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = []
    for n in range(2):
        assert (
            export(
                repo,
                "--entities",
                str(labels),
                "--service",
                "item_ranking",
                "--out",
                str(tmp_path / f"{n}.parquet"),
            )
            == 0
        )
        names.append(pq.read_schema(tmp_path / f"{n}.parquet").names)
    out = capsys.readouterr().out
    assert (
        names[0]
        == names[1]
        == ["user_id", "item_id", "rating", "event_timestamp", "factors", "mean_rating_1d"]
    )
    assert "warning: feature view 'item_embedding' has no offline data yet" in out
    assert "  item_embedding:factors" in out and " 0    0.0%" in out


def test_a_shared_feature_name_asks_for_full_names(
    repo: Path, labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = export(
        repo,
        "--entities",
        str(labels),
        "--features",
        "user_activity",
        "item_popularity",
        "--out",
        str(tmp_path / "x.parquet"),
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "would both be named 'ratings_1d'" in err and "--full-names" in err
    assert not (tmp_path / "x.parquet").exists()


def test_a_missing_column_names_it_and_the_columns_found(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = tmp_path / "labels.parquet"
    pq.write_table(
        pa.table({"user_id": [1], "ts": pa.array([START + timedelta(days=3)], pa.timestamp("us"))}),
        labels,
    )
    out = tmp_path / "x.parquet"
    assert (
        export(repo, "--entities", str(labels), "--features", "user_activity", "--out", str(out))
        == 1
    )
    err = capsys.readouterr().err
    assert "no column 'event_timestamp'" in err and "columns found: user_id, ts" in err
    assert (
        export(
            repo,
            "--entities",
            str(labels),
            "--features",
            "user_activity",
            "--out",
            str(out),
            "--timestamp-column",
            "ts",
            "--no-progress",
        )
        == 0
    )
    assert pq.read_table(out).to_pylist()[0]["ratings_1d"] == 3  # the row of day 3, at exactly T


def test_a_sql_query_and_every_option(
    repo: Path, labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.parquet"
    query = (
        f"select user_id, event_timestamp, rating from read_parquet('{labels}') where user_id <= 3"
    )
    code = export(
        repo,
        "--entities",
        query,
        "--features",
        "user_activity:mean_rating_1d",
        "--out",
        str(out),
        "--exclude-created-after",
        "--memory-limit",
        "256MB",
        "--temp-directory",
        str(tmp_path / "spill"),
        "--no-progress",
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err == ""
    rows = pq.read_table(out).to_pylist()
    assert [r["user_id"] for r in rows] == [
        r["user_id"] for r in pq.read_table(labels).to_pylist() if r["user_id"] <= 3
    ]


def test_exclude_created_after_ignores_rows_written_after_the_label(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Day 1's row of user 1 has t = day 1 00:00 but was created at 01:00: at 00:30 it is
    # visible only without the option; with it, day 0's row is used.
    query = (
        "select * from (values (1, TIMESTAMP '2026-01-02 00:30:00')) t(user_id, event_timestamp)"
    )
    found = []
    for option in ([], ["--exclude-created-after"]):
        out = tmp_path / f"{len(option)}.parquet"
        assert (
            export(
                repo,
                "--entities",
                query,
                "--features",
                "user_activity:mean_rating_1d",
                "--out",
                str(out),
                *option,
            )
            == 0
        )
        found.append(pq.read_table(out).to_pylist()[0]["mean_rating_1d"])
    assert found == pytest.approx([0.2, 0.1])
    capsys.readouterr()


def test_unknown_features_and_bad_memory_limits_are_user_errors(
    repo: Path, labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "x.parquet")
    assert export(repo, "--entities", str(labels), "--features", "user_activty", "--out", out) == 1
    assert "did you mean 'user_activity'" in capsys.readouterr().err
    assert (
        export(
            repo,
            "--entities",
            str(labels),
            "--features",
            "user_activity",
            "--out",
            out,
            "--memory-limit",
            "much",
        )
        == 1
    )
    assert "bad export setting" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_redraws_on_a_terminal_and_prints_quarters_on_a_pipe() -> None:
    tty, pipe = _Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = ProgressBar(stream, "export")
        for percent in (10.0, 30.0, 80.0, 100.0):
            bar.update(percent)
        bar.finish()
    assert tty.getvalue().count("\r") == 4 and tty.getvalue().endswith("\n")
    assert "[" + "#" * 30 + "]" in tty.getvalue()
    assert [line.split(" (")[0] for line in pipe.getvalue().splitlines()] == [
        "export: 30%",
        "export: 80%",
        "export: 100%",
    ]
