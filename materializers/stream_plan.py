"""What a stream job runs: its options and, per feature view, a ``StreamRun`` of plain data built
before any pipeline starts (picklable, shipped to the DoFns).

    >>> runs = plan_stream(FeatureStore("repo"), ["user_clicks"], StreamOptions(consumer="job-1"))  # doctest: +SKIP
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.streams.schema import EventSchema
from materializers.schema import ViewSchema
from registry.errors import ConfigError, UserError

if TYPE_CHECKING:
    from featurestore.config import OnlineStoreConfig
    from featurestore.offline.location import OfflinePath
    from featurestore.store import FeatureStore


def default_consumer() -> str:
    """The consumer name when none is given: the host's name, so a restarted job on the same
    machine reads back what it had not acknowledged."""
    return f"{socket.gethostname()}-stream"


@dataclass(frozen=True)
class StreamOptions:
    """Knobs of the stream job (``featurestore stream --help`` has the same, in words)."""

    consumer: str = field(default_factory=default_consumer)
    #: Offline file windows (event time); a divisor of a day.
    window_seconds: int = 60
    #: How long after its end a window is written (and its entries acknowledged).
    grace_seconds: int = 5
    #: Aggregations: how late an event may be (after its first window closed) and still count.
    lateness_seconds: int = 3_600
    #: Entries per read (at most 4,000 for views with aggregations: one atomic commit each).
    max_entries: int = 4_000
    #: How long one read waits for new entries.
    block_ms: int = 100
    #: Reads per Beam bundle are made for up to this long (fewer, larger bundles).
    bundle_seconds: float = 1.0
    #: How often the job prints and stores its freshness figures.
    stats_seconds: float = 10.0
    #: Entries another consumer left unacknowledged this long are taken over.
    claim_idle_seconds: int = 300
    #: A pipeline run ends (writing every buffered window) and the next starts after this long;
    #: bounds what Beam's in-process runner keeps per bundle (docs/streaming.md).
    generation_seconds: float = 600.0
    #: Buffered offline rows above which the largest window is written early.
    max_buffer_rows: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.consumer or len(self.consumer) > 200:
            raise ConfigError(
                "the consumer name must be 1-200 characters", hint="e.g. --consumer job-1"
            )
        if self.window_seconds <= 0 or 86_400 % self.window_seconds:
            raise ConfigError(
                f"--window {self.window_seconds}s does not divide a day",
                hint="use e.g. 10s, 1m, 5m, 15m, 1h: files must not span two dates",
            )
        for name in ("grace_seconds", "lateness_seconds", "claim_idle_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.max_entries < 1 or self.block_ms < 0 or self.stats_seconds <= 0:
            raise ConfigError("max_entries must be >= 1, block_ms >= 0 and stats_seconds > 0")


@dataclass(frozen=True)
class StreamRun:
    """Everything one view's streaming needs."""

    schema: ViewSchema
    events: EventSchema
    source: Any
    stream_url: str
    project: str
    offline_path: OfflinePath  # a local Path or an object-store ObjectPath
    online_config: OnlineStoreConfig
    root: Path
    options: StreamOptions

    @property
    def view(self) -> str:
        return self.schema.view

    @property
    def max_entries(self) -> int:
        from materializers.stream_state import MAX_COMMIT_ENTRIES

        if self.schema.aggregated:
            return min(self.options.max_entries, MAX_COMMIT_ENTRIES)
        return self.options.max_entries


def plan_stream(
    store: FeatureStore, views: Sequence[str] | None, options: StreamOptions
) -> list[StreamRun]:
    """One run per view (default: every applied view with a ``stream_source``)."""
    if store.registry.head_version() == 0:
        raise UserError(
            f"nothing is applied in project {store.project!r}, so there is nothing to stream",
            hint="run `featurestore apply` first",
        )
    definitions = store.definitions()
    if views:
        names = list(dict.fromkeys(views))
        for name in names:
            view = definitions.get("feature_view", name)  # NotFoundError with the nearest name
            if view.stream_source is None:
                raise UserError(
                    f"feature view {name!r} has no stream_source",
                    hint="add `stream_source: {type: redis_stream, stream: ..., group: ...}` to "
                    "it and `featurestore apply`",
                )
    else:
        names = sorted(
            n for n, v in definitions.feature_views.items() if v.stream_source is not None
        )
        if not names:
            raise UserError(
                "no applied feature view has a stream_source",
                hint="add `stream_source: {type: redis_stream, stream: ..., group: ...}` to a "
                "view and `featurestore apply`",
            )
    config = store.config
    runs = []
    for name in names:
        view = definitions.feature_views[name]
        assert view.stream_source is not None  # checked above
        runs.append(
            StreamRun(
                schema=ViewSchema.of(definitions, name),
                events=EventSchema.of(definitions, name),
                source=view.stream_source,
                stream_url=view.stream_source.url or config.online_store.url,
                project=store.project,
                offline_path=config.offline_path,
                online_config=config.online_store,
                root=config.root,
                options=options,
            )
        )
    return runs
