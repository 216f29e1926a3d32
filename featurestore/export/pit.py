"""The point-in-time join as one DuckDB query (semantics in docs/point-in-time.md).

For an entity row at time T and a view with ttl D, the value is the row with the greatest event
timestamp t such that T - D < t <= T (D = 0: no lower bound), ties on t broken by the latest
created timestamp; with ``exclude_created_after`` only rows created at or before T count.

The plan, per view, is one ``ASOF LEFT JOIN`` on the view's join keys, whose single inequality
compares *structs* so that the created-timestamp tie-break costs no separate pass:

* plain:  probe ``{t: T, c: +inf}  >= {t, c}``  -> the greatest (t, c) with t <= T, i.e. the
  latest event, and among equal events the latest created. This *is* the "one row per
  (keys, event_timestamp), latest created" reduction, done by the join's own sort. A struct
  key makes the join's sort far costlier than a plain timestamp (1.8x the export's CPU at 1M
  entity rows x 10M feature rows), so ``has_key_time_ties`` first checks the files: when no
  two rows share keys and event time (the usual case), the join orders by t alone, which is
  then exact.
* exclude_created_after: a row is allowed at T iff u = max(t, c) <= T. Sorted by u, the allowed
  rows at any T are a prefix, and the answer is the prefix's best (t, c). A running-max window
  along u keeps only rows whose (t, c) is the best so far ("records"); any kept row beats every
  row of smaller u, so ``{u: T, t: +inf, c: +inf} >= {u, t, c}`` lands on the answer. (t, c)
  is ranked as the HUGEINT t * 2^64 + c (epoch microseconds, exact for every timestamp): a
  scalar running max is about four times cheaper than one over a struct.

The ttl is applied after the join (``t > T - D``): if the best row is too old, every other
candidate is older still, so the value is null either way. Only the date partitions that can
hold an answer are read: UTC dates from date(min(T) - D) to date(max(T)).

Files written before a dtype change (``apply --allow-breaking``) keep the old Parquet type until
a backfill rewrites them. ``read_parquet(union_by_name)`` would widen every file to a common
supertype first (DOUBLE for int64 + float64: an int64 beyond 2**53 comes out rounded), so the
files are grouped by the types their footers declare (``file_types``, one query), and a group
not of the registry's types is read on its own and cast value by value (``conform_sql``): a
value the new dtype holds exactly is kept, any other is null. The groups are the schema
generations, a handful; the usual single group keeps the plain read, with no cast.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from featurestore.offline import layout
from featurestore.offline.location import OfflinePath
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
    groups: list[FileGroup] = field(default_factory=list)  # files by feature types (group_files)
    has_data: bool = False  # the view has any partition at all (else: warn, all null)
    present: set[str] = field(default_factory=set)  # feature columns found in the files
    ties: bool = True  # two rows may share keys and event time: order by (t, created)
    same_schema: bool = False  # every file has the same columns and types, in the same order


@dataclass(frozen=True)
class FileGroup:
    """Files whose footers give each present feature the same type (None: not in the files)."""

    types: dict[str, str | None]  # feature -> DuckDB type as read from these files
    files: list[Path]

    def needs_cast(self, join: ViewJoin) -> bool:
        """Whether some feature is stored as another type than the registry's dtype."""
        dtypes = {f.feature: f.dtype for f in join.features}
        return any(t is not None and t != read_type(dtypes[f]) for f, t in self.types.items())


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


def read_type(dtype: str) -> str:
    """The type DuckDB reads a dtype's Parquet column as: vectors come back as lists.

    >>> read_type("float32[8]"), read_type("int64")
    ('FLOAT[]', 'BIGINT')
    """
    parsed = parse_dtype(dtype)
    element = _DUCKDB_SCALARS[parsed.element]
    return element if parsed.length is None else f"{element}[]"


# A float or its text rounds to the nearest value of the new float type: that is what a float of
# that type is, not a wrong value. Every other conversion must be exact (see conform_sql).
_ROUNDS_TO_FLOAT = {"FLOAT", "DOUBLE", "VARCHAR"}
_TYPE_NAMES = {"TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ"}
_VECTOR = re.compile(r"^(.*)\[\d*\]$")  # a list or array type, and its element type


