"""Every entity timestamp type docs/point-in-time.md accepts works in `featurestore export` and in
the SDK alike (Parquet, Arrow and pandas); other types are refused with a hint that fits them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.arrow_types import arrow_type
from featurestore.cli.main import main
from featurestore.example.repo import small_config, write_example_repo
from featurestore.offline import layout
from featurestore.store import FeatureStore
from tests.export.reference import View, reference_join

START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 10
ROWS = 12
# A fraction of a second in each unit; nanoseconds are floored to the microsecond (.250000600 ->
# .250000: rounding up would let a label see a feature row from its future).
FRACTION = {"s": 0, "ms": 250, "us": 250_001, "ns": 250_000_600}
FACTOR = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}
EXPECTED_MICROS = {"s": 0, "ms": 250_000, "us": 250_001, "ns": 250_000}
TIME_TYPES = [pa.timestamp(unit, tz) for unit in FACTOR for tz in (None, "UTC", "Europe/Paris")]
DATE_TYPES = [pa.date32(), pa.date64()]


def user_rows() -> list[dict[str, object]]:
    """user_activity's offline rows: one per user and day, stamped at midnight."""
    rows: list[dict[str, object]] = []
    for day in range(DAYS):
        t = START + timedelta(days=day)
        for user in range(1, 6):
            rows.append(
                {
                    "user_id": user,
                    layout.EVENT_TS: t,
                    layout.CREATED_TS: t,
                    "ratings_1d": 100 * day + user,
                    "mean_rating_1d": day + user / 10,
                }
            )
    return rows


USERS = View("user_activity", [("user_id", "int64")],
             [("ratings_1d", "int64"), ("mean_rating_1d", "float64")], 7 * 86400, user_rows())


def build_repo(root: Path, project: str = "demo") -> Path:
    write_example_repo(root, project=project, config=small_config())
    assert main(["-r", str(root), "registry", "upgrade"]) == 0
    with FeatureStore(root) as store:
        store.apply()
        spec = store.definitions().feature_views["user_activity"]
        offline = store.config.offline_path
    schema = layout.layout_schema([("user_id", pa.int64())], [(f.name, arrow_type(f.dtype)) for f in spec.features])
    table = pa.Table.from_pylist(USERS.rows, schema=schema)
    layout.replace_interval(offline, project, "user_activity", table, START, START + timedelta(days=DAYS))
    return root


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_repo(tmp_path_factory.mktemp("export_ts") / "repo")


def entities(ts_type: pa.DataType) -> tuple[pa.Table, list[datetime]]:
    """Entity rows whose timestamps have ``ts_type``, and the UTC instants they stand for."""
    users = [1 + n % 6 for n in range(ROWS)]  # user 6 has no rows
    if pa.types.is_timestamp(ts_type):
        seconds = [int((START + timedelta(hours=5 + 17 * n)).timestamp()) for n in range(ROWS)]
        unit = ts_type.unit
        # Arrow stores the UTC instant whatever the zone; naive values are UTC wall times.
        values = pa.array([s * FACTOR[unit] + FRACTION[unit] for s in seconds], pa.int64()).cast(ts_type)
        expected = [
            datetime.fromtimestamp(s, timezone.utc) + timedelta(microseconds=EXPECTED_MICROS[unit]) for s in seconds
        ]
    else:
        days = [START.date() + timedelta(days=n % DAYS) for n in range(ROWS)]
        values = pa.array(days, pa.date32()).cast(ts_type)
        expected = [datetime(d.year, d.month, d.day, tzinfo=timezone.utc) for d in days]
    table = pa.table({"user_id": pa.array(users, pa.int64()), "event_timestamp": values, "label": list(range(ROWS))})
    return table, expected


def expected_rows(table: pa.Table, instants: list[datetime]) -> list[dict[str, object]]:
    rows = [{**row, "event_timestamp": at} for row, at in zip(table.to_pylist(), instants)]
    return reference_join(rows, [USERS])


