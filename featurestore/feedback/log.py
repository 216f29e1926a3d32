"""The durable feedback log: every accepted observation, before it is acknowledged.

The log lives in the registry database (table ``fs_feedback``): the embedded SQLite file by
default, PostgreSQL in production, written there through psycopg directly (one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` per batch). It is
idempotent on ``feedback_id``: a retried request records nothing twice, and ``append`` says
which observations were new so only those update the online state. Online model state is
derived from this log (``featurestore models replay`` rebuilds it), so losing Redis loses nothing.

Every row is written ``pending``; the writer clears the flag once the update is in the online
state (``mark_applied``). A row still pending long after it was received was cut off by a
crash or an outage between the commit and the state update: ``pending_users`` finds such
users, and ``featurestore.feedback.catch_up`` rebuilds them from the log.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t
from registry.errors import StoreUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    feedback_id: str
    model: str
    model_version: int
    user_key: str
    item_key: str
    label: float
    features: np.ndarray  # the exact x the update used, float64
    event_ts: datetime
    prediction_id: str | None = None
    prediction: float | None = None
    baseline: float | None = None
    slice: str | None = None


@dataclass(frozen=True)
class LoggedObservation(Observation):
    seq: int = 0
    pending: bool = False
    received_at: datetime | None = None


def _logged(r: Mapping[str, Any]) -> LoggedObservation:
    return LoggedObservation(
        feedback_id=r["feedback_id"], model=r["model"], model_version=r["model_version"],
        user_key=r["user_key"], item_key=r["item_key"], label=r["label"],
        features=np.frombuffer(r["features"], dtype="<f8"), event_ts=_utc(r["event_ts"]),
        prediction_id=r["prediction_id"], prediction=r["prediction"], baseline=r["baseline"],
        slice=r["slice"], seq=r["seq"], pending=bool(r["pending"]), received_at=_utc(r["received_at"]),
    )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class FeedbackLog:
    """Append-only, idempotent log of observations for one project.

    >>> log = FeedbackLog(store.registry.engine, store.project)  # doctest: +SKIP
    >>> log.append([obs])  # doctest: +SKIP
    [True]
    """

    def __init__(self, engine: Engine, project: str) -> None:
        self.engine = engine
        self.project = project
        self._marks = _MarkQueue(self._clear)

    def append(self, observations: Sequence[Observation]) -> list[bool]:
        """Record ``observations`` durably (committed when this returns); for each, True if it
        was new, False if its feedback_id was already logged. Duplicates within the call count
        once (the first)."""
        return [seq is not None for seq in self.append_seqs(observations)]

    def append_seqs(self, observations: Sequence[Observation]) -> list[int | None]:
        """``append``, giving each new observation's log sequence number (None: not new), which
        ``mark_applied`` takes."""
        if not observations:
            return []
        now = datetime.now(timezone.utc)
        try:
            if self.engine.dialect.name == "postgresql":
                new_ids = self._append_postgres(observations, now)
            else:
                new_ids = self._append_sqlite(observations, now)
        except sa.exc.OperationalError as exc:
            raise StoreUnavailableError(
                f"cannot write the feedback log to {self.engine.url.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).strip().splitlines()[0] if exc.orig else exc}",
                hint="check that the registry database is up; nothing was acknowledged",
            ) from None
        seen: set[str] = set()
        out: list[int | None] = []
        for obs in observations:
            fresh = obs.feedback_id in new_ids and obs.feedback_id not in seen
            seen.add(obs.feedback_id)
            out.append(new_ids[obs.feedback_id] if fresh else None)
        return out

    def _rows(self, observations: Sequence[Observation], now: datetime) -> list[dict]:
        rows, seen = [], set()
        for o in observations:
            if o.feedback_id in seen:
                continue
            seen.add(o.feedback_id)
            rows.append(
                {
                    "project": self.project, "feedback_id": o.feedback_id, "model": o.model,
                    "model_version": o.model_version, "user_key": o.user_key, "item_key": o.item_key,
                    "label": float(o.label), "prediction_id": o.prediction_id,
                    "features": np.ascontiguousarray(o.features, dtype="<f8").tobytes(),
                    "prediction": o.prediction, "baseline": o.baseline, "slice": o.slice,
                    "event_ts": _utc(o.event_ts), "received_at": now, "pending": True,
                }
            )
        return rows

    def _append_sqlite(self, observations: Sequence[Observation], now: datetime) -> dict[str, int]:
        rows = self._rows(observations, now)
        f = t.feedback
        with self.engine.connect() as conn:
            # Take the write lock before reading, so the duplicate check and the insert are one step.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                existing: set[str] = set()
                ids = [r["feedback_id"] for r in rows]
                for start in range(0, len(ids), 900):
                    existing.update(
                        conn.execute(
                            sa.select(f.c.feedback_id).where(
                                f.c.project == self.project, f.c.feedback_id.in_(ids[start : start + 900])
                            )
                        ).scalars()
                    )
                fresh = [r for r in rows if r["feedback_id"] not in existing]
                seqs: dict[str, int] = {}
                if fresh:
                    conn.execute(sa.insert(f), fresh)
                    new_ids = [r["feedback_id"] for r in fresh]
                    for start in range(0, len(new_ids), 900):
                        seqs.update(conn.execute(
                            sa.select(f.c.feedback_id, f.c.seq).where(
                                f.c.project == self.project, f.c.feedback_id.in_(new_ids[start : start + 900])
                            )
                        ).all())
                conn.exec_driver_sql("COMMIT")
            except BaseException:
                conn.exec_driver_sql("ROLLBACK")
                raise
        return seqs

    def _append_postgres(self, observations: Sequence[Observation], now: datetime) -> dict[str, int]:
        rows = self._rows(observations, now)
        cols = ["project", "feedback_id", "model", "model_version", "user_key", "item_key", "label",
                "prediction_id", "features", "prediction", "baseline", "slice", "event_ts", "received_at",
                "pending"]
        types = ["text", "text", "text", "int", "text", "text", "float8", "text", "bytea", "float8",
                 "float8", "text", "timestamptz", "timestamptz", "bool"]
        sql = (
            f"INSERT INTO fs_feedback ({', '.join(cols)}) "
            f"SELECT * FROM unnest({', '.join(f'%b::{ty}[]' for ty in types)}) "
            "ON CONFLICT (project, feedback_id) DO NOTHING RETURNING feedback_id, seq"
        )
        params = [[r[c] for r in rows] for c in cols]
        raw = self.engine.raw_connection()
        try:
            with raw.cursor() as cur:
                cur.execute(sql, params)
                inserted = {row[0]: int(row[1]) for row in cur.fetchall()}
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.close()
        return inserted

    def mark_applied(self, seqs: Sequence[int], *, wait: bool = True) -> None:
        """Clear the pending flag of the rows ``seqs`` once their update is in the online state.

        With ``wait=False`` (the request path) the seqs are queued and a background thread
        clears them in one statement every ``MARK_INTERVAL`` seconds: the request does not wait
        for it. A mark that is lost (a crash before the flush, a database hiccup) costs only a
        redundant, idempotent rebuild by the catch-up, so on PostgreSQL the mark's commit does
        not wait for the disk either (``synchronous_commit = off``)."""
        if not seqs:
            return
        if wait:
            self._clear(list(seqs))
        else:
            self._marks.add(seqs)

    def flush_marks(self) -> None:
        """Clear every queued mark now (at close, and in tests)."""
        self._marks.flush()

    def close(self) -> None:
        self._marks.close()

    def _clear(self, seqs: list[int]) -> None:
        f = t.feedback
        with self.engine.begin() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                conn.exec_driver_sql(
                    "UPDATE fs_feedback SET pending = false WHERE seq = ANY(%(seqs)s) AND pending", {"seqs": seqs}
                )
                return
            for start in range(0, len(seqs), 900):
                conn.execute(
                    sa.update(f).where(f.c.seq.in_(seqs[start : start + 900]), f.c.pending).values(pending=False)
                )

    def pending_users(self, older_than: datetime) -> list[tuple[str, int, str]]:
        """(model, version, user_key) of every user with a pending row received before
        ``older_than`` and none received since: those cut off by a crash, and not in flight
        now (a user with a recent pending row may have an update on its way; it waits)."""
        f = t.feedback
        query = (
            sa.select(f.c.model, f.c.model_version, f.c.user_key)
            .where(f.c.project == self.project, f.c.pending)
            .group_by(f.c.model, f.c.model_version, f.c.user_key)
            .having(sa.func.max(f.c.received_at) < _utc(older_than))
            .order_by(f.c.model, f.c.model_version, f.c.user_key)
        )
        with self.engine.connect() as conn:
            return [(m, int(v), u) for m, v, u in conn.execute(query).all()]

    def read_users(self, model: str, model_version: int, user_keys: Sequence[str]) -> list[LoggedObservation]:
        """Every logged observation of these users for one version, in log order, with the
        pending flag and receipt time (``LoggedObservation.pending``, ``.received_at``)."""
        f = t.feedback
        out: list[LoggedObservation] = []
        users = list(dict.fromkeys(user_keys))
        with self.engine.connect() as conn:
            for start in range(0, len(users), 900):
                rows = conn.execute(
                    sa.select(f).where(
                        f.c.project == self.project, f.c.model == model, f.c.model_version == model_version,
                        f.c.user_key.in_(users[start : start + 900]),
                    )
                ).mappings().all()
                out.extend(_logged(r) for r in rows)
        out.sort(key=lambda o: o.seq)
        return out

    def logged(self, feedback_ids: Sequence[str]) -> dict[str, tuple[str, str, str, float]]:
        """(model, user_key, item_key, label) of each logged id among ``feedback_ids``: what a
        retry must repeat to be a duplicate (one query per 1,000 ids)."""
        f = t.feedback
        ids = list(dict.fromkeys(feedback_ids))
        out: dict[str, tuple[str, str, str, float]] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 1_000):
                rows = conn.execute(
                    sa.select(f.c.feedback_id, f.c.model, f.c.user_key, f.c.item_key, f.c.label).where(
                        f.c.project == self.project, f.c.feedback_id.in_(ids[start : start + 1_000])
                    )
                ).all()
                for fid, model, user, item, label in rows:
                    out[fid] = (model, user, item, float(label))
        return out

    def read(
        self, model: str, model_version: int | None = None, after_seq: int = 0, batch: int = 10_000
    ) -> Iterator[list[LoggedObservation]]:
        """Observations of ``model`` in the order they were accepted, in batches."""
        f = t.feedback
        last = after_seq
        while True:
            query = sa.select(f).where(f.c.project == self.project, f.c.model == model, f.c.seq > last)
            if model_version is not None:
                query = query.where(f.c.model_version == model_version)
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(f.c.seq).limit(batch)).mappings().all()
            if not rows:
                return
            last = rows[-1]["seq"]
            yield [_logged(r) for r in rows]

    def count(self, model: str, model_version: int | None = None) -> int:
        f = t.feedback
        query = sa.select(sa.func.count()).select_from(f).where(f.c.project == self.project, f.c.model == model)
        if model_version is not None:
            query = query.where(f.c.model_version == model_version)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())


MARK_INTERVAL = 0.1


class _MarkQueue:
    """Seqs to mark applied, cleared by a daemon thread in one statement per interval (started
    on first use in each process, so a fork does not inherit a dead thread)."""

    def __init__(self, clear: Callable[[list[int]], None]) -> None:
        self._clear = clear
        self._lock = threading.Lock()
        self._seqs: list[int] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def add(self, seqs: Sequence[int]) -> None:
        with self._lock:
            self._seqs.extend(seqs)
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, name="feedback-marks", daemon=True)
                self._thread.start()

    def flush(self) -> None:
        with self._lock:
            seqs, self._seqs = self._seqs, []
        if seqs:
            try:
                self._clear(seqs)
            except Exception as exc:  # noqa: BLE001 - lost marks only cost an idempotent rebuild
                logger.warning("could not mark %d feedback row(s) applied: %s", len(seqs), exc)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            self._thread.join(timeout=5)
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(MARK_INTERVAL):
            self.flush()
