"""``GET /docs``: the Swagger UI of the server's OpenAPI schema, from files served by the server.

FastAPI's own ``/docs`` page loads Swagger UI from a public CDN, so it is blank where servers
have no internet access (this project's machines, many production networks). The assets of
``swagger-ui-dist`` (npm, version in ``static/swagger-ui/VERSION``, Apache-2.0) are vendored
under ``online_server/static/swagger-ui`` and served at ``/docs/assets``. ReDoc (``/redoc``),
which would load from the CDN too, is not offered.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(__file__).parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/assets"


def mount_api_docs(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets; ``app`` must be created with ``docs_url=None``."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        # Behind a proxy that strips a path prefix, links must carry it (FastAPI does the same).
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=root + (app.openapi_url or "/openapi.json"),
            title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon-32x32.png",
        )
