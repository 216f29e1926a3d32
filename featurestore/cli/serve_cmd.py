"""`serve`: run the online HTTP server (uvicorn) for a repository."""

from __future__ import annotations

import argparse
import inspect
from typing import Any

from featurestore.hosts import is_loopback


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--host", default=None,
        help="address to bind (default: server.host, 127.0.0.1); other than loopback only with server.tokens",
    )
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
    try:
        config = store.config.server
        host = args.host or config.host
        if not config.tokens:
            check_open_host(host)
            print("No tokens are configured: no authentication, so only this machine can connect.")
        port = args.port or config.port
        workers = args.workers or config.workers
        # Fail here, with one clear line, rather than in every worker.
        store.registry.head_version()
        store.online_store.ping()
    finally:
        store.close()
    os.environ["FEATURESTORE_REPO"] = str(store.repo_path)
    if workers > 1 or os.environ.get(METRICS_DIR_ENV):
        # Every worker writes its metrics here, so the one that answers /metrics reports them
        # all (online_server.metrics); a fresh directory, as prometheus_client requires.
        return _with_metrics_dir(lambda: _serve(store, host, port, workers, args.log_level))
    os.environ.pop(METRICS_DIR_ENV, None)  # set but empty: one process, as if unset
    return _serve(store, host, port, workers, args.log_level)


METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _with_metrics_dir(run: Any) -> int:
    """Run with the metrics directory of several workers: a temporary one (removed after), or
    the operator's (``PROMETHEUS_MULTIPROC_DIR``: it must exist; files of an earlier server
    there are removed first, so a directory must not be shared by two running servers)."""
    import os
    import shutil
    import tempfile

    from registry.errors import ConfigError

    given = os.environ.get(METRICS_DIR_ENV) or None
    if given is None:
        os.environ[METRICS_DIR_ENV] = tempfile.mkdtemp(prefix="featurestore-metrics-")
    elif not os.path.isdir(given):
        raise ConfigError(
            f"{METRICS_DIR_ENV}={given!r} is not a directory",
            hint=f"create it, or unset {METRICS_DIR_ENV} to let serve use a temporary one",
        )
    else:
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
    try:
        return int(run())
    finally:
        if given is None:
            shutil.rmtree(os.environ.pop(METRICS_DIR_ENV), ignore_errors=True)


def _serve(store: Any, host: str, port: int, workers: int, log_level: str) -> int:
    print(f"Serving project {store.project} on http://{host}:{port} ({workers} worker(s)); API docs at /docs")
    return serve(
        "online_server.app:app_from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
    )


def check_open_host(host: str) -> None:
    """Refuse to bind anything but loopback without tokens: every endpoint would be open."""
    from registry.errors import ConfigError

    if not is_loopback(host):
        raise ConfigError(
            f"refusing to serve on {host} without tokens: anyone who can reach it could read "
            "features, write feedback and change models",
            hint="create a token with `featurestore token create` and add it to server.tokens "
            "(or FEATURESTORE__SERVER__TOKENS), or bind 127.0.0.1 (--host, server.host)",
        )


def serve(app: str, **options: Any) -> int:
    """``uvicorn.run`` with TCP_NODELAY on the listening socket (see ``uvicorn_nodelay``)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from featurestore.cli.uvicorn_nodelay import FAIR_ACCEPT

    if options.get("workers", 1) > 1 and FAIR_ACCEPT:
        # Workers share the listening socket: each accepts one connection per wake-up.
        options.setdefault("loop", "featurestore.cli.uvicorn_nodelay:FairAcceptLoop")
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
