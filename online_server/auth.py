"""Bearer tokens with roles, expiry and revocation.

Roles: ``read`` (features, predict), ``write`` (feedback, push), ``admin`` (model activation and
rollback). Tokens are configured as SHA-256 digests (``server.tokens`` in featurestore.yaml);
a presented token is hashed and compared with every configured digest using
``hmac.compare_digest``, so the comparison time does not depend on how much of it matched.
``/health``, ``/metrics`` and the API docs stay open. With no tokens configured the server does
not check anything, and ``featurestore serve`` then refuses any host but loopback.

A token is refused (401) when it is unknown, past its ``expires_at``, or revoked
(``featurestore token revoke``, a row in the registry database). ``TokenAuth.watching`` keeps
the list current without a restart: a daemon thread re-reads featurestore.yaml when its
mtime, size or inode changes and reads the revoked digests, once per ``interval`` each. The
request path only reads an immutable snapshot; it never parses YAML or runs SQL.

Failing safe: a config edit that does not parse keeps the previous tokens (logged), an
unreachable database keeps the last known revocations (logged), and a server that started with
tokens never falls back to "no auth" (see ``TokenAuth.watching``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.config import TokenConfig

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

logger = logging.getLogger(__name__)

# Path prefix -> role needed. Checked in order; paths not listed are open.
ROLE_BY_PATH: tuple[tuple[str, str], ...] = (
    ("/features", "read"),
    ("/predict", "read"),
    ("/feedback", "write"),
    ("/push", "write"),
    ("/models", "admin"),
    ("/eval", "admin"),
)

CREATE_HINT = "create a new one with `featurestore token create` and add it to server.tokens"


def required_role(path: str) -> str | None:
    for prefix, role in ROLE_BY_PATH:
        if path == prefix or path.startswith(prefix + "/"):
            return role
    return None


@dataclass(frozen=True)
class Denial:
    """Why a token is refused: the 401 body's message and hint."""

    message: str
    hint: str


@dataclass(frozen=True)
class _Grant:
    digest: bytes
    roles: frozenset[str]
    name: str
    expires_at: float | None  # seconds since the epoch; None never expires


@dataclass(frozen=True)
class _State:
    """What a request reads: swapped whole, never mutated, so no lock on the request path."""

    grants: tuple[_Grant, ...]
    revoked: frozenset[bytes]
    # True once any token was configured; it never goes back (no silent switch to "no auth").
    enforcing: bool


def _grants(tokens: Sequence[TokenConfig]) -> tuple[_Grant, ...]:
    return tuple(
        _Grant(
            bytes.fromhex(t.sha256), frozenset(t.roles), t.name,
            t.expires_at.timestamp() if t.expires_at is not None else None,
        )
        for t in tokens
    )


class TokenAuth:
    """Decides whether a bearer token may use a role.

    ``TokenAuth(tokens)`` checks a fixed list (tests, embedding); ``TokenAuth.watching(...)``
    follows featurestore.yaml and the registry's revocations.

    >>> auth = TokenAuth([TokenConfig(name="svc", sha256=hash_token("t"), roles=["read"])])  # doctest: +SKIP
    >>> auth.check("t")  # doctest: +SKIP
    frozenset({'read'})
    """

    def __init__(self, tokens: Sequence[TokenConfig], *, clock: Callable[[], float] = time.time) -> None:
        grants = _grants(tokens)
        self._state = _State(grants, frozenset(), enforcing=bool(grants))
        self._clock = clock
        self._watch: _Watch | None = None
        self._publish_lock = threading.Lock()

    @classmethod
    def watching(
        cls,
        config_path: Path,
        load_tokens: Callable[[], Sequence[TokenConfig]],
        engine: Engine,
        project: str,
        *,
        tokens: Sequence[TokenConfig] | None = None,
        interval: float = 1.0,
    ) -> TokenAuth:
        """Tokens that follow ``config_path`` (re-read with ``load_tokens`` when the file
        changes) and the revocations of ``project`` in the registry database ``engine``.

        ``tokens`` is the list in force now (default: ``load_tokens()``). Nothing is read from
        the database until ``start()``, which the first request calls if nobody did before (call
        it at start-up so no request waits for it); ``close()`` stops the thread.

        If tokens were configured at start (or at any later time), the server keeps enforcing
        even when featurestore.yaml is edited down to zero tokens: every protected request is
        then refused with 401 "no valid tokens configured". An empty list never opens the
        server. The inverse, no tokens at start and some added later, starts enforcing them.

        >>> auth = TokenAuth.watching(root / "featurestore.yaml",  # doctest: +SKIP
        ...     lambda: load_config(root).server.tokens, store.registry.engine, store.project)
        >>> auth.start()  # doctest: +SKIP
        """
        auth = cls(load_tokens() if tokens is None else tokens)
        auth._watch = _Watch(auth, Path(config_path), load_tokens, engine, project, interval)
        return auth

    @property
    def enabled(self) -> bool:
        """Whether protected paths need a token at all."""
        self._ensure_started()
        return self._state.enforcing

    def start(self) -> None:
        """Read the revocations once, then keep following on a daemon thread (idempotent)."""
        if self._watch is not None:
            self._watch.start()

    def close(self) -> None:
        """Stop following (the last tokens and revocations stay in force)."""
        if self._watch is not None:
            self._watch.close()

    def check(self, token: str) -> frozenset[str] | Denial:
        """The roles of ``token``, or why it is refused."""
        digest = hashlib.sha256(token.encode()).digest()
        return self._verdict(lambda grant: hmac.compare_digest(grant.digest, digest))

    @staticmethod
    def session_of(token: str) -> str:
        """A browser session credential for ``token`` (the console's cookie): derived from the
        token's digest, so it names the same grant (roles, expiry, revocation) but is not the
        token, and no bearer header accepts it."""
        return _session(hashlib.sha256(token.encode()).digest())

    def check_session(self, session: str) -> frozenset[str] | Denial:
        """The roles behind a ``session_of`` credential, or why it is refused."""
        return self._verdict(lambda grant: hmac.compare_digest(_session(grant.digest), session))

    def _verdict(self, matches: Callable[[_Grant], bool]) -> frozenset[str] | Denial:
        self._ensure_started()
        state = self._state
        found: _Grant | None = None
        for grant in state.grants:
            # No early exit: every configured digest is compared, in constant time each.
            if matches(grant):
                found = grant
        if found is None:
            if not state.grants:
                return Denial(
                    "no valid tokens configured",
                    "server.tokens in featurestore.yaml is empty; " + CREATE_HINT,
                )
            return Denial("unknown token", "check the token, or create one with `featurestore token create`")
        if found.digest in state.revoked:
            return Denial("token revoked", f"token {found.name!r} was revoked; {CREATE_HINT}")
        if found.expires_at is not None and self._clock() >= found.expires_at:
            return Denial("token expired", f"token {found.name!r} has expired; {CREATE_HINT}")
        return found.roles

    def roles_of(self, token: str) -> frozenset[str] | None:
        """The roles of ``token``, None when it is refused for any reason."""
        verdict = self.check(token)
        return None if isinstance(verdict, Denial) else verdict

    def _ensure_started(self) -> None:
        watch = self._watch
        if watch is not None and not watch.started and not watch.closed:
            watch.start()

    def _publish(self, grants: tuple[_Grant, ...] | None, revoked: frozenset[bytes] | None) -> None:
        """Swap in a new state with new ``grants`` and/or ``revoked`` digests (None: keep)."""
        with self._publish_lock:
            old = self._state
            grants = old.grants if grants is None else grants
            revoked = old.revoked if revoked is None else revoked
            self._state = _State(grants, revoked, enforcing=old.enforcing or bool(grants))


