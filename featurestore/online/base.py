"""The online store contract: a handful of batched key-value operations, nothing else.

The online store keeps the latest value per entity per feature view (written by batch and stream
materialization) and small binary blobs (per-user model state). Joining features with models,
decoding payloads and enforcing TTLs on read belong to the SDK and the server, not here.

Every backend passes the one conformance suite in tests/online. Backends differ only in what they
declare as data (``supports_ttl``, ``multi_process``) and in how they reach their storage.

Timestamps are int microseconds since the epoch (UTC). Entity keys and payloads are opaque bytes
(see ``featurestore.online.codec`` for how the SDK builds them).
"""

from __future__ import annotations

import itertools
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, NamedTuple, NoReturn

from registry.errors import DataError, StoreUnavailableError, UserError
from registry.spec import NAME_HELP, NAME_RE

if TYPE_CHECKING:
    from typing_extensions import Self

    from featurestore.config import OnlineStoreConfig

Row = tuple[bytes, int, int, bytes]
"""(entity_key, event_ts_us, created_ts_us, payload)"""


class ViewVersion(NamedTuple):
    """What a reader compares to tell whether a view changed (``OnlineStore.view_versions``)."""

    #: The newest event time written to the view (None: never written).
    newest_event_ts: int | None
    #: A count that, together with the newest time, moves with every write that wins a row.
    writes: int


