"""Who may read the evaluation store and the console: the ``admin`` role, as for the model
administration endpoints.

The server's ``AuthMiddleware`` checks roles by path prefix (``online_server.auth.ROLE_BY_PATH``)
from the ``Authorization`` header. A browser cannot send that header on a link, so the console
also accepts the same token from an ``HttpOnly``, ``SameSite=Strict`` cookie, set by
``POST /ui/login`` (a JSON body, which the body guard requires) and checked here against the
same ``TokenAuth``: expiry and revocations apply to the cookie as to the header.

With no tokens configured the server listens on loopback only, and no credential is checked;
the ``Host`` header must then name a loopback address (``localhost``, 127.0.0.0/8, ``::1``).
Without that check a page in the same browser could read the console through DNS rebinding: its
own name, re-pointed at 127.0.0.1, would reach the server with the page's name as ``Host``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from registry.errors import FeatureStoreError

ROLE = "admin"
COOKIE = "featurestore_console"


class AccessDenied(FeatureStoreError):
    """No token, a refused token (401), or a token without the admin role (403)."""

    def __init__(self, status: int, message: str, hint: str) -> None:
        super().__init__(message, hint=hint)
        self.http_status = status


def auth_of(request: Request) -> Any:
    """The app's ``TokenAuth`` (``create_app`` and ``featurestore ui`` set ``app.state.auth``)."""
    return getattr(request.app.state, "auth", None)


def token_of(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check(request: Request, *, cookie: bool) -> None:
    """Raise ``AccessDenied`` unless the request carries a valid token with the admin role: a
    bearer header, or (``cookie``) the session cookie ``POST /login`` set, which holds a
    credential derived from the token (``TokenAuth.session_of``), never the token itself."""
    auth = auth_of(request)
    if auth is None or not auth.enabled:
        check_host(request)
        return
    token = token_of(request)
    session = request.cookies.get(COOKIE) if cookie and token is None else None
    if token is None and not session:
        raise AccessDenied(401, "missing bearer token", "send `Authorization: Bearer <token>` (a token with the admin role)")
    verdict = auth.check(token) if token is not None else auth.check_session(session or "")
    if not isinstance(verdict, frozenset):
        raise AccessDenied(401, verdict.message, verdict.hint)
    if ROLE not in verdict:
        raise AccessDenied(403, f"this token lacks the `{ROLE}` role", f"use a token with the `{ROLE}` role")


def check_host(request: Request) -> None:
    """Raise ``AccessDenied`` (403) unless the request's ``Host`` names a loopback address: the
    guard against DNS rebinding where no token is asked for."""
    from featurestore.hosts import is_loopback

    host = request.url.hostname or ""
    if not is_loopback(host):
        raise AccessDenied(
            403,
            f"refusing Host `{host[:100]}`: with no tokens the console answers only on a loopback address",
            "open it as http://127.0.0.1:PORT/ui/ (or localhost), or configure server.tokens",
        )
