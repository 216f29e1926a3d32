"""Windowed aggregations as Arrow tables: the one implementation the batch job and the stream job
share, so both give the same values for the same events. Pure Arrow, no Beam.

Time is cut into **panes** one slide long, aligned on the epoch (pane ``p`` holds events with
``p * slide <= event time < (p + 1) * slide``). A window is named by its end index ``T`` (it ends
at ``T * slide``, exclusive); a feature with a window of ``k`` slides covers panes
``T - k .. T - 1``. Three steps:

    pane_partials(events)    events -> one partial row per (entity, pane)
    merge_partials(parts)    partial rows of the same (entity, pane) -> one (associative)
    window_rows(parts, ...)  partials -> one row per (entity, window end) in the view's layout,
                             event_timestamp = the window end, created_timestamp = the latest
                             created time among the window's events

A partial holds, per feature: ``n`` (non-null values; rows for a plain count), ``sum``, ``min``,
``max``, or for ``last`` the value of the latest event that has one with its (event, created,
ordinal) order. A window row exists when the view's largest window holds at least one event;
features with a smaller window that holds none are 0 (count, sum) or null (mean, min, max, last).

Integer sums are exact; float sums may differ in the last bits between batch and stream, which
add the same numbers in a different grouping.

    >>> parts = pane_partials(events, schema)  # doctest: +SKIP
    >>> window_rows(parts, schema, lo=t0, hi=t1)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.arrow_types import arrow_type
from featurestore.sources import ORDINAL
from materializers.dedup import keep_latest
from materializers.schema import CREATED_TS, EVENT_TS, TS_TYPE, ViewSchema

PANE = "__pane"
WINDOW_END = "__end"
EVENTS = "__events"
MAX_CREATED = "__max_created"
_US = 1_000_000


def slide_us(schema: ViewSchema) -> int:
    return schema.slide_seconds * _US


def pane_of(event_us: np.ndarray | int, schema: ViewSchema) -> Any:
    """The pane index of event times in microseconds (floor division: right before 1970 too)."""
    return np.floor_divide(event_us, slide_us(schema))


# -- the partial columns ---------------------------------------------------------------------------


def _sum_type(dtype: str) -> pa.DataType:
    return pa.int64() if dtype == "int64" else pa.float64()


def fields_by_feature(schema: ViewSchema) -> dict[str, list[pa.Field]]:
    """Per aggregated feature, the columns its partial state needs."""
    columns = dict(schema.event_columns)
    out: dict[str, list[pa.Field]] = {}
    for a in schema.aggregates:
        f = a.feature
        if a.function == "count":
            out[f] = [pa.field(f"{f}__n", pa.int64())]
        elif a.function == "sum":
            out[f] = [pa.field(f"{f}__sum", _sum_type(a.dtype))]
        elif a.function == "mean":
            out[f] = [pa.field(f"{f}__sum", pa.float64()), pa.field(f"{f}__n", pa.int64())]
        elif a.function in ("min", "max"):
            out[f] = [pa.field(f"{f}__{a.function}", arrow_type(columns[a.column]))]  # type: ignore[index]
        else:  # last
            out[f] = [
                pa.field(f"{f}__last", arrow_type(columns[a.column])),  # type: ignore[index]
                pa.field(f"{f}__lt", TS_TYPE),
                pa.field(f"{f}__lc", TS_TYPE),
                pa.field(f"{f}__lo", pa.int64()),
            ]
    return out


def partial_fields(schema: ViewSchema) -> list[pa.Field]:
    """The partial state's columns after the keys, the pane (or window end) and the events."""
    return [field for fields in fields_by_feature(schema).values() for field in fields]


def partial_schema(schema: ViewSchema, group: str = PANE) -> pa.Schema:
    """Keys, the pane (or window end), events, latest created, then ``partial_fields``."""
    return pa.schema(
        [
            *(pa.field(n, arrow_type(d)) for n, d in schema.join_keys),
            pa.field(group, pa.int64()),
            pa.field(EVENTS, pa.int64()),
            pa.field(MAX_CREATED, TS_TYPE),
            *partial_fields(schema),
        ]
    )


