"""OpenTelemetry traces of the server's request paths (``server.tracing.enabled``; off by default).

On, every request but ``/health`` and ``/metrics`` is a server span (the FastAPI
instrumentation, which also continues a caller's ``traceparent``), with client spans inside it for
each call to Redis: redis-py commands (the Redis instrumentation) and the hand-written async Redis
reader of ``/features`` and ``/predict`` (``featurestore.tracing``). Spans leave in batches over
OTLP/HTTP, off the request path; the app's shutdown flushes them.

Only requests start traces: a Redis call outside a request (``/health``'s checks, the feedback
maintenance thread, the token watch, the item cache's poll) would otherwise be a one-span trace
every few seconds, so the sampler drops spans that have no parent and are not server spans.

SQL on the registry database is not traced: the SQLAlchemy instrumentation of this OpenTelemetry
line refuses SQLAlchemy 2.1.

The tracer provider and the Redis instrumentation are process-wide: the first traced app of a
process sets them up with its settings, later ones share them, and the last to stop shuts them
down. A Redis instrumentation installed by someone else (``opentelemetry-instrument``) is left
alone.

Off, nothing is imported or installed: the request path is exactly the untraced one. The
libraries are the ``tracing`` extra: ``pip install 'velox-featurestore[tracing]'``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from registry.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from featurestore.config import TracingConfig
    from featurestore.store import FeatureStore

# Regexes searched in the request URL (OpenTelemetry's excluded_urls).
EXCLUDED_URLS = r"/health(\?.*)?$,/metrics(\?.*)?$"

_lock = threading.Lock()
_shared: dict[str, Any] = {}  # provider, users, redis (the instrumentor we installed, if any)


def setup_tracing(app: FastAPI, store: FeatureStore, config: TracingConfig) -> Callable[[], None]:
    """Instrument ``app`` (and, once per process, redis-py); returns the clean-up that flushes
    and stops when the last traced app of the process stops."""
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise ConfigError(
            f"server.tracing.enabled is true but OpenTelemetry is not installed ({exc.name})",
            hint="pip install 'velox-featurestore[tracing]', or set server.tracing.enabled: false",
        ) from None
    from featurestore import tracing

    with _lock:
        if not _shared:
            # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4318.
            exporter = OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint else OTLPSpanExporter()
            provider = TracerProvider(
                resource=Resource.create({"service.name": config.service_name, "featurestore.project": store.project}),
                sampler=_requests_only(config.sample_ratio),
            )
            provider.add_span_processor(BatchSpanProcessor(exporter))
            redis = RedisInstrumentor()
            ours = not redis.is_instrumented_by_opentelemetry
            if ours:
                redis.instrument(tracer_provider=provider)  # redis-py is patched process-wide
            tracing.enable(provider)
            _shared.update(provider=provider, users=0, redis=redis if ours else None)
        _shared["users"] += 1
        provider = _shared["provider"]
    FastAPIInstrumentor.instrument_app(
        app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS, exclude_spans=["receive", "send"]
    )
    closed = False

    def close() -> None:
        nonlocal closed
        with _lock:
            if closed or not _shared:
                return
            closed = True
            _shared["users"] -= 1
            if _shared["users"] > 0:
                _shared["provider"].force_flush(timeout_millis=5_000)
                return
            tracing.disable()
            if _shared["redis"] is not None:
                _shared["redis"].uninstrument()
            provider = _shared["provider"]
            _shared.clear()
        provider.shutdown()  # flushes the spans still queued

    return close


def _requests_only(ratio: float) -> Any:
    """Parent-based sampling whose roots are server spans only, kept with ``ratio``."""
    from opentelemetry.sdk.trace.sampling import (
        Decision,
        ParentBased,
        Sampler,
        SamplingResult,
        TraceIdRatioBased,
    )
    from opentelemetry.trace import SpanKind

    class RequestRoots(Sampler):
        def __init__(self) -> None:
            self.ratio = TraceIdRatioBased(ratio)

        def should_sample(self, parent_context: Any, trace_id: int, name: str, kind: Any = None,
                          attributes: Any = None, links: Any = None, trace_state: Any = None) -> SamplingResult:
            if kind is not SpanKind.SERVER:
                return SamplingResult(Decision.DROP)
            return self.ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self) -> str:
            return f"RequestRoots({ratio})"

    return ParentBased(RequestRoots())
