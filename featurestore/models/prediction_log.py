"""The prediction log: every prediction's id, user, items, model version and the exact feature
vectors it used, written off the request path.

``log`` only appends to an in-memory queue and a bounded dict of recent records; a background
thread drains the queue into ``fs_predictions`` (``registry.tables.predictions``) with one
executemany per batch, every ``flush_seconds`` or ``batch_rows`` records, and on ``close``. The
feedback path looks predictions up by id with ``get``: memory first (recent predictions, no
query), then the table.

When the database falls behind, the queue is bounded (``max_pending``): records beyond it are
counted in ``dropped`` rather than slowing predictions down or growing memory without limit.
A failed insert is retried on the next round; after ``max_attempts`` the batch is dropped and
counted, and the error logged.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import numpy as np

from registry import tables as t

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)
_F8 = np.dtype("<f8")


class PredictionRecord:
    """One prediction as served. ``features[i]`` is the x used for ``items[i]`` (NaN rows for
    items that could not be scored); keys are entity keys as text (``encode_entity_key``).

    The item keys are kept as their JSON text (the table's ``items`` column) and parsed only when
    ``items`` is read: a list of a thousand strings per kept record would make every garbage
    collection of the serving process walk millions of pointers.
    """

    __slots__ = ("created_at", "features", "items_json", "model", "model_version", "prediction_id", "project", "user_key")

    def __init__(
        self,
        prediction_id: str,
        project: str,
        model: str,
        model_version: int,
        user_key: str,
        items: Sequence[str] | str,
        features: np.ndarray,
        created_at: datetime,
    ) -> None:
        self.prediction_id = prediction_id
        self.project = project
        self.model = model
        self.model_version = model_version
        self.user_key = user_key
        self.items_json = items if isinstance(items, str) else json.dumps(list(items), separators=(",", ":"))
        self.features = features
        self.created_at = created_at

    @property
    def items(self) -> list[str]:
        return json.loads(self.items_json)  # type: ignore[no-any-return]

    @property
    def dimension(self) -> int:
        return int(self.features.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.features.nbytes) + len(self.items_json)

    def features_of(self, item_key: str) -> np.ndarray | None:
        """The x served for one item (the first occurrence), None if it was not a candidate."""
        try:
            return self.features[self.items.index(item_key)]
        except ValueError:
            return None

    def __repr__(self) -> str:
        return (
            f"PredictionRecord({self.prediction_id!r}, model={self.model!r}, "
            f"version={self.model_version}, user={self.user_key!r}, items={len(self.features)})"
        )


_LIVE: weakref.WeakSet[PredictionLog] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # pragma: no cover - runs at interpreter exit
    for log in list(_LIVE):
        log.close()


class PredictionLog:
    """Queue + background writer + recent records for one project.

    >>> log = PredictionLog(store.registry.engine, store.project)  # doctest: +SKIP
    >>> log.log(record); log.get(record.prediction_id) is record  # doctest: +SKIP
    True
    """

    def __init__(
        self,
        engine: Engine,
        project: str,
        *,
        flush_seconds: float = 0.05,
        batch_rows: int = 500,
        batch_bytes: int = 8 << 20,
        recent: int = 10_000,
        recent_bytes: int = 64 << 20,
        max_pending: int = 100_000,
        max_attempts: int = 5,
        linger_seconds: float = 0.02,
    ) -> None:
        self.engine = engine
        self.project = project
        self.flush_seconds = flush_seconds
        # After a transaction that was not full, wait this long before taking the next: a busy
        # server then writes fewer, larger transactions (a record of 100 items costs the worker
        # 0.57 ms of CPU alone in a transaction, 0.07 ms in one of 64), which is what lets a
        # second worker add throughput (issue 19, bench_predict.py). Requests never wait on it.
        self.linger_seconds = linger_seconds
        self.batch_rows = batch_rows
        # Records of 1,000 items at d = 64 are 512 KB each: bound a transaction by bytes too.
        self.batch_bytes = batch_bytes
        self.max_recent = recent
        self.max_recent_bytes = recent_bytes
        self.max_attempts = max_attempts
        self._queue: queue.Queue[PredictionRecord | threading.Event | None] = queue.Queue(max_pending)
        self._recent: OrderedDict[str, PredictionRecord] = OrderedDict()
        self._recent_bytes = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failed_batches = 0
        _LIVE.add(self)

    # -- the request path ------------------------------------------------------------------------
    def log(self, record: PredictionRecord) -> None:
        """Remember and enqueue a record; never blocks and never touches the database."""
        with self._lock:
            self._recent[record.prediction_id] = record
            self._recent_bytes += record.nbytes
            while self._recent and (
                len(self._recent) > self.max_recent or self._recent_bytes > self.max_recent_bytes
            ):
                _, old = self._recent.popitem(last=False)
                self._recent_bytes -= old.nbytes
            if self._thread is None:
                self._start()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def get(self, prediction_id: str) -> PredictionRecord | None:
        """A prediction by id: from memory if recent, else from the table (once written)."""
        return self.get_many([prediction_id])[prediction_id]

    def get_many(self, ids: Sequence[str], *, wait_seconds: float = 0.0) -> dict[str, PredictionRecord | None]:
        """Predictions by id: the recent ones from memory, the others in one query.

        A prediction made by another process reaches the table within that process's flush
        interval. With ``wait_seconds``, ids still missing are looked up again (one query per
        round, 5 ms apart, doubling) until all are found or the time is up: a wait on the
        condition, which returns as soon as the rows are there.
        """
        out: dict[str, PredictionRecord | None] = {}
        for pid in ids:
            out[pid] = self._recent.get(pid)
        missing = [pid for pid, r in out.items() if r is None]
        deadline = time.monotonic() + wait_seconds
        pause = 0.005
        while missing:
            out.update(self._select(missing))
            missing = [pid for pid in missing if out[pid] is None]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                break
            time.sleep(min(pause, left))
            pause *= 2
        return out

    def _select(self, ids: list[str]) -> dict[str, PredictionRecord]:
        import sqlalchemy as sa

        p = t.predictions
        found: dict[str, PredictionRecord] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 1_000):
                rows = conn.execute(
                    sa.select(p).where(p.c.project == self.project, p.c.prediction_id.in_(ids[start : start + 1_000]))
                ).mappings()
                for row in rows:
                    found[row["prediction_id"]] = _record(row)
        return found

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    # -- control ------------------------------------------------------------------------------
    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until everything logged so far is written; True unless it timed out."""
        if self._thread is None or not self._thread.is_alive():
            return self._queue.empty()
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop the writer thread. Idempotent; a later ``log`` starts
        a new writer (the SDK and a server in one process share a log, and the server stops it
        when it shuts down)."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def forget_recent(self) -> None:
        """Drop the in-memory records (``get`` then reads the table); for tests and memory."""
        with self._lock:
            self._recent.clear()
            self._recent_bytes = 0

    # -- the writer -----------------------------------------------------------------------------
    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        batch: list[PredictionRecord] = []
        size = 0
        waiters: list[threading.Event] = []
        attempts = 0
        stop = False
        while not stop or batch:
            try:
                item = self._queue.get(timeout=self.flush_seconds)
            except queue.Empty:
                item = False  # type: ignore[assignment]
            # Take whatever else is already queued, up to one batch.
            while item is not False:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    waiters.append(item)
                else:
                    batch.append(item)
                    size += item.nbytes
                if len(batch) >= self.batch_rows or size >= self.batch_bytes:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    item = False  # type: ignore[assignment]
            if batch:
                try:
                    self._write(batch)
                    self.written += len(batch)
                    full = len(batch) >= self.batch_rows or size >= self.batch_bytes
                    batch, size, attempts = [], 0, 0
                    if not (full or stop or waiters) and self.linger_seconds > 0:
                        time.sleep(self.linger_seconds)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive a database hiccup
                    attempts += 1
                    self.failed_batches += 1
                    if attempts >= self.max_attempts or stop:
                        logger.error(
                            "prediction log: dropping %d records after %d failed inserts: %s",
                            len(batch), attempts, exc,
                        )
                        self.dropped += len(batch)
                        batch, size, attempts = [], 0, 0
                    else:
                        logger.warning("prediction log: insert failed (%s); retrying", exc)
            if not batch:  # a flush returns once what was logged before it is written (or dropped)
                for waiter in waiters:
                    waiter.set()
                waiters = []

    def _write(self, batch: list[PredictionRecord]) -> None:
        import sqlalchemy as sa

        rows = [
            {
                "prediction_id": r.prediction_id,
                "project": r.project,
                "model": r.model,
                "model_version": r.model_version,
                "user_key": r.user_key,
                "items": r.items_json,
                # A buffer, not bytes: the driver copies it once when binding (no extra copy).
                "features": np.ascontiguousarray(r.features, dtype=_F8).data.cast("B"),
                "dimension": r.dimension,
                "created_at": r.created_at,
            }
            for r in batch
        ]
        with self.engine.begin() as conn:
            conn.execute(sa.insert(t.predictions), rows)


def _record(row: Any) -> PredictionRecord:
    features = np.frombuffer(row["features"], dtype=_F8).reshape(-1, row["dimension"])
    created = row["created_at"]
    return PredictionRecord(
        prediction_id=row["prediction_id"],
        project=row["project"],
        model=row["model"],
        model_version=int(row["model_version"]),
        user_key=row["user_key"],
        items=row["items"],
        features=features.astype(np.float64),
        created_at=created if created.tzinfo else created.replace(tzinfo=timezone.utc),
    )
