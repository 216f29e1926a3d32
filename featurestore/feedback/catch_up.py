"""Self-healing feedback: apply what a crash cut off between the log commit and the state update.

Every feedback row is logged ``pending`` and marked applied once its update is in the online
state (``FeedbackService``, step 5). A process gives up swapping an observation in
``APPLY_DEADLINE_SECONDS`` after logging it, so a row still pending ``CATCH_UP_AFTER_SECONDS``
after it was received is not in flight anywhere: its process died, or its store failed. Every
server runs ``catch_up`` at start and then every few seconds (``feedback.maintenance``); it
rebuilds each such user's state from scratch (the version's trained state from its artifact,
then all the user's logged observations of that version in log order), exactly what
``models replay`` would give, and so equally right whether or not the cut-off update had
landed. Nobody has to run ``models replay`` by hand.

Why it cannot apply an observation twice, with servers still taking feedback for the user:

- The user's stored bytes are read *before* its log rows, and written back by compare-and-swap
  against them. A server that swapped in between makes the swap fail (the user waits for the
  next round); a server that swaps after it re-reads the rebuilt state and learns its own
  observation on top, which is right because that observation was committed after the read
  and so is not in the rebuild.
- A user with a pending row received *after* the cut-off (possibly on its way to the store
  right now) is skipped this round: a rebuild holding it could race that update.

It assumes the servers' clocks agree to well within ``CATCH_UP_AFTER_SECONDS -
APPLY_DEADLINE_SECONDS`` (``received_at`` is stamped by the server that logged the row).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featurestore.feedback.log import FeedbackLog
from featurestore.models.artifacts import read_artifact
from featurestore.models.linear import StateBatch, local_rows
from featurestore.models.state_codec import BatchStateCodec
from featurestore.models.state_store import ModelStateStore, state_namespace

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

logger = logging.getLogger(__name__)

#: A pending row older than this is treated as cut off. Far beyond the service's last swap
#: (60 s after receipt) plus a slow store call (Redis: 30 s timeout, two retries), so a live
#: update is never raced.
CATCH_UP_AFTER_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_CATCH_UP_AFTER_SECONDS", "300"))
_CHUNK = 500  # users rebuilt per read / swap


@dataclass(frozen=True)
class CatchUpResult:
    users: int  # users rebuilt and swapped in
    rows: int  # pending rows those rebuilds applied
    waiting: int  # users left for a later round (a recent pending row, or another writer won)
    offline: int  # users of versions whose states are not in the online store (nothing to heal)

    def summary(self) -> str:
        return (
            f"caught up {self.users:,} user state(s) with {self.rows:,} pending observation(s); "
            f"{self.waiting:,} waiting for a later round, {self.offline:,} of versions not online"
        )


class _Artifacts:
    """Read each version's artifact once per process (the trained states are immutable). Only
    the few most recently used are kept: an artifact holds every trained user's state, and a
    process that healed many versions over its life must not keep them all."""

    KEEP = 4

    def __init__(self) -> None:
        self._cache: dict[str, tuple[Any, np.ndarray, dict[bytes, Any]]] = {}
        self._lock = threading.Lock()  # the maintenance thread and /health's guard both read

    def get(self, context: ServiceContext, model: str, version: int) -> tuple[Any, np.ndarray, dict[bytes, Any]]:
        path = context.model_versions.get(model, version).artifact
        with self._lock:
            found = self._cache.pop(path, None)
        if found is None:
            _, layout, w_avg, base = read_artifact(Path(path))
            found = (layout, w_avg, base)
        with self._lock:
            while len(self._cache) >= self.KEEP:
                self._cache.pop(next(iter(self._cache)))  # the least recently used
            self._cache[path] = found  # (re)inserted: now the most recently used
        return found


_ARTIFACTS = _Artifacts()


def catch_up(
    context: ServiceContext,
    *,
    older_than_seconds: float = CATCH_UP_AFTER_SECONDS,
    now: datetime | None = None,
) -> CatchUpResult:
    """Rebuild, from the log, every user with a pending row older than ``older_than_seconds``;
    see the module docstring for why this is safe beside live servers.

    >>> catch_up(store.context).users  # doctest: +SKIP
    0
    """
    log = FeedbackLog(context.engine, context.project)
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=older_than_seconds)
    by_version: dict[tuple[str, int], list[str]] = defaultdict(list)
    for model, version, user in log.pending_users(cutoff):
        by_version[(model, version)].append(user)
    users = rows = waiting = offline = 0
    for (model, version), keys in by_version.items():
        try:
            if not ModelStateStore(context.online_store, model, version).exists():
                # Restoring the version (activation, loss recovery) flags its rows pending again.
                offline += len(keys)
                continue
            for start in range(0, len(keys), _CHUNK):
                u, r, w = _rebuild(context, log, model, version, keys[start : start + _CHUNK], cutoff)
                users, rows, waiting = users + u, rows + r, waiting + len(w)
        except Exception as exc:  # noqa: BLE001 - one bad version must not stop the others
            logger.warning("feedback catch-up of model %r version %d failed: %s: %s",
                           model, version, type(exc).__name__, exc)
            waiting += len(keys)
    result = CatchUpResult(users, rows, waiting, offline)
    if users:
        logger.warning("feedback catch-up: %s", result.summary())
    return result


def rebuild_version(context: ServiceContext, model: str, version: int) -> CatchUpResult:
    """After the online store lost a version's states: restore its trained states, which flags
    every logged row of the version pending again (``restore_version``), then rebuild at once
    every user of the version in the log, except those with a recent pending row (maybe in
    flight). Those wait for the regular catch-up (at most ``CATCH_UP_AFTER_SECONDS``), which also
    finishes the job if this process dies halfway: the flags are in the database.

    Every user, not only the flagged ones: an "applied" mark queued before the restore (another
    process's, cleared in the next 0.1 s) can clear a flag the restore just set."""
    import sqlalchemy as sa

    from featurestore.models.artifacts import restore_version
    from registry import tables as t

    restore_version(context, model, version, lost=True)  # the layout key may have survived its users
    log = FeedbackLog(context.engine, context.project)
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=CATCH_UP_AFTER_SECONDS)
    f = t.feedback
    with context.engine.connect() as conn:
        keys = list(conn.execute(
            sa.select(f.c.user_key).distinct().where(
                f.c.project == context.project, f.c.model == model, f.c.model_version == version
            ).order_by(f.c.user_key)
        ).scalars())
    users = rows = waiting = 0
    for start in range(0, len(keys), _CHUNK):
        u, r, w = _rebuild(context, log, model, version, keys[start : start + _CHUNK], cutoff)
        users, rows, waiting = users + u, rows + r, waiting + len(w)
    return CatchUpResult(users, rows, waiting, 0)


