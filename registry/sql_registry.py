"""The versioned SQL registry: what has been applied, at every version.

``apply`` writes a whole plan in one transaction and moves the project's head version from N to
N+1 with ``UPDATE ... WHERE version = N``. Two concurrent applies therefore cannot both succeed
from the same N: the loser's UPDATE matches no row (PostgreSQL re-checks the WHERE after the
winner commits) and it raises ConflictError, which is safe to retry after re-planning.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.db import create_engine, ensure_schema
from registry.definitions import Definitions
from registry.errors import BreakingChangeError, ConflictError, NotFoundError
from registry.evolution import retired_views
from registry.plan import Plan, diff


@dataclass(frozen=True)
class VersionInfo:
    version: int
    content_hash: str
    git_commit: str | None
    applied_at: datetime
    applied_by: str
    message: str
    summary: str


def _utc(value: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes; the registry only ever stores UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class SqlRegistry:
    """Read and write one project's definitions in a SQL database.

    >>> reg = SqlRegistry("sqlite:///:memory:", "demo")  # doctest: +SKIP
    >>> reg.head_version()  # doctest: +SKIP
    0
    """

    def __init__(self, url: str | Engine, project: str) -> None:
        self.engine = url if isinstance(url, Engine) else create_engine(url)
        self.project = project
        ensure_schema(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    # -- versions -----------------------------------------------------------------------------
    def head_version(self) -> int:
        with self.engine.connect() as conn:
            return self._head(conn)

    def _head(self, conn: sa.Connection) -> int:
        row = conn.execute(
            sa.select(t.registry_head.c.version).where(t.registry_head.c.project == self.project)
        ).first()
        return int(row[0]) if row else 0

    def versions(self) -> list[VersionInfo]:
        v = t.registry_versions
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(v).where(v.c.project == self.project).order_by(v.c.version)
            ).mappings()
            return [
                VersionInfo(
                    version=r["version"],
                    content_hash=r["content_hash"],
                    git_commit=r["git_commit"],
                    applied_at=_utc(r["applied_at"]),  # type: ignore[arg-type]
                    applied_by=r["applied_by"],
                    message=r["message"],
                    summary=r["summary"],
                )
                for r in rows
            ]

    # -- reading definitions ------------------------------------------------------------------
    def definitions(self, version: int | None = None) -> Definitions:
        """Everything applied at ``version`` (default: the latest)."""
        o = t.registry_objects
        with self.engine.connect() as conn:
            head = self._head(conn)
            if version is None:
                version = head
            if version < 0 or version > head:
                raise NotFoundError(
                    f"project {self.project!r} has no registry version {version} "
                    f"(latest is {head})",
                    hint="list versions with `featurestore registry versions`",
                )
            rows = conn.execute(
                sa.select(o.c.kind, o.c.name, o.c.spec).where(
                    o.c.project == self.project,
                    o.c.from_version <= version,
                    sa.or_(o.c.to_version.is_(None), o.c.to_version > version),
                )
            ).all()
        return Definitions.from_rows([(r[0], r[1], r[2]) for r in rows])

    # -- writing ------------------------------------------------------------------------------
    def plan(self, new: Definitions) -> Plan:
        with self.engine.connect() as conn:
            head = self._head(conn)
        return diff(self.definitions(head), new, head, retired=retired_views(self.engine, self.project))

    def apply(
        self,
        new: Definitions,
        *,
        allow_breaking: bool = False,
        expected_version: int | None = None,
        applied_by: str = "unknown",
        git_commit: str | None = None,
        message: str = "",
    ) -> tuple[Plan, VersionInfo | None]:
        """Apply ``new`` as the next version; returns the plan and the version written (None when
        nothing changed). Raises BreakingChangeError unless ``allow_breaking``, ConflictError when
        another apply got there first (or the head moved past ``expected_version``)."""
        plan = self.plan(new)
        if expected_version is not None and plan.base_version != expected_version:
            raise ConflictError(
                f"the registry moved to version {plan.base_version} since the plan against "
                f"version {expected_version}",
                hint="run `featurestore plan` again and re-check the changes",
            )
        if plan.empty:
            return plan, None
        if plan.breaking and not allow_breaking:
            names = ", ".join(f"{c.kind} {c.name}" for c in plan.breaking)
            raise BreakingChangeError(
                f"refusing {len(plan.breaking)} breaking change(s): {names}",
                hint="review `featurestore plan`, then re-run apply with --allow-breaking",
            )
        info = self._write(plan, new, applied_by, git_commit, message)
        return plan, info

    def _write(
        self, plan: Plan, new: Definitions, applied_by: str, git_commit: str | None, message: str
    ) -> VersionInfo:
        base, target = plan.base_version, plan.base_version + 1
        canonical = new.canonical()
        now = datetime.now(timezone.utc)
        o = t.registry_objects
        try:
            with self.engine.begin() as conn:
                if base == 0:
                    conn.execute(
                        sa.insert(t.registry_head).values(project=self.project, version=target)
                    )
                else:
                    moved = conn.execute(
                        sa.update(t.registry_head)
                        .where(
                            t.registry_head.c.project == self.project,
                            t.registry_head.c.version == base,
                        )
                        .values(version=target)
                    ).rowcount
                    if moved != 1:
                        raise _Lost()
                for change in plan.changes:
                    if change.action in ("changed", "removed"):
                        conn.execute(
                            sa.update(o)
                            .where(
                                o.c.project == self.project,
                                o.c.kind == change.kind,
                                o.c.name == change.name,
                                o.c.to_version.is_(None),
                            )
                            .values(to_version=target)
                        )
                    if change.action in ("added", "changed"):
                        spec = canonical[(change.kind, change.name)]
                        conn.execute(
                            sa.insert(o).values(
                                project=self.project,
                                kind=change.kind,
                                name=change.name,
                                from_version=target,
                                to_version=None,
                                spec=spec,
                                spec_hash=_sha(spec),
                            )
                        )
                conn.execute(
                    sa.insert(t.registry_versions).values(
                        project=self.project,
                        version=target,
                        content_hash=new.content_hash(),
                        git_commit=git_commit,
                        applied_at=now,
                        applied_by=applied_by,
                        message=message,
                        summary=plan.summary(),
                    )
                )
        except (_Lost, sa.exc.IntegrityError):
            raise ConflictError(
                f"another apply changed project {self.project!r} at the same time "
                f"(both started from version {base}); nothing was written",
                hint="run `featurestore plan` and `featurestore apply` again",
            ) from None
        return VersionInfo(target, new.content_hash(), git_commit, now, applied_by, message, plan.summary())


class _Lost(Exception):
    """Internal signal: the optimistic UPDATE matched no row."""


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
