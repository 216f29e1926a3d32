"""Schema evolution: what a change of a feature view asks of the data already stored.

The registry keeps every applied version of a view (validity intervals), so its history is one
query. From it and the log of materialization runs this module answers three questions:

* which layouts the view's online values may have been written under (``value_layouts``: names,
  dtypes and what each feature means, newest first), so a reader can decode an old value
  (featurestore/online/layouts.py);
* whether a change needs a **backfill** (``backfill_reasons``): a feature added, a dtype or an
  aggregation changed, or the entities changed. Rows stored before it lack the new values or
  hold them under the old meaning, so the view's whole history must be computed again. A removed
  feature needs none: what is left still answers;
* whether that backfill is still **pending** (``pending_backfills``): runs wrote data under the
  earlier definition, and no run since the change has covered everything they wrote.

A view removed and later added again starts a new **life** (``current_life``): what runs wrote in
an earlier life answers another definition, so its re-creation needs a backfill of the whole
range (from the epoch), and its old watermark no longer counts (``registry.runs``). Changes made
in an earlier life do not matter to the current one.

    >>> backfill_reasons(old_spec, new_spec)  # doctest: +SKIP
    ['feature bonus added (float64)']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import pairwise

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.aggregations import AggregateSpec
from registry.spec import FeatureSpec, FeatureViewSpec
from registry.types import parse_duration

#: ``(names, dtypes, meanings)`` of a view's features, in declaration order: what its online
#: values hold (``feature_meaning``: None for a plain feature).
ValueLayout = tuple[tuple[str, ...], tuple[str, ...], tuple[str | None, ...]]

#: Where a whole-range run starts (``featurestore.sources.EPOCH``; the registry imports nothing
#: of the store).
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def view_history(bind: Engine | sa.Connection, project: str, view: str) -> list[ViewVersion]:
    """Every applied version of ``view``, newest first (one indexed query; on ``bind``'s own
    connection when it is one, so a caller inside a transaction sees what it sees)."""
    o = t.registry_objects
    query = (
        sa.select(o.c.from_version, o.c.to_version, o.c.spec)
        .where(o.c.project == project, o.c.kind == "feature_view", o.c.name == view)
        .order_by(o.c.from_version.desc())
    )
    if isinstance(bind, sa.Connection):
        rows = bind.execute(query).all()
    else:
        with bind.connect() as conn:
            rows = conn.execute(query).all()
    return [
        ViewVersion(int(r[0]), None if r[1] is None else int(r[1]), FeatureViewSpec.model_validate(json.loads(r[2])))
        for r in rows
    ]


def current_life(history: Sequence[ViewVersion]) -> list[ViewVersion]:
    """The versions since the view was last (re)created, newest first; empty when it is not
    current (removed). An interval that does not end where the next one starts is a removal."""
    if not history or history[0].to_version is not None:
        return []
    life = [history[0]]
    for older in history[1:]:
        if older.to_version != life[-1].from_version:
            break
        life.append(older)
    return life


def created_version(history: Sequence[ViewVersion]) -> int | None:
    """The registry version at which the view's current life began (None: not current)."""
    life = current_life(history)
    return life[-1].from_version if life else None


def aggregate_meaning(function: str, column: str | None, window_seconds: int, slide_seconds: int) -> str:
    """What a value of an aggregated feature is, independent of spelling ("7d" or "1w", a
    tumbling window with or without ``slide``): it goes into the value layout id.

    >>> aggregate_meaning("count", None, 3600, 3600)
    'count(*) window=3600s slide=3600s'
    """
    return f"{function}({column or '*'}) window={window_seconds}s slide={slide_seconds}s"


def feature_meaning(feature: FeatureSpec | AggregateSpec) -> str | None:
    """The meaning of one feature's values beyond name and dtype: its aggregation (function,
    column, window, slide), or None for a plain feature (which means its source column)."""
    if isinstance(feature, AggregateSpec):
        return aggregate_meaning(feature.function, feature.column, feature.window_seconds, feature.slide_seconds)
    agg = feature.aggregation
    if agg is None:
        return None
    window = parse_duration(agg.window)
    return aggregate_meaning(agg.function, agg.column, window, parse_duration(agg.slide) if agg.slide else window)


