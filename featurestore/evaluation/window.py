"""The time window of an evaluation query: the last N (``7d``, ``1h``), a range of instants
(``2026-01-01..2026-01-08``, either side may be empty), or everything.

Windows are half-open, ``start <= t < end``, and apply to an observation's event time (the
``ts`` sent with the feedback) or to a prediction's serving time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from registry.errors import ConfigError
from registry.types import parse_duration

WINDOW_HELP = (
    "a duration back from now (90s, 15m, 1h, 7d, 2w), a range START..END of ISO 8601 times "
    "(either side may be empty), or `all`"
)

MAX_SECONDS = 100 * 366 * 86_400


@dataclass(frozen=True)
class Window:
    """``start <= t < end``; None on a side means unbounded.

    >>> Window.parse("2026-01-01..2026-01-02").label
    '2026-01-01T00:00:00+00:00..2026-01-02T00:00:00+00:00'
    """

    start: datetime | None = None
    end: datetime | None = None

    @classmethod
    def parse(cls, value: str | Window | None, *, now: datetime | None = None) -> Window:
        if value is None or isinstance(value, Window):
            return value or cls()
        text = str(value).strip()
        if text in ("", "all"):
            return cls()
        now = now or datetime.now(timezone.utc)
        if ".." in text:
            left, _, right = text.partition("..")
            return cls(_instant(left, text), _instant(right, text))._checked(text)
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ConfigError(f"bad window {text!r}", hint=f"use {WINDOW_HELP}") from None
        if seconds <= 0:
            raise ConfigError(f"bad window {text!r}: it is empty", hint=f"use {WINDOW_HELP}")
        if seconds > MAX_SECONDS:
            raise ConfigError(f"bad window {text!r}: longer than 100 years", hint="use `all` for everything")
        return cls(now - timedelta(seconds=seconds), now)

    def _checked(self, text: str) -> Window:
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ConfigError(f"bad window {text!r}: it ends before it starts", hint=f"use {WINDOW_HELP}")
        return self

    @property
    def label(self) -> str:
        if self.start is None and self.end is None:
            return "all"
        return f"{self.start.isoformat() if self.start else ''}..{self.end.isoformat() if self.end else ''}"

    def shifted_back(self) -> Window:
        """The window of the same length just before this one (bounded windows only)."""
        if self.start is None or self.end is None:
            raise ConfigError("only a bounded window has a window before it", hint="pass e.g. 7d or START..END")
        return Window(self.start - (self.end - self.start), self.start)


def _instant(text: str, whole: str) -> datetime | None:
    text = text.strip()
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise ConfigError(f"bad window {whole!r}: {text!r} is not an ISO 8601 time", hint=f"use {WINDOW_HELP}") from None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
