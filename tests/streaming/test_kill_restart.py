"""Killing the stream job (a subprocess) and restarting it loses no event and counts none twice.

Three runs of ``featurestore stream`` over the same streams: the first hard-exits right after
an aggregation commit, before its online write (test-only hook, FEATURESTORE_TEST_STREAM_CRASH);
the second is SIGKILLed while events keep arriving; the third drains everything and stops on
SIGTERM. Then the online values, the aggregation state and the offline files must be exactly
what every event counted once gives.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from featurestore import FeatureStore
from featurestore.offline import layout
from materializers.stream_transforms import CRASH_ENV
from tests.streaming.helpers import (
    UTC,
    expected_agg,
    expected_last,
    group_state,
    make_events,
    make_repo,
    online,
    push_all,
    streams_of,
    us,
    wait_for,
)

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start(repo: Path, crash: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "featurestore.cli.main",
            "-r",
            str(repo),
            "stream",
            "--consumer",
            "job-1",
            "--stats-interval",
            "1s",
            "--grace",
            "0s",
            "--window",
            "10s",
            "--max-entries",
            "50",
            "--block-ms",
            "50",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_kill_and_restart_loses_nothing_and_counts_nothing_twice(
    tmp_path: Path, redis_url: str, unique_project: str, tidy: list
) -> None:
    repo = make_repo(tmp_path / "repo", unique_project, redis_url)
    tidy.append((unique_project, repo))
    store = FeatureStore(repo)
    store.apply()
    now = datetime.now(UTC)
    # Every event's windows have started (their values do not depend on when they are read).
    events = make_events(900, now - timedelta(minutes=14), now - timedelta(minutes=6), seed=5)
    first, second, third = events[0::3], events[1::3], events[2::3]
    stream_last, stream_agg = streams_of(repo)

    # 1. Dies right after its second aggregation commit, before writing online.
    push_all(store, first, chunk=100)
    job = start(repo, crash="after_commit:2")
    output = job.communicate(timeout=60)[0]
    assert job.returncode == 75, output

    # 2. SIGKILLed while events keep arriving.
    job = start(repo)
    try:
        for i in range(0, len(second), 30):
            push_all(store, second[i : i + 30], chunk=30)
            time.sleep(0.05)
        wait_for(
            lambda: group_state(redis_url, stream_agg)[0] < len(first) + len(second) - 60,
            30,
            "progress",
        )
    finally:
        job.send_signal(signal.SIGKILL)
        job.communicate(timeout=30)
    assert job.returncode == -signal.SIGKILL

    # 3. Drains everything, then stops cleanly on SIGTERM.
    push_all(store, third, chunk=100)
    job = start(repo)
    wait_for(
        lambda: (
            group_state(redis_url, stream_last)[0] == 0
            and group_state(redis_url, stream_agg) == (0, 0)
        ),
        60,
        "the job to read every entry",
    )
    time.sleep(1.0)  # a few ticks, so the offline writer sees the last windows close
    job.send_signal(signal.SIGTERM)
    output = job.communicate(timeout=60)[0]
    assert job.returncode == 0, output
    assert "stopping after the batch in hand" in output and "stopped streaming" in output
    assert group_state(redis_url, stream_last) == (0, 0)  # every entry acknowledged

    # Online: the latest event per user, and every window counted from each event once.
    assert online(store, "user_last") == expected_last(events)
    assert online(store, "user_agg") == expected_agg(events, datetime.now(UTC))

    # The aggregation state holds each event exactly once.
    client = redis.Redis.from_url(redis_url)
    total = 0
    for key in client.scan_iter(match=f"{unique_project}:__stream__:user_agg:pane:*"):
        total += sum(json.loads(v)["__events"] for v in client.hvals(key))  # keyed by column
    client.close()
    assert total == len(events)

    # Offline: every event exactly once in the plain view's stream files ...
    root = layout.view_dir(store.config.offline_path, store.project, "user_last")
    rows = pa.concat_tables(
        [pq.read_table(p) for p in root.glob("date=*/stream-*.parquet")]
    ).to_pylist()
    assert sorted((r["user_id"], us(r["event_timestamp"])) for r in rows) == sorted(
        (e["user_id"], us(e["ts"])) for e in events
    )
    # ... and every closed window of the aggregated view with its events counted once.
    root = layout.view_dir(store.config.offline_path, store.project, "user_agg")
    windows = pa.concat_tables(
        [pq.read_table(p) for p in root.glob("date=*/stream-*.parquet")]
    ).to_pylist()
    assert windows
    for w in windows:
        end = us(w["event_timestamp"])
        inside = [
            e
            for e in events
            if e["user_id"] == w["user_id"] and end - 600_000_000 <= us(e["ts"]) < end
        ]
        assert w["n_10m"] == len(inside) and w["clicks_10m"] == sum(e["clicks"] for e in inside)
    store.close()
