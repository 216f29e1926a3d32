"""Schema evolution: what a change of a feature view asks of the data already stored.

The registry keeps every applied version of a view (validity intervals), so its history is one
query. From it and the log of materialization runs this module answers three questions:

* which layouts the view's online values may have been written under (``value_layouts``: names
  and dtypes, newest first), so a reader can decode an old value (featurestore/online/layouts.py);
* whether a change needs a **backfill** (``backfill_reasons``): a feature added, a dtype or an
  aggregation changed, or the entities changed. Rows stored before it lack the new values or
  hold them under the old meaning, so the view's whole history must be computed again. A removed
  feature needs none: what is left still answers;
* whether that backfill is still **pending** (``pending_backfills``): runs wrote data under the
  earlier definition, and no run since the change has covered everything they wrote.

    >>> backfill_reasons(old_spec, new_spec)  # doctest: +SKIP
    ['feature bonus added (float64)']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.spec import FeatureViewSpec

#: ``(names, dtypes)`` of a view's features, in declaration order: what its online values hold.
ValueLayout = tuple[tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True)
class ViewVersion:
    """One validity interval of a view in the registry: ``spec`` from ``from_version`` up to
    (not including) ``to_version`` (None: still current)."""

    from_version: int
    to_version: int | None
    spec: FeatureViewSpec


@dataclass(frozen=True)
class PendingBackfill:
    """A view whose history must be materialized again: from ``start`` (the earliest data
    written under an earlier definition) because of the change applied at ``since_version``."""

    view: str
    since_version: int
    start: datetime
    reasons: tuple[str, ...]


def view_history(engine: Engine, project: str, view: str) -> list[ViewVersion]:
    """Every applied version of ``view``, newest first (one indexed query)."""
    o = t.registry_objects
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(o.c.from_version, o.c.to_version, o.c.spec)
            .where(o.c.project == project, o.c.kind == "feature_view", o.c.name == view)
            .order_by(o.c.from_version.desc())
        ).all()
    return [
        ViewVersion(int(r[0]), None if r[1] is None else int(r[1]), FeatureViewSpec.model_validate(json.loads(r[2])))
        for r in rows
    ]


def value_layout(spec: FeatureViewSpec) -> ValueLayout:
    return tuple(f.name for f in spec.features), tuple(f.dtype for f in spec.features)


def value_layouts(history: Iterable[ViewVersion]) -> list[ValueLayout]:
    """The distinct value layouts of a view's history, newest first."""
    out: list[ValueLayout] = []
    for version in history:
        layout = value_layout(version.spec)
        if layout not in out:
            out.append(layout)
    return out


def _stored(spec: FeatureViewSpec) -> dict[str, tuple[str, str | None]]:
    """name -> (dtype, aggregation as canonical JSON): what a stored value of a feature means."""
    return {
        f.name: (
            f.dtype,
            None if f.aggregation is None else json.dumps(f.aggregation.model_dump(mode="json"), sort_keys=True),
        )
        for f in spec.features
    }


def backfill_reasons(old: FeatureViewSpec, new: FeatureViewSpec) -> list[str]:
    """Why data stored under ``old`` does not answer ``new`` (empty: no backfill needed).

    >>> view = {"name": "v", "entities": ["u"], "source": "s"}
    >>> v1 = FeatureViewSpec.model_validate({**view, "features": [{"name": "a", "dtype": "int64"}]})
    >>> v2 = FeatureViewSpec.model_validate({**view, "features": [{"name": "a", "dtype": "int32"},
    ...                                                         {"name": "b", "dtype": "float64"}]})
    >>> backfill_reasons(v1, v2)
    ['feature a dtype int64 -> int32', 'feature b added (float64)']
    """
    reasons: list[str] = []
    if list(old.entities) != list(new.entities):
        reasons.append(f"entities {list(old.entities)} -> {list(new.entities)}")
    before, after = _stored(old), _stored(new)
    for name, (dtype, aggregation) in after.items():
        if name not in before:
            reasons.append(f"feature {name} added ({dtype})")
        elif before[name][0] != dtype:
            reasons.append(f"feature {name} dtype {before[name][0]} -> {dtype}")
        elif before[name][1] != aggregation:
            reasons.append(f"feature {name} aggregation changed")
    return reasons


def last_backfill_change(history: Sequence[ViewVersion]) -> tuple[int, list[str]] | None:
    """The newest applied version whose change needs a backfill, and why; None if none did."""
    for newer, older in zip(history, history[1:]):
        if older.to_version != newer.from_version:
            continue  # the view was removed in between: it came back as a new view
        reasons = backfill_reasons(older.spec, newer.spec)
        if reasons:
            return newer.from_version, reasons
    return None


def pending_backfills(engine: Engine, project: str, views: Iterable[str]) -> dict[str, PendingBackfill]:
    """The views of ``views`` whose backfill has not run yet.

    A backfill is pending when runs recorded under a registry version before the change wrote
    data, and no run recorded since the change started at or before the earliest of them (a
    crashed run is not recorded, so it does not count).
    """
    m = t.materializations
    out: dict[str, PendingBackfill] = {}
    for view in views:
        change = last_backfill_change(view_history(engine, project, view))
        if change is None:
            continue
        since, reasons = change
        mine = sa.and_(m.c.project == project, m.c.feature_view == view)
        with engine.connect() as conn:
            earliest = conn.execute(
                sa.select(sa.func.min(m.c.start_ts)).where(mine, m.c.registry_version < since)
            ).scalar()
            if earliest is None:
                continue  # nothing was written under the earlier definition
            covered = conn.execute(
                sa.select(sa.func.count())
                .select_from(m)
                .where(mine, m.c.registry_version >= since, m.c.start_ts <= earliest)
            ).scalar()
        if not covered:
            out[view] = PendingBackfill(view, since, _utc(earliest), tuple(reasons))
    return out


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
