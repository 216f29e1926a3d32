"""The point-in-time join as one DuckDB query (semantics in docs/point-in-time.md).

For an entity row at time T and a view with ttl D, the value is the row with the greatest event
timestamp t such that T - D < t <= T (D = 0: no lower bound), ties on t broken by the latest
created timestamp; with ``exclude_created_after`` only rows created at or before T count.

The plan, per view, is one ``ASOF LEFT JOIN`` on the view's join keys, whose single inequality
compares *structs* so that the created-timestamp tie-break costs no separate pass:

* plain:  probe ``{t: T, c: +inf}  >= {t, c}``  -> the greatest (t, c) with t <= T, i.e. the
  latest event, and among equal events the latest created. This *is* the "one row per
  (keys, event_timestamp), latest created" reduction, done by the join's own sort. A struct
  key costs the sort ~25-50% more than a plain timestamp, so ``has_key_time_ties`` first
  checks the files: when no two rows share keys and event time (the usual case), the join
  orders by t alone, which is then exact.
* exclude_created_after: a row is allowed at T iff u = max(t, c) <= T. Sorted by u, the allowed
  rows at any T are a prefix, and the answer is the prefix's best (t, c). A running-max window
  along u keeps only rows whose (t, c) is the best so far ("records"); any kept row beats every
  row of smaller u, so ``{u: T, t: +inf, c: +inf} >= {u, t, c}`` lands on the answer. (t, c)
  is ranked as the HUGEINT t * 2^64 + c (epoch microseconds, exact for every timestamp): a
  scalar running max is about four times cheaper than one over a struct.

The ttl is applied after the join (``t > T - D``): if the best row is too old, every other
candidate is older still, so the value is null either way. Only the date partitions that can
hold an answer are read: UTC dates from date(min(T) - D) to date(max(T)).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from featurestore.offline import layout
from registry.definitions import Definitions
from registry.errors import UserError
from registry.types import parse_dtype

ROW_COLUMN = "__fs_row"
ORDER_COLUMN = "__fs_o"
RANK_COLUMN = "__fs_rank"
BEST_COLUMN = "__fs_best"
RESERVED_PREFIX = "__fs_"
FULL_NAME_SEPARATOR = "__"

_DUCKDB_SCALARS = {
    "bool": "BOOLEAN",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "float32": "FLOAT",
    "float64": "DOUBLE",
    "string": "VARCHAR",
    "bytes": "BLOB",
    "timestamp": "TIMESTAMPTZ",
}


@dataclass(frozen=True)
class FeatureColumn:
    """One requested feature and the output column it becomes."""

    view: str
    feature: str
    column: str
    dtype: str


@dataclass
class ViewJoin:
    """Everything the query needs about one view: keys, ttl, features, the files to read."""

    view: str
    keys: list[tuple[str, str]]  # (column, declared dtype)
    ttl_seconds: int
    features: list[FeatureColumn]
    files: list[Path] = field(default_factory=list)
    has_data: bool = False  # the view has any partition at all (else: warn, all null)
    present: set[str] = field(default_factory=set)  # feature columns found in the files
    ties: bool = True  # two rows may share keys and event time: order by (t, created)


@dataclass(frozen=True)
class TimeBounds:
    """min(T) and max(T) over the entity rows; None when no row has a timestamp."""

    first: datetime | None
    last: datetime | None


def duckdb_type(dtype: str) -> str:
    """The DuckDB SQL type of a declared dtype.

    >>> duckdb_type("float32[8]"), duckdb_type("int64[]")
    ('FLOAT[8]', 'BIGINT[]')
    """
    parsed = parse_dtype(dtype)
    element = _DUCKDB_SCALARS[parsed.element]
    if parsed.length is None:
        return element
    return f"{element}[{parsed.length or ''}]"


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def plan_features(
    definitions: Definitions, features: list[str] | str, *, full_names: bool
) -> tuple[list[ViewJoin], list[FeatureColumn]]:
    """Resolve references (or a service name) into one ViewJoin per view and the output
    feature columns in request order.

    Columns are named ``feature`` or, with ``full_names``, ``view__feature``; two features
    getting the same name is a UserError that asks for ``full_names=True``.
    """
    if not isinstance(features, str) and not features:
        raise UserError(
            "no features requested",
            hint="pass feature references (view or view:feature) or a service name",
        )
    refs = definitions.resolve_features(features)
    joins: dict[str, ViewJoin] = {}
    columns: list[FeatureColumn] = []
    owner: dict[str, str] = {}
    for ref in refs:
        column = f"{ref.view}{FULL_NAME_SEPARATOR}{ref.feature}" if full_names else ref.feature
        other = owner.get(column.lower())
        if other is not None:
            raise UserError(
                f"features {other} and {ref} would both be named {column!r} in the output",
                hint="pass full_names=True (CLI: --full-names) to name columns view__feature",
            )
        owner[column.lower()] = str(ref)
        spec = definitions.feature_views[ref.view]
        if ref.view not in joins:
            dtypes = {
                k.name: k.dtype for e in spec.entities for k in definitions.entities[e].join_keys
            }
            keys = [(name, dtypes[name]) for name in dict.fromkeys(definitions.join_keys(spec))]
            joins[ref.view] = ViewJoin(ref.view, keys, spec.ttl_seconds, [])
        feature = FeatureColumn(ref.view, ref.feature, column, definitions.feature(ref).dtype)
        joins[ref.view].features.append(feature)
        columns.append(feature)
    return list(joins.values()), columns


def partition_files(
    offline_path: Path, project: str, view: str, ttl_seconds: int, bounds: TimeBounds
) -> tuple[bool, list[Path]]:
    """(view has any partition, the Parquet files of the partitions the export can need).

    Date partitions hold rows by the UTC date of ``event_timestamp``; an answer for T has
    T - D < t <= T, so only dates from date(min T - D) (or the first, for D = 0) to date(max T).
    """
    days = layout.existing_partitions(offline_path, project, view)
    if not days or bounds.first is None or bounds.last is None:
        return bool(days), []
    low: date | None = None
    if ttl_seconds:
        low = (bounds.first - timedelta(seconds=ttl_seconds)).date()
    high = bounds.last.date()
    files: list[Path] = []
    for day in days:
        if day > high or (low is not None and day < low):
            continue
        directory = layout.partition_dir(offline_path, project, view, day)
        # Writers rename ``.name.tmp`` files into place: a leading dot is never a finished file.
        files.extend(sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")))
    return True, files


def has_key_time_ties(files: list[Path], keys: list[str]) -> bool:
    """Whether two rows of ``files`` share join keys and event timestamp.

    Only such ties need the created timestamp. Equal times can only meet inside one date
    partition, and writers sort each file by event time, so per partition this reads the
    event times, finds the times that repeat (a sort only if a file is unsorted or the
    partition has several files) and reads keys only when some do. Memory is bounded by
    the largest partition. Anything unexpected (a file without a key column) answers True,
    the always-correct plan.
    """
    import os
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow as pa

    partitions: dict[Path, list[Path]] = {}
    for f in files:
        partitions.setdefault(f.parent, []).append(f)
    try:
        with ThreadPoolExecutor(os.cpu_count() or 1) as pool:  # pyarrow decodes without the GIL
            return any(pool.map(lambda day: _partition_has_ties(day, keys), partitions.values()))
    finally:
        # Hand the freed buffers back to the OS before DuckDB grows to its memory limit.
        pa.default_memory_pool().release_unused()


def _partition_has_ties(files: list[Path], keys: list[str]) -> bool:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    parts = [pq.ParquetFile(f).read(columns=[layout.EVENT_TS]) for f in files]
    if any(layout.EVENT_TS not in p.column_names or p[layout.EVENT_TS].null_count for p in parts):
        return True
    # Straight from the buffers: Array.to_numpy() would import pandas (a second, on first use).
    chunks = [
        c.cast(pa.int64())
        for part in parts
        for c in part[layout.EVENT_TS].cast(layout.TS_TYPE).chunks
    ]
    times = np.concatenate(
        [np.frombuffer(c.buffers()[1], np.int64, len(c), c.offset * 8) for c in chunks]
        or [np.empty(0, np.int64)]
    )
    order = None
    if len(files) > 1 or bool((np.diff(times) < 0).any()):
        order = np.argsort(times, kind="stable")
        times = times[order]
    repeats = np.flatnonzero(np.diff(times) == 0)
    if repeats.size == 0:
        return False
    rows = np.unique(np.concatenate([repeats, repeats + 1]))
    rows = order[rows] if order is not None else rows
    columns = [*keys, layout.EVENT_TS]
    tables = [pq.ParquetFile(f).read(columns=columns) for f in files]
    if any(c not in t.column_names for t in tables for c in columns):
        return True
    candidates = pa.concat_tables([t.select(columns) for t in tables]).take(pa.array(rows))
    counts = candidates.group_by(columns).aggregate([([], "count_all")])
    return bool(max(counts["count_all"].to_pylist(), default=0) > 1)


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ {literal(value.isoformat())}"


def reader(files: list[Path]) -> str:
    paths = ", ".join(literal(str(p)) for p in files)
    return f"read_parquet([{paths}], hive_partitioning = false, union_by_name = true)"


def view_cte(join: ViewJoin, bounds: TimeBounds, exclude_created_after: bool) -> str:
    """The rows of one view that may answer, with the struct the ASOF join orders by."""
    assert bounds.first is not None and bounds.last is not None
    t, c = quote(layout.EVENT_TS), quote(layout.CREATED_TS)
    keys = ", ".join(quote(k) for k, _ in join.keys)
    features = "".join(f", {quote(f.feature)}" for f in join.features if f.feature in join.present)
    # Rows at or before min(T) - D can never answer (see the module docstring); the lower
    # bound also keeps -infinity out, which the probe of a null T relies on.
    low = (
        _ts(bounds.first - timedelta(seconds=join.ttl_seconds))
        if join.ttl_seconds
        else "'-infinity'::TIMESTAMPTZ"
    )
    where = f"{t} > {low} AND {t} <= {_ts(bounds.last)}"
    if not exclude_created_after:
        order = f"{{'t': {t}, 'c': {c}}}" if join.ties else t
        return (
            f"SELECT {keys}, {order} AS {ORDER_COLUMN}{features}\n"
            f"  FROM {reader(join.files)}\n  WHERE {where}"
        )
    # Rows created after max(T) are never allowed.
    rank = f"epoch_us({t})::HUGEINT * 18446744073709551616 + epoch_us({c})"
    return (
        f"SELECT * EXCLUDE ({RANK_COLUMN}, {BEST_COLUMN}) FROM (\n"
        f"    SELECT *, max({RANK_COLUMN}) OVER (PARTITION BY {keys} ORDER BY {ORDER_COLUMN}.u\n"
        f"      ROWS UNBOUNDED PRECEDING) AS {BEST_COLUMN}\n"
        f"    FROM (\n"
        f"      SELECT {keys}, {{'u': greatest({t}, {c}), 't': {t}, 'c': {c}}} AS {ORDER_COLUMN},\n"
        f"        {rank} AS {RANK_COLUMN}{features}\n"
        f"      FROM {reader(join.files)}\n"
        f"      WHERE {where} AND {c} <= {_ts(bounds.last)}\n"
        f"    )\n"
        f"  ) WHERE {RANK_COLUMN} = {BEST_COLUMN}"
    )


def build_query(
    entity_source: str,
    timestamp_column: str,
    timestamp_sql: str,
    joins: list[ViewJoin],
    columns: list[FeatureColumn],
    bounds: TimeBounds,
    *,
    exclude_created_after: bool,
) -> str:
    """The whole export as one SELECT: entity columns (T normalized to UTC), then features.

    ``entity_source`` is a FROM item with the caller's columns plus ROW_COLUMN;
    ``timestamp_sql`` turns the timestamp column into a TIMESTAMPTZ.
    """
    ts = quote(timestamp_column)
    ctes = [f"__fs_e AS (\n  SELECT * REPLACE ({timestamp_sql} AS {ts}) FROM {entity_source}\n)"]
    joined = [j for j in joins if j.files and bounds.first is not None]
    from_clause = ["FROM __fs_e AS e"]
    never = "'-infinity'::TIMESTAMPTZ"
    inf = "'infinity'::TIMESTAMPTZ"
    for i, join in enumerate(joined):
        alias = f"v{i}"
        ctes.append(f"__fs_{alias} AS (\n  {view_cte(join, bounds, exclude_created_after)}\n)")
        on = [f"e.{quote(k)} = {alias}.{quote(k)}" for k, _ in join.keys]
        # A null T probes with -infinity, below every row the CTE keeps: no match.
        probe_t = f"coalesce(e.{ts}, {never})"
        if exclude_created_after:
            probe = f"{{'u': {probe_t}, 't': {inf}, 'c': {inf}}}"
        elif join.ties:
            probe = f"{{'t': {probe_t}, 'c': {inf}}}"
        else:
            probe = probe_t
        on.append(f"{probe} >= {alias}.{ORDER_COLUMN}")
        from_clause.append(f"ASOF LEFT JOIN __fs_{alias} AS {alias} ON " + " AND ".join(on))
    aliases = {join.view: f"v{i}" for i, join in enumerate(joined)}
    selects = [f"e.* EXCLUDE ({ROW_COLUMN})"]
    by_view = {j.view: j for j in joins}
    for feature in columns:
        join = by_view[feature.view]
        sql_type = duckdb_type(feature.dtype)
        view_alias = aliases.get(feature.view)
        if view_alias is None or feature.feature not in join.present:
            value = f"CAST(NULL AS {sql_type})"
        elif join.ttl_seconds:
            ttl = f"to_microseconds({join.ttl_seconds * 1_000_000})"
            scalar = not exclude_created_after and not join.ties
            event = f"{view_alias}.{ORDER_COLUMN}" + ("" if scalar else ".t")
            fresh = f"{event} > e.{ts} - {ttl}"
            column = f"{view_alias}.{quote(feature.feature)}"
            value = f"CASE WHEN {fresh} THEN CAST({column} AS {sql_type}) END"
        else:
            value = f"CAST({view_alias}.{quote(feature.feature)} AS {sql_type})"
        selects.append(f"{value} AS {quote(feature.column)}")
    return (
        "WITH " + ",\n".join(ctes) + "\n"
        "SELECT " + ",\n  ".join(selects) + "\n" + "\n".join(from_clause) + "\n"
        f"ORDER BY e.{ROW_COLUMN}"
    )
