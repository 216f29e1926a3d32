"""``POST /feedback``: observations that update the per-user models online (docs/feedback.md).

A thin shell around ``featurestore.feedback.FeedbackService`` (shared with the SDK). The body is
one observation or ``{"observations": [...]}``: parsed once by pydantic-core (``from_json``) and
validated against the models below (unknown keys rejected). In a batch, an observation that fails
validation is rejected alone — the others go on — and the response lists it with its index, the
field and the reason; a single observation that fails is a 422 naming the field. The service runs
in a worker thread because it waits for the feedback log's commit, so one process overlaps the
commits of concurrent requests.

Also here: the feedback metrics of ``/metrics`` (observations by result, compare-and-swap retries,
the running loss of the personalised and the average-user predictions per model version and
slice). With the first feedback the router starts ``featurestore.feedback.maintenance``'s
background thread (the offline view of the log, the staleness check, auto-retrain) and stops it
at shutdown; what it does lives there, not in the web layer.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featurestore.feedback import (
    MAX_BATCH,
    FeedbackInput,
    FeedbackResult,
    FeedbackService,
)
from featurestore.feedback.maintenance import Maintenance
from featurestore.store import FeatureStore
from online_server.http import ERRORS, ShutdownHook, body_errors, error_response
from online_server.metrics import Collected, Family, Registry
from online_server.schemas import ErrorResponse

JoinKeyValue = int | str


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ObservationBody(_Body):
    model: str = Field(min_length=1, max_length=63, description="The model's name.")
    user: dict[str, JoinKeyValue] = Field(min_length=1, description="The user's join keys.")
    item: dict[str, JoinKeyValue] = Field(min_length=1, description="The item's join keys.")
    label: float = Field(description="What happened: a rating, or 0/1 for a logistic model.")
    feedback_id: str = Field(
        min_length=1, max_length=128, description="Unique per observation; a retry must reuse it (idempotency)."
    )
    prediction_id: str | None = Field(
        None, min_length=1, max_length=64,
        description="The /predict response's id: learn from the exact features that were served.",
    )
    ts: datetime | None = Field(None, description="When it happened (default: when received).")
    slice: str | None = Field(None, max_length=200, description="The value of the model's slice_column.")
    request_features: dict[str, float] | None = Field(
        None, description="Request features, for models that have them, when there is no prediction_id."
    )


class FeedbackBatch(_Body):
    observations: list[ObservationBody] = Field(min_length=1, max_length=MAX_BATCH)


class RejectedObservation(_Body):
    index: int
    field: str = Field(description="The bad key, e.g. `observations.3.label`.")
    reason: str
    hint: str | None = None


class FeedbackResponse(_Body):
    received: int
    accepted: int = Field(description="new + duplicates.")
    new: int = Field(description="Logged and learned from.")
    duplicates: int = Field(description="feedback_id already logged: accepted, nothing changed.")
    deferred: int = Field(
        0, description="Of `new`: logged, but not yet in the online state (the state store failed or "
        "was contended); the servers' catch-up applies them from the log (docs/feedback.md, crash recovery)."
    )
    rejected: list[RejectedObservation]
    model_versions: dict[str, int] = Field(description="The version each model's observations went to.")


def router(
    store: FeatureStore, registry: Registry, at_shutdown: ShutdownHook, at_start: ShutdownHook | None = None
) -> APIRouter:
    """``POST /feedback``, with its metrics added to ``registry`` and its background thread
    (``feedback.maintenance``) started through ``at_start`` when the server has models (else
    with the first feedback) and stopped through ``at_shutdown``."""
    state: dict[str, Any] = {}

    def service() -> FeedbackService:
        # Made on first use: the store's own service, sharing its predictor (feature cache,
        # layouts and the prediction log that /predict in this process writes).
        if "service" not in state:
            state["service"] = store.feedback_service
            state["maintenance"] = Maintenance(store.context, state["service"].counters, guard=store.online_guard)
            state["maintenance"].start()
        return state["service"]  # type: ignore[no-any-return]

    def start() -> None:
        if store.context.definitions().models:
            # A server of models heals what a crash cut off from the start, not at its first feedback.
            service()

    if at_start is not None:
        at_start(start)

    registry.add(Collected("featurestore_feedback", _FAMILIES, lambda: _samples(state.get("service"))))
    routes = APIRouter()

    @routes.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses={**ERRORS, 409: {"model": ErrorResponse}},
        tags=["models"],
        openapi_extra=_body_schema(),
    )
    async def feedback(request: Request) -> Any:
        """Record observations durably (before answering), then update the users' models."""
        from starlette.concurrency import run_in_threadpool

        inputs, invalid, batch = _parse(await request.body())
        svc = service()
        if inputs:
            result: FeedbackResult = await run_in_threadpool(svc.submit, [i for _, i in inputs])
        else:
            result = FeedbackResult(0, 0, 0, (), {})
        positions = [p for p, _ in inputs]
        rejected: list[dict[str, Any]] = [
            {"index": p, "field": f"observations.{p}.{f}" if batch else f, "reason": reason, "hint": hint}
            for p, f, reason, hint in invalid
        ] + [
            {"index": positions[r.index], "field": f"observations.{positions[r.index]}.{r.field}" if batch else r.field,
             "reason": r.reason, "hint": r.hint}
            for r in result.rejected
        ]
        rejected.sort(key=lambda r: r["index"])
        if not batch and rejected:
            bad = rejected[0]
            # A feedback_id reused for another observation is a conflict (409), as for /push.
            status = result.rejected[0].status if result.rejected else 422
            kind = "ConflictError" if status == 409 else "ValidationError"
            return error_response(status, kind, f"field `{bad['field']}`: {bad['reason']}", bad.get("hint"),
                                  fields=[{"field": bad["field"], "message": bad["reason"]}])
        if invalid:
            svc.note_rejected("(invalid)", len(invalid))
        body = {**result.to_dict(), "received": len(inputs) + len(invalid), "rejected": rejected}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    def stop() -> None:
        if "maintenance" in state:
            state["maintenance"].stop()

    at_shutdown(stop)
    return routes


