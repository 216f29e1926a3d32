"""A ``uvicorn.Config`` that sets TCP_NODELAY on the socket it binds, and the event loop that
several workers share a socket with (``FairAcceptLoop``).

Its own module so that ``serve`` imports uvicorn only when it runs, and so that the class can be
pickled into worker processes (uvicorn starts them with ``spawn``).

Why: with several workers uvicorn binds the socket itself as ``socket.socket(AF_INET)``, whose
``proto`` is 0, and asyncio then skips its own TCP_NODELAY on accepted connections. A response
leaves as two writes (headers, then body); Nagle holds the body until the client ACKs the
headers, and the client delays that ACK by 40 ms. Measured here: every request to a 2-worker
server took 44 ms, 720 requests/s instead of 2,500. Linux copies TCP_NODELAY from a listening
socket to the sockets it accepts, so setting it once is enough.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn


class NoDelayConfig(uvicorn.Config):
    def bind_socket(self) -> socket.socket:
        sock = super().bind_socket()
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


def _accepts_backlog() -> bool:
    """Whether asyncio's selector loop still takes ``backlog`` as the number of connections to
    accept per wake-up (a private method: checked, never assumed)."""
    import inspect
    from asyncio.selector_events import BaseSelectorEventLoop

    try:
        return "backlog" in inspect.signature(BaseSelectorEventLoop._start_serving).parameters
    except (AttributeError, TypeError, ValueError):
        return False


FAIR_ACCEPT = _accepts_backlog()


class FairAcceptLoop(asyncio.SelectorEventLoop):
    """A selector loop whose servers accept one connection per readiness event.

    Why: with several workers every worker's loop watches one listening socket, and asyncio
    accepts up to ``backlog`` (uvicorn's 2,048) connections each time it wakes, so the first
    worker to wake takes every connection of a burst (a load balancer's pool, wrk's 32) and the
    others idle: per-worker CPU 3.45 s against 0.05 s over one run. Accepting one per wake-up
    lets the workers take turns, and a busy worker, slower back to its selector, takes fewer.
    Measured (bench_predict.py / bench_online.py --issue19, quiet box): POST /features with 2
    workers 0.84x -> 0.93x of the bare endpoint, /predict 2 workers vs 1 1.41x -> 1.58x. The
    listen queue keeps its length: ``Server._start_serving`` calls ``listen(backlog)`` itself.
    """

    def _start_serving(self, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                       backlog: int = 100, *args: Any, **kwargs: Any) -> None:
        super()._start_serving(protocol_factory, sock, sslcontext, server, 1, *args, **kwargs)  # type: ignore[misc]
