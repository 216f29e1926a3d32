"""What a feature view's events look like: the columns of a stream entry (and, for a view with
aggregations, of a batch source row), with the dtype each is read as.

    plain view       join keys, the source's timestamp field, its created field (if any), and
                     every feature under its own name and dtype: one event is one row
    aggregated view  join keys, timestamp, created (if any), and every column an aggregation
                     reads, with the dtype below: events are counted, summed... into windows

The column names are the view's batch source's, so the same events can feed the batch job (from
the source) and the stream job (from the stream) and give the same values.

Aggregations (``aggregation: {function, column, window, slide}`` on a feature) follow the rules
in ``registry/aggregations.py``; ``validate`` checks them and so does ``EventSchema.of``.

    >>> EventSchema.of(definitions, "user_clicks").column_names  # doctest: +SKIP
    ('user_id', 'ts', 'clicks')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from registry.aggregations import AggregateSpec, check_aggregations
from registry.errors import DefinitionError, DefinitionIssue

_WHERE = "(applied definitions)"


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


def _aggregates(
    view: Any, keys: tuple[tuple[str, str], ...], source: Any
) -> tuple[tuple[AggregateSpec, ...], tuple[tuple[str, str], ...]]:
    """``validate`` already refuses broken aggregations; definitions applied by an older
    release are checked again here, so a job never runs on them."""
    reserved = {k for k, _ in keys} | {source.timestamp_field, source.created_timestamp_field}
    result = check_aggregations(view, reserved)
    if result.problems:
        raise DefinitionError([
            DefinitionIssue(
                _WHERE,
                None,
                f"feature_views.{view.name}.features"
                + ("" if p.feature_index is None else f".{view.features[p.feature_index].name}.aggregation"),
                p.message,
            )
            for p in result.problems
        ])
    return result.specs, result.columns
