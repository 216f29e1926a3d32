"""Progress while a materialization runs (stderr) and its summary at the end.

DoFns add to a board of counters keyed by the run; with the in-process runner they share this
process, so a display thread can show rows read so far. On remote runners the board stays empty
here and the job's Beam metrics are polled instead (``ProgressDisplay.update``).

    >>> watch("run-1"); add("run-1", "read", 500); snapshot("run-1")
    {'read': 500}
    >>> forget("run-1")
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import IO

_BOARD: dict[str, dict[str, int]] = {}
_LOCK = threading.Lock()


def watch(key: str) -> None:
    """Start counting for run ``key`` in this process."""
    with _LOCK:
        _BOARD.setdefault(key, {})


def add(key: str | None, name: str, n: int) -> None:
    """Add ``n`` to counter ``name`` of run ``key``; a no-op unless this process watches the run
    (remote workers never do, so their boards do not fill up)."""
    if key is None or not n:
        return
    with _LOCK:
        counters = _BOARD.get(key)
        if counters is not None:
            counters[name] = counters.get(name, 0) + n


def snapshot(key: str) -> dict[str, int]:
    with _LOCK:
        return dict(_BOARD.get(key, {}))


def forget(key: str) -> None:
    with _LOCK:
        _BOARD.pop(key, None)


class ProgressDisplay:
    """A line on stderr rewritten twice a second on a terminal, printed every 10 s otherwise.

    >>> with ProgressDisplay("run-1", "user_activity", enabled=False): pass
    """

    def __init__(
        self,
        key: str,
        view: str,
        *,
        enabled: bool = True,
        stream: IO[str] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.key = key
        self.view = view
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if self.tty else 10.0
        self.remote: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = time.monotonic()

    def update(self, counters: dict[str, int]) -> None:
        """Counters from the job's metrics, for runners that do not share this process."""
        self.remote = dict(counters)

    def line(self) -> str:
        counts = {**self.remote, **snapshot(self.key)}
        elapsed = time.monotonic() - self._started
        read = counts.get("read", counts.get("source_rows", 0))
        rate = read / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.view}: {read:,} rows read ({rate:,.0f}/s), "
            f"{counts.get('partitions', counts.get('partitions_written', 0)):,} partitions, "
            f"{counts.get('online', counts.get('rows_online', 0)):,} online rows, {elapsed:.0f}s"
        )

    def _show(self, final: bool = False) -> None:
        text = self.line()
        if self.tty:
            self.stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._show()

    def __enter__(self) -> ProgressDisplay:
        self._started = time.monotonic()
        watch(self.key)
        if self.enabled:
            self._thread = threading.Thread(
                target=self._loop, name="featurestore-progress", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._show(final=True)
        forget(self.key)


@dataclass(frozen=True)
class ViewSummary:
    """What one view's run did. ``skipped`` says why nothing ran (e.g. an empty interval)."""

    view: str
    run_id: str
    start: datetime
    end: datetime
    rows_read: int
    rows_offline: int
    rows_online: int
    rows_rejected: int
    seconds: float
    rejects_path: str | None = None
    watermark: datetime | None = None
    skipped: str | None = None

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds > 0 else 0.0


def format_summary(summaries: Sequence[ViewSummary]) -> str:
    """A table of the runs, then where the rejected rows went.

    >>> from datetime import timezone
    >>> t = datetime(2026, 1, 1, tzinfo=timezone.utc)
    >>> print(format_summary([ViewSummary("v", "r", t, t, 10, 10, 5, 0, 2.0)]))  # doctest: +NORMALIZE_WHITESPACE
    view   rows read   offline   online   rejected   rows/s   seconds   interval (UTC)
    v             10        10        5          0        5       2.0   2026-01-01 00:00 .. 2026-01-01 00:00
    """
    header = (
        "view",
        "rows read",
        "offline",
        "online",
        "rejected",
        "rows/s",
        "seconds",
        "interval (UTC)",
    )
    rows = [
        (
            s.view,
            f"{s.rows_read:,}",
            f"{s.rows_offline:,}",
            f"{s.rows_online:,}",
            f"{s.rows_rejected:,}",
            f"{s.rows_per_second:,.0f}",
            f"{s.seconds:.1f}",
            s.skipped or f"{s.start:%Y-%m-%d %H:%M} .. {s.end:%Y-%m-%d %H:%M}",
        )
        for s in summaries
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: Sequence[str]) -> str:
        cells = (
            [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:-1])] + [r[-1]]
        )
        return "   ".join(cells)

    lines = [fmt(header), *(fmt(r) for r in rows)]
    for s in summaries:
        if s.rejects_path:
            lines.append(
                f"{s.view}: {s.rows_rejected:,} rejected rows (with a reason) in {s.rejects_path}"
            )
    return "\n".join(lines)
