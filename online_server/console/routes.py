"""The console's pages (see the package docstring). Every page is rendered on the server from
the SDK (``FeatureStore``) and the evaluation store; the only script is ``static/console.js``,
which draws the quality chart with uPlot from the JSON the page embeds and submits the login
form. Responses carry a Content-Security-Policy of ``'self'`` only, so a page that tried to
load anything from elsewhere would fail in the browser (and the browser tests would see it).
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from online_server.console import access, lineage, registry_view
from registry.errors import FeatureStoreError, NotFoundError

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml", ".png": "image/png",
                ".uplot": "text/plain"}
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
templates = Jinja2Templates(directory=str(HERE / "templates"))


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "–" if not math.isfinite(value) else f"{value:.{digits}f}"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never written"
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


templates.env.filters["fmt"] = _fmt
templates.env.filters["age"] = _age


def router(store: Any, *, prefix: str = "/ui") -> APIRouter:
    """The console's routes for ``store`` (a ``FeatureStore``), under ``prefix``."""
    routes = APIRouter(prefix=prefix, include_in_schema=False)

    def signed_in(request: Request) -> None:
        # Before the page does any work: an anonymous request learns nothing, not even which
        # names exist (it is sent to the sign-in page, or refused).
        try:
            access.check(request, cookie=True)
        except access.AccessDenied as denied:
            if denied.http_status != 401:
                raise
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(303, "sign in first", headers={"Location": f"{prefix}/login?next={quote(here, safe='')}"}) from None

    pages = APIRouter(prefix=prefix, include_in_schema=False, dependencies=[Depends(signed_in)])

    def page(request: Request, template: str, **context: Any) -> Response:
        try:
            access.check(request, cookie=True)
        except access.AccessDenied as denied:
            if denied.http_status == 401:
                return RedirectResponse(f"{prefix}/login?next={quote(request.url.path, safe='')}", status_code=303)
            raise
        response = templates.TemplateResponse(
            request, template, {"root": prefix, "project": store.project, "active": template.split(".")[0], **context}
        )
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def versions() -> list[Any]:
        return list(reversed(store.registry_versions()))

    def head() -> int:
        return int(store.registry.head_version())

    @pages.get("")
    @pages.get("/")
    def overview(request: Request) -> Response:
        defs = store.definitions()
        active = store.model_versions.active_versions()
        counts = {title: len(getattr(defs, attr)) for title, attr in (
            ("entities", "entities"), ("sources", "sources"), ("feature views", "feature_views"),
            ("feature services", "feature_services"), ("models", "models"))}
        return page(request, "overview.html", counts=counts, head=head(), models=sorted(defs.models),
                    active_versions=active, last=(versions() or [None])[0])

    @pages.get("/registry")
    def registry_page(request: Request, version: int | None = None) -> Response:
        latest = head()
        version = latest if version is None else version
        if not 1 <= version <= max(latest, 1):
            raise NotFoundError(f"the registry has no version {version}", hint=f"versions are 1..{latest}")
        grouped = registry_view.objects(store.definitions(version))
        return page(request, "registry.html", version=version, head=latest, grouped=grouped,
                    titles=registry_view.KIND_TITLES, versions=versions())

    @pages.get("/registry/{kind}/{name}")
    def object_page(request: Request, kind: str, name: str, version: int | None = None) -> Response:
        if kind not in registry_view.KIND_TITLES:
            raise NotFoundError(f"no kind {kind!r}", hint="one of " + ", ".join(registry_view.KIND_TITLES))
        version = head() if version is None else version
        spec = store.definitions(version).get(kind, name)
        history = []
        for info in reversed(store.registry_versions()):
            try:
                history.append((info, registry_view.spec_dict(store.definitions(info.version).get(kind, name))))
            except NotFoundError:
                history.append((info, None))
        model_versions = store.model_versions.list(name) if kind == "model" else []
        return page(request, "object.html", kind=kind, name=name, version=version,
                    fields=registry_view.flatten(registry_view.spec_dict(spec)), history=history,
                    model_versions=model_versions, active_version=store.model_versions.active_versions().get(name))

    @pages.get("/diff")
    def diff_page(request: Request, a: int | None = None, b: int | None = None) -> Response:
        latest = head()
        b = latest if b is None else b
        a = max(b - 1, 1) if a is None else a
        for v in (a, b):
            if not 1 <= v <= max(latest, 1):
                raise NotFoundError(f"the registry has no version {v}", hint=f"versions are 1..{latest}")
        changes = registry_view.diff(store.definitions(a), store.definitions(b))
        infos = {info.version: info for info in store.registry_versions()}
        between = [infos[v] for v in range(min(a, b) + 1, max(a, b) + 1) if v in infos]
        return page(request, "diff.html", a=a, b=b, changes=changes, between=between, versions=versions())

    @pages.get("/lineage")
    def lineage_page(request: Request) -> Response:
        defs = store.definitions()
        g = lineage.graph(defs)
        changed: set[tuple[str, str]] = set()
        plan_error = None
        plan_lines: list[str] = []
        try:
            plan = store.plan()
            changed = {(c.kind, c.name) for c in plan.changes}
            plan_lines = [str(c) for c in plan.changes]
        except FeatureStoreError as exc:
            plan_error = exc.message.splitlines()[0]
        affected = g.downstream(changed)
        picture = lineage.svg(g, affected=affected, changed=changed, link=f"{request.scope.get('root_path', '')}{prefix}/registry/")
        return page(request, "lineage.html", svg=picture, plan_lines=plan_lines, plan_error=plan_error,
                    affected=sorted(affected - changed))

    @pages.get("/freshness")
    def freshness_page(request: Request) -> Response:
        defs = store.definitions()
        ages = store.feature_freshness()
        now = time.time()
        rows = []
        for name, view in sorted(defs.feature_views.items()):
            if not view.online:
                continue
            age = ages.get(name)
            ttl = view.ttl_seconds
            rows.append({
                "view": name, "age": age, "ttl": ttl, "ttl_text": str(view.ttl) if ttl else "none",
                "newest": None if age is None else datetime.fromtimestamp(now - age, timezone.utc),
                "stale": age is None or (ttl > 0 and age >= ttl),
            })
        return page(request, "freshness.html", rows=rows)

    @pages.get("/models")
    def models_page(request: Request) -> Response:
        defs = store.definitions()
        active = store.model_versions.active_versions()
        models = [(name, store.model_versions.list(name), active.get(name)) for name in sorted(defs.models)]
        return page(request, "models.html", models=models)

    @pages.get("/models/{model}")
    def model_page(request: Request, model: str, window: str = "30d", every: str = "1d", slice: str = "all",
                   a: int | None = None, b: int | None = None) -> Response:
        from featurestore.evaluation import (
            compare_versions,
            drift_vs_validation,
            evaluate,
            feature_drift,
            notes_of,
        )

        spec = store.definitions().get("model", model)
        recorded = store.model_versions.list(model)
        active = store.model_versions.active_versions().get(model)
        logistic = spec.objective == "logistic"
        metric = "log_loss" if logistic else "rmse"
        context: dict[str, Any] = {"model": model, "spec": spec, "recorded": recorded, "active": active,
                                   "window": window, "every": every, "slice": slice, "metric": metric}
        if not recorded:
            return page(request, "model.html", chart=None, **context)
        series = evaluate(store, models=[model], metrics=[metric], window=window, every=every)
        context["slices"] = sorted({r["slice"] for r in series.to_pylist()}, key=lambda s: (s != "all", s))
        context["chart"] = _chart(series.to_pylist(), metric, slice)
        context["notes"] = notes_of(series)
        context["validation"] = drift_vs_validation(store, models=[model], window="7d").to_pylist() if active else []
        numbers = sorted(v.version for v in recorded)
        b = b if b is not None else (active or numbers[-1])
        a = a if a is not None else next((v for v in reversed(numbers) if v != b), b)
        context.update(a=a, b=b, versions=numbers,
                       compare=compare_versions(store, model, a, b, window=window, metrics=[metric, "mean_prediction"]).to_pylist())
        try:
            drift = feature_drift(store, model, window="1h", reference="7d")
            meta = {k.decode(): v.decode() for k, v in (drift.schema.metadata or {}).items()}
            context.update(drift=drift.to_pylist()[:12], drift_meta=meta)
        except NotFoundError as exc:
            context.update(drift=[], drift_meta={"error": exc.message})
        return page(request, "model.html", **context)

    @routes.get("/login")
    def login_page(request: Request, next: str | None = None) -> Response:
        response = templates.TemplateResponse(request, "login.html", {"root": prefix, "project": store.project,
                                                                      "active": "login", "next": _safe_next(next, prefix)})
        response.headers["Content-Security-Policy"] = CSP
        return response

    @routes.post("/login")
    async def login(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token.strip():
            return JSONResponse({"error": {"type": "AuthError", "message": "send {\"token\": \"...\"}",
                                           "hint": "paste a token with the admin role", "retryable": False}}, 422)
        auth = access.auth_of(request)
        if auth is not None and auth.enabled:
            verdict = auth.check(token.strip())
            if not isinstance(verdict, frozenset):
                return JSONResponse({"error": {"type": "AuthError", "message": verdict.message, "hint": verdict.hint,
                                               "retryable": False}}, 401)
            if access.ROLE not in verdict:
                return JSONResponse({"error": {"type": "AuthError", "message": "this token lacks the `admin` role",
                                               "hint": "use a token with the `admin` role", "retryable": False}}, 403)
        from featurestore.hosts import is_loopback
        from online_server.auth import TokenAuth

        response = JSONResponse({"ok": True})
        # Secure except on this machine's own address (where browsers keep it over http too):
        # behind a TLS proxy the request arrives as http, and the cookie must still never
        # travel in clear.
        host = request.url.hostname or ""
        response.set_cookie(access.COOKIE, TokenAuth.session_of(token.strip()), httponly=True, samesite="strict",
                            path=prefix, secure=request.url.scheme == "https" or not is_loopback(host))
        return response

    @routes.post("/logout")
    def logout() -> Response:
        response = JSONResponse({"ok": True})
        response.delete_cookie(access.COOKIE, path=prefix)
        return response

    @routes.get("/static/{name}")
    def static(name: str) -> Response:
        path = (STATIC / name).resolve()
        if path.parent != STATIC or not path.is_file():
            raise NotFoundError(f"no static file {name!r}", hint="see online_server/console/static/")
        media = STATIC_TYPES.get(path.suffix, "text/plain")
        return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600",
                                                             "X-Content-Type-Options": "nosniff"})

    # Both under ``prefix``: combined at the top (the pages' router has the prefix itself,
    # since FastAPI refuses a route "" under no prefix).
    top = APIRouter(include_in_schema=False)
    top.include_router(routes)
    top.include_router(pages)
    return top


