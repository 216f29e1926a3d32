"""While the stream job runs, an aggregated view's online value covers the whole window, not
only the panes of the micro-batch that touched the entity last (issue 14, defect 1b)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from featurestore import FeatureStore
from materializers.stream_plan import StreamOptions
from tests.streaming.drive import StreamDriver
from tests.streaming.helpers import UTC, expected_agg, make_repo, online, us

pytestmark = pytest.mark.integration
STEP = 300_000_000  # the helper view's slide: 5 minutes


def _settled_now() -> datetime:
    """Now, at least 5 s before the next slide boundary (the test must not straddle one)."""
    left = STEP - us(datetime.now(UTC)) % STEP
    if left < 5_000_000:
        time.sleep(left / 1e6 + 0.5)
    return datetime.now(UTC)


def test_a_later_micro_batch_of_newer_events_keeps_the_whole_window_online(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    repo = make_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    now = _settled_now()
    pane_start = datetime.fromtimestamp(us(now) // STEP * STEP / 1e6, UTC)
    # Older events (the previous pane) first, then newer ones (the current pane), each read as
    # its own micro-batch: the second must not replace the window by its own panes.
    older = [
        {"user_id": u, "ts": pane_start - timedelta(seconds=200 - i), "clicks": 1, "amount": 0.5,
         "page": "home"}
        for i in range(20) for u in (1, 2)
    ]
    newer = [
        {"user_id": u, "ts": pane_start + timedelta(microseconds=i), "clicks": 2, "amount": 1.0,
         "page": "cart"}
        for i in range(3) for u in (1, 2)
    ]
    with StreamDriver(store, "user_agg", StreamOptions(consumer="t", grace_seconds=0)) as job:
        store.push("user_agg", older)
        job.drain()
        store.push("user_agg", newer)
        job.drain()
        got = online(store, "user_agg")
    assert got == expected_agg(older + newer, now)
    assert {u: v[1][0] for u, v in got.items()} == {1: 23, 2: 23}  # n_10m: both panes
    store.close()
