"""The shape of a feature view as the jobs see it (``ViewSchema``), and which source column
types can hold which dtypes (``compatible``, ``check_source_schema``). Pure Arrow, no Beam.

A view with aggregations (featurestore/streams/schema.py) reads *event* columns from its source
and writes aggregated features: ``ViewSchema.event_schema()`` is the schema its source rows are
validated against, ``layout_schema()`` the one its offline rows have.

    >>> ViewSchema.of(definitions, "item_popularity").key_names  # doctest: +SKIP
    ('item_id',)
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pyarrow as pa

from featurestore.arrow_types import arrow_type
from featurestore.offline import layout
from featurestore.sources import ORDINAL
from featurestore.streams.schema import AggregateSpec, EventSchema
from registry.definitions import Definitions
from registry.errors import DataError
from registry.types import parse_dtype

EVENT_TS = layout.EVENT_TS
CREATED_TS = layout.CREATED_TS
TS_TYPE = layout.TS_TYPE


@dataclass(frozen=True)
class ViewSchema:
    """What a feature view reads and writes; small and picklable, shipped to every worker.

    ``features`` are the view's outputs. For a plain view they are also what the source holds;
    for an aggregated view the source holds ``event_columns`` and ``aggregates`` say how they
    become features.

    >>> ViewSchema.of(definitions, "item_popularity").key_names  # doctest: +SKIP
    ('item_id',)
    """

    view: str
    source: str
    join_keys: tuple[tuple[str, str], ...]
    features: tuple[tuple[str, str], ...]
    timestamp_field: str
    created_timestamp_field: str | None = None
    ttl_seconds: int = 0
    online: bool = True
    aggregates: tuple[AggregateSpec, ...] = ()
    event_columns: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, definitions: Definitions, view_name: str) -> ViewSchema:
        view = definitions.get("feature_view", view_name)
        source = definitions.get("source", view.source)
        events = EventSchema.of(definitions, view_name)
        return cls(
            view=view.name,
            source=source.name,
            join_keys=events.join_keys,
            features=tuple((f.name, f.dtype) for f in view.features),
            timestamp_field=source.timestamp_field,
            created_timestamp_field=source.created_timestamp_field,
            ttl_seconds=view.ttl_seconds,
            online=view.online,
            aggregates=events.aggregates,
            event_columns=events.columns if events.aggregated else (),
        )

    @property
    def aggregated(self) -> bool:
        return bool(self.aggregates)

    @property
    def slide_seconds(self) -> int:
        return self.aggregates[0].slide_seconds if self.aggregates else 0

    @property
    def max_window_seconds(self) -> int:
        return max((a.window_seconds for a in self.aggregates), default=0)

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.features)

    def event_schema(self) -> ViewSchema:
        """The schema source rows (events) are validated against: for an aggregated view, its
        event columns as "features"; for a plain view, itself."""
        if not self.aggregated:
            return self
        return replace(self, features=self.event_columns, aggregates=(), event_columns=())

    def expected_columns(self) -> list[tuple[str, str]]:
        """``(source column, dtype)`` of every column read from the source."""
        cols = [*self.join_keys, (self.timestamp_field, "timestamp")]
        if self.created_timestamp_field:
            cols.append((self.created_timestamp_field, "timestamp"))
        cols += self.event_columns if self.aggregated else self.features
        return list(dict(cols).items())

    @property
    def source_columns(self) -> list[str]:
        return [c for c, _ in self.expected_columns()]

    def layout_schema(self) -> pa.Schema:
        """The offline store's columns (docs/offline-store.md)."""
        return layout.layout_schema(
            [(n, arrow_type(d)) for n, d in self.join_keys],
            [(n, arrow_type(d)) for n, d in self.features],
        )

    def validated_schema(self) -> pa.Schema:
        """What ValidateAndCast emits: the layout plus the read order."""
        return self.layout_schema().append(pa.field(ORDINAL, pa.int64()))


# -- type compatibility ----------------------------------------------------------------------------


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def compatible(found: pa.DataType, dtype: str) -> bool:
    """Whether a source column of Arrow type ``found`` can hold values of ``dtype``.

    Text is accepted for every scalar but ``bytes``-only targets and parsed row by row (a value
    that does not parse is a rejected row, not a failed run); numbers convert between widths,
    with rows that overflow or lose digits rejected.

    >>> compatible(pa.string(), "float64"), compatible(pa.bool_(), "float64")
    (True, False)
    """
    if pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        found = found.value_type
    parsed = parse_dtype(dtype)
    if parsed.is_vector:
        if not (
            pa.types.is_list(found)
            or pa.types.is_large_list(found)
            or pa.types.is_fixed_size_list(found)
        ):
            return False
        value = found.value_type
        return pa.types.is_null(value) or _is_number(value)
    element = parsed.element
    if element in ("int32", "int64", "float32", "float64"):
        return _is_number(found) or _is_text(found)
    if element == "bool":
        return pa.types.is_boolean(found) or _is_text(found)
    if element == "string":
        return _is_text(found)
    if element == "bytes":
        return (
            pa.types.is_binary(found)
            or pa.types.is_large_binary(found)
            or pa.types.is_fixed_size_binary(found)
            or pa.types.is_binary_view(found)
            or _is_text(found)
        )
    if element == "timestamp":
        return pa.types.is_timestamp(found) or pa.types.is_date(found) or _is_text(found)
    return False


def check_source_schema(schema: ViewSchema, found: pa.Schema, origin: str) -> None:
    """Raise DataError naming every missing or incompatible column of ``found``.

    Called on every file/query before a pipeline starts, so a mismatch fails the run before
    anything is written; ValidateAndCast calls it again per batch for streams.
    """
    problems = []
    for column, dtype in schema.expected_columns():
        index = found.get_field_index(column)
        if index < 0:
            problems.append(f"column {column!r} is missing (expected {dtype})")
            continue
        found_type = found.field(index).type
        if not compatible(found_type, dtype):
            problems.append(
                f"column {column!r} has type {found_type}, expected {dtype} ({arrow_type(dtype)})"
            )
    if problems:
        raise DataError(
            f"source {schema.source!r} of feature view {schema.view!r} does not match its "
            f"definition in {origin}: " + "; ".join(problems),
            hint="fix the source, or the feature view's dtypes (see docs/materialization.md "
            "for the types each dtype accepts), then `featurestore apply`",
        )