# -- events -> partials ----------------------------------------------------------------------------


def pane_partials(events: pa.Table | pa.RecordBatch, schema: ViewSchema) -> pa.Table:
    """One partial row per (entity, pane) of validated event rows (``validate_batch`` output
    for ``schema.event_schema()``: keys, event/created times, event columns, maybe ordinal).

    >>> pane_partials(events, schema).column_names[:3]  # doctest: +SKIP
    ['user_id', '__pane', '__events']
    """
    if isinstance(events, pa.RecordBatch):
        events = pa.Table.from_batches([events])
    target = partial_schema(schema)
    n = events.num_rows
    if n == 0:
        return target.empty_table()
    event_us = pc.cast(events.column(EVENT_TS), pa.int64()).to_numpy()
    columns: dict[str, Any] = {k: events.column(k) for k in schema.key_names}
    columns[PANE] = pa.array(pane_of(event_us, schema), pa.int64())
    columns[EVENTS] = pa.array(np.ones(n, dtype=np.int64))
    columns[MAX_CREATED] = events.column(CREATED_TS)
    ordinal = (
        events.column(ORDINAL)
        if ORDINAL in events.column_names
        else pa.array(np.zeros(n, np.int64))
    )
    for a in schema.aggregates:
        f = a.feature
        value = events.column(a.column) if a.column else None
        valid = (
            pa.array(np.ones(n, dtype=np.int64))
            if value is None
            else pc.cast(pc.is_valid(value), pa.int64())
        )
        if a.function == "count":
            columns[f"{f}__n"] = valid
        elif a.function == "sum":
            columns[f"{f}__sum"] = pc.cast(value, _sum_type(a.dtype))
        elif a.function == "mean":
            columns[f"{f}__sum"] = pc.cast(value, pa.float64())
            columns[f"{f}__n"] = valid
        elif a.function in ("min", "max"):
            columns[f"{f}__{a.function}"] = value
        else:
            # Rows without a value never win "last": their order columns are null.
            has = pc.is_valid(value)
            null_ts = pa.scalar(None, TS_TYPE)
            columns[f"{f}__last"] = value
            columns[f"{f}__lt"] = pc.if_else(has, events.column(EVENT_TS), null_ts)
            columns[f"{f}__lc"] = pc.if_else(has, events.column(CREATED_TS), null_ts)
            columns[f"{f}__lo"] = pc.if_else(has, ordinal, pa.scalar(None, pa.int64()))
    per_event = pa.table(
        [_as_type(columns[field.name], field.type) for field in target], schema=target
    )
    return merge_partials(per_event, schema)


def _as_type(column: Any, type_: pa.DataType) -> Any:
    return column if column.type == type_ else pc.cast(column, type_)


# -- partials -> partials --------------------------------------------------------------------------


def merge_partials(partials: pa.Table, schema: ViewSchema, group: str = PANE) -> pa.Table:
    """Combine partial rows of the same (keys, ``group``) into one; sorted by keys, group.

    Associative and commutative (up to float rounding), so partials may be merged in any
    grouping: per micro-batch, with stored state, per date.
    """
    target = partial_schema(schema, group)
    if partials.num_rows == 0:
        return target.empty_table()
    by = [*schema.key_names, group]
    sums, mins, maxes = [EVENTS], [], [MAX_CREATED]
    for a in schema.aggregates:
        names = [field.name for field in fields_by_feature(schema)[a.feature]]
        if a.function in ("count", "sum", "mean"):
            sums += names
        elif a.function == "min":
            mins += names
        elif a.function == "max":
            maxes += names
    specs = [(c, "sum") for c in sums] + [(c, "min") for c in mins] + [(c, "max") for c in maxes]
    grouped = partials.group_by(by, use_threads=False).aggregate(specs)
    grouped = grouped.sort_by([(c, "ascending") for c in by])
    out: dict[str, Any] = {c: grouped.column(c) for c in by}
    for column, func in specs:
        out[column] = grouped.column(f"{column}_{func}")
    for a in schema.aggregates:
        if a.function != "last":
            continue
        f = a.feature
        cols = [f"{f}__last", f"{f}__lt", f"{f}__lc", f"{f}__lo"]
        latest = keep_latest(partials.select([*by, *cols]), by, cols[1:])
        # keep_latest sorts by the group columns as the sort above does: rows line up.
        for c in cols:
            out[c] = latest.column(c)
    return pa.table([_as_type(out[f.name], f.type) for f in target], schema=target)


