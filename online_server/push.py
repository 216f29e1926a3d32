"""``POST /push``: events into a feature view's stream, and the stream job's freshness gauges.

The route is a thin shell around ``featurestore.push.Pusher`` (shared with the SDK's
``FeatureStore.push``): parse the body in one pydantic-core pass, check and append, return the
entry ids. A row that does not fit the view is a 422 whose ``fields`` name it (``rows.3.clicks``);
an unknown view is a 404; a view without a ``stream_source`` a 400; the stream's Redis down a
503. The ``write`` role is needed when tokens are configured (online_server/auth.py).

The gauges read the ``stream_stats`` blobs the stream job writes (materializers/freshness.py) at
scrape time: lag p50/p99 over the job's last interval, events/s, and the age of the figures
(a stopped job shows as a growing age).
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from online_server import metrics as m
from online_server.http import ERRORS, error_response, json_body, parse_body

STATS_NAMESPACE = "stream_stats"


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


#: A JSON value an event column can hold (docs/streaming.md says which for each dtype).
EventValue = int | float | str | bool | list[float] | None


class PushRequest(_Body):
    view: str = Field(description="The feature view whose stream receives the events.")
    rows: list[dict[str, EventValue]] = Field(
        min_length=1,
        max_length=10_000,
        description="Events: one object per event with the view's join keys, timestamp and "
        "columns (docs/streaming.md).",
    )
    push_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_.:\-]{1,128}$",
        description="Makes the push idempotent for a day: the same push_id again appends nothing "
        "and answers with the first push's result and `duplicate: true`. Use a UUID per push.",
    )


class PushResponse(_Body):
    view: str
    pushed: int = Field(description="Events appended to the stream.")
    first_id: str | None = Field(description="Stream entry id of the first event.")
    last_id: str | None = Field(description="Stream entry id of the last event.")
    duplicate: bool = Field(False, description="True when the push_id was already used: nothing was appended.")


def stream_stats(store: Any) -> dict[str, dict[str, Any]]:
    """The latest ``stream_stats`` blob of every view with a stream_source, by view."""
    views = sorted(
        n for n, v in store.definitions().feature_views.items() if v.stream_source is not None
    )
    if not views:
        return {}
    blobs = store.online_store.get_blobs(STATS_NAMESPACE, [v.encode() for v in views])
    return {v: json.loads(b) for v, b in zip(views, blobs) if b is not None}


def router(store: Any, registry: m.Registry) -> APIRouter:
    """``POST /push``, with the pushed-events counter and the stream freshness gauges added to
    ``registry``.

    Nothing is read from ``store`` here, only when a request or a scrape comes (the OpenAPI
    build registers routes against a stand-in store).
    """
    pushed = registry.add(
        m.Counter(
            "featurestore_pushed_events_total",
            "Events appended by POST /push, by view.",
            ("feature_view",),
        )
    )
    _add_gauges(registry, store)
    routes = APIRouter()

    @routes.post(
        "/push",
        response_model=PushResponse,
        responses=ERRORS,
        tags=["streams"],
        openapi_extra=json_body(PushRequest),
    )
    async def push(request: Request) -> Any:
        """Check events against the view and append them to its stream, all or none."""
        from featurestore.push import EventError

        body = await parse_body(request, PushRequest)
        try:
            result = store.pusher.push(body.view, body.rows, body.push_id)
        except EventError as exc:
            return error_response(
                422,
                "ValidationError",
                exc.message,
                exc.hint,
                fields=[{"field": exc.field, "message": exc.message}],
            )
        if not result.duplicate:
            pushed.inc(body.view, amount=result.pushed)
        return JSONResponse(result.to_dict())

    return routes


def _add_gauges(registry: Any, store: Any) -> None:
    cache: dict[str, Any] = {"at": 0.0, "stats": {}}

    def stats() -> dict[str, dict[str, Any]]:
        # One read of the blobs per scrape, shared by the gauges below.
        if time.monotonic() - cache["at"] > 0.5:
            cache["stats"] = stream_stats(store)
            cache["at"] = time.monotonic()
        return cache["stats"]

    def gauge(key: str) -> Any:
        return lambda: {view: s.get(key) for view, s in stats().items()}

    registry.add(
        m.Gauges(
            "featurestore_stream_lag_p50_seconds",
            "Median lag from event time to online visibility over the stream job's last interval.",
            "feature_view",
            gauge("lag_p50_seconds"),
        )
    )
    registry.add(
        m.Gauges(
            "featurestore_stream_lag_p99_seconds",
            "99th percentile lag from event time to online visibility over the last interval.",
            "feature_view",
            gauge("lag_p99_seconds"),
        )
    )
    registry.add(
        m.Gauges(
            "featurestore_stream_events_per_second",
            "Events the stream job handled per second over its last interval.",
            "feature_view",
            gauge("events_per_second"),
        )
    )
    registry.add(
        m.Gauges(
            "featurestore_stream_stats_age_seconds",
            "Seconds since the stream job last reported (grows when it is stopped).",
            "feature_view",
            lambda: {
                view: time.time() - s["updated_at"]
                for view, s in stats().items()
                if "updated_at" in s
            },
        )
    )
