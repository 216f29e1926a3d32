"""OpenTelemetry traces of the server's request paths (``server.tracing.enabled``; off by default).

On, every request but ``/health`` and ``/metrics`` is a server span (the FastAPI
instrumentation, which also continues a caller's ``traceparent``), with client spans inside it for
each call that leaves the process: redis-py commands (the Redis instrumentation), SQL on the
registry database (the SQLAlchemy instrumentation) and the hand-written async Redis reader of
``/features`` and ``/predict`` (``featurestore.tracing``). Spans leave in batches over OTLP/HTTP,
off the request path; the app's shutdown flushes them.

Off, nothing is imported or installed: the request path is exactly the untraced one. The
libraries are the ``tracing`` extra: ``pip install 'velox-featurestore[tracing]'``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from registry.errors import ConfigError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from featurestore.config import TracingConfig
    from featurestore.store import FeatureStore

EXCLUDED_URLS = "/health,/metrics"


def setup_tracing(app: FastAPI, store: FeatureStore, config: TracingConfig) -> Callable[[], None]:
    """Instrument ``app`` and the store's clients; returns the clean-up that flushes and stops."""
    try:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
        from opentelemetry.instrumentation.redis import RedisInstrumentor
        from opentelemetry.instrumentation.sqlalchemy import SQLAlchemyInstrumentor
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError as exc:
        raise ConfigError(
            f"server.tracing.enabled is true but OpenTelemetry is not installed ({exc.name})",
            hint="pip install 'velox-featurestore[tracing]', or set server.tracing.enabled: false",
        ) from None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from featurestore import tracing

    # None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4318.
    exporter = OTLPSpanExporter(endpoint=config.endpoint) if config.endpoint else OTLPSpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name, "featurestore.project": store.project}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=provider, excluded_urls=EXCLUDED_URLS)
    redis = RedisInstrumentor()
    if not redis.is_instrumented_by_opentelemetry:
        redis.instrument(tracer_provider=provider)  # redis-py is patched process-wide
    sql = SQLAlchemyInstrumentor()
    instrumented = sql.instrument(engine=store.registry.engine, tracer_provider=provider)
    tracing.enable(provider)

    def close() -> None:
        tracing.disable()
        if instrumented is not None and hasattr(instrumented, "disable"):
            instrumented.disable()
        if redis.is_instrumented_by_opentelemetry:
            redis.uninstrument()
        provider.shutdown()  # flushes the spans still queued

    return close
