"""`serve`: run the online HTTP server (uvicorn) for a repository."""

from __future__ import annotations

import argparse
import inspect
from typing import Any


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--host", default=None, help="address to bind (default: server.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: server.port, 8080)")
    parser.add_argument(
        "--workers", type=int, default=None,
        help="worker processes (default: server.workers, 1); each holds its own caches",
    )
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")


def run(args: argparse.Namespace) -> int:
    import os

    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    config = store.config.server
    host = args.host or config.host
    if not config.tokens and host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"No tokens are configured (server.tokens), so the server binds to 127.0.0.1 only, "
            f"not {host}. Create tokens with `featurestore token create` to serve other hosts."
        )
        host = "127.0.0.1"
    elif not config.tokens:
        print("No tokens are configured: no authentication, bound to 127.0.0.1 only.")
    port = args.port or config.port
    workers = args.workers or config.workers
    # Fail here, with one clear line, rather than in every worker.
    store.registry.head_version()
    store.online_store.ping()
    store.close()
    os.environ["FEATURESTORE_REPO"] = str(store.repo_path)
    print(f"Serving project {store.project} on http://{host}:{port} ({workers} worker(s)); API docs at /docs")
    return serve(
        "online_server.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=args.log_level,
        access_log=False,
    )


def serve(app: str, **options: Any) -> int:
    """``uvicorn.run`` with TCP_NODELAY on the listening socket (see ``uvicorn_nodelay``)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    config = nodelay_config(app, **options)
    server = uvicorn.Server(config=config)
    try:
        if config.workers > 1:
            sock = config.bind_socket()
            # Newer uvicorn releases build each worker's server themselves; older ones take a target.
            takes_target = "target" in inspect.signature(Multiprocess).parameters
            extra = {"target": server.run} if takes_target else {}
            Multiprocess(config, sockets=[sock], **extra).run()
            return 0
        server.run()
    except KeyboardInterrupt:
        return 0
    return 0 if server.started else 1


def nodelay_config(app: str, **options: Any) -> Any:
    """The ``uvicorn.Config`` that ``serve`` runs."""
    from featurestore.cli.uvicorn_nodelay import NoDelayConfig

    return NoDelayConfig(app, **options)
