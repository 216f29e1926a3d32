"""Latest-wins deduplication of Arrow tables. Pure Arrow, no Beam.

Per (join keys, event timestamp) the row with the latest created timestamp wins; exact ties go
to the row read last (the highest ``__ordinal``: files in sorted order, rows in file order, or
stream entries in stream order), so a re-run over the same input picks the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.sources import ORDINAL
from materializers.convert import mask
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema


def keep_latest(table: pa.Table, keys: Sequence[str], order: Sequence[str]) -> pa.Table:
    """One row per ``keys``: the one with the greatest ``order`` columns (compared in turn).

    The result is sorted by ``keys``. Order columns missing from the table are ignored.

    >>> t = pa.table({"k": [1, 1, 2], "ts": [5, 7, 1], "v": ["a", "b", "c"]})
    >>> keep_latest(t, ["k"], ["ts"])["v"].to_pylist()
    ['b', 'c']
    """
    if table.num_rows <= 1:
        return table
    order = [c for c in order if c in table.column_names]
    sort_keys = [(k, "ascending") for k in keys] + [(c, "descending") for c in order]
    ordered = table.take(pc.sort_indices(table, sort_keys=sort_keys))
    n = ordered.num_rows
    same: pa.Array | None = None
    for k in keys:
        column = ordered.column(k).combine_chunks()
        equal = pc.equal(column.slice(1), column.slice(0, n - 1))
        same = equal if same is None else pc.and_(same, equal)
    first = np.ones(n, dtype=bool)
    assert same is not None
    first[1:] = ~mask(same)
    if first.all():
        return ordered
    return ordered.filter(pa.array(first))


def dedup_rows(table: pa.Table, schema: ViewSchema) -> pa.Table:
    """One row per (join keys, event timestamp): latest created wins, then the last read."""
    return keep_latest(table, [*schema.key_names, EVENT_TS], [CREATED_TS, ORDINAL])


def as_table(element: pa.Table | pa.RecordBatch) -> pa.Table:
    return element if isinstance(element, pa.Table) else pa.Table.from_batches([element])
