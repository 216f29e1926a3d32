"""`featurestore ui`: the web console (docs/console.md) on its own, on 127.0.0.1 by default.

The same pages the online server serves under ``/ui`` (``online_server.console``), without the
serving endpoints. With tokens in featurestore.yaml the console asks for one with the ``admin``
role; without, it refuses any address but loopback (as ``featurestore serve`` does).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.description = (
        "Serve the web console: registry (any version, diffs, apply messages), lineage, freshness and "
        "model quality from the evaluation store. Every asset is served locally."
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1); other than loopback only with server.tokens")
    parser.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    parser.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default warning)")


def run(args: argparse.Namespace) -> int:
    import socket

    import uvicorn

    from featurestore.cli.serve_cmd import check_open_host
    from featurestore.store import FeatureStore
    from online_server.console import standalone_app

    store = FeatureStore(args.repo, registry_refresh_seconds=1.0)
    try:
        if not store.config.server.tokens:
            check_open_host(args.host)
        app = standalone_app(store)
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
        host, port = sock.getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        print(f"Console of project {store.project} at http://{host}:{port}/ui/ (Ctrl-C stops it)", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level))
        server.run(sockets=[sock])
    finally:
        store.close()
    return 0
