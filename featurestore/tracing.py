"""Spans around the calls the OpenTelemetry instrumentations cannot see (the hand-written async
Redis reader), off until the server turns tracing on (``online_server.tracing``).

Off (the default), ``span`` is one attribute test and a shared no-op context manager: no
OpenTelemetry import, nothing allocated per call. On, it is a span of the tracer provider the
server configured, a child of the request's span.

    >>> with span("redis MGET", {"db.system": "redis"}):  # doctest: +SKIP
    ...     ...
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

_NULL = nullcontext()
_tracer: Any = None


def enable(tracer_provider: Any) -> None:
    """Make ``span`` record through ``tracer_provider`` (an OpenTelemetry SDK provider)."""
    global _tracer
    _tracer = tracer_provider.get_tracer("featurestore")


def disable() -> None:
    global _tracer
    _tracer = None


def enabled() -> bool:
    return _tracer is not None


def span(name: str, attributes: Mapping[str, Any] | None = None) -> AbstractContextManager[Any]:
    """A client span named ``name`` while tracing is on; else a no-op."""
    if _tracer is None:
        return _NULL
    from opentelemetry.trace import SpanKind

    return _tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=dict(attributes or {}))
