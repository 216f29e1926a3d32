"""Bearer tokens with roles.

Roles: ``read`` (features, predict), ``write`` (feedback, push), ``admin`` (model activation and
rollback). Tokens are configured as SHA-256 digests (``server.tokens`` in featurestore.yaml);
a presented token is hashed and compared with every configured digest using
``hmac.compare_digest``, so the comparison time does not depend on how much of it matched.
``/health``, ``/metrics`` and the API docs stay open. With no tokens configured the server does
not check anything, and ``featurestore serve`` then binds to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from featurestore.config import TokenConfig

# Path prefix -> role needed. Checked in order; paths not listed are open.
ROLE_BY_PATH: tuple[tuple[str, str], ...] = (
    ("/features", "read"),
    ("/predict", "read"),
    ("/feedback", "write"),
    ("/push", "write"),
    ("/models", "admin"),
)


def required_role(path: str) -> str | None:
    for prefix, role in ROLE_BY_PATH:
        if path == prefix or path.startswith(prefix + "/"):
            return role
    return None


class TokenAuth:
    def __init__(self, tokens: list[TokenConfig]) -> None:
        self._tokens = [(bytes.fromhex(t.sha256), frozenset(t.roles), t.name) for t in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def roles_of(self, token: str) -> frozenset[str] | None:
        digest = hashlib.sha256(token.encode()).digest()
        found: frozenset[str] | None = None
        for stored, roles, _ in self._tokens:
            # No early exit: every configured digest is compared, in constant time each.
            if hmac.compare_digest(stored, digest):
                found = roles
        return found


class AuthMiddleware:
    """Pure ASGI: answers 401 (no or unknown token) or 403 (missing role) before routing."""

    def __init__(self, app: Any, auth: TokenAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.auth.enabled:
            await self.app(scope, receive, send)
            return
        role = required_role(scope["path"])
        if role is None:
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            await _deny(send, 401, "missing bearer token", "send `Authorization: Bearer <token>`")
            return
        roles = self.auth.roles_of(token.strip())
        if roles is None:
            await _deny(send, 401, "unknown token", "check the token, or create one with `featurestore token create`")
            return
        if role not in roles:
            await _deny(send, 403, f"this token lacks the `{role}` role", f"use a token with the `{role}` role")
            return
        await self.app(scope, receive, send)


async def _deny(send: Any, status: int, message: str, hint: str) -> None:
    body = json.dumps(
        {"error": {"type": "AuthError", "message": message, "hint": hint, "retryable": False}}
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
