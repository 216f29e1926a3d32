"""Model versions and which one is active. Activation is one row update, so switching (and
rolling back) is atomic; servers notice by polling ``active_versions()``, no restart needed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.errors import ConflictError, NotFoundError


@dataclass(frozen=True)
class ModelVersion:
    model: str
    version: int
    created_at: datetime
    registry_version: int
    data_start: datetime | None
    data_end: datetime | None
    metrics: dict[str, Any] = field(default_factory=dict)
    artifact: str = ""


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


class ModelVersions:
    def __init__(self, engine: Engine, project: str) -> None:
        self.engine = engine
        self.project = project

    def add(
        self,
        model: str,
        *,
        registry_version: int,
        data_start: datetime | None,
        data_end: datetime | None,
        metrics: dict[str, Any],
        artifact: str = "",
        activate: bool = True,
    ) -> ModelVersion:
        """Record the next version of ``model`` (and make it active unless told otherwise)."""
        mv = t.model_versions
        now = datetime.now(timezone.utc)
        try:
            with self.engine.begin() as conn:
                latest = conn.execute(
                    sa.select(sa.func.max(mv.c.version)).where(
                        mv.c.project == self.project, mv.c.model == model
                    )
                ).scalar()
                version = int(latest or 0) + 1
                conn.execute(
                    sa.insert(mv).values(
                        project=self.project, model=model, version=version, created_at=now,
                        registry_version=registry_version, data_start=data_start,
                        data_end=data_end, metrics=json.dumps(metrics, sort_keys=True),
                        artifact=artifact,
                    )
                )
                if activate:
                    self._activate(conn, model, version, now)
        except sa.exc.IntegrityError:
            raise ConflictError(
                f"another training run recorded a version of model {model!r} at the same time",
                hint="re-run the training",
            ) from None
        return ModelVersion(model, version, now, registry_version, data_start, data_end, metrics, artifact)

    def list(self, model: str) -> list[ModelVersion]:
        mv = t.model_versions
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(mv)
                .where(mv.c.project == self.project, mv.c.model == model)
                .order_by(mv.c.version)
            ).mappings().all()
        return [
            ModelVersion(
                r["model"], r["version"], _utc(r["created_at"]), r["registry_version"],  # type: ignore[arg-type]
                _utc(r["data_start"]), _utc(r["data_end"]), json.loads(r["metrics"]), r["artifact"],
            )
            for r in rows
        ]

    def get(self, model: str, version: int) -> ModelVersion:
        for mv in self.list(model):
            if mv.version == version:
                return mv
        raise NotFoundError(
            f"model {model!r} has no version {version}",
            hint=f"list versions with `featurestore models list {model}`",
        )

    def active_versions(self) -> dict[str, int]:
        a = t.active_models
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(a.c.model, a.c.version).where(a.c.project == self.project)
            ).all()
        return {r[0]: int(r[1]) for r in rows}

    def activate(self, model: str, version: int) -> None:
        self.get(model, version)
        with self.engine.begin() as conn:
            self._activate(conn, model, version, datetime.now(timezone.utc))

    def _activate(self, conn: sa.Connection, model: str, version: int, now: datetime) -> None:
        a = t.active_models
        updated = conn.execute(
            sa.update(a)
            .where(a.c.project == self.project, a.c.model == model)
            .values(version=version, activated_at=now)
        ).rowcount
        if updated == 0:
            conn.execute(
                sa.insert(a).values(project=self.project, model=model, version=version, activated_at=now)
            )
