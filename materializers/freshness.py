"""Freshness of the stream job: the lag from an event's timestamp to its online visibility.

Lags go into a histogram of log-spaced buckets (1 ms to about 4.5 h, 7.5% wide): the interval's
p50/p99, events/s and the largest lag are printed every ``--stats-interval`` and written to the
online store as one JSON blob per view (``put_blobs("stream_stats", {view: json})``), with the
cumulative bucket counts since the job started, so a reader can take quantiles over any span
(the difference of two snapshots, as Prometheus does). The server's ``/metrics`` shows the
blob's figures (online_server/push.py).

    >>> stats = LagStats("clicks")
    >>> stats.add(np.array([0.05, 0.2, 0.2]), events=3)
    >>> round(stats.snapshot(now=stats.started + 1.0)["lag_p50_seconds"], 3)  # its bucket's bound
    0.211
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

STATS_NAMESPACE = "stream_stats"
#: Bucket upper bounds, seconds: 1 ms * 1.075^i.
BOUNDS = 0.001 * 1.075 ** np.arange(220)


def quantile(counts: np.ndarray, q: float) -> float | None:
    """The ``q`` quantile of a bucket histogram, as the upper bound of its bucket (None if
    empty). Lags beyond the last bound count in the last bucket."""
    total = counts.sum()
    if total == 0:
        return None
    index = int(np.searchsorted(np.cumsum(counts), q * total, side="left"))
    return float(BOUNDS[min(index, len(BOUNDS) - 1)])


class LagStats:
    """Lags and counts of one view, for the current interval and since the start."""

    def __init__(self, view: str) -> None:
        self.view = view
        self.started = time.time()
        self.cumulative = np.zeros(len(BOUNDS), dtype=np.int64)
        self.events_total = 0
        self.rejected_total = 0
        self.late_total = 0
        self._reset(self.started)

    def _reset(self, now: float) -> None:
        self.interval = np.zeros(len(BOUNDS), dtype=np.int64)
        self.interval_events = 0
        self.interval_max = 0.0
        self.interval_started = now

    def add(self, lags: np.ndarray, events: int, rejected: int = 0, late: int = 0) -> None:
        """``lags``: seconds, one per event made visible online; ``events``: entries handled."""
        if len(lags):
            index = np.minimum(np.searchsorted(BOUNDS, lags, side="left"), len(BOUNDS) - 1)
            counts = np.bincount(index, minlength=len(BOUNDS))
            self.interval += counts
            self.cumulative += counts
            self.interval_max = max(self.interval_max, float(np.max(lags)))
        self.interval_events += events
        self.events_total += events
        self.rejected_total += rejected
        self.late_total += late

    def snapshot(self, now: float | None = None, **extra: Any) -> dict[str, Any]:
        """The figures of the interval so far (and the totals); does not start a new one."""
        now = time.time() if now is None else now
        seconds = max(now - self.interval_started, 1e-9)
        return {
            "view": self.view,
            "updated_at": now,
            "interval_seconds": seconds,
            "events": self.interval_events,
            "events_per_second": self.interval_events / seconds,
            "lag_p50_seconds": quantile(self.interval, 0.5),
            "lag_p99_seconds": quantile(self.interval, 0.99),
            "lag_max_seconds": self.interval_max if self.interval.any() else None,
            "events_total": self.events_total,
            "rejected_total": self.rejected_total,
            "late_dropped_total": self.late_total,
            "histogram": {
                "bounds_growth": 1.075,
                "first_bound": 0.001,
                "counts": _sparse(self.cumulative),
            },
            **extra,
        }

    def report(self, now: float | None = None, **extra: Any) -> dict[str, Any]:
        """``snapshot``, then start a new interval."""
        now = time.time() if now is None else now
        snap = self.snapshot(now, **extra)
        self._reset(now)
        return snap


def _sparse(counts: np.ndarray) -> dict[str, int]:
    return {str(i): int(c) for i, c in enumerate(counts.tolist()) if c}


def histogram_counts(blob: dict[str, Any]) -> np.ndarray:
    """The cumulative bucket counts of a stats blob, dense."""
    out = np.zeros(len(BOUNDS), dtype=np.int64)
    for i, c in blob.get("histogram", {}).get("counts", {}).items():
        out[int(i)] = c
    return out


def format_line(stats: dict[str, Any]) -> str:
    """One line for the job's output.

    >>> format_line({"view": "v", "events_per_second": 1200.0, "lag_p50_seconds": 0.1,
    ...              "lag_p99_seconds": 0.5, "interval_seconds": 10.0, "pending": 3,
    ...              "rejected_total": 0, "late_dropped_total": 0})
    'v: 1,200 events/s, lag p50 0.100 s p99 0.500 s (last 10 s), pending 3, rejected 0, late 0'
    """

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f} s"

    return (
        f"{stats['view']}: {stats['events_per_second']:,.0f} events/s, "
        f"lag p50 {fmt(stats['lag_p50_seconds'])} p99 {fmt(stats['lag_p99_seconds'])} "
        f"(last {stats['interval_seconds']:.0f} s), pending {stats.get('pending', '-')}, "
        f"rejected {stats['rejected_total']}, late {stats['late_dropped_total']}"
    )


def encode(stats: dict[str, Any]) -> bytes:
    return json.dumps(stats, separators=(",", ":")).encode()
