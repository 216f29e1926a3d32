"""A tiny app behind ``AuthMiddleware`` with a watching ``TokenAuth``, wired the way the online
server wires it: used in-process by the token tests, and by uvicorn in a subprocess
(``tests.server.token_app:app_from_environment --factory`` with FEATURESTORE_REPO)."""

from __future__ import annotations

import os
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from featurestore.config import CONFIG_FILE, load_config
from featurestore.store import FeatureStore
from online_server.auth import AuthMiddleware, TokenAuth


def watching_auth(store: FeatureStore, interval: float = 1.0) -> TokenAuth:
    root = store.repo_path
    return TokenAuth.watching(
        root / CONFIG_FILE,
        lambda: load_config(root).server.tokens,
        store.registry.engine,
        store.project,
        tokens=store.config.server.tokens,
        interval=interval,
    )


def build(auth: TokenAuth, *, cleanups: tuple[Any, ...] = ()) -> AuthMiddleware:
    async def ok(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> Any:
        yield
        for cleanup in cleanups:
            cleanup()

    routes = [Route(path, ok, methods=["GET", "POST"]) for path in ("/features", "/push", "/health")]
    return AuthMiddleware(Starlette(routes=routes, lifespan=lifespan), auth=auth)


def app_from_environment() -> AuthMiddleware:
    store = FeatureStore(os.environ["FEATURESTORE_REPO"])
    auth = watching_auth(store)
    auth.start()
    return build(auth, cleanups=(auth.close, store.close))
