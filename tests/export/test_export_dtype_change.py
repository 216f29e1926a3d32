"""The export across a dtype change (issue 14, 2b): after ``apply --allow-breaking`` retypes a
feature, old partitions still hold the old Parquet type until a backfill rewrites them. Each
file is read as its own type and cast to the registry's dtype: a value the new type holds
exactly is kept, any other is null; never an error and never a rounded or otherwise wrong value.
Values written under the current dtype come through exactly (no detour through a common
supertype: DOUBLE would round an int64 beyond 2**53).

Run on both registry profiles (SQLite and PostgreSQL): the dtype the export casts to is read
from the applied registry.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from featurestore.arrow_types import arrow_type
from featurestore.export.pit import (
    FeatureColumn,
    ViewJoin,
    conform_sql,
    file_types,
    group_files,
    reader,
    view_source,
)
from featurestore.offline import layout
from featurestore.store import FeatureStore

UTC = timezone.utc
DAY0 = datetime(2026, 2, 1, tzinfo=UTC)
# Each case: old dtype, old values (one user each, day 0), new dtype, new values (day 1),
# expected export at day 0 (old values seen through the new dtype), at day 1.
CASES: dict[str, tuple[str, list[Any], str, list[Any], list[Any]]] = {
    # float64 -> int32: only integral values in range survive; 3.7 never becomes 4.
    "narrow": ("float64", [3.0, 3.7, 1e12, -2.0, math.nan], "int32", [5, -6, 7, 8, 9], [3, None, None, -2, None]),
    # int64 -> string: every integer has its text.
    "to_text": ("int64", [5, -2, 0, 2**60 + 1, None], "string", ["a", "b", "c", "d", "e"], ["5", "-2", "0", str(2**60 + 1), None]),
    # string -> int64: only canonical integer text; '3.7' never becomes 4, ' 7' is not a number.
    "from_text": ("string", ["7", "abc", "3.7", " 7", "-12"], "int64", [2**60 + 1, 1, 2, 3, 4], [7, None, None, None, -12]),
    # int64 -> float64: exact below 2**53; beyond it the double would be another number.
    "to_float": ("int64", [12, 2**53 + 1, -3, None, 0], "float64", [0.5, 1.5, 2.5, 3.5, 4.5], [12.0, None, -3.0, None, 0.0]),
    # float32[2] -> float32[3]: a vector of another length is not a value of the new dtype.
    "resize": ("float32[2]", [[1.0, 2.0]] * 5, "float32[3]", [[1.0, 2.0, 3.0]] * 5, [None] * 5),
    # float64[] -> int32[]: element-wise, and a vector with an element that does not fit is null.
    "vector": ("float64[]", [[1.0, 2.0], [1.5], [], None, [3.0]], "int32[]", [[1], [2], [3], [4], [5]], [[1, 2], None, [], None, [3]]),
}
NEW_AT_DAY1 = {name: case[3] for name, case in CASES.items()}

ENTITIES = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: src
    type: parquet
    path: data/src/*.parquet
    timestamp_field: ts
"""


def views(dtypes: dict[str, str]) -> str:
    features = "".join(f"      - {{name: {n}, dtype: '{d}'}}\n" for n, d in dtypes.items())
    return f"feature_views:\n  - name: v\n    entities: [user]\n    source: src\n    features:\n{features}"


@pytest.fixture(params=["embedded", pytest.param("postgres", marks=pytest.mark.integration)])
def repo(request: pytest.FixtureRequest, tmp_path: Path, unique_project: str) -> Iterator[FeatureStore]:
    root = tmp_path / "repo"
    (root / "features").mkdir(parents=True)
    (root / "featurestore.yaml").write_text(
        "project: demo\nregistry: sqlite:///data/registry.db\ndefinitions: [features]\n"
        "offline_store: {path: data/offline}\nonline_store: {type: embedded, path: data/online.db}\n"
    )
    (root / "data").mkdir()
    (root / "features" / "entities.yaml").write_text(ENTITIES)
    overrides: dict[str, Any] = {"project": unique_project}
    if request.param == "postgres":
        overrides["registry"] = request.getfixturevalue("postgres_url")
    with FeatureStore(root, config_overrides=overrides, registry_refresh_seconds=0) as store:
        yield store


def write_day(store: FeatureStore, day: int, dtypes: dict[str, str], values: dict[str, list[Any]]) -> None:
    """One partition of view ``v`` written under ``dtypes`` (as a run under that definition did)."""
    t = DAY0 + timedelta(days=day, hours=1)
    rows = [
        {"user_id": u, layout.EVENT_TS: t, layout.CREATED_TS: t, **{n: values[n][u] for n in dtypes}}
        for u in range(5)
    ]
    schema = layout.layout_schema([("user_id", pa.int64())], [(n, arrow_type(d)) for n, d in dtypes.items()])
    table = pa.Table.from_pylist(rows, schema=schema)
    start = DAY0 + timedelta(days=day)
    layout.replace_interval(store.config.offline_path, store.project, "v", table, start, start + timedelta(days=1))