def _parse(raw: bytes) -> tuple[list[tuple[int, FeedbackInput]], list[tuple[int, str, str, str | None]], bool]:
    """(valid observations with their index, invalid ones as (index, field, reason, hint), batch?).

    A body that is not one observation or a batch object at all is a 422 for the whole request.
    """
    from pydantic_core import from_json

    try:
        data = from_json(raw) if raw else None
    except ValueError as exc:
        raise RequestValidationError([{"loc": ("body",), "msg": f"invalid JSON: {exc}", "type": "json_invalid"}]) from None
    if isinstance(data, dict) and "observations" in data:
        try:
            parsed = FeedbackBatch.model_validate(data)
            return [(i, _input(o)) for i, o in enumerate(parsed.observations)], [], True
        except ValidationError as exc:
            items = data.get("observations")
            whole = [
                e for e in exc.errors(include_url=False)
                if not (len(e["loc"]) >= 2 and e["loc"][0] == "observations" and isinstance(e["loc"][1], int))
            ]
            if whole or not isinstance(items, list):
                raise _request_error(exc) from None
        good: list[tuple[int, FeedbackInput]] = []
        bad: list[tuple[int, str, str, str | None]] = []
        for i, item in enumerate(items):
            try:
                good.append((i, _input(ObservationBody.model_validate(item))))
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                field = ".".join(str(p) for p in err["loc"]) or "(observation)"
                bad.append((i, field, err["msg"], "see the request schema at /docs"))
        return good, bad, True
    try:
        return [(0, _input(ObservationBody.model_validate(data)))], [], False
    except ValidationError as exc:
        raise _request_error(exc) from None


def _input(o: ObservationBody) -> FeedbackInput:
    return FeedbackInput(o.model, o.user, o.item, o.label, o.feedback_id, o.prediction_id, o.ts, o.slice, o.request_features)


def _request_error(exc: ValidationError) -> RequestValidationError:
    return RequestValidationError(body_errors(exc))


def _body_schema() -> dict[str, Any]:
    """OpenAPI for the body: one observation or a batch, definitions inlined (the body is parsed
    by ``_parse``, not by FastAPI, so its models are not in the components)."""
    from pydantic import TypeAdapter

    schema = TypeAdapter(ObservationBody | FeedbackBatch).json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return inline(defs[ref.split("/")[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return {"requestBody": {"required": True, "content": {"application/json": {"schema": inline(schema)}}}}


# -- metrics ------------------------------------------------------------------------------------


_LOSS_HELP = (
    "Mean loss on incoming feedback of the predictions made before learning from it, by model, "
    "version, predictor (personalised, average_user) and slice; this process."
)
_LOSS_LABELS = ("model", "version", "predictor", "slice", "loss")
_FAMILIES = (
    Family(
        "featurestore_feedback_observations_total",
        "Feedback observations by model and result (new, duplicate, rejected).",
        "counter", ("model", "result"), "d",
    ),
    Family(
        "featurestore_feedback_cas_retries_total",
        "Compare-and-swap rounds lost to another writer and retried.",
        "counter", (), "d",
    ),
    Family(
        "featurestore_feedback_deferred_total",
        "New observations logged whose state update was left to the catch-up (store failure or contention).",
        "counter", (), "d",
    ),
    Family(
        "featurestore_feedback_caught_up_total",
        "Pending log rows (cut off by a crash or outage) that this process's catch-up applied.",
        "counter", (), "d",
    ),
    Family("featurestore_feedback_loss", _LOSS_HELP, "gauge", _LOSS_LABELS, ".10g", per_process=True),
    Family("featurestore_feedback_loss_sum", "Sum of those losses.", "counter", _LOSS_LABELS, ".10g"),
    Family("featurestore_feedback_loss_count", "Number of those losses.", "counter", _LOSS_LABELS, ".10g"),
)


def _samples(svc: FeedbackService | None) -> list[dict[tuple[Any, ...], Any] | None]:
    """The samples of ``_FAMILIES`` from the service's counters (they live in the service,
    shared with SDK calls). Before the first feedback there is no service yet: the observations
    family shows without samples, the others not at all."""
    if svc is None:
        return [{}, None, None, None, None, None, None]
    losses = {(*key, acc.loss): acc for key, acc in svc.losses().items()}
    return [
        svc.counts(),
        {(): svc.cas_retries},
        {(): svc.counters.deferred},
        {(): svc.counters.caught_up},
        {labels: acc.mean for labels, acc in losses.items()},
        {labels: acc.total for labels, acc in losses.items()},
        {labels: acc.count for labels, acc in losses.items()},
    ]
