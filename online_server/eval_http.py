"""``GET /eval`` and its three questions, over HTTP (role ``admin``): the evaluation store of
``featurestore.evaluation`` as JSON (docs/evaluation.md).

    GET /eval?model=taste&metric=rmse&slice=users&window=7d&every=1d   evaluate
    GET /eval/validation?model=taste&window=7d                         drift_vs_validation
    GET /eval/compare?model=taste&a=1&b=2&window=7d                    compare_versions
    GET /eval/drift?model=taste&window=1h&reference=7d                 feature_drift

``model``, ``metric`` and ``slice`` may be repeated or comma-separated. Every answer is
``{"window", "notes", "rows"}`` (``drift`` adds ``weighted_drift`` and the sample sizes). A bad
or missing parameter is a 400 naming it (parameters are strings parsed here, never a FastAPI
422, whose ``fields`` would name a query key where the server's 422s name body keys), an
unknown model or version a 404 with the nearest name. The
handlers are plain ``def``: FastAPI runs them in its thread pool, so a query over a long window
never blocks the event loop that serves predictions.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from online_server.console import access
from online_server.http import ERRORS, ErrorResponse
from registry.errors import ConfigError

# A bad parameter (window, metric, slice, bucket size) is a 400 (ConfigError), besides the usual.
RESPONSES: dict[int | str, dict[str, Any]] = {**ERRORS, 400: {"model": ErrorResponse}}

Models = Annotated[list[str] | None, Query(description="MODEL or MODEL:VERSION; repeat (default: every model)")]
Metrics = Annotated[list[str] | None, Query(description="metric names; repeat (default: by the model's loss)")]
Slices = Annotated[list[str] | None, Query(description="all, users, items, slice_column; repeat (default: all)")]
Window = Annotated[str, Query(description="7d, 1h, START..END (ISO 8601) or all")]


def router(store: Any) -> APIRouter:
    """The evaluation routes for ``store`` (a ``FeatureStore``)."""
    routes = APIRouter()

    @routes.get("/eval", responses=RESPONSES, tags=["evaluation"])
    def evaluate_route(
        request: Request,
        model: Models = None,
        metric: Metrics = None,
        slice: Slices = None,
        window: Window = "7d",
        every: Annotated[str | None, Query(description="bucket size for loss over time, e.g. 1d")] = None,
    ) -> Any:
        """Metrics per model version and slice over a window."""
        from featurestore.evaluation import evaluate, notes_of

        access.check(request, cookie=False)
        table = evaluate(store, models=_flat(model), metrics=_flat(metric), slices=_flat(slice), window=window, every=every)
        return _answer(table, notes=notes_of(table))

    @routes.get("/eval/validation", responses=RESPONSES, tags=["evaluation"])
    def validation_route(
        request: Request,
        model: Annotated[list[str] | None, Query(description="default: the active version of every model")] = None,
        window: Window = "7d",
    ) -> Any:
        """How much worse than at training (validation) is each model over the window."""
        from featurestore.evaluation import drift_vs_validation

        access.check(request, cookie=False)
        return _answer(drift_vs_validation(store, models=_flat(model), window=window))

    @routes.get("/eval/compare", responses=RESPONSES, tags=["evaluation"])
    def compare_route(
        request: Request,
        model: Annotated[str | None, Query(description="the model (required)")] = None,
        a: Annotated[str | None, Query(description="version A (required)")] = None,
        b: Annotated[str | None, Query(description="version B (required)")] = None,
        metric: Metrics = None,
        slice: Slices = None,
        window: Window = "7d",
    ) -> Any:
        """Versions A and B on every slice over the same window."""
        from featurestore.evaluation import compare_versions, notes_of

        access.check(request, cookie=False)
        name = _required("model", model)
        version_a, version_b = _version("a", a, required=True), _version("b", b, required=True)
        assert version_a is not None and version_b is not None  # required=True raised otherwise
        table = compare_versions(store, name, version_a, version_b, window=window, metrics=_flat(metric),
                                 slices=_flat(slice))
        return _answer(table, notes=notes_of(table))

    @routes.get("/eval/drift", responses=RESPONSES, tags=["evaluation"])
    def drift_route(
        request: Request,
        model: Annotated[str | None, Query(description="the model (required)")] = None,
        window: Window = "1h",
        reference: Annotated[str | None, Query(description="START..END or a duration before the window")] = None,
        version: Annotated[str | None, Query(description="default: the active version")] = None,
    ) -> Any:
        """Per-feature drift of served vectors, weighted by |w| of the average user."""
        from featurestore.evaluation import feature_drift

        access.check(request, cookie=False)
        table = feature_drift(store, _required("model", model), window=window, reference=reference,
                              version=_version("version", version, required=False))
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        extra = {
            "weighted_drift": float(meta["weighted_drift"]) if meta.get("weighted_drift") else None,
            "reference": meta.get("reference_window"), "window_vectors": int(meta.get("window_vectors", 0)),
            "reference_vectors": int(meta.get("reference_vectors", 0)), "version": int(meta.get("version", 0)),
        }
        return _answer(table, **extra)

    return routes


def _required(name: str, value: str | None) -> str:
    if value is None or not value.strip():
        raise ConfigError(f"the query parameter `{name}` is required", hint=f"add ?{name}=... to the URL")
    return value.strip()


def _version(name: str, value: str | None, *, required: bool) -> int | None:
    # Parsed here rather than by FastAPI, so a bad one is a 400 naming the parameter, like
    # every other bad parameter of these routes (FastAPI would answer a 422 about `query.a`).
    if value is None or not value.strip():
        if required:
            _required(name, value)
        return None
    text = value.strip().lstrip("v")
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ConfigError(f"bad `{name}` {value[:20]!r}: a version is a whole number from 1",
                          hint="list versions with `featurestore models list MODEL`")
    return int(text)


def _flat(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _answer(table: Any, notes: list[str] | None = None, **extra: Any) -> JSONResponse:
    meta = table.schema.metadata or {}
    rows = [{k: _plain(v) for k, v in r.items()} for r in table.to_pylist()]
    return JSONResponse({"window": meta.get(b"window", b"").decode(), "notes": notes or [], **extra, "rows": rows})
