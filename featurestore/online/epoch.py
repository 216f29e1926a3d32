"""The online store's epoch marker: how a process tells that the online store lost its data.

The online store is derived data, and Redis may run without persistence: a restart empties it.
Whoever writes lasting content (a materialization run, a model version's states) first makes
sure the marker exists (``ensure_epoch``); a process that later finds it missing while the
registry says content was written knows the data was lost (``featurestore.feedback.recovery``).

Layout (blob namespace ``__epoch__``, key ``epoch``; in Redis ``{project}:__blob__:__epoch__:epoch``
like every blob), version 1, UTF-8 JSON:

    {"v": 1, "epoch": "<32 hex>", "created_at": "<ISO-8601 UTC>", "after_loss": false}

``after_loss`` is true when the marker was created by the process that found the data lost: every
process then reports the loss (and what must be re-materialized) from ``created_at`` on.

**A store of several shards** (a Redis Cluster) can lose one shard alone: the marker key lives on
one shard, and the content on the others makes the store look written. So the marker is also
written, byte for byte, under each of ``online.spread_keys(EPOCH_KEY)`` (one per bucket of the
cluster layout, together on every shard), and it then carries ``"spread": <count>`` (absent on a
store of one node, whose bytes are unchanged). A copy that is missing, or copies present while the
marker is gone, is a loss (``featurestore.feedback.recovery``). A marker without ``spread`` on a
cluster (written before copies existed) gets its copies, and is no loss.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from registry.errors import DataError

if TYPE_CHECKING:
    from featurestore.online.base import OnlineStore

EPOCH_NAMESPACE = "__epoch__"
EPOCH_KEY = b"epoch"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Epoch:
    epoch: str
    created_at: datetime
    after_loss: bool = False
    spread: int = 0  # copies under ``spread_keys`` (0: none, a store of one node or an old marker)

    def encode(self) -> bytes:
        data: dict[str, object] = {"v": FORMAT_VERSION, "epoch": self.epoch, "created_at": self.created_at.isoformat(),
                                   "after_loss": self.after_loss}
        if self.spread:
            data["spread"] = self.spread
        return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Epoch:
        try:
            data = json.loads(blob)
            if data["v"] != FORMAT_VERSION:
                raise ValueError(f"format {data['v']}")
            return cls(str(data["epoch"]), datetime.fromisoformat(data["created_at"]), bool(data["after_loss"]),
                       int(data.get("spread", 0)))
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"the online store's epoch marker is unreadable ({exc})",
                            hint="delete the key; it is recreated at the next check") from None


def read_epoch(online: OnlineStore) -> Epoch | None:
    blob = online.get_blobs(EPOCH_NAMESPACE, [EPOCH_KEY])[0]
    return None if blob is None else Epoch.decode(blob)


def ensure_epoch(online: OnlineStore, *, after_loss: bool = False) -> tuple[Epoch, bool]:
    """The current marker, creating it when missing (compare-and-swap: among processes racing
    to create it, exactly one does). Returns (marker, whether this call created it)."""
    current = read_epoch(online)
    if current is not None:
        return current, False
    mine = new_epoch(online, after_loss)
    write_copies(online, mine)  # before the marker: a marker with ``spread`` always has them
    if not online.compare_and_swap_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: (None, mine.encode())}):
        return mine, True
    winner = read_epoch(online)
    assert winner is not None  # someone created it between our read and our swap
    return winner, False


def new_epoch(online: OnlineStore, after_loss: bool) -> Epoch:
    copies = copy_keys(online)
    return Epoch(uuid.uuid4().hex, datetime.now(timezone.utc), after_loss, len(copies))


def copy_keys(online: OnlineStore) -> list[bytes]:
    """Where the marker's copies go: none on a store of one node."""
    keys = online.spread_keys(EPOCH_KEY)
    return [] if keys == [EPOCH_KEY] else keys


def write_copies(online: OnlineStore, marker: Epoch) -> None:
    """The marker's copies, written *before* the marker is swapped in, so that no check ever
    sees a marker with ``spread`` whose copies are not written yet. A process that then loses
    the swap leaves copies of its own bytes: only a copy's presence is read, never its bytes."""
    if marker.spread:
        blob = marker.encode()
        online.put_blobs(EPOCH_NAMESPACE, {key: blob for key in copy_keys(online)})


def missing_copies(online: OnlineStore) -> int:
    """How many of the marker's copies are gone (0 on a store of one node)."""
    keys = copy_keys(online)
    return sum(blob is None for blob in online.get_blobs(EPOCH_NAMESPACE, keys)) if keys else 0


def copies_present(online: OnlineStore) -> bool:
    keys = copy_keys(online)
    return bool(keys) and any(blob is not None for blob in online.get_blobs(EPOCH_NAMESPACE, keys))


def replace_epoch(online: OnlineStore, current: Epoch, replacement: Epoch) -> bool:
    """Write ``replacement``'s copies, then swap the marker ``current`` for it; False when
    another process swapped it first."""
    write_copies(online, replacement)
    return not online.compare_and_swap_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: (current.encode(), replacement.encode())})