def window_rows(
    partials: pa.Table,
    schema: ViewSchema,
    *,
    lo: int | None = None,
    hi: int | None = None,
    targets: pa.Table | None = None,
) -> pa.Table:
    """One row per (entity, window end index ``T``) in the view's offline layout, for windows
    with ``lo <= T < hi`` and, with ``targets`` (keys + ``__end``), only those pairs.

    ``partials`` are pane partials (merged or not). Rows are sorted by event time, then keys.
    """
    k_max = max(a.panes for a in schema.aggregates)
    by_feature = fields_by_feature(schema)
    pane = partials.column(PANE).to_numpy() if partials.num_rows else np.zeros(0, np.int64)
    pieces = []
    for j in range(k_max):
        end = pane + 1 + j
        keep = np.ones(len(end), dtype=bool)
        if lo is not None:
            keep &= end >= lo
        if hi is not None:
            keep &= end < hi
        if not keep.any():
            continue
        piece = partials.filter(pa.array(keep)) if not keep.all() else partials
        columns = {c: piece.column(c) for c in piece.column_names if c != PANE}
        columns[WINDOW_END] = pa.array(end[keep], pa.int64())
        for a in schema.aggregates:
            if j < a.panes:
                continue
            # This pane lies outside the feature's (smaller) window for this end.
            for field in by_feature[a.feature]:
                columns[field.name] = (
                    pa.array(np.zeros(piece.num_rows, np.int64))
                    if field.name == f"{a.feature}__n"
                    else pa.nulls(piece.num_rows, field.type)
                )
        pieces.append(pa.table(columns))
    target = partial_schema(schema, WINDOW_END)
    if not pieces:
        exploded = target.empty_table()
    else:
        exploded = pa.concat_tables([p.select(target.names).cast(target) for p in pieces])
    if targets is not None and exploded.num_rows:
        wanted = targets.select([*schema.key_names, WINDOW_END])
        exploded = exploded.join(wanted, [*schema.key_names, WINDOW_END], join_type="inner")
        exploded = exploded.select(target.names)
    merged = merge_partials(exploded, schema, group=WINDOW_END)
    return finalize(merged, schema)


def finalize(windows: pa.Table, schema: ViewSchema) -> pa.Table:
    """Merged window partials -> rows in the offline layout (event time = window end)."""
    layout = schema.layout_schema()
    ends = windows.column(WINDOW_END).to_numpy() if windows.num_rows else np.zeros(0, np.int64)
    columns: dict[str, Any] = {k: windows.column(k) for k in schema.key_names}
    columns[EVENT_TS] = pa.array(ends * slide_us(schema), pa.int64()).cast(TS_TYPE)
    columns[CREATED_TS] = windows.column(MAX_CREATED)
    for a in schema.aggregates:
        f = a.feature
        if a.function == "count":
            value = windows.column(f"{f}__n")
        elif a.function == "sum":
            value = pc.fill_null(windows.column(f"{f}__sum"), 0)
        elif a.function == "mean":
            n = windows.column(f"{f}__n")
            zero = pc.equal(n, 0)
            value = pc.if_else(
                zero,
                pa.scalar(None, pa.float64()),
                pc.divide(
                    windows.column(f"{f}__sum"), pc.cast(pc.if_else(zero, 1, n), pa.float64())
                ),
            )
        else:
            value = windows.column(f"{f}__{a.function}")
        columns[f] = value
    table = pa.table([_as_type(columns[f.name], f.type) for f in layout], schema=layout)
    order = [(EVENT_TS, "ascending"), *((k, "ascending") for k in schema.key_names)]
    return table.sort_by(order)


