"""Materialization bookkeeping: per-view watermarks and the log of finished runs.

The watermark of a view is the event time up to which (exclusive) both the offline and the online
store hold its data. A job moves it only after both stores are written, in the same transaction
that records the run, so a crash leaves the old watermark and a re-run redoes the interval.

A watermark belongs to the view's current life (``registry.evolution.current_life``): after the
view was removed and added again, the one its earlier life reached is not reported (an
incremental run then covers the whole range, as for a new view), and the first run of the new
life sets it to its own end instead of moving it forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.evolution import created_version, view_history


@dataclass(frozen=True)
class MaterializationRun:
    id: int
    feature_view: str
    start: datetime
    end: datetime
    rows_read: int
    rows_offline: int
    rows_online: int
    rows_rejected: int
    registry_version: int
    finished_at: datetime


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class MaterializationLog:
    def __init__(self, engine: Engine, project: str) -> None:
        self.engine = engine
        self.project = project

    def watermark(self, view: str) -> datetime | None:
        """Where the view's data ends in both stores; None before the first run of its life."""
        w = t.watermarks
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(w.c.watermark).where(w.c.project == self.project, w.c.feature_view == view)
            ).first()
            if row is None or not self._earned(conn, view):
                return None
        return _utc(row[0])

    def _earned(self, conn: sa.Connection, view: str) -> bool:
        """Whether a run recorded in the view's current life exists (so its watermark is one
        of this life's). A view not in the registry (any more) keeps what it has."""
        created = created_version(view_history(conn, self.project, view))
        if created is None:
            return True
        m = t.materializations
        return conn.execute(
            sa.select(m.c.id).where(
                m.c.project == self.project,
                m.c.feature_view == view,
                m.c.registry_version >= created,
            ).limit(1)
        ).first() is not None

    def record(
        self,
        view: str,
        start: datetime,
        end: datetime,
        *,
        rows_read: int,
        rows_offline: int,
        rows_online: int,
        rows_rejected: int,
        registry_version: int,
        advance_watermark: bool = True,
    ) -> MaterializationRun:
        """Record a finished run and (by default) move the view's watermark to ``end`` if later."""
        now = datetime.now(timezone.utc)
        m, w = t.materializations, t.watermarks
        with self.engine.begin() as conn:
            # Before the insert: is this the first run of the view's current life?
            first_of_life = advance_watermark and not self._earned(conn, view)
            run_id = conn.execute(
                sa.insert(m)
                .values(
                    project=self.project,
                    feature_view=view,
                    start_ts=_utc(start),
                    end_ts=_utc(end),
                    rows_read=rows_read,
                    rows_offline=rows_offline,
                    rows_online=rows_online,
                    rows_rejected=rows_rejected,
                    registry_version=registry_version,
                    finished_at=now,
                )
                .returning(m.c.id)
            ).scalar_one()
            if advance_watermark:
                current = conn.execute(
                    sa.select(w.c.watermark).where(
                        w.c.project == self.project, w.c.feature_view == view
                    )
                ).first()
                if current is None:
                    conn.execute(
                        sa.insert(w).values(
                            project=self.project, feature_view=view, watermark=_utc(end), updated_at=now
                        )
                    )
                elif first_of_life or _utc(current[0]) < _utc(end):
                    conn.execute(
                        sa.update(w)
                        .where(w.c.project == self.project, w.c.feature_view == view)
                        .values(watermark=_utc(end), updated_at=now)
                    )
        return MaterializationRun(
            run_id, view, _utc(start), _utc(end), rows_read, rows_offline, rows_online,
            rows_rejected, registry_version, now,
        )

    def latest_run_ids(self) -> dict[str, int]:
        """The id of each view's newest run: cheap to poll, so caches can tell when to refresh."""
        m = t.materializations
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.c.feature_view, sa.func.max(m.c.id))
                .where(m.c.project == self.project)
                .group_by(m.c.feature_view)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def online_views(self) -> dict[str, datetime]:
        """Views with a run that wrote online rows, and when the newest such run finished:
        what an emptied online store lost, and how to tell it was re-materialized since."""
        m = t.materializations
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(m.c.feature_view, sa.func.max(m.c.finished_at))
                .where(m.c.project == self.project, m.c.rows_online > 0)
                .group_by(m.c.feature_view)
            ).all()
        return {r[0]: _utc(r[1]) for r in rows}

    def views_to_rematerialize(self, lost_at: datetime) -> list[str]:
        """Views that wrote online rows before ``lost_at`` (when the online store was found
        emptied) and have not been re-materialized over their whole range since: no run that
        finished after ``lost_at`` starts at or before the earliest start of their runs before
        it. An ``--incremental`` run refills only its own interval, so it does not count."""
        m = t.materializations
        before = (
            sa.select(m.c.feature_view, sa.func.min(m.c.start_ts).label("first"))
            .where(m.c.project == self.project, m.c.rows_online > 0, m.c.finished_at < lost_at)
            .group_by(m.c.feature_view)
        ).subquery()
        with self.engine.connect() as conn:
            views = conn.execute(sa.select(before.c.feature_view, before.c.first)).all()
            refilled = {
                r[0]
                for r in conn.execute(
                    sa.select(m.c.feature_view, m.c.start_ts).where(
                        m.c.project == self.project, m.c.rows_online > 0, m.c.finished_at >= lost_at
                    )
                ).all()
                if any(r[0] == v and _utc(r[1]) <= _utc(first) for v, first in views)
            }
        return sorted(v for v, _ in views if v not in refilled)

    def runs(self, view: str | None = None, limit: int = 100) -> list[MaterializationRun]:
        m = t.materializations
        query = sa.select(m).where(m.c.project == self.project)
        if view is not None:
            query = query.where(m.c.feature_view == view)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(m.c.id.desc()).limit(limit)).mappings().all()
        return [
            MaterializationRun(
                r["id"], r["feature_view"], _utc(r["start_ts"]), _utc(r["end_ts"]), r["rows_read"],
                r["rows_offline"], r["rows_online"], r["rows_rejected"], r["registry_version"],
                _utc(r["finished_at"]),
            )
            for r in rows
        ]
