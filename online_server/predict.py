"""``POST /predict``: scores of candidate items for a user from a per-user linear model.

The route is a thin shell around ``featurestore.models.serving.Predictor`` (shared with the
SDK): parse the body in one pydantic-core pass, predict, return JSON. It also registers the
model metrics (predictions per model, feature cache hit rate, prediction log backlog) and stops
the prediction log's writer thread when the app shuts down, after writing what is queued.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from featurestore.models.serving import Predictor
from featurestore.store import FeatureStore
from online_server import metrics as m

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
    status: str = Field(description="present, not_found, expired or null (a feature value is null).")
    bonus: float | None = Field(None, description="LinUCB exploration bonus, when the model explores.")
    probability: float | None = Field(None, description="σ(score), for logistic models.")


class PredictResponse(_Body):
    prediction_id: str
    model: str
    model_version: int
    scores: list[ItemScore]


def register(app: FastAPI, store: FeatureStore, server_metrics: Any) -> None:
    """Add ``POST /predict`` and the model metrics to the app."""
    from online_server.app import ERRORS, _json_body, parse_body

    # The store's own predictor: one feature cache and one prediction log per process, shared
    # with SDK calls made in it.
    predictor: Predictor = store.predictor
    app.state.predictor = predictor
    registry = server_metrics.registry
    predictions = registry.add(
        m.Counter("featurestore_predictions_total", "Predictions served, by model and version.", ("model", "version"))
    )
    scored = registry.add(
        m.Counter("featurestore_predicted_items_total", "Candidate items scored, by model.", ("model",))
    )
    cache_lookups = registry.add(
        m.Counter("featurestore_feature_cache_lookups_total", "Item feature cache lookups by result.", ("result",))
    )
    cache = predictor.cache
    log = predictor.log
    registry.add(
        m.Gauges(
            "featurestore_feature_cache",
            "The item feature cache: hit_rate since start, entries held, invalidations.",
            "stat",
            lambda: {k: float(v) for k, v in cache.stats().items() if k in ("hit_rate", "entries", "invalidations")},
        )
    )
    registry.add(
        m.Gauges(
            "featurestore_prediction_log",
            "The prediction log: records pending, written and dropped by this process.",
            "stat",
            lambda: {"pending": float(log.pending), "written": float(log.written), "dropped": float(log.dropped)},
        )
    )

    @app.post(
        "/predict",
        response_model=PredictResponse,
        responses=ERRORS,
        tags=["models"],
        openapi_extra=_json_body(PredictRequest),
    )
    async def predict(request: Request) -> Any:
        """Scores of the candidate items for the user, with the model's active version."""
        body = await parse_body(request, PredictRequest)
        hits, misses = cache.hits, cache.misses
        result = predictor.predict(
            body.model, body.user, body.items, k=body.k, request_features=body.request_features
        )
        predictions.inc(body.model, str(result.model_version))
        scored.inc(body.model, amount=len(body.items))
        cache_lookups.inc("hit", amount=cache.hits - hits)
        cache_lookups.inc("miss", amount=cache.misses - misses)
        # The shape is fixed by Prediction.to_dict; re-validating it would only cost latency.
        return Response(result.to_json(), media_type="application/json")

    _on_shutdown(app, predictor.close)


def _on_shutdown(app: FastAPI, callback: Any) -> None:
    """Run ``callback`` when the app stops. FastAPI's router still runs ``on_shutdown``
    handlers from its default lifespan; with a custom lifespan, wrap it instead."""
    from contextlib import asynccontextmanager

    router = app.router
    if type(router.lifespan_context).__name__ == "_DefaultLifespan" and hasattr(router, "on_shutdown"):
        router.on_shutdown.append(callback)
        return
    inner = router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> Any:
        async with inner(application) as state:
            try:
                yield state
            finally:
                callback()

    router.lifespan_context = lifespan
