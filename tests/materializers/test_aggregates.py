"""Windowed aggregations (materializers.aggregates) against a plain-Python reference, and the
rules for declaring them (featurestore.streams.schema)."""

from __future__ import annotations

import json
import random
from collections import defaultdict

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.sources import ORDINAL
from featurestore.streams.schema import AggregateSpec, EventSchema
from materializers.aggregates import (
    merge_partials,
    pane_partials,
    partials_from_json,
    partials_to_json,
    window_rows,
)
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema
from registry.definitions import Definitions
from registry.errors import DefinitionError
from registry.spec import DuckDBSource, EntitySpec, FeatureViewSpec

TS = pa.timestamp("us", tz="UTC")
MIN = 60_000_000  # one minute in microseconds


def agg(
    feature: str, dtype: str, function: str, column: str | None, window: int, slide: int = 60
) -> AggregateSpec:
    return AggregateSpec(feature, dtype, function, column, window, slide)


SCHEMA = ViewSchema(
    view="clicks",
    source="events",
    join_keys=(("user_id", "int64"),),
    features=(
        ("n_5m", "int64"),
        ("amount_5m", "float64"),
        ("mean_3m", "float64"),
        ("low_1m", "int64"),
        ("high_5m", "int64"),
        ("last_page_5m", "string"),
        ("total_1m", "int64"),
    ),
    timestamp_field="ts",
    created_timestamp_field="created",
    aggregates=(
        agg("n_5m", "int64", "count", None, 300),
        agg("amount_5m", "float64", "sum", "amount", 300),
        agg("mean_3m", "float64", "mean", "amount", 180),
        agg("low_1m", "int64", "min", "units", 60),
        agg("high_5m", "int64", "max", "units", 300),
        agg("last_page_5m", "string", "last", "page", 300),
        agg("total_1m", "int64", "sum", "units", 60),
    ),
    event_columns=(("amount", "float64"), ("units", "int64"), ("page", "string")),
)


def events_table(rows: list[dict]) -> pa.Table:
    """Validated event rows: user_id, event/created time (µs), amount, units, page, ordinal."""
    return pa.table(
        {
            "user_id": pa.array([r["user_id"] for r in rows], pa.int64()),
            EVENT_TS: pa.array([r["ts"] for r in rows], pa.int64()).cast(TS),
            CREATED_TS: pa.array([r["created"] for r in rows], pa.int64()).cast(TS),
            "amount": pa.array([r["amount"] for r in rows], pa.float64()),
            "units": pa.array([r["units"] for r in rows], pa.int64()),
            "page": pa.array([r["page"] for r in rows], pa.string()),
            ORDINAL: pa.array([r["ordinal"] for r in rows], pa.int64()),
        }
    )


