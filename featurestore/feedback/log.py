"""The durable feedback log: every accepted observation, before it is acknowledged.

The log lives in the registry database (table ``fs_feedback``): the embedded SQLite file by
default, PostgreSQL in production, written there through psycopg directly: a batch is one
binary ``COPY`` then its seqs read back with the commit (two round trips, as a plain COPY +
COMMIT); a single observation, or a batch holding an id already logged, one ``INSERT ... SELECT
FROM unnest(...) ON CONFLICT DO NOTHING RETURNING`` and the commit. It is idempotent on
``feedback_id``: a retried request records nothing twice, and ``append`` says which
observations were new so only those update the online state. Online model state is
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
import weakref
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


_F8 = np.dtype("<f8")
#: Batches of this many rows or more are COPYed; fewer take the INSERT (its unnest costs the
#: server more per row, the COPY a statement more per batch: bench/bench_feedback.py --issue19).
COPY_FROM_ROWS = 8
# The PostgreSQL write: the columns of fs_feedback (all but seq) and their types, in row order.
_PG_COLUMNS = ("project", "feedback_id", "model", "model_version", "user_key", "item_key", "label",
               "prediction_id", "features", "prediction", "baseline", "slice", "event_ts", "received_at",
               "pending")
_PG_TYPES = ("text", "text", "text", "int4", "text", "text", "float8", "text", "bytea", "float8",
             "float8", "text", "timestamptz", "timestamptz", "bool")
_PG_COPY = f"COPY fs_feedback ({', '.join(_PG_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
_PG_SEQS = "SELECT feedback_id, seq FROM fs_feedback WHERE project = %s AND feedback_id = ANY(%s)"
_PG_INSERT = (
    f"INSERT INTO fs_feedback ({', '.join(_PG_COLUMNS)}) "
    f"SELECT * FROM unnest({', '.join(f'%b::{ty}[]' for ty in _PG_TYPES)}) "
    "ON CONFLICT (project, feedback_id) DO NOTHING RETURNING feedback_id, seq"
)


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
        self._writers = _Writers(engine)

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
        """A batch is COPYed straight into the table, then its seqs are read back and the
        transaction committed in one pipelined round trip: two round trips, as a plain COPY +
        COMMIT. A feedback_id already logged (a retry) fails the COPY on the unique constraint:
        nothing of it is kept, and the batch goes through ``INSERT ... ON CONFLICT DO NOTHING
        RETURNING``, which records the new ids only. A single observation takes that INSERT
        at once. Seqs follow the order of ``observations`` either way (replay's order).

        The connection is one of the log's own (``_Writers``), reused without the pool's ping
        per checkout; a reused one found broken before the commit was sent (so nothing of the
        batch can be in the table) is dropped and the batch written again on a new one."""
        import psycopg

        rows = self._pg_rows(observations, now)
        for attempt in (0, 1):
            raw, reused = self._writers.get()
            committing = False
            try:
                copied = False
                if len(rows) >= COPY_FROM_ROWS:
                    try:
                        self._copy_postgres(raw, rows)
                        copied = True
                    except psycopg.errors.UniqueViolation:
                        raw.rollback()
                if copied:
                    committing = True
                    inserted = self._commit_copied(raw, rows)
                else:
                    inserted = self._insert_postgres(raw, rows)
                    committing = True
                    raw.commit()
            except psycopg.OperationalError as exc:
                self._writers.drop(raw)
                if reused and attempt == 0 and not committing:
                    logger.debug("feedback log connection was broken (%s); writing on a new one", exc)
                    continue
                raise sa.exc.OperationalError("writing fs_feedback", None, exc) from None
            except BaseException:
                self._writers.release(raw, rollback=True)
                raise
            self._writers.release(raw)
            return inserted
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _pg_rows(self, observations: Sequence[Observation], now: datetime) -> list[tuple]:
        """The rows in ``_PG_COLUMNS`` order, one per distinct feedback_id (its first)."""
        rows: list[tuple] = []
        seen: set[str] = set()
        project = self.project
        for o in observations:
            fid = o.feedback_id
            if fid in seen:
                continue
            seen.add(fid)
            x = o.features
            if not (isinstance(x, np.ndarray) and x.dtype == _F8 and x.flags.c_contiguous):
                x = np.ascontiguousarray(x, dtype=_F8)
            rows.append((
                project, fid, o.model, int(o.model_version), o.user_key, o.item_key, float(o.label), o.prediction_id,
                x.tobytes(), o.prediction, o.baseline, o.slice, _utc(o.event_ts), now, True,
            ))
        return rows

    def _copy_postgres(self, raw: Any, rows: list[tuple]) -> None:
        with raw.cursor() as cur:
            with cur.copy(_PG_COPY) as copy:
                copy.set_types(_PG_TYPES)
                write = copy.write_row
                for row in rows:
                    write(row)

    def _commit_copied(self, raw: Any, rows: list[tuple]) -> dict[str, int]:
        """The seqs the COPY drew (in row order: a column default is evaluated row by row), read
        in the transaction, and the commit, in one round trip."""
        with raw.cursor() as cur:
            with raw.pipeline():
                cur.execute(_PG_SEQS, (self.project, [row[1] for row in rows]))
                raw.commit()
            return {fid: int(seq) for fid, seq in cur.fetchall()}

    def _insert_postgres(self, raw: Any, rows: list[tuple]) -> dict[str, int]:
        params = [list(column) for column in zip(*rows)]
        with raw.cursor() as cur:
            cur.execute(_PG_INSERT, params)
            return {fid: int(seq) for fid, seq in cur.fetchall()}

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
        self._writers.close()

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


class _Writers:
    """The PostgreSQL connections ``append`` writes through, each taken from the engine's pool
    once (pinged then) and kept: the pool pings on every checkout, a round trip as long as the
    insert of one observation. At most ``KEEP`` idle ones are kept, closed by ``close`` or when
    the log is collected; a fork starts afresh (psycopg never closes a parent's socket in a
    child, so the parent's are only forgotten)."""

    KEEP = 8

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # changed in place only: the finalizer holds it
        self._owner = [os.getpid()]  # the process whose connections ``_idle`` holds
        weakref.finalize(self, _close_all, self._idle, self._lock, self._owner)

    def get(self) -> tuple[Any, bool]:
        """(a connection outside any transaction, whether it was used before)."""
        with self._lock:
            if self._owner[0] != os.getpid():
                self._idle.clear()
                self._owner[0] = os.getpid()
            if self._idle:
                return self._idle.pop(), True
        raw = self.engine.raw_connection()
        raw.detach()  # ours now: closing it closes the socket, the pool opens others
        return raw, False

    def release(self, raw: Any, *, rollback: bool = False) -> None:
        if rollback:
            try:
                raw.rollback()
            except Exception as exc:  # noqa: BLE001 - a connection that cannot roll back is not kept
                logger.debug("rollback of a feedback log connection failed: %s", exc)
                self.drop(raw)
                return
        with self._lock:
            if self._owner[0] == os.getpid() and len(self._idle) < self.KEEP:
                self._idle.append(raw)
                return
        self.drop(raw)

    @staticmethod
    def drop(raw: Any) -> None:
        try:
            raw.close()
        except Exception as exc:  # noqa: BLE001 - already broken; nothing else holds it
            logger.debug("closing a feedback log connection failed: %s", exc)

    def close(self) -> None:
        _close_all(self._idle, self._lock, self._owner)


def _close_all(idle: list[Any], lock: threading.Lock, owner: list[int]) -> None:
    with lock:
        conns = idle[:] if owner[0] == os.getpid() else []  # a child never closes its parent's
        idle.clear()
    for raw in conns:
        _Writers.drop(raw)


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
