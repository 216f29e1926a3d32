"""``featurestore serve`` with the two changes proposed by issue 19 for a server of several
workers, measured by ``bench_predict.py --issue19`` beside the server as it is:

1. each worker accepts one connection per wake-up (``featurestore/cli/serve_cmd.py``);
2. the prediction log's writer lingers 20 ms after a transaction that was not full
   (``featurestore/models/prediction_log.py``), so a busy worker writes fewer, larger batches.

Why (1): with several workers, uvicorn binds one listening socket and every worker's asyncio loop
watches it. When connections arrive, asyncio's ``_accept_connection`` accepts up to ``backlog``
(uvicorn's 2,048) of them in a loop, so the first worker to wake takes every connection of a
burst: wrk's 32 connections, or a load balancer's pool, all land on one worker and the other
idles (seen here: per-worker CPU 3.45 s and 0.05 s over one run). Accepting one connection per
wake-up lets the workers take turns, and a busy worker, slower to come back to its selector,
takes fewer: the connections spread over the workers by load.

Why (2): the writer takes what is queued as soon as one record arrives, so at a few hundred
predictions per second per worker each transaction carries a handful of records, and a record
costs the worker 0.57 ms of CPU in a transaction of its own, 0.19 ms in one of 4, 0.07 ms in one
of 64 (records of 100 items, d = 16; a request is ~0.6 ms in all). With two workers each one's
batches are half as large, which is why a request cost more CPU with 2 workers than with 1.

    python3 -m bench.fair_serve -r REPO --port 8080 --workers 2
"""

from __future__ import annotations

import asyncio
import os
from typing import Any


class FairAcceptLoop(asyncio.SelectorEventLoop):
    """A selector loop whose servers accept one connection per readiness event (the listen
    queue keeps its length: ``Server._start_serving`` calls ``listen(backlog)`` itself)."""

    def _start_serving(self, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                       backlog: int = 100, *args: Any, **kwargs: Any) -> None:
        super()._start_serving(protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)  # type: ignore[misc]


LINGER_SECONDS = 0.02


def app() -> Any:
    """``online_server.app.app_from_environment`` with the writer's linger (a stand-in for the
    change to ``PredictionLog._run``: it sleeps after writing, in the writer's thread)."""
    import time

    from featurestore.models.prediction_log import PredictionLog
    from online_server.app import app_from_environment

    write = PredictionLog._write

    def lingering_write(self: PredictionLog, batch: list) -> None:
        write(self, batch)
        if len(batch) < self.batch_rows:
            time.sleep(LINGER_SECONDS)

    PredictionLog._write = lingering_write  # type: ignore[method-assign]
    return app_from_environment()


def main() -> int:
    import argparse

    from featurestore.cli import serve_cmd
    from featurestore.store import FeatureStore

    parser = argparse.ArgumentParser()
    parser.add_argument("-r", "--repo", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    store = FeatureStore(args.repo)
    os.environ["FEATURESTORE_REPO"] = str(store.repo_path)
    store.close()

    def run() -> int:
        return serve_cmd.serve(
            "bench.fair_serve:app", factory=True, host="127.0.0.1", port=args.port,
            workers=args.workers, log_level="warning", access_log=False,
            **({"loop": "bench.fair_serve:FairAcceptLoop"} if args.workers > 1 else {}),
        )

    if args.workers > 1:
        return serve_cmd._with_metrics_dir(run)
    return run()


if __name__ == "__main__":
    raise SystemExit(main())
