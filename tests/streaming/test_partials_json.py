"""Pane partials in the stream's Redis are JSON keyed by column name (docs/streaming.md): a
feature added, removed or retyped between two runs reads, and positional rows written by
earlier releases still read (issue 14 review, finding 1b: ``ArrowInvalid`` stopped both jobs)."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa

from materializers.aggregates import EVENTS, partials_from_json, partials_to_json
from materializers.schema import ViewSchema
from registry.aggregations import AggregateSpec

N = AggregateSpec("n", "int64", "count", None, 600, 60)
TOTAL = AggregateSpec("total", "float64", "sum", "amount", 600, 60)
TOP = AggregateSpec("top", "float64", "max", "amount", 600, 60)

BASE = ViewSchema(
    view="v",
    source="s",
    join_keys=(("user_id", "int64"),),
    features=(("n", "int64"), ("total", "float64")),
    timestamp_field="ts",
    aggregates=(N, TOTAL),
    event_columns=(("amount", "float64"),),
)
ADDED = dataclasses.replace(
    BASE, features=(*BASE.features, ("top", "float64")), aggregates=(N, TOTAL, TOP)
)
REMOVED = dataclasses.replace(BASE, features=(("total", "float64"),), aggregates=(TOTAL,))


def _rows(schema: ViewSchema) -> list[dict]:
    """Two partials of ``BASE`` written through JSON, as the jobs store them."""
    fields = {
        "user_id": [1, 2], "__pane": [10, 10], EVENTS: [3, 1], "__max_created": [5, 6],
        "n__n": [3, 1], "total__sum": [4.5, 1.0], "total__n": [3, 1],
    }
    from materializers.aggregates import partial_schema

    target = partial_schema(schema)
    table = pa.table({f.name: pa.array(fields[f.name]).cast(f.type) for f in target}, schema=target)
    return [json.loads(json.dumps(r)) for r in partials_to_json(table, schema)]


def test_rows_are_keyed_by_name_and_read_back() -> None:
    rows = _rows(BASE)
    assert rows[0] == {
        "user_id": 1, EVENTS: 3, "__max_created": 5, "n__n": 3, "total__sum": 4.5
    }
    back = partials_from_json(rows, [10, 10], BASE)
    assert back.column("total__sum").to_pylist() == [4.5, 1.0]


def test_a_feature_added_since_reads_as_missing() -> None:
    back = partials_from_json(_rows(BASE), [10, 10], ADDED)
    assert back.column(EVENTS).to_pylist() == [3, 1]
    assert back.column("n__n").to_pylist() == [3, 1]
    assert back.column("top__max").to_pylist() == [None, None]


def test_a_removed_feature_is_ignored() -> None:
    back = partials_from_json(_rows(BASE), [10, 10], REMOVED)
    assert back.column_names[-1] == "total__sum" and "n__n" not in back.column_names
    assert back.column("total__sum").to_pylist() == [4.5, 1.0]


def test_a_retyped_value_that_does_not_fit_is_null() -> None:
    rows = [{**r, "total__sum": "not a number"} for r in _rows(BASE)]
    assert partials_from_json(rows, [10, 10], BASE).column("total__sum").to_pylist() == [None, None]


def test_positional_rows_of_earlier_releases() -> None:
    keyed = _rows(BASE)
    positional = [list(r.values()) for r in keyed]  # the order partials_to_json used to write
    same = partials_from_json(positional, [10, 10], BASE)
    assert same.equals(partials_from_json(keyed, [10, 10], BASE))
    # Another layout: keys, events and latest created are read, the features are missing.
    other = partials_from_json(positional, [10, 10], ADDED)
    assert other.column("user_id").to_pylist() == [1, 2]
    assert other.column(EVENTS).to_pylist() == [3, 1]
    assert other.column("n__n").to_pylist() == [0, 0]
    assert other.column("total__sum").to_pylist() == [None, None]
