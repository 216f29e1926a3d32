"""What a feature view's events look like: the columns of a stream entry (and, for a view with
aggregations, of a batch source row), with the dtype each is read as.

    plain view       join keys, the source's timestamp field, its created field (if any), and
                     every feature under its own name and dtype: one event is one row
    aggregated view  join keys, timestamp, created (if any), and every column an aggregation
                     reads, with the dtype below: events are counted, summed... into windows

The column names are the view's batch source's, so the same events can feed the batch job (from
the source) and the stream job (from the stream) and give the same values.

Aggregations (``aggregation: {function, column, window, slide}`` on a feature) follow these rules,
checked when a job or a push uses the view (``EventSchema.of`` raises DefinitionError):

* a view's features are all aggregated or none are;
* they share one slide (``slide``, or the window for tumbling windows), and every window is a
  multiple of it: windows end on multiples of the slide since the epoch;
* the output dtype and the column's dtype follow the function:

  ========  ==============================  =====================================
  function  feature dtype                   column read as
  ========  ==============================  =====================================
  count     int32, int64                    (rows; with a column: non-null values)
  sum       int64, float32, float64         int64 for int64, else float64
  mean      float32, float64                float64 (or what other features use)
  min, max  int32, int64, float32, float64, the feature's dtype
            timestamp
  last      bool, int32, int64, float32,    the feature's dtype
            float64, string, timestamp
  ========  ==============================  =====================================

  Columns read by several features must agree on the dtype (mean and count adopt it).

    >>> EventSchema.of(definitions, "user_clicks").column_names  # doctest: +SKIP
    ('user_id', 'ts', 'clicks')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.errors import DefinitionError, DefinitionIssue
from registry.types import NUMERIC_DTYPES, parse_duration

AGGREGATE_OUTPUT_DTYPES: dict[str, tuple[str, ...]] = {
    "count": ("int32", "int64"),
    "sum": ("int64", "float32", "float64"),
    "mean": ("float32", "float64"),
    "min": ("int32", "int64", "float32", "float64", "timestamp"),
    "max": ("int32", "int64", "float32", "float64", "timestamp"),
    "last": ("bool", "int32", "int64", "float32", "float64", "string", "timestamp"),
}
_WHERE = "(applied definitions)"


@dataclass(frozen=True)
class AggregateSpec:
    """One aggregated feature, in seconds and with its input dtype resolved."""

    feature: str
    dtype: str
    function: str
    column: str | None
    window_seconds: int
    slide_seconds: int

    @property
    def panes(self) -> int:
        """Slides per window (1 for tumbling windows)."""
        return self.window_seconds // self.slide_seconds


@dataclass(frozen=True)
class EventSchema:
    """The columns of one view's events; small and picklable."""

    view: str
    join_keys: tuple[tuple[str, str], ...]
    timestamp_field: str
    created_timestamp_field: str | None
    columns: tuple[tuple[str, str], ...]
    aggregates: tuple[AggregateSpec, ...] = ()

    @classmethod
    def of(cls, definitions: Any, view_name: str) -> EventSchema:
        """The event schema of an applied view; NotFoundError for an unknown view."""
        view = definitions.get("feature_view", view_name)
        source = definitions.get("source", view.source)
        keys = tuple(
            (k.name, k.dtype) for e in view.entities for k in definitions.entities[e].join_keys
        )
        aggregated = [f for f in view.features if f.aggregation is not None]
        if not aggregated:
            columns = tuple((f.name, f.dtype) for f in view.features)
            return cls(
                view.name, keys, source.timestamp_field, source.created_timestamp_field, columns
            )
        specs, columns = _aggregates(view, keys, source)
        return cls(
            view.name,
            keys,
            source.timestamp_field,
            source.created_timestamp_field,
            columns,
            specs,
        )

    @property
    def aggregated(self) -> bool:
        return bool(self.aggregates)

    @property
    def slide_seconds(self) -> int:
        return self.aggregates[0].slide_seconds if self.aggregates else 0

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.join_keys)

    def all_columns(self) -> list[tuple[str, str]]:
        """``(column, dtype)`` of everything an event carries, keys first."""
        cols = [*self.join_keys, (self.timestamp_field, "timestamp")]
        if self.created_timestamp_field:
            cols.append((self.created_timestamp_field, "timestamp"))
        cols += self.columns
        return list(dict(cols).items())

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.all_columns())

    @property
    def required(self) -> frozenset[str]:
        """Columns an event must have a value for (validation rejects the row otherwise)."""
        names = {*self.key_names, self.timestamp_field}
        if self.created_timestamp_field:
            names.add(self.created_timestamp_field)
        return frozenset(names)


