"""Push: write events to a feature view's stream, checked against the view first.

``FeatureStore.push(view, rows)`` and ``POST /push`` both land here. The rows are checked and
encoded with the stream encoder (``featurestore.streams.encoding``: every row has the view's
join keys and timestamp, no unknown column, every value of its column's dtype) and appended to
the view's ``stream_source`` in one pipelined round trip. Nothing is appended when any row is
bad: the error names the row and the column. The stream job (``featurestore stream``) then
writes them online and offline.

    >>> store.push("user_clicks", [{"user_id": 7, "ts": "2026-11-22T10:00:00Z", "clicks": 1}])  # doctest: +SKIP
    PushResult(view='user_clicks', pushed=1, first_id='1795...-0', last_id='1795...-0')
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from featurestore.streams.encoding import EventError, encode_events
from featurestore.streams.schema import EventSchema
from registry.errors import UserError

if TYPE_CHECKING:
    from featurestore.config import RepoConfig
    from featurestore.streams.base import StreamWriter
    from registry.watcher import RegistryWatcher

__all__ = ["EventError", "PushIdReusedError", "PushResult", "Pusher"]

#: Rows one push may carry (a request body of a few MB at most).
MAX_ROWS = 10_000
#: How long a push_id is remembered: retries come within seconds or minutes; a day is ample.
PUSH_ID_TTL_SECONDS = 86_400
PUSH_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")
PUSH_ID_HELP = "a push_id is 1-128 letters, digits, '_', '.', ':' or '-' (a UUID works)"


@dataclass(frozen=True)
class PushResult:
    """What a push appended: how many events, and the first and last entry ids."""

    view: str
    pushed: int
    first_id: str | None
    last_id: str | None
    #: The push carried a ``push_id`` already used: nothing was appended this time, and the
    #: figures are those of the first push.
    duplicate: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "view": self.view,
            "pushed": self.pushed,
            "first_id": self.first_id,
            "last_id": self.last_id,
            "duplicate": self.duplicate,
        }


class PushIdReusedError(UserError):
    """A ``push_id`` came back with other events than the first time."""

    http_status = 409


class Pusher:
    """Checks and appends events for one store; keeps one stream writer per stream (thread-safe:
    redis-py clients are)."""

    def __init__(self, config: RepoConfig, watcher: RegistryWatcher) -> None:
        # The narrow things a push uses: the definitions and the stream's default URL (no
        # online store is opened to push).
        self.config = config
        self.watcher = watcher
        self._writers: dict[tuple[str, str], StreamWriter] = {}
        self._lock = threading.Lock()

    def schema(self, view: str) -> tuple[EventSchema, Any]:
        """The event schema and stream source of a view that accepts pushes."""
        definitions = self.watcher.snapshot.definitions
        spec = definitions.get("feature_view", view)  # NotFoundError with the nearest name
        if spec.stream_source is None:
            raise UserError(
                f"feature view {view!r} has no stream_source, so it cannot take pushed events",
                hint="add `stream_source: {type: redis_stream, stream: ..., group: ...}` to it "
                "and `featurestore apply`",
            )
        return EventSchema.of(definitions, view), spec.stream_source

    def push(self, view: str, rows: Sequence[Mapping[str, Any]], push_id: str | None = None) -> PushResult:
        """Check every row, then append them all to the view's stream.

        With ``push_id`` the push is idempotent for ``PUSH_ID_TTL_SECONDS``: the same id again
        appends nothing and returns the first push's result with ``duplicate=True``, so a client
        may retry after a timeout without counting events twice in an aggregation.
        """
        if isinstance(rows, Mapping) or not isinstance(rows, Sequence):
            raise EventError(
                f"push takes a list of rows for feature view {view!r}, got {type(rows).__name__}",
                hint="pass [{column: value, ...}, ...]",
            )
        if len(rows) > MAX_ROWS:
            raise EventError(
                f"{len(rows)} rows in one push; at most {MAX_ROWS}",
                hint="split the rows over several pushes",
            )
        if push_id is not None and not PUSH_ID_RE.match(push_id):
            raise UserError(f"bad push_id {push_id!r}", hint=PUSH_ID_HELP)
        schema, source = self.schema(view)
        payloads = encode_events(rows, schema)
        if not payloads:
            return PushResult(view, 0, None, None)
        writer = self._writer(source)
        if push_id is None:
            ids = writer.append(payloads)
            return PushResult(view, len(ids), _text(ids[0]), _text(ids[-1]))
        digest = hashlib.sha256(b"\n".join(payloads)).hexdigest()[:32]
        marker = f"{self.config.project}:__push__:{view}:{push_id}"
        once = writer.append_once(payloads, marker, digest, PUSH_ID_TTL_SECONDS)
        if once.digest != digest:
            raise PushIdReusedError(
                f"push_id {push_id!r} was used for other events of view {view!r} "
                f"({once.count} events, entries {once.first_id}..{once.last_id})",
                hint="give every distinct push its own push_id; retry a push with exactly the same rows",
            )
        return PushResult(view, once.count, once.first_id, once.last_id, duplicate=once.duplicate)

    def _writer(self, source: Any) -> StreamWriter:
        from featurestore.streams.base import open_stream_writer

        url = source.url or self.config.online_store.url
        key = (url, source.stream)
        with self._lock:
            writer = self._writers.get(key)
            if writer is None:
                writer = self._writers[key] = open_stream_writer(source, default_url=url)
            return writer

    def close(self) -> None:
        with self._lock:
            for writer in self._writers.values():
                writer.close()
            self._writers.clear()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