def conform_sql(expr: str, source: str, dtype: str) -> str:
    """SQL giving ``expr``, read as DuckDB type ``source``, as ``read_type(dtype)``.

    A value is kept when the new type holds it exactly: cast to the new type and back, it is the
    same value (3.0 -> 3, but 3.7, 2**31 or '3.7' as int32 are null, not 4, an error or a
    wrap-around). Into a float type, a float or a number's text is rounded to that type's
    precision. A vector is converted element by element and is null as a whole if one element
    is; a scalar never becomes a vector nor the reverse. ``TRY_CAST`` alone would round
    (``TRY_CAST(3.7 AS INTEGER)`` is 4).

    >>> conform_sql("x", "DOUBLE", "int32")
    'CASE WHEN TRY_CAST(TRY_CAST(x AS INTEGER) AS DOUBLE) = x THEN TRY_CAST(x AS INTEGER) END'
    """
    source = _TYPE_NAMES.get(source, source)
    target = read_type(dtype)
    if source == target:
        return expr
    parsed = parse_dtype(dtype)
    element = _DUCKDB_SCALARS[parsed.element]
    vector = _VECTOR.match(source)
    if (vector is not None) != parsed.is_vector:
        return f"CAST(NULL AS {target})"
    if vector is None:
        return _conform_scalar(expr, source, element)
    item = "__fs_item"
    converted = f"[{_conform_scalar(item, vector[1], element)} FOR {item} IN {expr}]"
    # list_count counts the non-null elements: one fewer means an element did not fit.
    return f"CASE WHEN list_count({converted}) = list_count({expr}) THEN {converted} END"


def _conform_scalar(expr: str, source: str, target: str) -> str:
    cast = f"TRY_CAST({expr} AS {target})"
    if source == target:
        return expr
    if target in ("FLOAT", "DOUBLE") and source in _ROUNDS_TO_FLOAT:
        return cast
    return f"CASE WHEN TRY_CAST({cast} AS {source}) = {expr} THEN {cast} END"


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
    offline_path: OfflinePath, project: str, view: str, ttl_seconds: int, bounds: TimeBounds
) -> tuple[bool, list[Any]]:
    """(view has any partition, the Parquet files of the partitions the export can need).

    Date partitions hold rows by the UTC date of ``event_timestamp``; an answer for T has
    T - D < t <= T, so only dates from date(min T - D) (or the first, for D = 0) to date(max T).
    On an object store the files are ``ObjectPath``s (``location.fetch`` copies them).
    """
    days = layout.existing_partitions(offline_path, project, view)
    if not days or bounds.first is None or bounds.last is None:
        return bool(days), []
    low: date | None = None
    if ttl_seconds:
        low = (bounds.first - timedelta(seconds=ttl_seconds)).date()
    high = bounds.last.date()
    files: list[Any] = []
    for day in days:
        if day > high or (low is not None and day < low):
            continue
        directory = layout.partition_dir(offline_path, project, view, day)
        # Writers rename ``.name.tmp`` files into place: a leading dot is never a finished file.
        files.extend(sorted(p for p in directory.glob("*.parquet") if not p.name.startswith(".")))
    return True, files


def file_types(con: Any, files: list[Path]) -> dict[Path, dict[str, str]]:
    """Each file's top-level columns and the DuckDB type each is read as, from the footers.

    One ``parquet_schema`` query for every file. Its rows are the schema trees in depth-first
    order, a file's root first: a column with children (a list) is followed by its subtree.
    """
    if not files:
        return {}
    paths = ", ".join(literal(str(p)) for p in files)
    rows = con.execute(
        f"SELECT file_name, name, num_children, duckdb_type FROM parquet_schema([{paths}])"
    ).fetchall()
    by_name = {str(p): p for p in files}
    out: dict[Path, dict[str, str]] = {p: {} for p in files}
    i = 0
    while i < len(rows):
        file_name, _, columns, _ = rows[i]  # the root
        types = out[by_name.get(file_name, Path(file_name))]
        i += 1
        for _ in range(columns or 0):
            types[rows[i][1]] = _TYPE_NAMES.get(rows[i][3], rows[i][3])
            pending = 1  # skip the column's subtree
            while pending:
                pending += (rows[i][2] or 0) - 1
                i += 1
    return out


