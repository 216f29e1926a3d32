"""What every route of the server shares: the error body, request parsing and shutdown hooks.

The route modules (``predict``, ``feedback``, ``push``, ``models_admin``) take these from here
and never import ``online_server.app``, which includes their routers: the dependencies run one
way, app -> routes -> this module.

Errors are JSON ``{"error": {"type", "message", "hint", "retryable", "fields"?}}``
(``schemas.ErrorResponse``); a request that does not validate is a 422 whose message names the
first bad field.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from online_server.schemas import ErrorResponse

#: The error responses every API route declares in the OpenAPI schema.
ERRORS = {422: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}

#: What a route module is given to have a callback run when the app stops.
ShutdownHook = Callable[[Callable[[], Any]], None]


def error_response(
    status: int,
    exc_type: str,
    message: str,
    hint: str | None = None,
    retryable: bool = False,
    fields: list[dict[str, Any]] | None = None,
) -> JSONResponse:
    """The error body every route answers with.

    >>> error_response(404, "NotFoundError", "no model named 'x'").status_code
    404
    """
    body: dict[str, Any] = {"type": exc_type, "message": message, "hint": hint, "retryable": retryable}
    if fields is not None:
        body["fields"] = fields
    return JSONResponse({"error": body}, status_code=status)


def validation_response(errors: Any) -> JSONResponse:
    """422 naming the first bad field (and listing them all)."""
    fields = []
    for err in errors:
        loc = [str(p) for p in err["loc"] if p != "body"]
        fields.append({"field": ".".join(loc) or "(body)", "message": err["msg"]})
    first = fields[0] if fields else {"field": "(body)", "message": "invalid request"}
    return error_response(
        422, "ValidationError", f"field `{first['field']}`: {first['message']}",
        hint="see the request schema at /docs", fields=fields,
    )


def body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors for a request body, located under ``body`` as FastAPI's own are."""
    return [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]


_Body = TypeVar("_Body", bound=BaseModel)


async def parse_body(request: Request, model: type[_Body]) -> _Body:
    """Validate the raw JSON body with pydantic-core in one pass.

    Hot endpoints take the Request and parse it here rather than declaring a body parameter:
    FastAPI's own body handling decodes JSON, then validates the Python objects, and costs
    several times more per request than ``model_validate_json``. Errors keep FastAPI's format.
    """
    return parse_json(await request.body(), model)


def parse_json(raw: bytes, model: type[_Body]) -> _Body:
    """``parse_body`` of a body already read (a fast-path handler is given the raw bytes)."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError(body_errors(exc)) from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """OpenAPI for a body parsed by ``parse_body`` (pass as ``openapi_extra``), so /docs still
    shows the schema."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": model.model_json_schema(ref_template="#/components/schemas/{model}")}},
        }
    }


def on_shutdown(app: FastAPI, *callbacks: Callable[[], Any]) -> None:
    """Run ``callbacks``, in the order given, when the app stops.

    FastAPI's default lifespan runs the router's ``on_shutdown`` handlers; any other lifespan
    (an app's own, or the one ``include_router`` puts in its place since FastAPI 0.112.2) is
    wrapped, the callbacks running before its own clean-up. A router's ``lifespan`` is not used:
    FastAPI before 0.112.2 ignores it on ``include_router``.
    """

    def run() -> None:
        for callback in callbacks:
            callback()

    router = app.router
    if type(router.lifespan_context).__name__ == "_DefaultLifespan" and hasattr(router, "on_shutdown"):
        router.on_shutdown.append(run)
        return
    inner = router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> Any:
        async with inner(application) as state:
            try:
                yield state
            finally:
                run()

    router.lifespan_context = lifespan
