"""The stream contract: what the stream job needs from a transport, and what push needs.

A reader is one consumer in a consumer group: it reads entries delivered to it (first those it
was given before and never acknowledged, e.g. before a crash), decodes them into an Arrow record
batch with the shared encoder (``featurestore.streams.encoding``), and acknowledges them once
the writes they feed have succeeded. An entry that is never acknowledged is read again, so
delivery is at least once; the job's writes are idempotent. ``claim_stale`` takes over entries a
consumer that went away left unacknowledged.

Redis Streams implement it (``featurestore.streams.redis_streams``); Kafka (a consumer group and
committed offsets) or Pub/Sub (subscriptions and acks) would implement the same methods, and the
stream job would not change.

    >>> reader = open_stream_reader(view.stream_source, schema, consumer="job-1", default_url=url)  # doctest: +SKIP
    >>> got = reader.read(max_entries=5_000, block_ms=200)  # doctest: +SKIP
    >>> reader.ack(got.ids)  # doctest: +SKIP
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa

from featurestore.plugins import load_class
from featurestore.streams.schema import EventSchema
from registry.errors import ConfigError


@dataclass(frozen=True)
class StreamRead:
    """What one read returned.

    ``ids``: every entry read (acknowledge all of them once handled, rejected ones included);
    ``batch``: the entries that decoded, one row each, with ``__ordinal`` and ``__entry_id``;
    ``rejected``: ``(entry id, reason)`` of those that did not.
    """

    ids: list[bytes]
    batch: pa.RecordBatch
    rejected: list[tuple[bytes, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


class StreamReader(ABC):
    """One consumer of a view's stream. Not thread-safe; open one per worker."""

    #: The source ``type`` this reader serves.
    kind: ClassVar[str] = "abstract"

    def __init__(self, schema: EventSchema, consumer: str) -> None:
        self.schema = schema
        self.consumer = consumer

    @abstractmethod
    def read(self, max_entries: int, block_ms: int) -> StreamRead:
        """Up to ``max_entries`` entries for this consumer: its own unacknowledged ones first
        (after a restart), then new ones, waiting up to ``block_ms`` when there are none."""

    @abstractmethod
    def ack(self, ids: Sequence[bytes]) -> int:
        """Acknowledge entries (they are not delivered again); returns how many were pending."""

    @abstractmethod
    def claim_stale(self, min_idle_ms: int, max_entries: int) -> StreamRead:
        """Take over entries *other* consumers received more than ``min_idle_ms`` ago and never
        acknowledged (a consumer that died or was renamed); they are this consumer's now."""

    def pending(self) -> int:
        """Entries delivered to the group and not acknowledged yet."""
        raise NotImplementedError(f"{type(self).__name__}.pending is not implemented")

    def backlog(self) -> int | None:
        """Entries not delivered to the group yet (None when the transport cannot tell)."""
        return None

    def close(self) -> None:
        """Release connections. Idempotent."""

    @property
    def address(self) -> str:
        """Where the stream lives, for messages (no password)."""
        return self.kind


@dataclass(frozen=True)
class OnceResult:
    """What ``append_once`` did: the first and last entry ids and the count of the events the
    marker stands for; ``duplicate`` when they were appended by an earlier call."""

    first_id: str
    last_id: str
    count: int
    digest: str
    duplicate: bool


class StreamWriter(ABC):
    """Appends encoded events to one stream (``FeatureStore.push``)."""

    @abstractmethod
    def append(self, payloads: Sequence[bytes]) -> list[bytes]:
        """Append one entry per payload (the ``data`` field), in order; returns their ids."""

    def append_once(self, payloads: Sequence[bytes], marker: str, digest: str, ttl_seconds: int) -> OnceResult:
        """Append the payloads and record ``marker`` atomically, unless ``marker`` is already
        recorded (a retried push): then append nothing and return what the first call appended.
        ``digest`` identifies the payloads, so a marker reused for other events is detected."""
        raise NotImplementedError(f"{type(self).__name__} cannot append idempotently")

    def close(self) -> None:
        """Release connections. Idempotent."""


# Source ``type`` -> (reader, writer) classes, imported only when used.
BACKENDS: dict[str, tuple[str, str]] = {
    "redis_stream": (
        "featurestore.streams.redis_streams:RedisStreamReader",
        "featurestore.streams.redis_streams:RedisStreamWriter",
    ),
}


def _load(type_: str, which: int, base: type) -> Any:
    target = BACKENDS.get(type_)
    if target is None:
        raise ConfigError(
            f"unknown stream source type {type_!r}",
            hint="use one of " + ", ".join(sorted(BACKENDS)),
        )
    return load_class(
        target[which], base, what="stream backend", hint="fix featurestore.streams.base.BACKENDS"
    )


def open_stream_reader(
    source: Any, schema: EventSchema, *, consumer: str, default_url: str
) -> StreamReader:
    """The reader of a view's ``stream_source``; ``default_url`` is the online store's URL,
    used when the source names none."""
    cls = _load(source.type, 0, StreamReader)
    return cls.from_source(source, schema, consumer=consumer, default_url=default_url)  # type: ignore[no-any-return]


def open_stream_writer(source: Any, *, default_url: str) -> StreamWriter:
    """The writer of a view's ``stream_source`` (for push)."""
    cls = _load(source.type, 1, StreamWriter)
    return cls.from_source(source, default_url=default_url)  # type: ignore[no-any-return]