def group_files(join: ViewJoin, types: dict[Path, dict[str, str]]) -> list[FileGroup]:
    """``join.files`` grouped by the types of the present features, in file order."""
    groups: dict[tuple[str | None, ...], FileGroup] = {}
    names = sorted(join.present)
    for f in join.files:
        signature = tuple(types.get(f, {}).get(n) for n in names)
        group = groups.get(signature)
        if group is None:
            group = groups[signature] = FileGroup(dict(zip(names, signature)), [])
        group.files.append(f)
    return list(groups.values())


# More repeated event times than this are not written into the check's SQL as constants (which
# the Parquet scan filters on before decoding keys): the exact check groups every row instead.
_MAX_REPEATED_TIMES = 1_000


def has_key_time_ties(files: list[Path], keys: list[str], con: Any = None) -> bool:
    """Whether two rows of ``files`` share join keys and event timestamp.

    Only such ties need the created timestamp. Equal times can only meet inside one date
    partition. Writers sort each file by event time, so the partitions of a single file are
    checked in one streaming pass over the event times alone (``lag() OVER ()``): if the times
    never decrease along the scan, equal times are neighbours, the repeated ones are exactly
    those equal to their predecessor, and keys are grouped only at those times (usually none).
    The argument does not depend on the order DuckDB scans in: a sequence that never decreases
    holds each repeated value as neighbours, whatever order it was read in. Partitions of
    several files (batch and stream), a scan that does decrease, a null time or too many
    repeated times get the exact check, a group by keys and time. A key column missing from
    the files answers True, the always-correct plan. ``con``: a DuckDB connection to run in
    (its memory limit applies); a private one by default.
    """
    import duckdb

    partitions: dict[Path, list[Path]] = {}
    for f in files:
        partitions.setdefault(f.parent, []).append(f)
    single = [fs[0] for fs in partitions.values() if len(fs) == 1]
    exact = [f for fs in partitions.values() if len(fs) > 1 for f in fs]
    own = con is None
    if own:
        con = duckdb.connect(":memory:")
        con.execute("SET TimeZone = 'UTC'")
    try:
        if single:
            repeated = _repeated_times(con, single)
            if repeated is None:
                exact += single
            elif repeated and _grouped_ties(con, single, keys, repeated):
                return True
        return bool(exact) and _grouped_ties(con, exact, keys, None)
    except duckdb.BinderException:  # a key column (or the event time) is not in the files
        return True
    finally:
        if own:
            con.close()


def _repeated_times(con: Any, files: list[Path]) -> list[int] | None:
    """The event times (epoch microseconds) that occur more than once in ``files``, or None
    when one streaming pass cannot tell (the scan is not sorted, a time is null, too many)."""
    t = quote(layout.EVENT_TS)
    nulls, decreases, repeats, times = con.execute(
        # No DISTINCT aggregate here: it would hash every row, ten times the cost of the scan.
        f"SELECT count(*) - count(t), coalesce(count_if(t < p), 0), coalesce(count_if(t = p), 0),\n"
        f"  list(epoch_us(t::TIMESTAMPTZ)) FILTER (WHERE t = p)[:{_MAX_REPEATED_TIMES}]\n"
        f"FROM (SELECT {t} AS t, lag({t}) OVER () AS p FROM {reader(files)})"
    ).fetchall()[0]
    if nulls or decreases or repeats > _MAX_REPEATED_TIMES:
        return None
    return sorted(set(times or []))


