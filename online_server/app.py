"""The FastAPI application: ``POST /features``, ``GET /health`` and ``GET /metrics`` here, and
the routers of the other endpoints included: ``/predict`` (``predict``), ``/feedback``
(``feedback``), ``/push`` (``push``) and ``/models/...`` (``models_admin``).

Imports run one way: this module imports the route modules, they import ``online_server.http``
(error bodies, body parsing, shutdown hooks) and ``online_server.metrics``, never this module.

Handlers are ``async def``. ``POST /features`` awaits the online store's asyncio read (on Redis,
a pipelined connection per worker, see ``featurestore.online.redis_async``), so one worker keeps
serving while replies are on their way; the other handlers call the store directly, since a
read on loopback costs less than a hop to the thread pool. Errors go through one handler that
reads ``http_status`` from the project's error root, so a store that is down is a 503 with a
message, never a 500 with a traceback.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurestore.config import CONFIG_FILE, load_config
from featurestore.store import FeatureStore
from online_server import eval_http, feedback, models_admin, predict, push
from online_server import metrics as m
from online_server.api_docs import mount_api_docs
from online_server.auth import AuthMiddleware, TokenAuth
from online_server.body_guard import BodyGuard
from online_server.console import router as console_router
from online_server.tracing import setup_tracing
from online_server.http import (
    ERRORS,
    body_errors,
    error_response,
    json_body,
    on_shutdown,
    validation_response,
)
from online_server.schemas import FeaturesRequest, FeaturesResponse, HealthResponse
from registry.errors import FeatureStoreError, InputError, StoreUnavailableError


class ServerMetrics:
    def __init__(self, store: FeatureStore) -> None:
        self.registry = m.Registry()
        self.requests = self.registry.add(
            m.Counter("featurestore_requests_total", "HTTP requests by endpoint and status.", ("endpoint", "status"))
        )
        self.latency = self.registry.add(
            m.Histogram("featurestore_request_seconds", "Request latency by endpoint.", ("endpoint",))
        )
        self.store_errors = self.registry.add(
            m.Counter("featurestore_store_errors_total", "Errors from a backing store.", ("store",))
        )
        self.freshness = self.registry.add(
            m.Gauges(
                "featurestore_feature_freshness_seconds",
                "Seconds since the newest materialized event of each online feature view.",
                "feature_view",
                store.feature_freshness,
            )
        )
        self.registry.add(m.Collected("featurestore_online_store_data", _DATA_FAMILIES, lambda: _data_samples(store)))


_DATA_FAMILIES = (
    m.Family(
        "featurestore_online_store_data_losses_total",
        "Times this process found the online store emptied (its epoch marker gone or replaced).",
        # Every worker finds every loss: the answering worker's count, not the workers' sum.
        "counter", (), "d", per_process=False,
    ),
    m.Family(
        "featurestore_online_store_view_lost",
        "1 for each view whose online values were lost and not materialized since (as of the last check).",
        "gauge", ("feature_view",), "d",
    ),
)


def _data_samples(store: FeatureStore) -> list[dict[tuple[Any, ...], Any] | None]:
    # Read from the guard's last check (by /health or the maintenance thread), never a new one.
    guard = store.__dict__.get("online_guard")
    if guard is None:
        return [{(): 0}, {}]
    last = guard.last
    return [{(): guard.losses}, {(v,): 1 for v in (last.rematerialize if last else ())}]


class _TimingMiddleware:
    """Pure ASGI (cheaper than BaseHTTPMiddleware): counts and times every request."""

    def __init__(self, app: Any, server_metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = server_metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.inc(endpoint, str(status[0]))
            self.metrics.latency.observe(time.perf_counter() - start, endpoint)


class _Route:
    """What the timing middleware reads from ``scope["route"]`` for a fast-path request."""

    def __init__(self, path: str) -> None:
        self.path = path


class _FastPath:
    """Pure ASGI: serves the hot endpoints (``POST /features``, ``POST /predict``), each with a
    plain function from raw body to response, ahead of FastAPI's routing, dependency resolution
    and exception middleware (about a quarter of a request's cost). ``errors`` turns what a
    handler raises into the response the app's exception handlers would give."""

    def __init__(
        self, app: Any, handlers: dict[str, Callable[[bytes], Any]], errors: Callable[[Exception], Any]
    ) -> None:
        self.app = app
        self.handlers = handlers
        self.routes = {path: _Route(path) for path in handlers}
        self.errors = errors

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        handler = self.handlers.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["route"] = self.routes[scope["path"]]
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body"):
            chunks = [body]
            while message.get("more_body"):
                message = await receive()
                chunks.append(message.get("body", b""))
            body = b"".join(chunks)
        try:
            response = await handler(body)
        except (RequestValidationError, FeatureStoreError) as exc:
            response = self.errors(exc)
        await response(scope, receive, send)


def create_app(store: FeatureStore, *, owns_store: bool = False) -> FastAPI:
    """The server for one feature repository. With ``owns_store`` the app closes the store when
    it stops (after its own clean-ups); otherwise the caller does.

    >>> app = create_app(FeatureStore("my_repo"))  # doctest: +SKIP
    """
    app = FastAPI(
        title="featurestore online server",
        version="0.1.0",
        description="Online features, per-user model predictions and feedback (Velox-style).",
        docs_url=None,  # served from local files (online_server.api_docs), not a CDN
        redoc_url=None,
    )
    mount_api_docs(app)
    server_metrics = ServerMetrics(store)
    app.state.store = store
    app.state.metrics = server_metrics

    def store_error_response(exc: FeatureStoreError) -> JSONResponse:
        if isinstance(exc, StoreUnavailableError):
            server_metrics.store_errors.inc("online")
        fields = [{"field": exc.field, "message": exc.reason}] if isinstance(exc, InputError) else None
        return error_response(exc.http_status, type(exc).__name__, exc.message, exc.hint, exc.retryable, fields)

    @app.exception_handler(FeatureStoreError)
    async def _store_error(request: Request, exc: FeatureStoreError) -> JSONResponse:
        return store_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # An unknown path (404) or method (405) answers the same error object as the rest.
        response = error_response(exc.status_code, "HTTPError", str(exc.detail),
                                  "see the endpoints at /docs" if exc.status_code in (404, 405) else None)
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc.errors())

    async def features_response(raw: bytes) -> JSONResponse:
        """The whole of POST /features, from the raw body to the response (errors included)."""
        try:
            body = FeaturesRequest.model_validate_json(raw)
            wanted = body.feature_service if body.feature_service is not None else body.features
            response = await store.get_online_features_async(
                wanted,  # type: ignore[arg-type]
                body.entity_rows,
                full_names=body.full_names,
                with_timestamps=body.include_timestamps,
            )
        except ValidationError as exc:
            return validation_response(body_errors(exc))
        except FeatureStoreError as exc:
            return store_error_response(exc)
        stamps = response.event_timestamps
        statuses = response.statuses
        columns = {
            name: (
                {"values": values, "statuses": statuses[name], "event_timestamps": stamps[name]}
                if stamps is not None
                else {"values": values, "statuses": statuses[name]}
            )
            for name, values in response.values.items()
        }
        # A plain JSONResponse: the shape is fixed above, re-validating it would cost latency.
        return JSONResponse(
            {"registry_version": store.watcher.version, "entity_rows": len(response), "features": columns}
        )

    def fast_path_error(exc: Exception) -> JSONResponse:
        if isinstance(exc, RequestValidationError):
            return validation_response(exc.errors())
        return store_error_response(exc)  # type: ignore[arg-type]

    # /predict's router is made here, before the middleware, for its raw-body handler.
    registry = server_metrics.registry
    cleanups: list[Callable[[], Any]] = []
    predict_endpoint = predict.endpoint(store, registry, cleanups.append)
    # The hot endpoints bypass FastAPI's routing and dependency resolution (about a quarter of
    # their cost); the declared routes stay for the OpenAPI schema and /docs.
    app.add_middleware(
        _FastPath,
        handlers={"/features": features_response, "/predict": predict_endpoint.respond},
        errors=fast_path_error,
    )
    # JSON bodies of bounded size only (415, 413), before anything reads a body.
    app.add_middleware(BodyGuard, max_body_bytes=store.config.server.max_body_bytes)
    # Middleware added last runs first: auth refuses a request before any work, then timing.
    app.add_middleware(_TimingMiddleware, server_metrics=server_metrics)
    # Tokens follow featurestore.yaml and the registry's revocations without a restart; nothing
    # is read until start() (app_from_environment) or the first request.
    root = store.config.root
    auth = TokenAuth.watching(
        root / CONFIG_FILE,
        lambda: load_config(root).server.tokens,
        store.registry.engine,
        store.project,
        tokens=store.config.server.tokens,
    )
    app.state.auth = auth
    app.add_middleware(AuthMiddleware, auth=auth)

    @app.post(
        "/features",
        response_model=FeaturesResponse,
        responses=ERRORS,
        tags=["features"],
        openapi_extra=json_body(FeaturesRequest),
    )
    async def features(request: Request) -> Any:
        """The latest value of each feature for each entity row, with a status per value."""
        return await features_response(await request.body())

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}}, tags=["operations"])
    def health() -> Any:
        """Checks the stores the server depends on: the online store and the registry."""
        checks: dict[str, str] = {}
        version = None
        weakened: list[str] = []
        try:
            # Every node of a Redis Cluster, not only the one a PING reaches.
            weakened = store.online_store.check_health()
            checks["online_store"] = "ok"
        except FeatureStoreError as exc:
            checks["online_store"] = exc.message
        try:
            version = store.registry.head_version()
            checks["registry"] = "ok"
        except FeatureStoreError as exc:
            checks["registry"] = exc.message
        except Exception as exc:  # noqa: BLE001 - a driver error is a failed check, not a crash
            checks["registry"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ok = all(v == "ok" for v in checks.values())
        status = "ok" if ok else "unavailable"
        if ok and weakened:
            # Still serving every key (200, so a balancer keeps the server), with less redundancy.
            checks["online_store_redundancy"] = "; ".join(weakened)
            status = "degraded"
        body: dict[str, Any] = {"status": status, "checks": checks, "registry_version": version}
        if ok:
            # Did the online store lose its data (Redis restarted empty)? The guard rebuilds the
            # model states from the log; lost views are reported until they are re-materialized.
            try:
                data = store.online_guard.check(wait=False)  # never queue probes behind a restore
            except Exception as exc:  # noqa: BLE001 - a failed check is reported, not a 500
                checks["online_data"] = exc.message if isinstance(exc, FeatureStoreError) else f"{type(exc).__name__}: {exc}"
                body["status"] = "degraded"
            else:
                body["online_data"] = data.to_dict()
                checks["online_data"] = "ok" if data.ok else (
                    f"lost at {data.lost_at.isoformat() if data.lost_at else '?'}; re-materialize: "
                    + ", ".join(data.rematerialize)
                )
                if not data.ok:
                    body["status"] = "degraded"  # still serving: 200, so a balancer keeps it
        return JSONResponse(body, status_code=200 if ok else 503)

    # Included in this order, their metrics show in /metrics in this order. When the app stops,
    # the routers' clean-ups run in the order they were given: the prediction log is written
    # out, then the feedback thread is stopped, then (``owns_store``) the store is closed.
    starters: list[Callable[[], Any]] = [auth.start]
    app.include_router(predict_endpoint.router)
    app.state.predictor = store.predictor  # the one /predict serves with
    app.include_router(feedback.router(store, registry, cleanups.append, starters.append))
    app.include_router(push.router(store, registry))
    app.include_router(models_admin.router(store, registry))
    app.include_router(eval_http.router(store))
    app.include_router(console_router(store))
    cleanups.append(auth.close)  # before the store: its thread reads through the store's engine
    if store.config.server.tracing.enabled:
        cleanups.append(setup_tracing(app, store, store.config.server.tracing))  # flushes spans
    if owns_store:
        cleanups.append(store.close)
    on_shutdown(app, *cleanups)
    # What a real server starts before its first request (app_from_environment): the token
    # watch, and the feedback maintenance (catch-up, online data checks) of a server of models.
    app.state.start = lambda: [start() for start in starters]

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def metrics() -> PlainTextResponse:
        """Prometheus text format."""
        return PlainTextResponse(server_metrics.registry.render(), media_type="text/plain; version=0.0.4")

    return app


def app_from_environment() -> FastAPI:
    """Factory for uvicorn workers: the repository comes from FEATURESTORE_REPO."""
    import os

    # A server follows activations, rollbacks and new materializations within a second.
    store = FeatureStore(os.environ.get("FEATURESTORE_REPO", "."), registry_refresh_seconds=1.0)
    store.watcher.refresh(force=True)
    app = create_app(store, owns_store=True)
    app.state.start()
    # Everything loaded so far (FastAPI, SQLAlchemy, pydantic, the registry: ~120,000 objects)
    # lives as long as the process. Left to the collector, each full collection walks all of
    # it, 70 ms here, and stalls every request in flight: the p99 under load was 4x the bare
    # endpoint's. Frozen, they are never scanned again; requests' garbage is collected as usual.
    gc.collect()
    gc.freeze()
    return app


def build_openapi() -> dict[str, Any]:
    """The OpenAPI schema without a repository: routes are registered against a stand-in store
    whose methods are never called (only ``create_app``'s route declarations run)."""
    from featurestore.config import RepoConfig

    class _Inert:
        """Stands in for anything the route declarations reach; fails if actually used."""

        def __getattr__(self, name: str) -> Any:
            return self

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the schema-only store cannot serve requests")

    class _SchemaOnlyStore(_Inert):
        config = RepoConfig(project="docs")
        project = "docs"

    app = create_app(_SchemaOnlyStore())  # type: ignore[arg-type]
    return app.openapi()
