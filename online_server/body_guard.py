"""Pure ASGI: what a request body must be before anything reads it.

* **JSON only** (415 otherwise): a body of any other ``Content-Type`` is refused. A browser sends a
  cross-site ``text/plain`` POST without a CORS preflight; refusing it means no web page can
  write to a server that has no tokens configured.
* **Bounded** (413 beyond ``server.max_body_bytes``): a ``Content-Length`` over the limit is
  refused before a byte of the body is read; a chunked body is counted as it arrives and refused
  the moment it passes the limit, so a huge body never sits in memory.

Requests without a body (GET, or a POST with ``Content-Length: 0``) pass untouched.
"""

from __future__ import annotations

import json
from typing import Any

METHODS_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
JSON_TYPES = frozenset({b"application/json"})


class BodyGuard:
    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] not in METHODS_WITH_BODY:
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        no_body = length.strip() == b"0" if length is not None else b"transfer-encoding" not in headers
        if no_body:  # e.g. POST /models/{model}/rollback
            await self.app(scope, receive, send)
            return
        media = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if media not in JSON_TYPES:
            await _refuse(send, 415, "UnsupportedMediaType",
                          f"the body must be JSON (Content-Type: application/json), got {media.decode('latin-1')[:80]!r}",
                          "send the body with `Content-Type: application/json`")
            return
        limit = self.max_body_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            await _refuse(send, 413, "PayloadTooLarge", f"the body has {int(length):,} bytes; at most {limit:,} are accepted",
                          "send smaller batches, or raise server.max_body_bytes")
            return
        received = 0
        refused = False

        async def counted() -> dict[str, Any]:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _TooLarge
            return message

        started = False

        async def watched_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched_send)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, "PayloadTooLarge", f"the body is over {limit:,} bytes",
                              "send smaller batches, or raise server.max_body_bytes")
        except Exception:
            if not refused:
                raise
            # The app failed on the cut body (an exception group, say): the answer is the 413.
            if not started:
                await _refuse(send, 413, "PayloadTooLarge", f"the body is over {limit:,} bytes",
                              "send smaller batches, or raise server.max_body_bytes")


class _TooLarge(Exception):
    pass


async def _refuse(send: Any, status: int, kind: str, message: str, hint: str) -> None:
    body = json.dumps({"error": {"type": kind, "message": message, "hint": hint, "retryable": False}}).encode()
    await send({
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})