def _safe_next(target: str | None, prefix: str) -> str:
    # Only a path of this console: never an open redirect to another site.
    if target and target.startswith(prefix) and not target.startswith("//") and "\\" not in target:
        return target
    return prefix + "/"


def _chart(rows: list[dict[str, Any]], metric: str, wanted: str) -> dict[str, Any]:
    """uPlot's aligned data: x = bucket starts (Unix seconds); per version, the personalised
    and the average-user loss on the chosen slice (null where a bucket has no rows)."""
    rows = [r for r in rows if r["slice"] == wanted and r.get("bucket") is not None]
    xs = sorted({r["bucket"] for r in rows})
    index = {x: i for i, x in enumerate(xs)}
    series = []
    for version in sorted({r["version"] for r in rows}):
        for key, label in ((metric, f"v{version} personalised"), (f"{metric}_average_user", f"v{version} average user")):
            values: list[float | None] = [None] * len(xs)
            for r in rows:
                if r["version"] == version and r.get(key) is not None:
                    values[index[r["bucket"]]] = float(r[key])
            series.append({"label": label, "values": values, "dash": "average" in label})
    return {"metric": metric, "slice": wanted, "x": [x.timestamp() for x in xs], "series": series,
            "points": len(rows)}


def standalone_app(store: Any, *, prefix: str = "/ui") -> FastAPI:
    """The console alone (``featurestore ui``): the router, the error handler, the same token
    check as the server (featurestore.yaml's tokens, followed without a restart), and ``/``
    redirecting to the console."""
    from featurestore.config import CONFIG_FILE, load_config
    from online_server.auth import TokenAuth
    from online_server.http import error_response

    app = FastAPI(title="featurestore console", docs_url=None, redoc_url=None, openapi_url=None)
    root = store.config.root
    app.state.auth = TokenAuth.watching(root / CONFIG_FILE, lambda: load_config(root).server.tokens,
                                        store.registry.engine, store.project, tokens=store.config.server.tokens)

    @app.exception_handler(FeatureStoreError)
    async def _error(request: Request, exc: FeatureStoreError) -> Response:
        return error_response(exc.http_status, type(exc).__name__, exc.message, exc.hint, exc.retryable, None)

    @app.get("/", include_in_schema=False)
    def home() -> Response:
        return RedirectResponse(prefix + "/", status_code=307)

    app.include_router(router(store, prefix=prefix))
    # As on the server: a sign-in must be a JSON body (a cross-site form cannot send one) of a
    # bounded size.
    from online_server.body_guard import BodyGuard

    app.add_middleware(BodyGuard, max_body_bytes=store.config.server.max_body_bytes)
    app.router.on_shutdown.append(app.state.auth.close)
    return app

