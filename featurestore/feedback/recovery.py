"""Noticing that the online store lost its data, and rebuilding the model states from the log.

Redis may run without persistence; after a restart it is empty, and before this a server went on
serving average-user predictions and learning feedback on top of reset states, while ``/health``
said ok. ``OnlineStoreGuard.check`` (run by ``/health`` and every few seconds by each server's
maintenance thread) reads the epoch marker (``featurestore.online.epoch``):

- **present and the one seen before**: nothing happened (but an active model version whose
  states are gone is rebuilt all the same);
- **present but another one**: another process found the loss and is rebuilding: report it;
- **missing**: if the registry says content was written (a materialization run wrote online rows,
  or a model version is active) *and none of it is in the online store*, the data was lost. The
  process that creates the new marker (compare-and-swap: exactly one) rebuilds every active
  model version's states (its artifact plus the feedback log, ``catch_up.rebuild_version``). Views
  cannot be rebuilt from here: they are reported until a materialization run writes them again.
  A missing marker with the content still there (a store written before markers existed) is not
  a loss: the marker is simply created.
- **one shard of several gone** (a Redis Cluster primary restarted empty with its replica): the
  marker's copies, one per bucket and so on every shard (``epoch.copy_keys``), tell. A missing
  copy, or copies present while the marker is gone, is a loss like the above: the content left
  on the other shards does not make the store look written.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from featurestore.feedback.catch_up import rebuild_version
from featurestore.models.state_store import ModelStateStore
from featurestore.online.epoch import (
    Epoch,
    copies_present,
    copy_keys,
    ensure_epoch,
    missing_copies,
    new_epoch,
    read_epoch,
    replace_epoch,
)
from featurestore.online.memory import MemoryOnlineStore

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OnlineDataStatus:
    """What ``/health`` reports about the online store's data."""

    epoch: str | None
    lost_at: datetime | None = None  # when the current marker replaced lost data
    rebuilt_models: dict[str, int] = field(default_factory=dict)  # by this process
    rematerialize: tuple[str, ...] = ()  # views lost and not materialized again since

    @property
    def ok(self) -> bool:
        return not self.rematerialize

    def to_dict(self) -> dict[str, object]:
        return {
            "epoch": self.epoch,
            "lost_at": self.lost_at.isoformat() if self.lost_at else None,
            "rebuilt_models": dict(self.rebuilt_models),
            "rematerialize": list(self.rematerialize),
        }


class OnlineStoreGuard:
    """One per server process; thread-safe (``check`` runs from /health and a thread)."""

    def __init__(self, context: ServiceContext) -> None:
        self.context = context
        self.losses = 0  # losses this process saw (found or reported by another process)
        self._seen: str | None = None
        self._rebuilt: dict[str, int] = {}
        self._lock = threading.Lock()
        self.last: OnlineDataStatus | None = None  # the latest check's answer, for /metrics

    def check(self, *, wait: bool = True) -> OnlineDataStatus:
        """Look, and recover what can be recovered. ``wait=False`` (``/health``) answers the
        last result at once while another check (a rebuild, maybe) is running."""
        if not self._lock.acquire(blocking=wait):
            return self.last or OnlineDataStatus(None)
        try:
            return self._check()
        finally:
            self._lock.release()

    def _check(self) -> OnlineDataStatus:
        online = self.context.online_store
        if isinstance(online, MemoryOnlineStore):
            # Per process by design: every new process starts empty, which is no loss.
            self.last = OnlineDataStatus(None)
            return self.last
        marker = read_epoch(online)
        if marker is None:
            marker = self._missing()
        else:
            marker = self._check_copies(marker)
            # A model's states can also go alone (a full materialization after the loss
            # recreated the marker first, an eviction): its layout key is written last.
            for model, version in sorted(self.context.watcher.snapshot.active_models.items()):
                if not ModelStateStore(online, model, version).exists():
                    self._rebuild(model, version)
        if self._seen is not None and marker.epoch != self._seen:
            self.losses += 1
            logger.warning("the online store's data was lost at %s (found by another process)",
                           marker.created_at.isoformat())
        self._seen = marker.epoch
        self.last = self._status(marker)
        return self.last

    def _missing(self) -> Epoch:
        context = self.context
        views = context.run_log.online_views()
        models = dict(context.watcher.snapshot.active_models)
        online = context.online_store
        present = any(ts is not None for ts in online.newest_event_ts(sorted(views)).values()) if views else False
        present = present or any(ModelStateStore(online, m, v).exists() for m, v in models.items())
        # Copies on other shards: the marker was there, and its shard lost it with the rest of
        # its data, whatever the other shards still hold.
        lost = copies_present(online) or (bool(views or models) and not present)
        marker, created = ensure_epoch(online, after_loss=lost)
        if created and lost:
            self._lost(marker, "epoch marker gone", models)
        return marker

    def _check_copies(self, marker: Epoch) -> Epoch:
        """On a store of several shards: a shard that lost its data alone took copies with it."""
        online = self.context.online_store
        keys = copy_keys(online)
        if not keys:
            return marker
        if marker.spread != len(keys):
            # Written before copies existed (or for another count): give it its copies; no loss.
            replace_epoch(online, marker, replace(marker, spread=len(keys)))
            return read_epoch(online) or marker
        gone = missing_copies(online)
        if not gone:
            return marker
        lost = new_epoch(online, after_loss=True)
        if not replace_epoch(online, marker, lost):
            return read_epoch(online) or marker  # another process found it first
        self._lost(lost, f"{gone} of {len(keys)} epoch marker copies gone: a shard lost its data",
                   dict(self.context.watcher.snapshot.active_models))
        return lost

    def _lost(self, marker: Epoch, why: str, models: dict[str, int]) -> None:
        self.losses += 1
        self._seen = marker.epoch  # counted here, not again in check()
        logger.warning("the online store lost its data (%s, %d model(s) active): rebuilding the model states "
                       "from the feedback log", why, len(models))
        for model, version in sorted(models.items()):
            self._rebuild(model, version)

    def _rebuild(self, model: str, version: int) -> None:
        result = rebuild_version(self.context, model, version)
        self._rebuilt[model] = version
        logger.warning("model %r version %d rebuilt from its artifact and the feedback log: %s",
                       model, version, result.summary())

    def _status(self, marker: Epoch) -> OnlineDataStatus:
        if not marker.after_loss:
            return OnlineDataStatus(marker.epoch, rebuilt_models=dict(self._rebuilt))
        lost = tuple(self.context.run_log.views_to_rematerialize(marker.created_at))
        return OnlineDataStatus(marker.epoch, marker.created_at, dict(self._rebuilt), lost)