def reference(rows: list[dict], schema: ViewSchema) -> dict[tuple[int, int], dict]:
    """(user, window end µs) -> features, computed the obvious way."""
    slide = schema.slide_seconds * 1_000_000
    k_max = max(a.panes for a in schema.aggregates)
    ends = {(r["user_id"], r["ts"] // slide + 1 + j) for r in rows for j in range(k_max)}
    out = {}
    for user, end in ends:
        values: dict = {}
        mine = [r for r in rows if r["user_id"] == user]
        largest = [r for r in mine if end - k_max <= r["ts"] // slide < end]
        for a in schema.aggregates:
            inside = [r for r in mine if end - a.panes <= r["ts"] // slide < end]
            vals = [r[a.column] for r in inside if r[a.column] is not None] if a.column else None
            if a.function == "count":
                values[a.feature] = len(inside)
            elif a.function == "sum":
                values[a.feature] = sum(vals) if vals else 0
            elif a.function == "mean":
                values[a.feature] = sum(vals) / len(vals) if vals else None
            elif a.function == "min":
                values[a.feature] = min(vals) if vals else None
            elif a.function == "max":
                values[a.feature] = max(vals) if vals else None
            else:
                having = [r for r in inside if r[a.column] is not None]
                best = max(
                    having, key=lambda r: (r["ts"], r["created"], r["ordinal"]), default=None
                )
                values[a.feature] = None if best is None else best[a.column]
        values[CREATED_TS] = max(r["created"] for r in largest)
        out[(user, end * slide)] = values
    return out


def as_dict(table: pa.Table, schema: ViewSchema) -> dict[tuple[int, int], dict]:
    out = {}
    for row in table.to_pylist():
        end = int(row[EVENT_TS].timestamp() * 1_000_000)
        created = row[CREATED_TS]
        values = {f: row[f] for f in schema.feature_names}
        values[CREATED_TS] = int(created.timestamp() * 1_000_000)
        out[(row["user_id"], end)] = values
    return out


def random_rows(seed: int, n: int = 200) -> list[dict]:
    rng = random.Random(seed)
    base = 1_700_000_000 * 1_000_000
    rows = []
    for i in range(n):
        ts = base + rng.randrange(0, 40 * MIN)
        rows.append(
            {
                "user_id": rng.randrange(5),
                "ts": ts,
                "created": ts + rng.randrange(0, 3) * 1_000_000,
                "amount": rng.choice([None, 0.5, 1.25, 3.0, -2.5]),
                "units": rng.choice([None, 1, 2, 7, -3]),
                "page": rng.choice([None, "a", "b", "c"]),
                "ordinal": i,
            }
        )
    return rows


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 5))
def test_window_rows_match_the_reference_however_the_events_are_split(
    seed: int, parts: int
) -> None:
    rows = random_rows(seed)
    # Partials of arbitrary slices merge to the same state: how the stream job sees events.
    size = -(-len(rows) // parts)
    partials = pa.concat_tables(
        [pane_partials(events_table(rows[i : i + size]), SCHEMA) for i in range(0, len(rows), size)]
    )
    got = as_dict(window_rows(merge_partials(partials, SCHEMA), SCHEMA), SCHEMA)
    assert got == reference(rows, SCHEMA)


def test_window_rows_limits_ends_and_targets() -> None:
    rows = random_rows(7)
    partials = pane_partials(events_table(rows), SCHEMA)
    everything = window_rows(partials, SCHEMA)
    ends = sorted({int(t.timestamp()) // 60 for t in everything.column(EVENT_TS).to_pylist()})
    lo, hi = ends[3], ends[8]
    some = window_rows(partials, SCHEMA, lo=lo, hi=hi)
    expected = {k: v for k, v in as_dict(everything, SCHEMA).items() if lo <= k[1] // MIN < hi}
    assert as_dict(some, SCHEMA) == expected and expected
    targets = pa.table(
        {"user_id": pa.array([1, 2], pa.int64()), "__end": pa.array([ends[5], ends[6]], pa.int64())}
    )
    picked = as_dict(window_rows(partials, SCHEMA, targets=targets), SCHEMA)
    full = as_dict(everything, SCHEMA)
    assert picked == {k: full[k] for k in [(1, ends[5] * MIN), (2, ends[6] * MIN)] if k in full}


def test_partials_survive_json_exactly() -> None:
    partials = pane_partials(events_table(random_rows(3)), SCHEMA)
    rows = json.loads(json.dumps(partials_to_json(partials, SCHEMA)))
    back = partials_from_json(rows, partials.column("__pane").to_pylist(), SCHEMA)
    assert back.equals(partials)


def test_last_ignores_null_values_and_breaks_ties_by_created_then_ordinal() -> None:
    base = 1_700_000_000 * 1_000_000
    rows = [
        {
            "user_id": 1,
            "ts": base,
            "created": base,
            "amount": 1.0,
            "units": 1,
            "page": "x",
            "ordinal": 5,
        },
        {
            "user_id": 1,
            "ts": base,
            "created": base,
            "amount": 1.0,
            "units": 1,
            "page": "y",
            "ordinal": 4,
        },
        {
            "user_id": 1,
            "ts": base + 1,
            "created": base,
            "amount": 1.0,
            "units": 1,
            "page": None,
            "ordinal": 9,
        },
    ]
    out = window_rows(pane_partials(events_table(rows), SCHEMA), SCHEMA)
    assert set(out.column("last_page_5m").to_pylist()) == {"x"}


def _definitions(features: list[dict]) -> Definitions:
    return Definitions(
        entities={"user": EntitySpec(name="user", join_keys=[{"name": "user_id"}])},
        sources={
            "events": DuckDBSource(
                name="events", type="duckdb", query="select 1", timestamp_field="ts"
            )
        },
        feature_views={
            "v": FeatureViewSpec(name="v", entities=["user"], source="events", features=features)
        },
    )


def test_event_schema_derives_the_columns_an_aggregated_view_reads() -> None:
    schema = EventSchema.of(
        _definitions(
            [
                {
                    "name": "n",
                    "dtype": "int64",
                    "aggregation": {"function": "count", "window": "1h", "slide": "5m"},
                },
                {
                    "name": "s",
                    "dtype": "int64",
                    "aggregation": {
                        "function": "sum",
                        "column": "amount",
                        "window": "10m",
                        "slide": "5m",
                    },
                },
                {
                    "name": "m",
                    "dtype": "float64",
                    "aggregation": {
                        "function": "mean",
                        "column": "amount",
                        "window": "1h",
                        "slide": "5m",
                    },
                },
            ]
        ),
        "v",
    )
    assert schema.columns == (("amount", "int64"),)
    assert schema.slide_seconds == 300 and [a.panes for a in schema.aggregates] == [12, 2, 12]


@pytest.mark.parametrize(
    ("features", "message"),
    [
        (
            [
                {
                    "name": "n",
                    "dtype": "int64",
                    "aggregation": {"function": "count", "window": "1h"},
                },
                {"name": "x", "dtype": "int64"},
            ],
            "all aggregated or none",
        ),
        (
            [
                {
                    "name": "n",
                    "dtype": "int64",
                    "aggregation": {"function": "count", "window": "1h"},
                },
                {
                    "name": "d",
                    "dtype": "int64",
                    "aggregation": {"function": "count", "window": "1d"},
                },
            ],
            "one `slide`",
        ),
        (
            [
                {
                    "name": "n",
                    "dtype": "float64",
                    "aggregation": {"function": "count", "window": "1h"},
                }
            ],
            "not float64",
        ),
        (
            [
                {
                    "name": "n",
                    "dtype": "int64",
                    "aggregation": {"function": "count", "window": "1h", "slide": "7m"},
                }
            ],
            "multiple of the slide",
        ),
        (
            [
                {
                    "name": "a",
                    "dtype": "int64",
                    "aggregation": {"function": "sum", "column": "x", "window": "1h"},
                },
                {
                    "name": "b",
                    "dtype": "float64",
                    "aggregation": {"function": "max", "column": "x", "window": "1h"},
                },
            ],
            "make those features' dtypes agree",
        ),
        (
            [
                {
                    "name": "a",
                    "dtype": "int64",
                    "aggregation": {"function": "sum", "column": "user_id", "window": "1h"},
                }
            ],
            "join key or timestamp",
        ),
    ],
)
def test_bad_aggregations_are_definition_errors_naming_the_feature(
    features: list[dict], message: str
) -> None:
    with pytest.raises(DefinitionError) as err:
        EventSchema.of(_definitions(features), "v")
    assert message in str(err.value) and "feature_views.v" in str(err.value)


def test_reference_counts_every_event_once() -> None:
    rows = random_rows(11)
    totals: dict[int, int] = defaultdict(int)
    for (user, _), values in reference(rows, SCHEMA).items():
        totals[user] += values["n_5m"]
    # Each event is in 5 windows of 5 minutes (sliding by 1).
    assert sum(totals.values()) == 5 * len(rows)