def _session(digest: bytes) -> str:
    return "s1." + hmac.new(digest, b"featurestore console session", hashlib.sha256).hexdigest()


_WATCHES: weakref.WeakSet[_Watch] = weakref.WeakSet()


class _Watch:
    """The thread behind ``TokenAuth.watching``: config file and revocations, every ``interval``."""

    def __init__(
        self,
        auth: TokenAuth,
        config_path: Path,
        load_tokens: Callable[[], Sequence[TokenConfig]],
        engine: Engine,
        project: str,
        interval: float,
    ) -> None:
        self._auth = weakref.ref(auth)  # the thread must not keep a dropped app's auth alive
        self.config_path = config_path
        self.load_tokens = load_tokens
        self.engine = engine
        self.project = project
        self.interval = interval
        # Taken now: the tokens given are the file as it is now, so only a later edit reloads.
        self._signature = self._stat()
        self._config_failed = False
        self._db_failed = False
        self.started = False
        self.closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        _WATCHES.add(self)

    def start(self) -> None:
        with self._lock:
            if self.started or self.closed:
                return
            # Before the first request is answered, so a revoked token is never let in while
            # the thread warms up; a database that is down leaves the set empty until it is back.
            self._refresh_revocations()
            self.started = True
            self._thread = threading.Thread(target=self._run, name="token-watcher", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self.closed = True
        self._stop.set()
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout=5)

    def poll(self) -> None:
        """One round: reload the config if the file changed, then the revocations."""
        self._refresh_config()
        self._refresh_revocations()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._auth() is None:
                return
            self.poll()

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.config_path)
        except OSError:
            return None
        # The inode too: editors that save by renaming a new file over the old one.
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _refresh_config(self) -> None:
        signature = self._stat()
        if signature == self._signature:
            return
        # Remembered before reading: a write that lands after the read changes it again.
        self._signature = signature
        auth = self._auth()
        try:
            grants = _grants(self.load_tokens())
        except Exception as exc:  # noqa: BLE001 - a bad edit must neither crash nor open the server
            logger.warning("%s was changed but cannot be read; keeping the previous tokens: %s", self.config_path, exc)
            self._config_failed = True
            return
        if self._config_failed:
            logger.warning("%s reads again; its tokens are in force", self.config_path)
            self._config_failed = False
        if auth is not None:
            auth._publish(grants, None)
            logger.info("reloaded %d token(s) from %s", len(grants), self.config_path)

    def _refresh_revocations(self) -> None:
        from featurestore.tokens import revoked_digests

        auth = self._auth()
        try:
            revoked = frozenset(bytes.fromhex(d) for d in revoked_digests(self.engine, self.project))
        except Exception as exc:  # noqa: BLE001 - keep the last known set; retried next tick
            if not self._db_failed:
                logger.warning("cannot read token revocations (keeping the last known set): %s", exc)
            self._db_failed = True
            return
        if self._db_failed:
            logger.warning("token revocations read again")
            self._db_failed = False
        if auth is not None:
            auth._publish(None, revoked)

    def _after_fork_in_child(self) -> None:
        # The parent's thread does not exist here, and its lock may have been held at the fork:
        # start over at the next request, on database connections of this process's own.
        if self.started:
            self.engine.dispose(close=False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        self.started = False


def _after_fork_in_child() -> None:
    for watch in list(_WATCHES):
        watch._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class AuthMiddleware:
    """Pure ASGI: answers 401 (no, unknown, expired or revoked token) or 403 (missing role)
    before routing."""

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
        verdict = self.auth.check(token.strip())
        if isinstance(verdict, Denial):
            await _deny(send, 401, verdict.message, verdict.hint)
            return
        if role not in verdict:
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
