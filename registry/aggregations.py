"""Windowed aggregations of feature views: the rules a definition must follow and the specs the
batch and stream jobs compute from.

They live in the registry so that ``featurestore validate`` reports a broken aggregation with
its file and line, before any job runs; the jobs (``featurestore.streams.schema``) use the same
function on the applied definitions.

Aggregations (``aggregation: {function, column, window, slide}`` on a feature) follow these rules,
checked by ``validate`` and again when a job or a push uses the view:

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from registry.types import NUMERIC_DTYPES, parse_duration

AGGREGATE_OUTPUT_DTYPES: dict[str, tuple[str, ...]] = {
    "count": ("int32", "int64"),
    "sum": ("int64", "float32", "float64"),
    "mean": ("float32", "float64"),
    "min": ("int32", "int64", "float32", "float64", "timestamp"),
    "max": ("int32", "int64", "float32", "float64", "timestamp"),
    "last": ("bool", "int32", "int64", "float32", "float64", "string", "timestamp"),
}


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
class AggregationProblem:
    """A broken rule: about one feature (its index in the view's ``features``) or, with
    ``feature_index`` None, about the view's features together."""

    feature_index: int | None
    message: str


@dataclass(frozen=True)
class Aggregations:
    specs: tuple[AggregateSpec, ...]
    #: (column, dtype it is read as), for every column an aggregation reads
    columns: tuple[tuple[str, str], ...]
    problems: list[AggregationProblem] = field(default_factory=list)


def check_aggregations(view: Any, reserved: set[str]) -> Aggregations:
    """The aggregate specs of ``view`` (a FeatureViewSpec with at least one aggregation) and
    every rule it breaks. ``reserved``: the join keys and timestamp fields, which no aggregation
    may read."""
    issues: list[AggregationProblem] = []
    index = {f.name: i for i, f in enumerate(view.features)}
    plain = [f.name for f in view.features if f.aggregation is None]
    if plain:
        issues.append(
            AggregationProblem(
                None,
                "features "
                + ", ".join(plain)
                + " have no aggregation; a view's features are all aggregated or none are "
                "(put them in another view)",
            )
        )
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
                AggregationProblem(
                    index[f.name],
                    f"{agg.function} gives {', '.join(AGGREGATE_OUTPUT_DTYPES[agg.function])}, "
                    f"not {f.dtype}; change the feature's dtype",
                )
            )
        if window % slide:
            issues.append(
                AggregationProblem(
                    index[f.name],
                    f"the window ({agg.window}) is not a multiple of the slide ({agg.slide})",
                )
            )
        if agg.column is not None and agg.column in reserved:
            issues.append(
                AggregationProblem(
                    index[f.name],
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
            AggregationProblem(
                None,
                "the aggregations slide by different steps ("
                + ", ".join(f"{s.feature}: {s.slide_seconds}s" for s in specs)
                + "); give them one `slide` (a tumbling window slides by its length)",
            )
        )
    columns: dict[str, str] = {}
    for column, dtypes in fixed.items():
        if len(dtypes) > 1:
            issues.append(
                AggregationProblem(
                    None,
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
                AggregationProblem(
                    index[s.feature],
                    f"mean needs a numeric column; {s.column!r} is {columns[s.column]}",
                )
            )
    return Aggregations(tuple(specs), tuple(columns.items()), issues)