def export(store: FeatureStore, day: int, **options: Any) -> dict[str, list[Any]]:
    at = DAY0 + timedelta(days=day, hours=12)
    entities = pa.table({"user_id": list(range(5)), "event_timestamp": pa.array([at] * 5, pa.timestamp("us", tz="UTC"))})
    with store.get_training_dataset(entities, ["v"], **options) as ds:
        table = ds.to_arrow()
    for name, (_, _, new, _, _) in CASES.items():
        assert table.schema.field(name).type == arrow_type(new), name
    return {name: table[name].to_pylist() for name in CASES}


def define(store: FeatureStore, dtypes: dict[str, str]) -> None:
    (store.repo_path / "features" / "views.yaml").write_text(views(dtypes))
    store.apply(allow_breaking=True)


@pytest.mark.parametrize("exclude_created_after", [False, True])
def test_export_reads_old_partitions_through_the_new_dtype(repo: FeatureStore, exclude_created_after: bool) -> None:
    old = {name: case[0] for name, case in CASES.items()}
    new = {name: case[2] for name, case in CASES.items()}
    define(repo, old)
    write_day(repo, 0, old, {name: case[1] for name, case in CASES.items()})
    define(repo, new)
    write_day(repo, 1, new, NEW_AT_DAY1)

    options = {"exclude_created_after": exclude_created_after}
    # Day 0 reads only the old partition; day 1 reads both, in one query.
    assert export(repo, 0, **options) == {name: case[4] for name, case in CASES.items()}
    # The new partition is exact: int64 2**60 + 1 does not go through a DOUBLE it shares with 3.7.
    assert export(repo, 1, **options) == NEW_AT_DAY1


def test_int64_to_string_and_back(repo: FeatureStore) -> None:
    define(repo, {"x": "int64"})
    write_day(repo, 0, {"x": "int64"}, {"x": [1, 2, 3, 2**62, None]})
    define(repo, {"x": "string"})
    write_day(repo, 1, {"x": "string"}, {"x": ["10", "x", "12.0", "-13", None]})
    define(repo, {"x": "int64"})
    write_day(repo, 2, {"x": "int64"}, {"x": [2**62 + 1, 21, 22, 23, 24]})

    def x(day: int) -> list[Any]:
        at = DAY0 + timedelta(days=day, hours=12)
        entities = pa.table({"user_id": list(range(5)), "event_timestamp": pa.array([at] * 5, pa.timestamp("us", tz="UTC"))})
        with repo.get_training_dataset(entities, ["v:x"]) as ds:
            return ds.to_arrow()["x"].to_pylist()  # type: ignore[no-any-return]

    assert x(0) == [1, 2, 3, 2**62, None]
    assert x(1) == [10, None, None, -13, None]
    assert x(2) == [2**62 + 1, 21, 22, 23, 24]


def test_files_of_the_registry_types_keep_the_plain_read(tmp_path: Path) -> None:
    """The usual case (every file holds the registry's types, every dtype here) reads the files
    in one ``read_parquet`` with no cast; a file of another type splits them into groups."""
    import duckdb

    dtypes = ["bool", "int32", "int64", "float32", "float64", "string", "bytes", "timestamp", "float32[2]", "int64[]"]
    features = [FeatureColumn("v", f"f{i}", f"f{i}", d) for i, d in enumerate(dtypes)]
    join = ViewJoin("v", [("user_id", "int64")], 0, features)
    schema = layout.layout_schema([("user_id", pa.int64())], [(f.feature, arrow_type(f.dtype)) for f in features])
    for day in (1, 2):
        path = tmp_path / f"date=2026-01-0{day}" / "data.parquet"
        layout.write_atomic(schema.empty_table(), path)
        join.files.append(path)
    join.present = {f.feature for f in features}
    con = duckdb.connect()
    groups = group_files(join, file_types(con, join.files))
    assert len(groups) == 1 and groups[0].files == join.files and not groups[0].needs_cast(join)
    join.groups = groups
    assert view_source(join) == reader(join.files)

    retyped = layout.layout_schema([("user_id", pa.int64())], [("f2", pa.string())])
    odd = tmp_path / "date=2026-01-03" / "data.parquet"
    layout.write_atomic(retyped.empty_table(), odd)
    join.files.append(odd)
    join.groups = group_files(join, file_types(con, join.files))
    assert [len(g.files) for g in join.groups] == [2, 1] and join.groups[1].needs_cast(join)
    assert "UNION ALL" in view_source(join)


@pytest.mark.parametrize(
    ("source", "dtype", "value", "expected"),
    [
        ("DOUBLE", "int64", "2.0", 2),
        ("DOUBLE", "int64", "2.5", None),
        ("DOUBLE", "float32", "0.1", pytest.approx(0.1)),  # float precision is the new dtype's own
        ("BIGINT", "int32", "2147483648", None),
        ("BIGINT", "bool", "1", True),
        ("VARCHAR", "float64", "'1e3'", 1000.0),
        ("VARCHAR", "int32", "'+7'", None),
        ("VARCHAR", "bool", "'true'", True),
        ("INTEGER", "timestamp", "1", None),
        ("DOUBLE[]", "float32[2]", "[1.0, 2.0]", [1.0, 2.0]),
        ("BIGINT", "int64[]", "1", None),
    ],
)
def test_conform_sql(source: str, dtype: str, value: str, expected: Any) -> None:
    import duckdb

    sql = conform_sql(f"CAST({value} AS {source})", source, dtype)
    [(got,)] = duckdb.sql(f"SELECT {sql}").fetchall()
    assert got == expected