class OnlineStore(ABC):
    """Latest feature values per (view, entity key) and blobs per namespace, for one project.

    >>> from featurestore.online.memory import MemoryOnlineStore
    >>> store = MemoryOnlineStore("demo")
    >>> store.write_latest("user_stats", [(b"42", 1_000, 1_000, b"payload")])
    1
    >>> store.read_latest([("user_stats", b"42"), ("user_stats", b"43")])
    [(1000, b'payload'), None]
    """

    #: Short name used in messages and by the factory.
    kind: ClassVar[str] = "abstract"
    #: The store itself expires rows ``ttl_seconds`` after their event time (Redis). Elsewhere
    #: rows stay until overwritten and the SDK drops stale ones on read.
    supports_ttl: ClassVar[bool] = False
    #: Several processes may open the same store at once and see each other's writes.
    multi_process: ClassVar[bool] = False
    #: The store is a Redis Cluster: keys that must share a slot carry a hash tag
    #: (``featurestore.online.redis_keys``; the stream job's state uses ``cluster_stream_prefix``).
    cluster: ClassVar[bool] = False

    def __init__(self, project: str) -> None:
        if not isinstance(project, str) or not NAME_RE.match(project):
            raise UserError(f"bad project name {project!r}", hint=f"use {NAME_HELP}")
        self.project = project
        self._closed = False

    @classmethod
    def from_config(cls, config: OnlineStoreConfig, project: str, root: Path) -> OnlineStore:
        """Build the store from its config section; backends with settings override this."""
        return cls(project)

    @property
    def address(self) -> str:
        """Where the store lives, for messages (a URL without password, a file path)."""
        return "memory"

    # -- the contract ----------------------------------------------------------------------------
    @abstractmethod
    def write_latest(self, view: str, rows: Sequence[Row], ttl_seconds: int = 0) -> int:
        """Write rows ``(entity_key, event_ts_us, created_ts_us, payload)`` of one view.

        A row is written only if ``(event_ts_us, created_ts_us)`` is at least what is stored for
        its key, so a late, older row never overwrites a newer one and re-running the same data
        is idempotent. With ``ttl_seconds > 0`` a row whose event time + ttl has already passed
        is skipped, and a store with ``supports_ttl`` expires the key at event time + ttl.
        Also keeps the newest event time written per view. Returns the number of rows written.
        """
        self._unimplemented("write_latest")

    @abstractmethod
    def read_latest(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        """``(event_ts_us, payload)`` or None for each ``(view, entity_key)``, in one round trip."""
        self._unimplemented("read_latest")

    async def read_latest_async(self, view_keys: Sequence[tuple[str, bytes]]) -> list[tuple[int, bytes] | None]:
        """``read_latest`` for asyncio code (the online server). The default calls
        ``read_latest`` directly: an in-process store answers in microseconds, less than a hop
        to a worker thread costs. A store reached over the network overrides this so the event
        loop serves other requests while the reply is on its way."""
        return self.read_latest(view_keys)

    def newest_event_ts(self, views: Sequence[str]) -> dict[str, int | None]:
        """The newest event time written to each view, None for a view never written."""
        self._unimplemented("newest_event_ts")

    def view_versions(self, views: Sequence[str]) -> dict[str, ViewVersion]:
        """The version of each view: it differs between two calls when, and only when, a
        ``write_latest`` in between won at least one row of the view (a rewrite with equal
        timestamps counts; a store that lost its data may repeat an old version). One round
        trip. This is what an item cache polls: the newest time alone stands still for a row
        written with an older event time than the view's newest (a late or corrected row, or
        any row after a future-dated one)."""
        self._unimplemented("view_versions")

    def put_blobs(self, namespace: str, items: Mapping[bytes, bytes]) -> None:
        """Store binary blobs (e.g. per-user model state) under a namespace, overwriting."""
        self._unimplemented("put_blobs")

    def get_blobs(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """The blobs of ``keys`` (None when missing), in one round trip."""
        self._unimplemented("get_blobs")

    async def get_blobs_async(self, namespace: str, keys: Sequence[bytes]) -> list[bytes | None]:
        """``get_blobs`` for asyncio code (``POST /predict`` reads a user's state with it, in the
        same step as the features). The default answers directly, as ``read_latest_async``."""
        return self.get_blobs(namespace, keys)

    def delete_namespace(self, namespace: str) -> int:
        """Delete every blob of a namespace; returns how many were deleted."""
        self._unimplemented("delete_namespace")

    def spread_keys(self, key: bytes) -> list[bytes]:
        """Blob keys derived from ``key`` that together land on every shard of this store: a
        marker written under each of them is lost with any one shard, so a check can notice
        that one shard of several lost its data (``featurestore.online.epoch``). ``[key]`` for a
        store on one node."""
        return [bytes(key)]

    def compare_and_swap_blobs(
        self, namespace: str, swaps: Mapping[bytes, tuple[bytes | None, bytes]]
    ) -> list[bytes]:
        """Atomically, per key: write ``new`` only if the stored blob still equals ``expected``
        (None: the key must be absent). Returns the keys whose swap failed because someone else
        wrote first; the caller re-reads those and retries. One round trip.

        This is what keeps concurrent read-modify-write of per-user model state by several
        server processes from losing updates.
        """
        self._unimplemented("compare_and_swap_blobs")

    @property
    def closed(self) -> bool:
        """Whether ``close`` was called (every other call then raises)."""
        return self._closed

    @abstractmethod
    def ping(self) -> None:
        """Raise StoreUnavailableError when the store cannot be reached."""
        self._unimplemented("ping")

    def check_health(self) -> list[str]:
        """``ping``, and what the store reports as weakened while it still serves (e.g. a Redis
        Cluster replica down): a sentence each, for ``GET /health``. Raises
        StoreUnavailableError when the store cannot serve."""
        self.ping()
        return []

    def close(self) -> None:
        """Release connections; the store cannot be used afterwards. Idempotent."""
        self._closed = True

    # -- helpers for backends -------------------------------------------------------------------
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(project={self.project!r}, address={self.address!r})"

    def _unimplemented(self, method: str) -> NoReturn:
        raise NotImplementedError(f"{type(self).__name__}.{method} is not implemented")

    def _check_open(self) -> None:
        if self._closed:
            raise StoreUnavailableError(
                f"the {self.kind} online store at {self.address} is closed",
                hint="open a new store (FeatureStore.online_store) instead of reusing a closed one",
            )

    def _unavailable(self, what: str, exc: BaseException, hint: str) -> StoreUnavailableError:
        return StoreUnavailableError(
            f"the {self.kind} online store at {self.address} is unavailable ({what}: {exc})",
            hint=hint,
        )


# -- argument checks and chunking shared by the backends ----------------------------------------


def check_view(view: str) -> None:
    """Views are registry names; anything else could collide with the stores' own keys."""
    if not isinstance(view, str) or not NAME_RE.match(view) or view.startswith("__"):
        raise UserError(
            f"bad feature view name {view!r}", hint=f"use {NAME_HELP}, not starting with __"
        )


def check_namespace(namespace: str) -> None:
    """A namespace is any non-empty text without ':' (the Redis key separator)."""
    if not isinstance(namespace, str) or not namespace or ":" in namespace or len(namespace) > 200:
        raise UserError(
            f"bad blob namespace {namespace!r}",
            hint="use 1-200 characters without ':' (e.g. 'model_state/ctr_v2')",
        )


def check_row(row: object) -> None:
    """Check the shape of one row. Backends check the first row of each chunk: a caller that
    passes str keys or float timestamps does so for every row, and checking all rows would cost
    more than the write itself on the in-memory backend."""
    if (
        not isinstance(row, tuple)
        or len(row) != 4
        or not isinstance(row[0], bytes)
        or not isinstance(row[1], int)
        or not isinstance(row[2], int)
        or not isinstance(row[3], bytes)
    ):
        raise DataError(
            f"bad online row {row!r:.200}",
            hint="rows are (entity_key: bytes, event_ts_us: int, created_ts_us: int, "
            "payload: bytes)",
        )


def expiry_cutoff_us(ttl_seconds: int) -> int | None:
    """Rows with an event time at or before this are already expired (None: no TTL)."""
    if ttl_seconds < 0:
        raise UserError(f"ttl_seconds must be >= 0, got {ttl_seconds}")
    if ttl_seconds == 0:
        return None
    return time.time_ns() // 1000 - ttl_seconds * 1_000_000


def chunks(rows: Iterable[Row], size: int) -> Iterator[list[Row]]:
    """Lists of at most ``size`` rows; accepts any iterable so callers may pass generators."""
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        check_row(chunk[0])
        yield chunk
