"""The console: a small server-rendered web application over the registry, the stores and the
evaluation store, mounted under ``/ui`` on the online server or served alone by
``featurestore ui`` (docs/console.md).

    routes          the pages (``router``), the login cookie, the static files
    registry_view   objects of any registry version; the field-level diff of two versions
    lineage         source -> job -> view -> service -> model as a generated SVG; what a plan affects
    access          the admin-role check shared with ``GET /eval`` (header or console cookie)
    templates/      Jinja2 templates; static/: the stylesheet, the page script and uPlot (vendored
                    from npm with its licence: every asset is served from here, nothing from a CDN)
"""

from online_server.console.routes import router, standalone_app

__all__ = ["router", "standalone_app"]