def window_ends(lo_us: int, hi_us: int, schema: ViewSchema) -> tuple[int, int]:
    """Window end indexes ``[lo, hi)`` of the windows ending at times in [lo_us, hi_us)."""
    step = slide_us(schema)
    return -(-lo_us // step), -(-hi_us // step)


def panes_for_ends(lo: int, hi: int, schema: ViewSchema) -> tuple[int, int]:
    """The panes ``[first, last)`` the windows ending at ``lo .. hi - 1`` read."""
    k_max = max(a.panes for a in schema.aggregates)
    return lo - k_max, hi - 1


def ends_of_panes(panes: Iterable[int], schema: ViewSchema) -> set[int]:
    """Every window end index a pane contributes to."""
    k_max = max(a.panes for a in schema.aggregates)
    return {int(p) + 1 + j for p in panes for j in range(k_max)}


# -- partial rows <-> JSON (the stream job's state) ------------------------------------------------


def _jsonable(field: pa.Field, values: list[Any]) -> list[Any]:
    if pa.types.is_timestamp(field.type):
        return values  # already int microseconds (the column is cast to int64 first)
    if pa.types.is_binary(field.type):
        return [None if v is None else base64.b64encode(v).decode("ascii") for v in values]
    return values


def partials_to_json(partials: pa.Table, schema: ViewSchema) -> list[dict[str, Any]]:
    """Each partial row (without its pane) as a JSON-able object keyed by column name;
    timestamps as int microseconds, bytes as base64. Floats keep every bit through ``json`` (it
    writes ``repr``). Keyed by name, not position, so a state written before a feature was
    added, removed or reordered still reads (``partials_from_json``)."""
    target = partial_schema(schema)
    names = [f for f in target if f.name != PANE]
    columns = []
    for field in names:
        column = partials.column(field.name)
        if pa.types.is_timestamp(field.type):
            column = pc.cast(column, pa.int64())
        columns.append(_jsonable(field, column.to_pylist()))
    keys = [f.name for f in names]
    return [dict(zip(keys, row)) for row in zip(*columns)]


def _positional(row: Sequence[Any], names: list[pa.Field], schema: ViewSchema) -> dict[str, Any]:
    """A row of the positional format (before partials were keyed by name): keys, events and
    latest created sit at fixed places whatever the features; the features' fields are trusted
    only when the row has exactly the current number of fields (else the layout changed since,
    and they read as missing)."""
    fixed = len(schema.key_names) + 2
    if len(row) == len(names):
        return {f.name: v for f, v in zip(names, row)}
    return {f.name: v for f, v in zip(names[:fixed], row[:fixed])}


def partials_from_json(
    rows: Sequence[Mapping[str, Any] | Sequence[Any]], panes: Sequence[int], schema: ViewSchema
) -> pa.Table:
    """The inverse of ``partials_to_json``, with each row's pane given beside it.

    A field the row lacks (a feature added since it was written) or whose value no longer fits
    its type (a retyped feature) is missing: counts 0, the other fields null, so the feature
    counts only the events seen since, until a batch run rewrites the panes (the plan's
    backfill). Fields of removed features are ignored."""
    target = partial_schema(schema)
    names = [f for f in target if f.name != PANE]
    objects = [r if isinstance(r, Mapping) else _positional(r, names, schema) for r in rows]
    columns: dict[str, Any] = {PANE: pa.array(list(panes), pa.int64())}
    for field in names:
        values = [row.get(field.name) for row in objects]
        if pa.types.is_binary(field.type):
            values = [None if v is None else base64.b64decode(v) for v in values]
        try:
            if pa.types.is_timestamp(field.type):
                column = pa.array(values, pa.int64()).cast(field.type)
            else:
                column = pa.array(values, field.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            column = pa.nulls(len(values), field.type)
        if field.name == EVENTS or field.name.endswith("__n"):
            column = pc.fill_null(column, 0)
        columns[field.name] = column
    return pa.table([columns[f.name] for f in target], schema=target)