def export(repo: Path, entity_file: Path, out: Path) -> int:
    return main(["-r", str(repo), "export", "--entities", str(entity_file), "--features", "user_activity",
                 "--out", str(out), "--no-progress"])


@pytest.mark.parametrize("ts_type", TIME_TYPES + DATE_TYPES, ids=str)
def test_the_cli_and_the_sdk_accept_every_timestamp_type(
    repo: Path, tmp_path: Path, ts_type: pa.DataType, capsys: pytest.CaptureFixture[str]
) -> None:
    table, instants = entities(ts_type)
    expected = expected_rows(table, instants)
    assert any(r["ratings_1d"] is not None for r in expected) and any(r["ratings_1d"] is None for r in expected)
    entity_file = tmp_path / "labels.parquet"
    pq.write_table(table, entity_file)
    out = tmp_path / "train.parquet"
    assert export(repo, entity_file, out) == 0, capsys.readouterr().err
    written = pq.read_table(out)
    assert written.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
    assert written.to_pylist() == expected
    with FeatureStore(repo) as store:
        for entity_df in (table, table.to_pandas(), str(entity_file)):
            with store.get_training_dataset(entity_df, ["user_activity"]) as ds:
                assert ds.to_arrow().to_pylist() == expected, type(entity_df)


def test_pandas_default_timestamps_from_parquet(repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The file `df.to_parquet` writes from `pd.to_datetime(..., utc=True)` (datetime64[ns, UTC])."""
    frame = pd.DataFrame({
        "user_id": [1, 2, 6],
        "event_timestamp": pd.to_datetime(["2026-01-03 12:00:00", "2026-01-05 00:00:00", "2026-01-05 00:00:00"], utc=True).as_unit("ns"),
    })
    entity_file = tmp_path / "labels.parquet"
    frame.to_parquet(entity_file)
    assert pq.read_schema(entity_file).field("event_timestamp").type == pa.timestamp("ns", tz="UTC")
    out = tmp_path / "train.parquet"
    assert export(repo, entity_file, out) == 0, capsys.readouterr().err
    assert [r["ratings_1d"] for r in pq.read_table(out).to_pylist()] == [201, 402, None]


@pytest.mark.parametrize(
    ("values", "duckdb_type", "hint"),
    [
        (pa.array(["2026-01-03 00:00:00"]), "VARCHAR", "pd.to_datetime(df['event_timestamp'], utc=True)"),
        (pa.array([1767398400], pa.int64()), "BIGINT", "seconds since the epoch"),
        (pa.array([1767398400.5]), "DOUBLE", "unit='s'"),
        (pa.array([True]), "BOOLEAN", "--timestamp-column"),
    ],
    ids=["string", "int64", "float64", "bool"],
)
def test_other_types_are_refused_with_a_hint_that_fits(
    repo: Path, tmp_path: Path, values: pa.Array, duckdb_type: str, hint: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entity_file = tmp_path / "labels.parquet"
    pq.write_table(pa.table({"user_id": pa.array([1], pa.int64()), "event_timestamp": values}), entity_file)
    out = tmp_path / "train.parquet"
    assert export(repo, entity_file, out) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    assert err[0] == (
        f"error: the timestamp column 'event_timestamp' has type {duckdb_type}; "
        "expected a timestamp of any unit (naive = UTC, or with a time zone) or a date"
    )
    assert err[1].startswith("hint: ") and hint in err[1]
    assert not out.exists()


@pytest.mark.integration
def test_nanosecond_utc_parquet_on_a_postgresql_registry(
    tmp_path: Path, postgres_url: str, unique_project: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FEATURESTORE__REGISTRY", postgres_url)
    root = build_repo(tmp_path / "repo", unique_project)
    table, instants = entities(pa.timestamp("ns", "UTC"))
    entity_file = tmp_path / "labels.parquet"
    pq.write_table(table, entity_file)
    out = tmp_path / "train.parquet"
    assert export(root, entity_file, out) == 0, capsys.readouterr().err
    assert pq.read_table(out).to_pylist() == expected_rows(table, instants)
    assert not (root / "data" / "registry.db").exists()  # the export read PostgreSQL's registry

