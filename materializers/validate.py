"""Validation of source rows: one record batch in, ``(valid, rejects)`` out. Pure Arrow, no Beam;
the batch job (``ValidateAndCast``), the stream job and the aggregations all use ``validate_batch``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.sources import ORDINAL, Interval
from materializers.convert import convert_column, mask, nulls, to_timestamp
from materializers.schema import CREATED_TS, EVENT_TS, TS_TYPE, ViewSchema, check_source_schema

#: The column of a rejected row that says why.
REASON = "reason"


@dataclass(frozen=True)
class Validated:
    valid: pa.RecordBatch
    rejects: pa.RecordBatch | None
    rows_read: int


class _Flags:
    """The first reason each row is rejected for."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reason = np.empty(n, dtype=object)

    def add(self, mask: np.ndarray | None, reason: str) -> None:
        if mask is None or not mask.any():
            return
        new = mask & ~self.bad
        self.reason[new] = reason
        self.bad |= mask


def validate_batch(
    batch: pa.RecordBatch, schema: ViewSchema, interval: Interval | None = None
) -> Validated:
    """Check and cast one batch of source rows to the view's layout.

    Rows whose event time is outside ``interval`` are dropped (they belong to another run);
    rows with a null join key, a null or unparseable timestamp, or a value that does not fit
    its dtype are returned in ``rejects`` (the source columns plus ``reason``). ``valid`` has
    the layout's columns plus ``__ordinal`` when the source gave one.
    """
    check_source_schema(schema, batch.schema, "a record batch")
    event, event_bad = to_timestamp(batch.column(schema.timestamp_field))
    if interval is not None:
        inside = pc.and_(
            pc.greater_equal(event, pa.scalar(interval.start, TS_TYPE)),
            pc.less(event, pa.scalar(interval.end, TS_TYPE)),
        )
        keep = pc.or_kleene(pc.is_null(event), inside)
        if keep.false_count:
            keep_np = mask(keep)
            batch, event = batch.filter(keep), event.filter(keep)
            event_bad = None if event_bad is None else event_bad[keep_np]
    n = batch.num_rows
    flags = _Flags(n)
    ts = schema.timestamp_field
    flags.add(event_bad, f"unparseable event timestamp {ts}")
    flags.add(nulls(event), f"null event timestamp {ts}")
    columns: dict[str, pa.Array] = {}
    if schema.created_timestamp_field:
        created, created_bad = to_timestamp(batch.column(schema.created_timestamp_field))
        flags.add(created_bad, f"unparseable created timestamp {schema.created_timestamp_field}")
        flags.add(nulls(created), f"null created timestamp {schema.created_timestamp_field}")
    else:
        # Without a created column the event time stands in: deterministic across re-runs.
        created = event
    for name, dtype in schema.join_keys:
        source = batch.column(name)
        flags.add(nulls(source), f"null join key {name}")
        columns[name], problems = convert_column(source, name, dtype, role="join key")
        for rows, reason in problems:
            flags.add(rows, reason)
    columns[EVENT_TS], columns[CREATED_TS] = event, created
    for name, dtype in schema.features:
        columns[name], problems = convert_column(batch.column(name), name, dtype)
        for rows, reason in problems:
            flags.add(rows, reason)
    out_schema = schema.layout_schema()
    arrays = [columns[f.name] for f in out_schema]
    if ORDINAL in batch.schema.names:
        out_schema = out_schema.append(pa.field(ORDINAL, pa.int64()))
        arrays.append(batch.column(ORDINAL))
    rejects = None
    if flags.bad.any():
        good = pa.array(~flags.bad)
        arrays = [a.filter(good) for a in arrays]
        bad = pa.array(flags.bad)
        rejected = batch.filter(bad)
        if ORDINAL in rejected.schema.names:
            rejected = rejected.drop_columns([ORDINAL])
        rejects = rejected.append_column(
            REASON, pa.array(flags.reason[flags.bad].tolist(), pa.string())
        )
    valid = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
    return Validated(valid, rejects, n)
