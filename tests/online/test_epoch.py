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


def test_a_spread_marker_is_pinned_and_an_old_one_reads_as_unspread() -> None:
    marker = Epoch("0123456789abcdef0123456789abcdef", datetime(2026, 12, 3, 13, tzinfo=timezone.utc), False, 64)
    assert marker.encode() == (
        b'{"after_loss":false,"created_at":"2026-12-03T13:00:00+00:00",'
        b'"epoch":"0123456789abcdef0123456789abcdef","spread":64,"v":1}'
    )
    assert Epoch.decode(marker.encode()) == marker and Epoch.decode(GOLDEN).spread == 0


def test_spread_keys_land_one_per_bucket_of_the_cluster_layout() -> None:
    from binascii import crc_hqx

    from featurestore.online.redis_cluster_store import _spread_keys
    from featurestore.online.redis_keys import BUCKETS

    keys = _spread_keys(EPOCH_KEY)
    assert [crc_hqx(k, 0) % BUCKETS for k in keys] == list(range(BUCKETS))
    assert keys[:3] == (b"epoch@0.40", b"epoch@1.10", b"epoch@2.68")  # pinned: a change loses old copies


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
