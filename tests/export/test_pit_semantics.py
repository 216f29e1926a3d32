"""The point-in-time rules of docs/point-in-time.md, one explicit case at a time."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.export import TrainingDataset, get_training_dataset
from featurestore.export.pit import TimeBounds, has_key_time_ties, partition_files
from featurestore.offline import layout
from registry.errors import ConfigError, NotFoundError, UserError
from tests.export.reference import (
    PROJECT,
    View,
    config_for,
    definitions_for,
    reference_join,
    view_table,
    write_view,
)

UTC = timezone.utc
T0 = datetime(2024, 3, 10, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)
US = timedelta(microseconds=1)


def row(
    user: int | None, t: datetime, value: Any, created: datetime | None = None, **extra: Any
) -> dict[str, Any]:
    return {
        "user_id": user,
        "event_timestamp": t,
        "created_timestamp": created or t,
        "x": value,
        **extra,
    }


def user_view(rows: list[dict[str, Any]], ttl_seconds: int = 0, name: str = "stats") -> View:
    return View(name, [("user_id", "int64")], [("x", "float64")], ttl_seconds, rows)


def dataset(
    tmp_path: Path, views: list[View], entities: Any, features: Any = None, **options: Any
) -> TrainingDataset:
    offline = tmp_path / "offline"
    for view in views:
        write_view(offline, view)
    refs = features if features is not None else [v.name for v in views]
    return get_training_dataset(
        config_for(offline), definitions_for(views), entities, refs, **options
    )


def export(
    tmp_path: Path, views: list[View], entities: list[dict[str, Any]], **options: Any
) -> list[dict[str, Any]]:
    with dataset(tmp_path, views, pa.Table.from_pylist(entities), **options) as ds:
        return ds.to_arrow().to_pylist()  # type: ignore[no-any-return]


def values(rows: list[dict[str, Any]], column: str = "x") -> list[Any]:
    return [r[column] for r in rows]


# -- the window T - D < t <= T ----------------------------------------------------------------
def test_event_at_T_is_included_and_event_after_T_is_not(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0), row(1, T0 + US, 2.0)])
    got = export(
        tmp_path,
        [view],
        [{"user_id": 1, "event_timestamp": T0}, {"user_id": 1, "event_timestamp": T0 - US}],
    )
    assert values(got) == [1.0, None]


def test_ttl_lower_bound_is_exclusive(tmp_path: Path) -> None:
    ttl = 3600
    view = user_view([row(1, T0, 1.0), row(2, T0 + US, 2.0)], ttl_seconds=ttl)
    at = T0 + timedelta(seconds=ttl)
    rows = [{"user_id": 1, "event_timestamp": at}, {"user_id": 2, "event_timestamp": at}]
    # user 1: t == T - D is out; user 2: t == T - D + 1us is in. The early third row makes
    # min(T) - D fall before t, so the bound is checked after the join, not only by the scan.
    for early in ([], [{"user_id": 3, "event_timestamp": T0 - timedelta(days=10)}]):
        got = export(tmp_path / str(len(early)), [view], rows + early)
        assert values(got)[:2] == [None, 2.0]


def test_ttl_zero_has_no_lower_bound(tmp_path: Path) -> None:
    view = user_view([row(1, T0 - timedelta(days=400), 1.0)], ttl_seconds=0)
    assert values(export(tmp_path, [view], [{"user_id": 1, "event_timestamp": T0}])) == [1.0]


def test_latest_event_wins_even_if_an_older_one_was_created_later(tmp_path: Path) -> None:
    view = user_view(
        [row(1, T0 - 2 * H, 1.0, created=T0 - H), row(1, T0 - 3 * H, 2.0, created=T0 - H / 2)]
    )
    assert values(export(tmp_path, [view], [{"user_id": 1, "event_timestamp": T0}])) == [1.0]


def test_ties_on_event_time_go_to_the_latest_created(tmp_path: Path) -> None:
    t = T0 - H
    view = user_view(
        [
            row(1, t, 1.0, created=t),
            row(1, t, 3.0, created=t + 2 * H),
            row(1, t, 2.0, created=t + H),
        ]
    )
    assert values(export(tmp_path, [view], [{"user_id": 1, "event_timestamp": T0}])) == [3.0]


def test_ties_across_batch_and_stream_files_of_one_partition(tmp_path: Path) -> None:
    t = T0 - H
    offline = tmp_path / "offline"
    batch = user_view([row(1, t, 1.0, created=t + H), row(2, t, 5.0, created=t + 3 * H)])
    write_view(offline, batch)
    stream = user_view([row(1, t, 2.0, created=t + 2 * H), row(2, t, 6.0, created=t + 2 * H)])
    part = layout.partition_dir(offline, PROJECT, batch.name, t.date())
    layout.write_atomic(view_table(stream), part / "stream-0001.parquet")
    entities = pa.Table.from_pylist(
        [{"user_id": 1, "event_timestamp": T0}, {"user_id": 2, "event_timestamp": T0}]
    )
    with get_training_dataset(
        config_for(offline), definitions_for([batch]), entities, ["stats"]
    ) as ds:
        assert values(ds.to_arrow().to_pylist()) == [2.0, 5.0]


# -- exclude_created_after ----------------------------------------------------------------------
def test_rows_created_after_T_are_excluded_only_on_request(tmp_path: Path) -> None:
    # A backfill written at T0 + 1d for an event at T0 - 1h; the row known at T0 is older.
    view = user_view([row(1, T0 - 2 * H, 1.0), row(1, T0 - H, 9.0, created=T0 + timedelta(days=1))])
    entities = [{"user_id": 1, "event_timestamp": T0}]
    assert values(export(tmp_path / "a", [view], entities)) == [9.0]
    assert values(export(tmp_path / "b", [view], entities, exclude_created_after=True)) == [1.0]


def test_created_exactly_at_T_is_allowed(tmp_path: Path) -> None:
    view = user_view([row(1, T0 - H, 1.0, created=T0), row(1, T0 - H, 2.0, created=T0 + US)])
    got = export(
        tmp_path, [view], [{"user_id": 1, "event_timestamp": T0}], exclude_created_after=True
    )
    assert values(got) == [1.0]


def test_exclusion_then_ttl(tmp_path: Path) -> None:
    # The only row known at T is older than the ttl: null, not the late row.
    view = user_view(
        [row(1, T0 - 5 * H, 1.0), row(1, T0 - H, 2.0, created=T0 + H)], ttl_seconds=3 * 3600
    )
    got = export(
        tmp_path, [view], [{"user_id": 1, "event_timestamp": T0}], exclude_created_after=True
    )
    assert values(got) == [None]


# -- timestamps ---------------------------------------------------------------------------------
def test_naive_timestamps_are_utc_and_aware_ones_are_converted(tmp_path: Path) -> None:
    view = user_view([row(1, T0 - H, 1.0), row(1, T0 + H, 2.0)])
    naive = pd.DataFrame({"user_id": [1], "event_timestamp": [T0.replace(tzinfo=None)]})
    paris = pd.DataFrame(
        {"user_id": [1], "event_timestamp": [pd.Timestamp(T0).tz_convert("Europe/Paris")]}
    )
    write_view(tmp_path / "offline", view)
    out = []
    for frame in (naive, paris):
        with get_training_dataset(
            config_for(tmp_path / "offline"), definitions_for([view]), frame, ["stats"]
        ) as ds:
            table = ds.to_arrow()
        assert table.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")
        out.append(table.to_pylist()[0])
    assert out[0] == out[1] == {"user_id": 1, "event_timestamp": T0, "x": 1.0}


def test_null_entity_timestamp_gets_nulls(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    got = export(
        tmp_path,
        [view],
        [{"user_id": 1, "event_timestamp": None}, {"user_id": 1, "event_timestamp": T0}],
    )
    assert values(got) == [None, 1.0]


def test_string_timestamp_column_is_a_user_error(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    with pytest.raises(UserError, match="timestamp column 'event_timestamp' has type VARCHAR"):
        dataset(tmp_path, [view], pd.DataFrame({"user_id": [1], "event_timestamp": ["2024-01-01"]}))


# -- keys and views ----------------------------------------------------------------------------
def test_composite_keys_and_two_views_with_different_entities(tmp_path: Path) -> None:
    users = user_view([row(1, T0 - H, 1.0), row(2, T0 - H, 2.0)])
    pairs = View(
        "pairs",
        [("user_id", "int64"), ("item_id", "string")],
        [("clicks", "int64")],
        0,
        [
            {
                "user_id": 1,
                "item_id": "a",
                "event_timestamp": T0 - H,
                "created_timestamp": T0 - H,
                "clicks": 10,
            },
            {
                "user_id": 1,
                "item_id": "b",
                "event_timestamp": T0 - H,
                "created_timestamp": T0 - H,
                "clicks": 20,
            },
            {
                "user_id": 2,
                "item_id": "a",
                "event_timestamp": T0 - H,
                "created_timestamp": T0 - H,
                "clicks": 30,
            },
        ],
    )
    items = View(
        "items",
        [("item_id", "string")],
        [("price", "float32")],
        0,
        [{"item_id": "b", "event_timestamp": T0 - H, "created_timestamp": T0 - H, "price": 1.5}],
    )
    entities = [
        {"user_id": u, "item_id": i, "event_timestamp": T0}
        for u, i in [(1, "a"), (1, "b"), (2, "a"), (2, "b")]
    ]
    got = export(tmp_path, [users, pairs, items], entities)
    assert [(r["x"], r["clicks"], r["price"]) for r in got] == [
        (1.0, 10, None),
        (1.0, 20, 1.5),
        (2.0, 30, None),
        (2.0, None, 1.5),
    ]
    assert got == reference_join(entities, [users, pairs, items])


def test_duplicate_entity_rows_are_kept(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    entities = [{"user_id": 1, "event_timestamp": T0, "label": n} for n in (1, 1, 2)]
    got = export(tmp_path, [view], entities)
    assert [(r["label"], r["x"]) for r in got] == [(1, 1.0), (1, 1.0), (2, 1.0)]


def test_unknown_keys_and_null_keys_get_nulls(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0), row(None, T0, 7.0)])
    got = export(
        tmp_path,
        [view],
        [{"user_id": 3, "event_timestamp": T0}, {"user_id": None, "event_timestamp": T0}],
    )
    assert values(got) == [None, None]


def test_a_view_without_files_gives_typed_nulls_and_a_warning(tmp_path: Path) -> None:
    users = user_view([row(1, T0, 1.0)])
    empty = View("vectors", [("user_id", "int64")], [("emb", "float32[4]"), ("n", "int32")], 0, [])
    with dataset(
        tmp_path, [users, empty], pa.Table.from_pylist([{"user_id": 1, "event_timestamp": T0}])
    ) as ds:
        table = ds.to_arrow()
        assert ds.missing_views == ["vectors"]
        assert any("'vectors' has no offline data" in w for w in ds.warnings)
    assert table.schema.field("emb").type == pa.list_(pa.float32(), 4)
    assert table.schema.field("n").type == pa.int32()
    assert table.to_pylist() == [
        {"user_id": 1, "event_timestamp": T0, "x": 1.0, "emb": None, "n": None}
    ]


def test_row_order_is_the_input_order(tmp_path: Path) -> None:
    rng = random.Random(3)
    view = user_view(
        [
            row(u, T0 - timedelta(minutes=m), float(u * 1000 + m))
            for u in range(50)
            for m in range(0, 600, 7)
        ]
    )
    entities = [
        {
            "user_id": rng.randrange(60),
            "event_timestamp": T0 - timedelta(minutes=rng.randrange(700)),
            "label": i,
        }
        for i in range(20_000)
    ]
    got = export(tmp_path, [view], entities)
    assert [r["label"] for r in got] == list(range(20_000))
    assert got == reference_join(entities[:300], [view]) + got[300:]


# -- pruning -----------------------------------------------------------------------------------
def test_only_partitions_between_min_T_minus_ttl_and_max_T_are_listed(tmp_path: Path) -> None:
    days = [T0 + timedelta(days=d) for d in range(-5, 5)]
    view = user_view([row(1, d, float(i)) for i, d in enumerate(days)])
    write_view(tmp_path, view)
    bounds = TimeBounds(T0 + timedelta(days=1), T0 + timedelta(days=2))
    _, files = partition_files(tmp_path, PROJECT, "stats", 86400, bounds)
    assert [f.parent.name for f in files] == [
        "date=2024-03-10",
        "date=2024-03-11",
        "date=2024-03-12",
    ]
    _, files = partition_files(tmp_path, PROJECT, "stats", 0, bounds)
    assert files[0].parent.name == "date=2024-03-05" and files[-1].parent.name == "date=2024-03-12"


def test_partitions_out_of_range_are_never_read(tmp_path: Path) -> None:
    offline = tmp_path / "offline"
    view = user_view([row(1, T0 - H, 1.0), row(1, T0 - timedelta(days=3), 2.0)], ttl_seconds=86400)
    write_view(offline, view)
    old = layout.partition_dir(offline, PROJECT, "stats", (T0 - timedelta(days=3)).date())
    (old / "data.parquet").write_bytes(b"not parquet at all")
    entities = pa.Table.from_pylist([{"user_id": 1, "event_timestamp": T0}])
    with get_training_dataset(
        config_for(offline), definitions_for([view]), entities, ["stats"]
    ) as ds:
        assert values(ds.to_arrow().to_pylist()) == [1.0]


# -- the tie check that picks the cheaper plan -------------------------------------------------
def test_tie_check_needs_equal_keys_and_times(tmp_path: Path) -> None:
    t = T0 - H
    write_view(tmp_path, user_view([row(1, t, 1.0), row(2, t, 2.0), row(3, t + US, 3.0)]))
    part = layout.partition_dir(tmp_path, PROJECT, "stats", t.date())
    assert not has_key_time_ties(sorted(part.glob("*.parquet")), ["user_id"])
    # The same time for the same key, in a second file of the partition, is a tie.
    layout.write_atomic(
        view_table(user_view([row(2, t, 5.0, created=t + H)])), part / "stream-1.parquet"
    )
    assert has_key_time_ties(sorted(part.glob("*.parquet")), ["user_id"])


def test_tie_check_sorts_unsorted_files_and_is_conservative(tmp_path: Path) -> None:
    t = T0 - H
    rows = [row(1, t, 1.0), row(2, t - H, 2.0), row(1, t, 3.0, created=t + H)]  # unsorted
    path = tmp_path / "date=x" / "data.parquet"
    layout.write_atomic(view_table(user_view(rows)), path)
    assert has_key_time_ties([path], ["user_id"])
    # A repeated time whose keys cannot be read: the always-correct answer.
    assert has_key_time_ties([path], ["no_such_key"])
    layout.write_atomic(view_table(user_view(rows[:2])), path)
    assert not has_key_time_ties([path], ["user_id"])


def test_the_created_tie_break_is_planned_only_when_ties_exist(tmp_path: Path) -> None:
    entities = pa.Table.from_pylist([{"user_id": 1, "event_timestamp": T0}])
    plain = user_view([row(1, T0 - H, 1.0), row(2, T0 - H, 2.0)])
    with dataset(tmp_path / "a", [plain], entities) as ds:
        assert "'c':" not in ds.sql and values(ds.to_arrow().to_pylist()) == [1.0]
    tied = user_view([row(1, T0 - H, 1.0), row(1, T0 - H, 2.0, created=T0)])
    with dataset(tmp_path / "b", [tied], entities) as ds:
        assert "'c':" in ds.sql and values(ds.to_arrow().to_pylist()) == [2.0]


# -- inputs and outputs ------------------------------------------------------------------------
def test_every_kind_of_entity_input_gives_the_same_rows(tmp_path: Path) -> None:
    view = user_view([row(1, T0 - H, 1.0), row(2, T0 - H, 2.0)])
    write_view(tmp_path / "offline", view)
    entities = pa.Table.from_pylist(
        [{"user_id": u, "event_timestamp": T0, "label": float(u)} for u in (2, 1, 3, 1)]
    )
    (tmp_path / "labels").mkdir()
    pq.write_table(entities.slice(0, 2), tmp_path / "labels" / "a.parquet")
    pq.write_table(entities.slice(2), tmp_path / "labels" / "b.parquet", row_group_size=1)
    inputs = [
        entities,
        entities.to_pandas(),
        str(tmp_path / "labels"),
        tmp_path / "labels",
        str(tmp_path / "labels" / "*.parquet"),
        f"select user_id, event_timestamp, label from read_parquet('{tmp_path}/labels/*.parquet')",
    ]
    expected = reference_join(entities.to_pylist(), [view])
    for entity_input in inputs:
        with get_training_dataset(
            config_for(tmp_path / "offline"), definitions_for([view]), entity_input, ["stats"]
        ) as ds:
            assert ds.to_arrow().to_pylist() == expected, entity_input


def test_readers_agree(tmp_path: Path) -> None:
    view = user_view([row(u, T0 - H, float(u)) for u in range(100)])
    entities = pa.Table.from_pylist(
        [{"user_id": u % 120, "event_timestamp": T0, "n": u} for u in range(1000)]
    )
    seen: list[float] = []
    with dataset(tmp_path, [view], entities) as ds:
        table = ds.to_arrow()
        batches = list(ds.iter_batches(batch_rows=300))
        summary = ds.to_parquet(tmp_path / "out" / "train.parquet", progress=seen.append)
        assert ds.to_pandas()["n"].tolist() == list(range(1000))
    assert [b.num_rows for b in batches] == [300, 300, 300, 100]
    assert pa.Table.from_batches(batches).equals(table)
    assert pq.read_table(summary.path).equals(table)
    assert summary.rows == 1000 and summary.coverage == {"x": 840}  # user ids 100..119 have no rows
    assert seen[-1] == 100.0
    assert not list((tmp_path / "out").glob(".*"))


def test_feature_service_gives_the_same_columns_in_the_same_order_every_time(
    tmp_path: Path,
) -> None:
    a = View("a", [("user_id", "int64")], [("z", "int64"), ("y", "float64")], 0, [])
    b = View("b", [("user_id", "int64")], [("w", "string"), ("v", "bool")], 0, [])
    defs = definitions_for([a, b], services={"svc": ["b:v", "a", "b:w"]})
    entities = pa.Table.from_pylist([{"user_id": 1, "event_timestamp": T0}])
    seen = set()
    for _ in range(3):
        with get_training_dataset(config_for(tmp_path), defs, entities, "svc") as ds:
            table = ds.to_arrow()
        seen.add(tuple(table.schema.names))
        assert ds.columns == table.schema.names
    assert seen == {("user_id", "event_timestamp", "v", "z", "y", "w")}


# -- names and errors --------------------------------------------------------------------------
def test_shared_feature_names_need_full_names(tmp_path: Path) -> None:
    a, b = user_view([row(1, T0, 1.0)], name="a"), user_view([row(1, T0, 2.0)], name="b")
    entities = pa.Table.from_pylist([{"user_id": 1, "event_timestamp": T0}])
    with pytest.raises(UserError, match="full_names=True"):
        dataset(tmp_path, [a, b], entities)
    with dataset(tmp_path, [a, b], entities, full_names=True) as ds:
        assert ds.to_arrow().to_pylist() == [
            {"user_id": 1, "event_timestamp": T0, "a__x": 1.0, "b__x": 2.0}
        ]


def test_missing_columns_are_named_with_the_columns_found(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    with pytest.raises(UserError, match=r"no column 'event_timestamp'.*columns found: user_id, ts"):
        dataset(tmp_path, [view], pd.DataFrame({"user_id": [1], "ts": [T0]}))
    with pytest.raises(UserError, match=r"no column 'user_id', needed as join key of view 'stats'"):
        dataset(tmp_path, [view], pd.DataFrame({"uid": [1], "event_timestamp": [T0]}))
    with dataset(
        tmp_path, [view], pd.DataFrame({"user_id": [1], "ts": [T0]}), timestamp_column="ts"
    ) as ds:
        assert values(ds.to_arrow().to_pylist()) == [1.0]


def test_other_bad_inputs(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    ok = pd.DataFrame({"user_id": [1], "event_timestamp": [T0]})
    with pytest.raises(NotFoundError, match="did you mean 'stats'"):
        dataset(tmp_path, [view], ok, features=["stat:x"])
    with pytest.raises(UserError, match="already have a column 'X'"):
        dataset(tmp_path, [view], ok.assign(X=1))
    with pytest.raises(
        UserError, match="has type VARCHAR, but feature view 'stats' declares it int64"
    ):
        dataset(tmp_path, [view], ok.assign(user_id=["1"]))
    with pytest.raises(UserError, match="no Parquet file matches"):
        dataset(tmp_path, [view], str(tmp_path / "nothing" / "*.parquet"))
    with pytest.raises(UserError, match="cannot read the entity rows"):
        dataset(tmp_path, [view], "select * from no_such_table")
    with pytest.raises(UserError, match="__fs_"):
        dataset(tmp_path, [view], ok.assign(__fs_row=1))
    with pytest.raises(ConfigError, match="bad export setting"):
        dataset(tmp_path, [view], ok, memory_limit="lots")


def test_memory_limit_and_temp_directory_are_applied(tmp_path: Path) -> None:
    view = user_view([row(1, T0, 1.0)])
    spill = tmp_path / "spill"
    with dataset(
        tmp_path,
        [view],
        pd.DataFrame({"user_id": [1], "event_timestamp": [T0]}),
        memory_limit="300MB",
        temp_directory=spill,
    ) as ds:
        limit, temp = ds._con.execute(
            "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
        ).fetchall()[0]
        assert values(ds.to_arrow().to_pylist()) == [1.0]
    assert limit.replace(" ", "") in ("286.1MiB", "300.0MB") and temp == str(spill)
