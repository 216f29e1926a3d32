"""The embedded online store (the default): one SQLite file in WAL mode.

Several processes may use the file at once (a materialization job writing while servers read):
WAL lets readers run during a write, every write chunk is one short ``BEGIN IMMEDIATE``
transaction (so two writers queue on the write lock instead of deadlocking on a lock upgrade),
and ``busy_timeout`` makes a writer wait up to 30 s for the lock instead of failing. Each thread
gets its own connection, and a forked child opens fresh ones.

The schema is versioned with ``PRAGMA user_version`` and created by the small migration list
below on first open; see docs/online-store.md for the tables.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from featurestore.online.base import (
    OnlineStore,
    Row,
    ViewVersion,
    check_namespace,
    check_row,
    check_view,
    chunks,
    expiry_cutoff_us,
)

if TYPE_CHECKING:
    from featurestore.config import OnlineStoreConfig

BUSY_TIMEOUT_S = 30.0
WAL_CHECKPOINT_PAGES = 10_000
# Each step brings the schema from version i to i + 1; never edit a released step, append one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE latest (
            project TEXT NOT NULL,
            view TEXT NOT NULL,
            entity_key BLOB NOT NULL,
            event_ts INTEGER NOT NULL,
            created_ts INTEGER NOT NULL,
            payload BLOB NOT NULL,
            PRIMARY KEY (project, view, entity_key)
        ) WITHOUT ROWID""",
        # Blobs can be kilobytes (model state), too large for a WITHOUT ROWID b-tree's cells.
        """CREATE TABLE blobs (
            project TEXT NOT NULL,
            namespace TEXT NOT NULL,
            key BLOB NOT NULL,
            value BLOB NOT NULL,
            PRIMARY KEY (project, namespace, key)
        )""",
        """CREATE TABLE meta (
            project TEXT NOT NULL,
            view TEXT NOT NULL,
            newest_event_ts INTEGER NOT NULL,
            PRIMARY KEY (project, view)
        ) WITHOUT ROWID""",
    ),
    (
        # Winning write transactions per view (``view_versions``): with the newest time, it
        # moves with every write that wins a row. A table of its own, so ``meta`` keeps the
        # bytes it had (it is compared across runners, whose chunking differs).
        """CREATE TABLE writes (
            project TEXT NOT NULL,
            view TEXT NOT NULL,
            writes INTEGER NOT NULL,
            PRIMARY KEY (project, view)
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# The project and view are written into the statement as literals (``_upsert_latest_sql``), so
# ``executemany`` binds the caller's 4-tuples as they are instead of a 6-tuple built per row.
_UPSERT_LATEST = """
INSERT INTO latest (project, view, entity_key, event_ts, created_ts, payload)
VALUES ({project}, {view}, ?, ?, ?, ?)
ON CONFLICT (project, view, entity_key) DO UPDATE SET
    event_ts = excluded.event_ts, created_ts = excluded.created_ts, payload = excluded.payload
WHERE (excluded.event_ts, excluded.created_ts) >= (latest.event_ts, latest.created_ts)
"""
_UPSERT_NEWEST = """
INSERT INTO meta (project, view, newest_event_ts) VALUES (?, ?, ?)
ON CONFLICT (project, view) DO UPDATE SET
    newest_event_ts = max(meta.newest_event_ts, excluded.newest_event_ts)
"""
_BUMP_WRITES = """
INSERT INTO writes (project, view, writes) VALUES (?, ?, 1)
ON CONFLICT (project, view) DO UPDATE SET writes = writes.writes + 1
"""
_UPSERT_BLOB = """
INSERT INTO blobs (project, namespace, key, value) VALUES (?, ?, ?, ?)
ON CONFLICT (project, namespace, key) DO UPDATE SET value = excluded.value
"""
# Keys per read statement: at most 2 * 400 + 1 parameters, under the historical limit of 999.
# Batches are padded up to one of these sizes so a handful of statements cover every read and
# stay in sqlite3's statement cache.
_READ_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 400)


def _bucket(n: int) -> int:
    return next(size for size in _READ_SIZES if size >= n)


def _read_latest_sql(n: int) -> str:
    # A constant table joined to the primary key: SQLite walks the keys and does one index
    # lookup each (CROSS JOIN fixes that order), where `(view, key) IN (...)` would scan the
    # whole project.
    values = ",".join(["(?,?)"] * n)
    return (
        f"WITH k(view, entity_key) AS (VALUES {values}) "
        "SELECT k.view, k.entity_key, l.event_ts, l.payload FROM k CROSS JOIN latest AS l "
        "WHERE l.project = ? AND l.view = k.view AND l.entity_key = k.entity_key"
    )


@lru_cache(maxsize=256)
def _upsert_latest_sql(project: str, view: str) -> str:
    return _UPSERT_LATEST.format(project=_sql_text(project), view=_sql_text(view))


def _sql_text(text: str) -> str:
    """A SQL string literal of ``text`` (project and view names are checked names besides)."""
    return "'" + text.replace("'", "''") + "'"


def _in_key_order(rows: Iterable[Row]) -> list[Row]:
    """The rows sorted by entity key, the order of the table's b-tree (BLOBs compare as bytes,
    like Python's ``bytes``), so one transaction walks the leaves in order instead of jumping to
    a random page per row: about a third less CPU for 50,000 keys in hash order, and each
    ``write_chunk_rows`` transaction dirties a narrow range of pages. The sort is stable, so the
    rows of one key keep the caller's order, which the newer-only rule depends on for ties."""
    ordered = list(rows)
    try:
        ordered.sort(key=itemgetter(0))
    except (TypeError, IndexError, KeyError):
        for row in ordered:
            check_row(row)  # names the row that is not (bytes, int, int, bytes)
        raise
    return ordered


def _get_blobs_sql(n: int) -> str:
    values = ",".join(["(?)"] * n)
    return (
        f"WITH k(key) AS (VALUES {values}) "
        "SELECT k.key, b.value FROM k CROSS JOIN blobs AS b "
        "WHERE b.project = ? AND b.namespace = ? AND b.key = k.key"
    )


class EmbeddedOnlineStore(OnlineStore):
    """Latest values and blobs in one SQLite file, safe to share between processes.

    >>> store = EmbeddedOnlineStore("demo", Path("/tmp/online.db"))  # doctest: +SKIP
    >>> store.write_latest("user_stats", [(b"42", 1_000, 1_000, b"payload")])  # doctest: +SKIP
    1
    """

    kind: ClassVar[str] = "embedded"
    multi_process: ClassVar[bool] = True
    #: Rows per write transaction: long enough to amortise the commit, short enough that
    #: readers in other processes and a second writer wait only milliseconds.
    write_chunk_rows: ClassVar[int] = 5_000

    def __init__(self, project: str, path: str | Path) -> None:
        super().__init__(project)
        self.path = Path(path)
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._migrated = False
        self._conn()  # fail at open time, not at the first read, when the file is unusable

    @classmethod
    def from_config(
        cls, config: OnlineStoreConfig, project: str, root: Path
    ) -> EmbeddedOnlineStore:
        path = Path(config.path).expanduser()
        return cls(project, path if path.is_absolute() else root / path)

    @property
    def address(self) -> str:
        return str(self.path)

    # -- connections -----------------------------------------------------------------------------
    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.OperationalError as exc:
            raise self._unavailable(what, exc, self._hint()) from exc
        except sqlite3.DatabaseError as exc:
            # Exactly DatabaseError means a damaged or foreign file; its subclasses
            # (IntegrityError, ProgrammingError, ...) are bugs and propagate as they are.
            if type(exc) is not sqlite3.DatabaseError:
                raise
            raise self._unavailable(what, exc, self._hint()) from exc

    def _hint(self) -> str:
        return (
            f"check that {self.path.parent} exists and is writable and that {self.path.name} is "
            "an online store file, or set online_store.path in featurestore.yaml"
        )

    def _conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            # A forked child must not use the parent's connections (SQLite forbids it); they
            # are dropped without closing, which would release the parent's locks.
            self._pid, self._local, self._connections = os.getpid(), threading.local(), []
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            self._check_open()
            conn = self._open()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._unavailable("creating its directory", exc, self._hint()) from exc
        with self._guard("opening"):
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # close() may run on another thread
                cached_statements=256,
            )
            try:
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                _enable_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")
                # Checkpoint every ~40 MB of WAL instead of SQLite's 4 MB: a batch job's calls
                # each touch pages all over the table, and a checkpoint copies a page once however
                # often it was rewritten since the last one (a third less written to disk for
                # 100k rows in 16 bucket calls, and a tenth of the fsyncs). Only a committing
                # connection checkpoints, so readers are unaffected.
                conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
                if not self._migrated:
                    self._migrate(conn)
                    self._migrated = True
            except BaseException:
                conn.close()
                raise
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return
        with _transaction(conn):
            # Read again under the write lock: another process may have migrated meanwhile.
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise self._unavailable(
                    "opening",
                    RuntimeError(f"schema version {version} is newer than {SCHEMA_VERSION}"),
                    "upgrade featurestore, or point online_store.path at another file",
                )
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()
        super().close()

    # -- latest values ---------------------------------------------------------------------------
    def write_latest(self, view: str, rows: Sequence[Row], ttl_seconds: int = 0) -> int:
        self._check_open()
        check_view(view)
        cutoff = expiry_cutoff_us(ttl_seconds)
        sql = _upsert_latest_sql(self.project, view)
        conn = self._conn()
        written = 0
        for chunk in chunks(_in_key_order(rows), self.write_chunk_rows):
            if cutoff is not None:
                chunk = [row for row in chunk if row[1] > cutoff]
                if not chunk:
                    continue
            # The max over the chunk, not over the rows that won: a row that lost is older than
            # a stored row, whose time the meta row already holds.
            newest = max(map(itemgetter(1), chunk))
            with self._guard("writing"), _transaction(conn):
                won = conn.executemany(sql, chunk).rowcount
                conn.execute(_UPSERT_NEWEST, (self.project, view, newest))
                if won:
                    conn.execute(_BUMP_WRITES, (self.project, view))
            written += won
        return written

    def read_latest(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        self._check_open()
        if not view_keys:
            return []
        pairs = [(view, key) for view, key in view_keys]
        found: dict[tuple[str, bytes], tuple[int, bytes]] = {}
        conn = self._conn()
        limit = _READ_SIZES[-1]
        with self._guard("reading"):
            # Several statements read one snapshot inside a transaction; one needs none.
            snapshot = _transaction(conn, "BEGIN") if len(pairs) > limit else _nothing()
            with snapshot:
                for start in range(0, len(pairs), limit):
                    batch = pairs[start : start + limit]
                    size = _bucket(len(batch))
                    batch += [batch[-1]] * (size - len(batch))
                    params: list[Any] = [x for pair in batch for x in pair]
                    params.append(self.project)
                    for view, key, event_ts, payload in conn.execute(
                        _read_latest_sql(size), params
                    ):
                        found[(view, key)] = (event_ts, payload)
        return [found.get(pair) for pair in pairs]

    def newest_event_ts(self, views: Sequence[str]) -> dict[str, int | None]:
        self._check_open()
        views = list(views)
        out: dict[str, int | None] = dict.fromkeys(views)
        if not views:
            return out
        marks = ",".join("?" * len(views))
        with self._guard("reading"):
            rows = (
                self._conn()
                .execute(
                    "SELECT view, newest_event_ts FROM meta "
                    f"WHERE project = ? AND view IN ({marks})",
                    [self.project, *views],
                )
                .fetchall()
            )
        out.update(rows)
        return out

    def view_versions(self, views: Sequence[str]) -> dict[str, ViewVersion]:
        self._check_open()
        views = list(views)
        if not views:
            return {}
        marks = ",".join("?" * len(views))
        conn = self._conn()
        with self._guard("reading"), _transaction(conn, "BEGIN"):  # one snapshot of both tables
            newest = dict(
                conn.execute(
                    f"SELECT view, newest_event_ts FROM meta WHERE project = ? AND view IN ({marks})",
                    [self.project, *views],
                )
            )
            writes = dict(
                conn.execute(
                    f"SELECT view, writes FROM writes WHERE project = ? AND view IN ({marks})",
                    [self.project, *views],
                )
            )
        return {view: ViewVersion(newest.get(view), writes.get(view, 0)) for view in views}

    # -- blobs -----------------------------------------------------------------------------------
    def put_blobs(self, namespace: str, items: Mapping[bytes, bytes]) -> None:
        self._check_open()
        check_namespace(namespace)
        if not items:
            return
        params = [(self.project, namespace, bytes(k), bytes(v)) for k, v in items.items()]
        conn = self._conn()
        with self._guard("writing"), _transaction(conn):
            conn.executemany(_UPSERT_BLOB, params)

    def get_blobs(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        self._check_open()
        check_namespace(namespace)
        keys = list(keys)
        if not keys:
            return []
        found: dict[bytes, bytes] = {}
        conn = self._conn()
        limit = _READ_SIZES[-1]
        with self._guard("reading"):
            snapshot = _transaction(conn, "BEGIN") if len(keys) > limit else _nothing()
            with snapshot:
                for start in range(0, len(keys), limit):
                    batch = keys[start : start + limit]
                    size = _bucket(len(batch))
                    batch += [batch[-1]] * (size - len(batch))
                    sql = _get_blobs_sql(size)
                    found.update(conn.execute(sql, [*batch, self.project, namespace]))
        return [found.get(key) for key in keys]

    def delete_namespace(self, namespace: str) -> int:
        self._check_open()
        check_namespace(namespace)
        conn = self._conn()
        with self._guard("writing"), _transaction(conn):
            cursor = conn.execute(
                "DELETE FROM blobs WHERE project = ? AND namespace = ?", (self.project, namespace)
            )
        return cursor.rowcount

    def compare_and_swap_blobs(
        self, namespace: str, swaps: Mapping[bytes, tuple[bytes | None, bytes]]
    ) -> list[bytes]:
        self._check_open()
        check_namespace(namespace)
        if not swaps:
            return []
        keys = [bytes(k) for k in swaps]
        conn = self._conn()
        failed: list[bytes] = []
        # BEGIN IMMEDIATE takes the write lock first, so the read and the writes below see no
        # other writer in between: every process's swaps are serialised.
        with self._guard("writing"), _transaction(conn):
            current: dict[bytes, bytes] = {}
            for start in range(0, len(keys), 900):
                batch = keys[start : start + 900]
                marks = ",".join("?" * len(batch))
                current.update(
                    conn.execute(
                        f"SELECT key, value FROM blobs WHERE project = ? AND namespace = ? AND key IN ({marks})",
                        [self.project, namespace, *batch],
                    )
                )
            params = []
            for key, (expected, new) in swaps.items():
                key = bytes(key)
                if current.get(key) == expected:
                    params.append((self.project, namespace, key, bytes(new)))
                else:
                    failed.append(key)
            if params:
                conn.executemany(_UPSERT_BLOB, params)
        return failed

    def ping(self) -> None:
        self._check_open()
        with self._guard("pinging"):
            self._conn().execute("SELECT count(*) FROM meta WHERE project = ?", (self.project,))


def _enable_wal(conn: sqlite3.Connection, attempts: int = 200) -> None:
    """Switch a new file to WAL. SQLite answers "database is locked" at once, without waiting
    on the busy timeout, when two processes switch the same new file at the same moment; the
    loser retries and then finds WAL already on."""
    for attempt in range(attempts):
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal":
                return
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.01)


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """One transaction; IMMEDIATE takes the write lock up front so the busy timeout applies."""
    conn.execute(begin)
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.rollback()
        raise


@contextmanager
def _nothing() -> Iterator[None]:
    yield