def value_layout(spec: FeatureViewSpec) -> ValueLayout:
    return (
        tuple(f.name for f in spec.features),
        tuple(f.dtype for f in spec.features),
        tuple(feature_meaning(f) for f in spec.features),
    )


def value_layouts(history: Sequence[ViewVersion]) -> list[ValueLayout]:
    """The distinct value layouts of the view's current life, newest first. Those of an earlier
    life are left out: its values answer another definition, so none of their features is read
    as valid (a value of such a layout is all stale)."""
    out: list[ValueLayout] = []
    for version in current_life(history):
        layout = value_layout(version.spec)
        if layout not in out:
            out.append(layout)
    return out


def _stored(spec: FeatureViewSpec) -> dict[str, tuple[str, str | None]]:
    """name -> (dtype, meaning): what a stored value of a feature is."""
    return {f.name: (f.dtype, feature_meaning(f)) for f in spec.features}


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
            reasons.append(
                f"feature {name} aggregation {before[name][1] or 'none'} -> {aggregation or 'none'}"
            )
    return reasons


def last_backfill_change(history: Sequence[ViewVersion]) -> tuple[int, list[str]] | None:
    """The newest version of the view's current life whose change needs a backfill, and why;
    None if none did. (A re-creation is not a change: see ``pending_backfills``.)"""
    life = current_life(history)
    for newer, older in pairwise(life):
        reasons = backfill_reasons(older.spec, newer.spec)
        if reasons:
            return newer.from_version, reasons
    return None


def retired_views(engine: Engine, project: str) -> dict[str, int]:
    """Feature views the registry once held and holds no more, with the version that removed
    them (the last one, if removed several times): a view added again under one of these names
    needs a whole-range backfill (``registry.plan.diff``'s ``retired``)."""
    o = t.registry_objects
    current = sa.func.sum(sa.case((o.c.to_version.is_(None), 1), else_=0))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(o.c.name, sa.func.max(o.c.to_version))
            .where(o.c.project == project, o.c.kind == "feature_view")
            .group_by(o.c.name)
            .having(current == 0)
        ).all()
    return {r[0]: int(r[1]) for r in rows}


def pending_backfills(engine: Engine, project: str, views: Iterable[str]) -> dict[str, PendingBackfill]:
    """The views of ``views`` whose backfill has not run yet (a crashed run is not recorded, so
    it does not count):

    * **re-created**: runs recorded before the view's current life began (version C) wrote data,
      and no run recorded at C or later started at the epoch. The backfill is the whole range;
    * **changed** (at version N, within the current life): runs recorded from C up to N wrote
      data, and no run recorded at N or later started at or before the earliest of them.
    """
    m = t.materializations
    out: dict[str, PendingBackfill] = {}
    for view in views:
        history = view_history(engine, project, view)
        life = current_life(history)
        if not life:
            continue
        created = life[-1].from_version
        change = last_backfill_change(history)
        mine = sa.and_(m.c.project == project, m.c.feature_view == view)
        with engine.connect() as conn:
            if len(life) < len(history):  # an earlier life
                before = conn.execute(
                    sa.select(sa.func.count()).select_from(m).where(mine, m.c.registry_version < created)
                ).scalar()
                redone = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(m)
                    .where(mine, m.c.registry_version >= created, m.c.start_ts <= EPOCH)
                ).scalar()
                if before and not redone:
                    removed = history[len(life)].to_version
                    reasons = [f"re-created at version {created} (removed at version {removed})"]
                    out[view] = PendingBackfill(view, created, EPOCH, tuple(reasons + (change[1] if change else [])))
                    continue
            if change is None:
                continue
            since, reasons = change
            earliest = conn.execute(
                sa.select(sa.func.min(m.c.start_ts)).where(
                    mine, m.c.registry_version >= created, m.c.registry_version < since
                )
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
