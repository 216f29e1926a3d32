"""``POST /models/{model}/activate`` and ``POST /models/{model}/rollback`` (role ``admin``).

Both go through the SDK (``FeatureStore.activate_model`` / ``rollback_model``): activation is one
row in the registry database, so every server — this one included — serves the new version from
its next poll (at most a second); this process's predictor is refreshed at once. Activating a
version whose online state is gone (Redis flushed) reloads it from the training artifact first.
The auth middleware checks the role before these handlers run.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from featurestore.store import FeatureStore
from online_server import metrics as m
from online_server.http import ERRORS, json_body, parse_body


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ActivateRequest(_Body):
    version: int = Field(ge=1, description="The version to serve.")


class ActiveVersionResponse(_Body):
    model: str
    version: int = Field(description="The version now active.")
    previous: int | None = Field(description="The version active before, if any.")


def router(store: FeatureStore, registry: m.Registry) -> APIRouter:
    """The model administration routes, with their counter added to ``registry``."""
    changes = registry.add(
        m.Counter("featurestore_model_activations_total", "Versions activated through the API, by model and action.",
                  ("model", "action"))
    )

    def previous(model: str) -> int | None:
        return store.model_versions.active_versions().get(model)

    routes = APIRouter()

    @routes.post(
        "/models/{model}/activate", response_model=ActiveVersionResponse, responses=ERRORS, tags=["admin"],
        openapi_extra=json_body(ActivateRequest),
    )
    async def activate(model: str, request: Request) -> Any:
        """Serve ``version`` of the model (reloading its state from its artifact if needed)."""
        from starlette.concurrency import run_in_threadpool

        # Parsed like every other body (parse_body): a body that is not JSON is a 422 naming
        # `(body)`, not FastAPI's 400 or a field named after a character position.
        body = await parse_body(request, ActivateRequest)
        return await run_in_threadpool(_activate, model, body.version)

    def _activate(model: str, version: int) -> Any:
        before = previous(model)
        store.activate_model(model, version)
        changes.inc(model, "activate")
        return JSONResponse({"model": model, "version": version, "previous": before})

    @routes.post("/models/{model}/rollback", response_model=ActiveVersionResponse, responses=ERRORS, tags=["admin"])
    def rollback(model: str) -> Any:
        """Serve the version before the active one; 404 when there is none."""
        before = previous(model)
        version = store.rollback_model(model)
        changes.inc(model, "rollback")
        return JSONResponse({"model": model, "version": version, "previous": before})

    return routes
