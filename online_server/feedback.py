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
slice), and a background thread, started with the first feedback, that writes the offline view of
the log every ``FLUSH_SECONDS`` and checks staleness every ``CHECK_SECONDS``, launching
``featurestore models retrain MODEL`` once per stale version when the model has ``auto_retrain``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from datetime import datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from featurestore.feedback import MAX_BATCH, FeedbackInput, FeedbackResult, FeedbackService
from featurestore.store import FeatureStore

logger = logging.getLogger(__name__)
JoinKeyValue = int | str
FLUSH_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_FLUSH_SECONDS", "10"))
CHECK_SECONDS = float(os.environ.get("FEATURESTORE_FEEDBACK_CHECK_SECONDS", "60"))


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
    rejected: list[RejectedObservation]
    model_versions: dict[str, int] = Field(description="The version each model's observations went to.")


def register(app: FastAPI, store: FeatureStore, server_metrics: Any) -> None:
    """Add ``POST /feedback``, its metrics and its background thread to the app."""
    from online_server.app import ERRORS, _error
    from online_server.predict import _on_shutdown

    state: dict[str, Any] = {}

    def service() -> FeedbackService:
        # Made on first use: the store's own service, sharing its predictor (feature cache,
        # layouts and the prediction log that /predict in this process writes).
        if "service" not in state:
            state["service"] = store.feedback_service
            state["maintenance"] = _Maintenance(store, state["service"])
            state["maintenance"].start()
        return state["service"]  # type: ignore[no-any-return]

    registry = server_metrics.registry
    registry.add(_ServiceMetrics(state))

    @app.post(
        "/feedback",
        response_model=FeedbackResponse,
        responses=ERRORS,
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
            return _error(422, "ValidationError", f"field `{bad['field']}`: {bad['reason']}", bad.get("hint"),
                          fields=[{"field": bad["field"], "message": bad["reason"]}])
        if invalid:
            svc.note_rejected("(invalid)", len(invalid))
        body = {**result.to_dict(), "received": len(inputs) + len(invalid), "rejected": rejected}
        return Response(json.dumps(body, separators=(",", ":")), media_type="application/json")

    def stop() -> None:
        if "maintenance" in state:
            state["maintenance"].stop()

    _on_shutdown(app, stop)


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
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)])


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


class _ServiceMetrics:
    """Renders the service's counters (they live in the service, shared with SDK calls)."""

    name = "featurestore_feedback"

    def __init__(self, state: dict[str, Any]) -> None:
        self.state = state

    def render(self) -> list[str]:
        from online_server.metrics import _escape

        svc: FeedbackService | None = self.state.get("service")
        out = [
            "# HELP featurestore_feedback_observations_total Feedback observations by model and result (new, duplicate, rejected).",
            "# TYPE featurestore_feedback_observations_total counter",
        ]
        if svc is None:
            return out
        for (model, result), n in sorted(svc.counts().items()):
            out.append(f'featurestore_feedback_observations_total{{model="{_escape(model)}",result="{result}"}} {n}')
        out += [
            "# HELP featurestore_feedback_cas_retries_total Compare-and-swap rounds lost to another writer and retried.",
            "# TYPE featurestore_feedback_cas_retries_total counter",
            f"featurestore_feedback_cas_retries_total {svc.cas_retries}",
        ]
        losses = sorted(svc.losses().items())
        families = (
            ("featurestore_feedback_loss", "gauge", _LOSS_HELP, lambda acc: acc.mean),
            ("featurestore_feedback_loss_sum", "counter", "Sum of those losses.", lambda acc: acc.total),
            ("featurestore_feedback_loss_count", "counter", "Number of those losses.", lambda acc: acc.count),
        )
        for name, kind, text, value in families:
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
            for (model, version, predictor, sl), acc in losses:
                labels = (f'model="{_escape(model)}",version="{version}",predictor="{predictor}",'
                          f'slice="{_escape(sl)}",loss="{acc.loss}"')
                v = value(acc)
                if v is not None:
                    out.append(f"{name}{{{labels}}} {v:.10g}")
        return out


# -- background work ----------------------------------------------------------------------------


class _Maintenance:
    """Writes the offline view of the feedback log and checks staleness, off the request path."""

    def __init__(self, store: FeatureStore, service: FeedbackService) -> None:
        self.store = store
        self.service = service
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="feedback-maintenance", daemon=True)
        self.launched: set[tuple[str, int]] = set()

    def start(self) -> None:
        if FLUSH_SECONDS > 0 or CHECK_SECONDS > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        import time

        last_check = time.monotonic()
        period = min(p for p in (FLUSH_SECONDS, CHECK_SECONDS) if p > 0)
        while not self._stop.wait(period):
            models = sorted({m for (m, result) in self.service.counts() if result == "new"})
            try:
                if FLUSH_SECONDS > 0:
                    self.flush(models)
                if CHECK_SECONDS > 0 and time.monotonic() - last_check >= CHECK_SECONDS:
                    last_check = time.monotonic()
                    self.check(models)
            except Exception as exc:  # noqa: BLE001 - a failed round is logged; the next one retries
                logger.warning("feedback maintenance failed: %s: %s", type(exc).__name__, exc)

    def flush(self, models: list[str]) -> None:
        from featurestore.feedback_export import export_feedback

        for model in models:
            export_feedback(self.store, model, delay_seconds=5.0)

    def check(self, models: list[str]) -> None:
        from featurestore.feedback import model_status

        defs = self.store.definitions()
        for model in models:
            spec = defs.models.get(model)
            if spec is None or not spec.auto_retrain:
                continue
            status = model_status(self.store, model)
            if status.stale and (model, status.version) not in self.launched:
                self.launched.add((model, status.version))
                launch_retrain(self.store, model, status.version)


def launch_retrain(store: FeatureStore, model: str, version: int) -> bool:
    """Start ``featurestore models retrain MODEL`` as a detached subprocess, once per stale
    version across every process (a marker file in the version's artifact directory decides).
    Its output goes to ``retrain.log`` beside it. True when this call launched it."""
    from featurestore.models.training import artifact_dir

    directory = artifact_dir(store, model, version)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(directory / "retrain.started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    config = store.config
    env = {
        **os.environ,
        # The subprocess must see the same stores as this one, whatever overrides made them.
        "FEATURESTORE__REGISTRY": config.registry_url,
        "FEATURESTORE__OFFLINE_STORE__PATH": str(config.offline_path),
        "FEATURESTORE__ONLINE_STORE__TYPE": config.online_store.type,
        "FEATURESTORE__ONLINE_STORE__PATH": str(config.resolve(config.online_store.path)),
        "FEATURESTORE__ONLINE_STORE__URL": config.online_store.url,
    }
    with open(directory / "retrain.log", "ab") as out:
        subprocess.Popen(
            [sys.executable, "-m", "featurestore.cli.main", "-r", str(store.repo_path), "models", "retrain", model],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    logger.warning("model %r version %d is stale: launched `featurestore models retrain %s`", model, version, model)
    return True
