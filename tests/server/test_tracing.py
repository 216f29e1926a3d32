"""OpenTelemetry traces of the request paths (``server.tracing``), sent over OTLP/HTTP to a real
receiver on loopback (an HTTP server here that decodes the protobuf export requests)."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from featurestore import FeatureStore
from online_server import create_app
from registry.errors import ConfigError
from tests.retrieval.conftest import fill, make_repo

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


class _Receiver(http.server.BaseHTTPRequestHandler):
    spans: list[dict[str, Any]]

    def do_POST(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        for resource in request.resource_spans:
            service = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append({  # type: ignore[attr-defined]
                        "path": self.path, "service": service.get("service.name"), "name": span.name,
                        "trace": span.trace_id.hex(), "id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
                        "attributes": {a.key: a.value for a in span.attributes},
                    })
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Receiver)
    server.spans = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _traced_store(tmp_path: Path, redis_url: str, project: str, receiver: http.server.HTTPServer | None) -> FeatureStore:
    made = make_repo(tmp_path / "repo", {"type": "redis", "url": redis_url}, project)
    fill(made)
    made.close()
    tracing: dict[str, Any] = {"enabled": receiver is not None}
    if receiver is not None:
        tracing["endpoint"] = f"http://127.0.0.1:{receiver.server_port}/v1/traces"
        tracing["service_name"] = "features-test"
    overrides = {"online_store": {"type": "redis", "url": redis_url}, "server": {"tracing": tracing}}
    return FeatureStore(tmp_path / "repo", config_overrides=overrides, registry_refresh_seconds=0)


@pytest.mark.integration
def test_a_request_is_a_trace_with_the_store_calls_inside(
    tmp_path: Path, redis_url: str, unique_project: str, receiver: http.server.HTTPServer
) -> None:
    store = _traced_store(tmp_path, redis_url, unique_project, receiver)
    body = {"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]}
    try:
        with TestClient(create_app(store)) as client:
            traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"  # the caller's trace continues
            response = client.post("/features", json=body, headers={"traceparent": traceparent})
            assert response.status_code == 200
            assert response.json()["features"]["clicks"]["values"] == [5]
            assert client.get("/health").status_code == 200
            assert client.get("/metrics").status_code == 200
        # The app's shutdown flushed the batch.
    finally:
        store.close()
    spans: list[dict[str, Any]] = receiver.spans  # type: ignore[attr-defined]
    assert spans and {s["path"] for s in spans} == {"/v1/traces"}
    # Only requests start traces: /health's checks and the background threads' Redis calls
    # (the item cache's poll, the maintenance thread) are not one-span traces of their own.
    assert {s["trace"] for s in spans} == {CALLER_TRACE}, sorted(s["name"] for s in spans)
    assert {s["service"] for s in spans} == {"features-test"}
    server = [s for s in spans if s["name"] == "POST /features"]
    assert len(server) == 1 and server[0]["trace"] == CALLER_TRACE and server[0]["parent"] == CALLER_SPAN
    in_request = [s for s in spans if s["trace"] == CALLER_TRACE]
    ids = {s["id"] for s in in_request}
    redis_spans = [s for s in in_request if s["name"].startswith("redis")]
    assert redis_spans, [s["name"] for s in in_request]
    assert all(s["parent"] in ids for s in redis_spans)  # inside the request, not beside it
    assert redis_spans[0]["attributes"]["db.system"].string_value == "redis"
    # /health and /metrics (polled every few seconds) are not traced.
    assert not [s for s in spans if "/health" in s["name"] or "/metrics" in s["name"]]


@pytest.mark.integration
def test_off_by_default_nothing_is_instrumented(tmp_path: Path, redis_url: str, unique_project: str) -> None:
    from featurestore import tracing

    store = _traced_store(tmp_path, redis_url, unique_project, None)
    try:
        app = create_app(store)
        assert store.config.server.tracing.enabled is False
        assert not [m for m in app.user_middleware if "OpenTelemetry" in str(m.cls)]
        with TestClient(app) as client:
            assert client.post("/features", json={"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]}).status_code == 200
            assert not tracing.enabled()
    finally:
        store.close()


@pytest.mark.integration
def test_tracing_without_its_libraries_says_what_to_install(
    tmp_path: Path, redis_url: str, unique_project: str, receiver: http.server.HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _traced_store(tmp_path, redis_url, unique_project, receiver)
    monkeypatch.setitem(sys.modules, "opentelemetry.instrumentation.fastapi", None)  # as if not installed
    try:
        with pytest.raises(ConfigError) as info:
            create_app(store)
        assert "featurestore[tracing]" in (info.value.hint or "")
    finally:
        store.close()


@pytest.mark.integration
def test_two_traced_apps_in_one_process_share_the_setup(
    tmp_path: Path, redis_url: str, unique_project: str, receiver: http.server.HTTPServer
) -> None:
    """The provider and the Redis instrumentation are process-wide: an app that stops does not
    turn tracing off under another that still runs."""
    from featurestore import tracing

    store = _traced_store(tmp_path, redis_url, unique_project, receiver)
    body = {"features": ["user_stats:clicks"], "entity_rows": [{"user_id": 1}]}
    try:
        with TestClient(create_app(store)) as second:
            with TestClient(create_app(store)) as first:
                assert first.post("/features", json=body).status_code == 200
            assert tracing.enabled()  # the first app stopped; the second still traces
            traceparent = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
            assert second.post("/features", json=body, headers={"traceparent": traceparent}).status_code == 200
        assert not tracing.enabled()  # the last one turned it off
    finally:
        store.close()
    spans: list[dict[str, Any]] = receiver.spans  # type: ignore[attr-defined]
    in_second = [s["name"] for s in spans if s["trace"] == CALLER_TRACE]
    assert "POST /features" in in_second and any(n.startswith("redis") for n in in_second), in_second