def _rebuild(
    context: ServiceContext, log: FeedbackLog, model: str, version: int, users: list[str], cutoff: datetime
) -> tuple[int, int, list[str]]:
    """Rebuild ``users`` of a version from the log: (users swapped in, pending rows applied,
    users left waiting)."""
    layout, w_avg, base = _ARTIFACTS.get(context, model, version)
    namespace = state_namespace(model, version)
    online = context.online_store
    codec = BatchStateCodec.of(layout.d)
    keys = [u.encode("utf-8") for u in users]
    snapshot = online.get_blobs(namespace, keys)  # before the log: see the module docstring
    logged = log.read_users(model, version, users)
    in_flight = {o.user_key for o in logged if o.pending and o.received_at is not None and o.received_at >= cutoff}
    slot = {u: i for i, u in enumerate(users)}
    states, _ = codec.decode([None] * len(keys), w_avg, layout.l2)
    trained = [i for i, k in enumerate(keys) if k in base]
    if trained:
        states.put(np.asarray(trained, np.intp), StateBatch.from_states([base[keys[i]] for i in trained]))
    mine = [o for o in logged if o.user_key not in in_flight]
    if mine:
        idx = np.fromiter((slot[o.user_key] for o in mine), np.intp, len(mine))
        X = np.stack([o.features for o in mine])
        y = np.fromiter((o.label for o in mine), np.float64, len(mine))
        distinct, local = local_rows(idx)
        states.put(distinct, states.take(distinct).learn(local, X, y, layout.objective))
    encoded = codec.encode(states)
    ready = [i for i, u in enumerate(users) if u not in in_flight]
    swaps = {keys[i]: (snapshot[i], encoded[i]) for i in ready if snapshot[i] != encoded[i]}
    lost = set(online.compare_and_swap_blobs(namespace, swaps)) if swaps else set()
    done = {users[i] for i in ready if keys[i] not in lost}
    applied = [o.seq for o in mine if o.pending and o.user_key in done]
    log.mark_applied(applied)
    return len(done), len(applied), [u for u in users if u not in done]
