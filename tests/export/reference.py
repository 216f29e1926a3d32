"""A slow, obviously correct point-in-time join, and builders the export tests share.

``reference_join`` is the specification of docs/point-in-time.md written as plainly as possible:
for every entity row and every view, look at every feature row. The DuckDB export must agree
with it on any input (tests/export/test_pit_property.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from featurestore.arrow_types import arrow_type
from featurestore.config import OfflineStoreConfig, RepoConfig
from featurestore.offline import layout
from registry.definitions import Definitions
from registry.spec import EntitySpec, FeatureServiceSpec, FeatureViewSpec, ParquetSource

PROJECT = "pit"
UTC = timezone.utc


@dataclass
class View:
    """A feature view and its offline rows (dicts of keys, event/created timestamps, features)."""

    name: str
    keys: list[tuple[str, str]]  # (join key, dtype); one entity per key, named after it
    features: list[tuple[str, str]]  # (feature, dtype)
    ttl_seconds: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)


# -- the reference ----------------------------------------------------------------------------
def as_utc(value: datetime | None) -> datetime | None:
    """Naive timestamps are UTC; aware ones are converted."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def pick(
    view: View, entity: dict[str, Any], at: datetime | None, exclude_created_after: bool
) -> dict[str, Any] | None:
    """The feature row a view gives an entity row at time ``at``, or None."""
    if at is None:
        return None
    best = None
    for row in view.rows:
        if any(entity[k] is None or row[k] is None or entity[k] != row[k] for k, _ in view.keys):
            continue
        t, c = row[layout.EVENT_TS], row[layout.CREATED_TS]
        if t > at:
            continue
        if view.ttl_seconds and t <= at - timedelta(seconds=view.ttl_seconds):
            continue
        if exclude_created_after and c > at:
            continue
        if best is None or (t, c) > (best[layout.EVENT_TS], best[layout.CREATED_TS]):
            best = row
    return best


def reference_join(
    entity_rows: list[dict[str, Any]],
    views: list[View],
    *,
    timestamp_column: str = layout.EVENT_TS,
    exclude_created_after: bool = False,
    full_names: bool = False,
) -> list[dict[str, Any]]:
    """Every entity row, in order, with its timestamp in UTC and every view's features added."""
    out = []
    for entity in entity_rows:
        at = as_utc(entity[timestamp_column])
        row = {**entity, timestamp_column: at}
        for view in views:
            found = pick(view, entity, at, exclude_created_after)
            for feature, _ in view.features:
                column = f"{view.name}__{feature}" if full_names else feature
                row[column] = None if found is None else found[feature]
        out.append(row)
    return out


# -- building a repository in memory ----------------------------------------------------------
def definitions_for(views: list[View], services: dict[str, list[str]] | None = None) -> Definitions:
    entities: dict[str, EntitySpec] = {}
    for view in views:
        for key, dtype in view.keys:
            entities[key] = EntitySpec(name=key, join_keys=[{"name": key, "dtype": dtype}])
    return Definitions(
        entities=entities,
        sources={
            "src": ParquetSource(name="src", type="parquet", path="x.parquet", timestamp_field="ts")
        },
        feature_views={
            v.name: FeatureViewSpec(
                name=v.name,
                entities=[k for k, _ in v.keys],
                source="src",
                ttl=v.ttl_seconds,
                features=[{"name": f, "dtype": d} for f, d in v.features],
            )
            for v in views
        },
        feature_services={
            name: FeatureServiceSpec(name=name, features=refs)
            for name, refs in (services or {}).items()
        },
    )


def config_for(offline_path: Path) -> RepoConfig:
    return RepoConfig(project=PROJECT, offline_store=OfflineStoreConfig(path=str(offline_path)))


def view_table(view: View) -> pa.Table:
    schema = layout.layout_schema(
        [(k, arrow_type(d)) for k, d in view.keys], [(f, arrow_type(d)) for f, d in view.features]
    )
    return pa.Table.from_pylist(view.rows, schema=schema)


def write_view(offline_path: Path, view: View) -> None:
    """Write a view's rows in the offline layout, one partition per UTC day."""
    if not view.rows:
        return
    times = [r[layout.EVENT_TS] for r in view.rows]
    start = min(times).replace(hour=0, minute=0, second=0, microsecond=0)
    end = max(times).replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    layout.replace_interval(offline_path, PROJECT, view.name, view_table(view), start, end)
