"""``POST /predict``: scores of candidate items for a user from a per-user linear model.

The route is a thin shell around ``featurestore.models.serving.Predictor`` (shared with the
SDK): parse the body in one pydantic-core pass, await ``predict_async`` (the feature misses and
the user's state are read in one awaited step, so the worker serves other requests meanwhile),
return JSON. ``endpoint`` gives the declared route (for the OpenAPI schema and /docs) and the
handler from raw body to response that the app serves ``POST /predict`` with, ahead of
FastAPI's routing (``app._FastPath``); it also registers the model metrics (predictions per
model, feature cache hit rate, prediction log backlog) and has the prediction log's writer
thread stopped when the app shuts down, after writing what is queued.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from featurestore.models.serving import Predictor
from featurestore.store import FeatureStore
from online_server import metrics as m
from online_server.http import ERRORS, ShutdownHook, json_body, parse_json

JoinKeyValue = int | str


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PredictRequest(_Body):
    model: str = Field(description="The model's name.")
    user: dict[str, JoinKeyValue] = Field(min_length=1, description="The user's join keys.")
    items: list[dict[str, JoinKeyValue]] = Field(
        min_length=1, max_length=10_000, description="Candidate items: one mapping of join keys each."
    )
    k: int | None = Field(None, ge=1, description="Return the top k items by score (+ bonus); default: all, in input order.")
    request_features: dict[str, float] | None = Field(
        None, description="Values of the model's request features."
    )


class ItemScore(_Body):
    item: dict[str, JoinKeyValue]
    score: float | None = Field(description="w·x; null when the item could not be scored (see status).")
    status: str = Field(
        description="present; prior (an item its feature job has not learned yet, scored with the average "
        "item's features); not_found, expired or null (a feature value is null): not scored."
    )
    bonus: float | None = Field(None, description="LinUCB exploration bonus, when the model explores.")
    probability: float | None = Field(None, description="σ(score), for logistic models.")


class PredictResponse(_Body):
    prediction_id: str
    model: str
    model_version: int
    scores: list[ItemScore]


class Endpoint(NamedTuple):
    """The declared route, and the whole of ``POST /predict`` from the raw body to the response
    (raises ``RequestValidationError`` or a ``FeatureStoreError``, as the route does)."""

    router: APIRouter
    respond: Callable[[bytes], Awaitable[Response]]


def endpoint(store: FeatureStore, registry: m.Registry, at_shutdown: ShutdownHook) -> Endpoint:
    """``POST /predict``, with the model metrics added to ``registry`` and the predictor closed
    (its log written out) through ``at_shutdown``."""
    # The store's own predictor: one feature cache and one prediction log per process, shared
    # with SDK calls made in it.
    predictor: Predictor = store.predictor
    predictions = registry.add(
        m.Counter("featurestore_predictions_total", "Predictions served, by model and version.", ("model", "version"))
    )
    scored = registry.add(
        m.Counter("featurestore_predicted_items_total", "Candidate items scored, by model.", ("model",))
    )
    cache = predictor.cache
    # Read from the cache's own counters at scrape time: a delta taken around an awaited call
    # would also count the lookups of the requests served meanwhile.
    registry.add(
        m.Collected(
            "featurestore_feature_cache_lookups_total",
            [m.Family("featurestore_feature_cache_lookups_total", "Item feature cache lookups by result.",
                      "counter", ("result",))],
            lambda: [{("hit",): float(cache.hits), ("miss",): float(cache.misses)}],
        )
    )
    log = predictor.log
    registry.add(
        m.Gauges(
            "featurestore_feature_cache",
            "The item feature cache: hit_rate since start, entries held, invalidations.",
            "stat",
            lambda: {k: float(v) for k, v in cache.stats().items() if k in ("hit_rate", "entries", "invalidations")},
            per_process=True,  # each worker's own cache: one sample per worker (label pid)
        )
    )
    registry.add(
        m.Gauges(
            "featurestore_prediction_log",
            "The prediction log: records pending, written and dropped by this process.",
            "stat",
            lambda: {"pending": float(log.pending), "written": float(log.written), "dropped": float(log.dropped)},
            per_process=True,
        )
    )

    async def respond(raw: bytes) -> Response:
        body = parse_json(raw, PredictRequest)
        result = await predictor.predict_async(
            body.model, body.user, body.items, k=body.k, request_features=body.request_features
        )
        predictions.inc(body.model, str(result.model_version))
        scored.inc(body.model, amount=len(body.items))
        # The shape is fixed by Prediction.to_dict; re-validating it would only cost latency.
        return Response(result.to_json(), media_type="application/json")

    routes = APIRouter()

    @routes.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=json_body(PredictRequest),
    )
    async def predict(request: Request) -> Any:
        """Scores of the candidate items for the user, with the model's active version."""
        return await respond(await request.body())

    at_shutdown(predictor.close)
    return Endpoint(routes, respond)
