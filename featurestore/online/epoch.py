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

    def encode(self) -> bytes:
        return json.dumps(
            {"v": FORMAT_VERSION, "epoch": self.epoch, "created_at": self.created_at.isoformat(),
             "after_loss": self.after_loss},
            separators=(",", ":"), sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, blob: bytes) -> Epoch:
        try:
            data = json.loads(blob)
            if data["v"] != FORMAT_VERSION:
                raise ValueError(f"format {data['v']}")
            return cls(str(data["epoch"]), datetime.fromisoformat(data["created_at"]), bool(data["after_loss"]))
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
    mine = Epoch(uuid.uuid4().hex, datetime.now(timezone.utc), after_loss)
    if not online.compare_and_swap_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: (None, mine.encode())}):
        return mine, True
    winner = read_epoch(online)
    assert winner is not None  # someone created it between our read and our swap
    return winner, False