def _grouped_ties(con: Any, files: list[Path], keys: list[str], times: list[int] | None) -> bool:
    """Whether some (keys, event time) holds two rows of ``files``, looking only at ``times``
    when given. A null key never matches an entity row, so its ties do not matter."""
    t = quote(layout.EVENT_TS)
    columns = ", ".join([*(quote(k) for k in keys), t])
    where = " AND ".join(f"{quote(k)} IS NOT NULL" for k in keys) or "true"
    if times is not None:
        # Constants, not a join: the scan then skips the keys of every other row. Both sides
        # are cast as in _repeated_times (nanoseconds truncated: more candidates, never fewer;
        # a naive time read in the connection's zone, UTC); for the layout's type, a no-op.
        instants = ", ".join(f"timezone('UTC', make_timestamp({us}))" for us in times)
        where += f" AND {t}::TIMESTAMPTZ IN ({instants})"
    found = con.execute(
        f"SELECT EXISTS (SELECT 1 FROM {reader(files)} WHERE {where}\n"
        f"  GROUP BY {columns} HAVING count(*) > 1)"
    ).fetchall()[0]
    return bool(found[0])


def _ts(value: datetime) -> str:
    return f"TIMESTAMPTZ {literal(value.isoformat())}"


def reader(files: list[Path], *, union_by_name: bool = True) -> str:
    """A scan of ``files``; ``union_by_name=False`` only when every file has the same columns
    of the same types in the same order: the plain read is ~5-8% cheaper for the export."""
    paths = ", ".join(literal(str(p)) for p in files)
    union = "true" if union_by_name else "false"
    return f"read_parquet([{paths}], hive_partitioning = false, union_by_name = {union})"


def view_source(join: ViewJoin) -> str:
    """The FROM item of a view's rows: one read of the files, or, across a dtype change, a
    UNION ALL of one read per group of files, each feature cast to the registry's dtype."""
    groups = join.groups or [FileGroup({f: None for f in join.present}, join.files)]
    if len(groups) == 1 and not groups[0].needs_cast(join):
        return reader(join.files, union_by_name=not join.same_schema)
    dtypes = {f.feature: f.dtype for f in join.features}
    fixed = [quote(k) for k, _ in join.keys] + [quote(layout.EVENT_TS), quote(layout.CREATED_TS)]
    parts = []
    for group in groups:
        columns = list(fixed)
        for name in sorted(join.present):
            source = group.types.get(name)
            value = (
                f"CAST(NULL AS {read_type(dtypes[name])})"
                if source is None
                else conform_sql(quote(name), source, dtypes[name])
            )
            columns.append(f"{value} AS {quote(name)}")
        parts.append(f"SELECT {', '.join(columns)} FROM {reader(group.files)}")
    return "(\n    " + "\n    UNION ALL ".join(parts) + "\n  )"


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
            f"  FROM {view_source(join)}\n  WHERE {where}"
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
        f"      FROM {view_source(join)}\n"
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
        # In a struct probe a null T becomes -infinity, below every row the CTE keeps: no match.
        probe_t = f"coalesce(e.{ts}, {never})"
        if exclude_created_after:
            probe = f"{{'u': {probe_t}, 't': {inf}, 'c': {inf}}}"
        elif join.ties:
            probe = f"{{'t': {probe_t}, 'c': {inf}}}"
        else:
            # A scalar probe needs no stand-in: a null T matches nothing (and the coalesce
            # costs the join ~5% of its CPU).
            probe = f"e.{ts}"
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
            value = f"CASE WHEN {fresh} THEN TRY_CAST({column} AS {sql_type}) END"
        else:
            # TRY_: a vector of another length than a fixed-length dtype's (files written
            # before the length changed) is null; every other value already has the type.
            value = f"TRY_CAST({view_alias}.{quote(feature.feature)} AS {sql_type})"
        selects.append(f"{value} AS {quote(feature.column)}")
    return (
        "WITH " + ",\n".join(ctes) + "\n"
        "SELECT " + ",\n  ".join(selects) + "\n" + "\n".join(from_clause) + "\n"
        f"ORDER BY e.{ROW_COLUMN}"
    )
