"""The DuckDB export agrees with the slow reference on random data.

Times sit on a coarse grid (6 h over 3 days, crossing date partitions) so that equal event
times, t == T and t == T - ttl happen often, plus or minus one microsecond to probe both sides
of each boundary. Created times may precede or follow events by up to two days (backfills),
keys and values may be null, and entity rows arrive naive, in UTC or in another zone, as
Arrow or pandas.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.export import get_training_dataset
from featurestore.offline import layout
from tests.export.reference import View, config_for, definitions_for, reference_join, write_view

BASE = datetime(2024, 1, 1, tzinfo=timezone.utc)
STEP = timedelta(hours=6)
SLOTS = 8  # 2 days
TTLS = [0, 6 * 3600, 12 * 3600, 86400]
USERS = st.sampled_from([1, 1, 2, 2, None])
ITEMS = st.sampled_from(["a", "b"])
ZONES = [
    None,
    timezone.utc,
    timezone(timedelta(hours=5, minutes=30)),
    timezone(timedelta(hours=-7)),
]


SLOT = st.integers(0, SLOTS)
NUDGE = st.sampled_from([0, 0, 0, 0, 0, 1, -1])  # microseconds either side of a grid point
DELAY = st.sampled_from(
    [0, 1, 6 * 3600, 6 * 3600, 12 * 3600, 30 * 3600, -6 * 3600]
)  # created - event, s
SCORE = st.one_of(st.none(), st.floats(-10, 10, allow_nan=False))
TAG = st.one_of(st.none(), st.text("xyz", max_size=2))
CLICKS = st.one_of(st.none(), st.integers(0, 99))


def instant(slot: int, nudge: int) -> datetime:
    return BASE + slot * STEP + timedelta(microseconds=nudge)


def feature_rows(
    keys: list[str], features: list[str], drawn: list[tuple[Any, ...]]
) -> list[dict[str, Any]]:
    """Rows from drawn tuples (keys..., slot, nudge, delay, features...); (keys, t, c) unique."""
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for values in drawn:
        key_values, (slot, nudge, delay), feature_values = (
            values[: len(keys)],
            values[len(keys) : len(keys) + 3],
            values[len(keys) + 3 :],
        )
        t = instant(slot, nudge)
        c = t + timedelta(seconds=delay)
        # (keys, event, created) identifies a row: which of two exact duplicates wins is
        # unspecified, so the generator makes none.
        rows.setdefault(
            (*key_values, t, c),
            {
                **dict(zip(keys, key_values)),
                layout.EVENT_TS: t,
                layout.CREATED_TS: c,
                **dict(zip(features, feature_values)),
            },
        )
    return list(rows.values())


def sized(draw: Any, elements: Any, most: int) -> list[Any]:
    # Sizes uniform in [0, most]: plain st.lists favours short lists, and collisions need rows.
    n = draw(st.integers(0, most))
    return draw(st.lists(elements, min_size=n, max_size=n))  # type: ignore[no-any-return]


@st.composite
def worlds(draw: Any) -> dict[str, Any]:
    user_rows = sized(draw, st.tuples(USERS, SLOT, NUDGE, DELAY, SCORE, TAG), 16)
    pair_rows = sized(draw, st.tuples(USERS, ITEMS, SLOT, NUDGE, DELAY, CLICKS), 16)
    users = View(
        "users",
        [("user_id", "int64")],
        [("score", "float64"), ("tag", "string")],
        draw(st.sampled_from(TTLS)),
        feature_rows(["user_id"], ["score", "tag"], user_rows),
    )
    pairs = View(
        "pairs",
        [("user_id", "int64"), ("item_id", "string")],
        [("clicks", "int64")],
        draw(st.sampled_from(TTLS)),
        feature_rows(["user_id", "item_id"], ["clicks"], pair_rows),
    )
    drawn = sized(
        draw,
        st.tuples(st.sampled_from([1, 1, 2, 2, 3, None]), ITEMS, SLOT, NUDGE, st.integers(0, 5)),
        12,
    )
    entities = [
        # one row in six has no timestamp
        {
            "user_id": u,
            "item_id": i,
            "event_timestamp": None if null == 0 else instant(slot, nudge),
            "label": n,
        }
        for n, (u, i, slot, nudge, null) in enumerate(drawn)
    ]
    return {
        "views": [users, pairs],
        "entities": entities,
        "zone": draw(st.sampled_from(ZONES)),
        "as_pandas": draw(st.booleans()),
        "exclude_created_after": draw(st.booleans()),
    }


def entity_input(entities: list[dict[str, Any]], zone: timezone | None, as_pandas: bool) -> Any:
    shown = [
        {
            **e,
            "event_timestamp": None
            if e["event_timestamp"] is None
            else (
                e["event_timestamp"].replace(tzinfo=None)
                if zone is None
                else e["event_timestamp"].astimezone(zone)
            ),
        }
        for e in entities
    ]
    ts_type = pa.timestamp("us") if zone is None else pa.timestamp("us", tz=str(_zone_name(zone)))
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("item_id", pa.string()),
            ("event_timestamp", ts_type),
            ("label", pa.int64()),
        ]
    )
    table = pa.Table.from_pylist(shown, schema=schema)
    if as_pandas:
        return table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return table


def _zone_name(zone: timezone) -> str:
    offset = zone.utcoffset(None)
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@pytest.fixture(scope="module")
def shared() -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    yield con
    con.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pit_property")


@settings(max_examples=500, deadline=None)
@given(world=worlds())
def test_export_matches_the_reference(
    world: dict[str, Any], shared: duckdb.DuckDBPyConnection, scratch: Path
) -> None:
    offline = scratch / uuid.uuid4().hex
    try:
        for view in world["views"]:
            write_view(offline, view)
        ds = get_training_dataset(
            config_for(offline),
            definitions_for(world["views"]),
            entity_input(world["entities"], world["zone"], world["as_pandas"]),
            ["users", "pairs"],
            exclude_created_after=world["exclude_created_after"],
            connection=shared,
        )
        with ds:
            got = ds.to_arrow().to_pylist()
        expected = reference_join(
            world["entities"], world["views"], exclude_created_after=world["exclude_created_after"]
        )
        assert got == expected
    finally:
        shutil.rmtree(offline, ignore_errors=True)