def _issue(view: str, feature: str, message: str) -> DefinitionIssue:
    return DefinitionIssue(
        _WHERE, None, f"feature_views.{view}.features.{feature}.aggregation", message
    )


def _aggregates(
    view: Any, keys: tuple[tuple[str, str], ...], source: Any
) -> tuple[tuple[AggregateSpec, ...], tuple[tuple[str, str], ...]]:
    issues: list[DefinitionIssue] = []
    plain = [f.name for f in view.features if f.aggregation is None]
    if plain:
        issues.append(
            DefinitionIssue(
                _WHERE,
                None,
                f"feature_views.{view.name}.features",
                "features "
                + ", ".join(plain)
                + " have no aggregation; a view's features are all aggregated or none are "
                "(put them in another view)",
            )
        )
    reserved = {k for k, _ in keys} | {source.timestamp_field, source.created_timestamp_field}
    specs: list[AggregateSpec] = []
    fixed: dict[str, dict[str, str]] = {}  # column -> {dtype: feature}
    for f in view.features:
        agg = f.aggregation
        if agg is None:
            continue
        window = parse_duration(agg.window)
        slide = parse_duration(agg.slide) if agg.slide else window
        if f.dtype not in AGGREGATE_OUTPUT_DTYPES[agg.function]:
            issues.append(
                _issue(
                    view.name,
                    f.name,
                    f"{agg.function} gives {', '.join(AGGREGATE_OUTPUT_DTYPES[agg.function])}, "
                    f"not {f.dtype}; change the feature's dtype",
                )
            )
        if window % slide:
            issues.append(
                _issue(
                    view.name,
                    f.name,
                    f"the window ({agg.window}) is not a multiple of the slide ({agg.slide})",
                )
            )
        if agg.column is not None and agg.column in reserved:
            issues.append(
                _issue(
                    view.name,
                    f.name,
                    f"column {agg.column!r} is a join key or timestamp; aggregate another column",
                )
            )
        if agg.column and agg.function in ("sum", "min", "max", "last"):
            wanted = (
                ("int64" if f.dtype == "int64" else "float64") if agg.function == "sum" else f.dtype
            )
            fixed.setdefault(agg.column, {}).setdefault(wanted, f.name)
        specs.append(AggregateSpec(f.name, f.dtype, agg.function, agg.column, window, slide))
    slides = sorted({s.slide_seconds for s in specs})
    if len(slides) > 1:
        issues.append(
            DefinitionIssue(
                _WHERE,
                None,
                f"feature_views.{view.name}.features",
                "the aggregations slide by different steps ("
                + ", ".join(f"{s.feature}: {s.slide_seconds}s" for s in specs)
                + "); give them one `slide` (a tumbling window slides by its length)",
            )
        )
    columns: dict[str, str] = {}
    for column, dtypes in fixed.items():
        if len(dtypes) > 1:
            issues.append(
                DefinitionIssue(
                    _WHERE,
                    None,
                    f"feature_views.{view.name}.features",
                    f"column {column!r} is read as "
                    + " and as ".join(f"{d} (by {feat})" for d, feat in dtypes.items())
                    + "; make those features' dtypes agree",
                )
            )
        columns[column] = next(iter(dtypes))
    for s in specs:
        if s.column and s.column not in columns:
            columns[s.column] = "float64"  # mean, or count of a column nothing else reads
        if s.function == "mean" and s.column and columns[s.column] not in NUMERIC_DTYPES:
            issues.append(
                _issue(
                    view.name,
                    s.feature,
                    f"mean needs a numeric column; {s.column!r} is {columns[s.column]}",
                )
            )
    if issues:
        raise DefinitionError(issues)
    return tuple(specs), tuple(columns.items())
