"""The epoch marker (featurestore/online/epoch.py): its bytes are pinned, and exactly one of the
processes racing to create it does, on every backend."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from featurestore.online.base import OnlineStore
from featurestore.online.epoch import EPOCH_KEY, EPOCH_NAMESPACE, Epoch, ensure_epoch, read_epoch
from registry.errors import DataError

GOLDEN = (
    b'{"after_loss":true,"created_at":"2026-12-03T13:00:00+00:00",'
    b'"epoch":"0123456789abcdef0123456789abcdef","v":1}'
)


def test_the_marker_layout_is_pinned() -> None:
    marker = Epoch("0123456789abcdef0123456789abcdef", datetime(2026, 12, 3, 13, tzinfo=timezone.utc), True)
    assert marker.encode() == GOLDEN
    assert Epoch.decode(GOLDEN) == marker


@pytest.mark.parametrize("blob", [b"not json", b'{"v":2,"epoch":"x","created_at":"2026-12-03","after_loss":false}', b"{}"])
def test_an_unreadable_marker_is_a_data_error_with_a_hint(blob: bytes) -> None:
    with pytest.raises(DataError) as err:
        Epoch.decode(blob)
    assert "epoch marker" in err.value.message and err.value.hint


def test_exactly_one_creator(store: OnlineStore) -> None:
    assert read_epoch(store) is None
    first, created = ensure_epoch(store, after_loss=True)
    second, again = ensure_epoch(store)
    assert (created, again) == (True, False) and second == first and second.after_loss
    # A racer whose read saw no marker loses the swap and adopts the winner's.
    assert store.compare_and_swap_blobs(EPOCH_NAMESPACE, {EPOCH_KEY: (None, b"x")}) == [EPOCH_KEY]
    assert read_epoch(store) == first
