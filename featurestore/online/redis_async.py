"""A minimal asyncio Redis connection for the online read path: pipelined MGET, nothing else.

Why not ``redis.asyncio``: a read there checks a connection out of a pool, and its per-command
Python cost is larger than the whole of a ``POST /features`` request. The online server needs one
thing, many small MGETs from concurrent requests, and Redis answers the commands of one
connection in order. So one connection per event loop carries every request's command, with
a FIFO of futures for the replies:

- **Auto-pipelining.** Commands issued in the same event-loop iteration leave in one write (the
  flush is scheduled with ``call_soon``), and replies that arrive together are parsed from one
  read. Under load a worker sends one packet per batch of requests, not one per request, and
  never blocks on a round trip while other requests wait.
- **Failure.** A lost connection fails every command in flight with ``ConnectionError``; the
  next command opens a new connection. A reply that takes longer than ``timeout`` means the
  connection is stuck: it is closed and its commands fail with ``TimeoutError``. Reads are
  idempotent, so callers may retry once on a fresh connection.

It speaks RESP2 over TCP or a Unix socket, with AUTH and SELECT from the URL. TLS (``rediss://``)
is not handled here: the store falls back to its blocking client in a worker thread.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["AsyncRedisReader", "RespError", "encode_command", "parse_reply", "supports_url"]


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``): the message, without the leading ``-``."""


def supports_url(url: str) -> bool:
    """True when this connection can serve ``url`` (plain TCP or a Unix socket)."""
    return urlsplit(url).scheme in ("redis", "unix")


def encode_command(*args: bytes | str | int) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            arg = arg.encode()
        elif isinstance(arg, int):
            arg = b"%d" % arg
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


_INCOMPLETE = object()


def parse_reply(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 reply from ``buf`` at ``pos``: ``(value, next_pos)``, or ``(_INCOMPLETE, pos)``
    when the buffer ends first. Bulk strings are bytes (None for nil), errors are ``RespError``
    instances (returned, not raised, so one bad reply fails only its own command)."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return _INCOMPLETE, pos
    kind = buf[pos]
    if kind == 36:  # $ bulk string
        size = int(buf[pos + 1 : end])
        if size < 0:
            return None, end + 2
        start = end + 2
        if len(buf) < start + size + 2:
            return _INCOMPLETE, pos
        return buf[start : start + size], start + size + 2
    if kind == 42:  # * array
        count = int(buf[pos + 1 : end])
        if count < 0:
            return None, end + 2
        items = []
        cursor = end + 2
        for _ in range(count):
            item, cursor = parse_reply(buf, cursor)
            if item is _INCOMPLETE:
                return _INCOMPLETE, pos
            items.append(item)
        return items, cursor
    if kind == 43:  # + simple string
        return buf[pos + 1 : end], end + 2
    if kind == 58:  # : integer
        return int(buf[pos + 1 : end]), end + 2
    if kind == 45:  # - error
        return RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2
    raise ConnectionError(f"unexpected reply from Redis starting with {bytes([kind])!r}")


class _Protocol(asyncio.Protocol):
    """The connection: writes commands, matches replies to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.buffer = b""
        self.error: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buffer + data if self.buffer else data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buf):
                value, pos = parse_reply(buf, pos)
                if value is _INCOMPLETE:
                    break
                if not waiters:
                    raise ConnectionError("Redis sent a reply nobody asked for")
                future = waiters.popleft()[0]
                if not future.done():  # a caller that was cancelled is simply skipped
                    future.set_result(value)
        except (ConnectionError, ValueError, IndexError) as exc:
            self._fail(ConnectionError(f"bad reply from Redis: {exc}"))
            return
        self.buffer = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc if isinstance(exc, Exception) else ConnectionError("Redis closed the connection"))

    # -- commands ------------------------------------------------------------------------------
    def send(self, payload: bytes) -> asyncio.Future[Any]:
        if self.error is not None:
            raise self.error
        future = self.loop.create_future()
        self.waiters.append((future, time.monotonic()))
        if not self.outgoing:
            self.loop.call_soon(self._flush)
        self.outgoing.append(payload)
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self.timeout, self._check_timeout)
        return future

    def _flush(self) -> None:
        if self.outgoing and self.transport is not None and self.error is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def _check_timeout(self) -> None:
        self._watchdog = None
        if not self.waiters or self.error is not None:
            return
        # Replies come in order: if the oldest command is overdue, the connection is stuck.
        overdue = self.waiters[0][1] + self.timeout - time.monotonic()
        if overdue <= 0:
            self._fail(TimeoutError(f"no reply from Redis within {self.timeout:g} s"))
        else:
            self._watchdog = self.loop.call_later(overdue, self._check_timeout)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        waiters, self.waiters = self.waiters, collections.deque()
        for future, _ in waiters:
            if not future.done():
                future.set_exception(self.error)
        if self.transport is not None:
            self.transport.close()

    def close(self) -> None:
        self._fail(ConnectionError("the connection was closed by its owner"))


class AsyncRedisReader:
    """One pipelined connection per event loop to the Redis at ``url``.

    >>> reader = AsyncRedisReader("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> await reader.execute(b"MGET", b"a", b"b")  # doctest: +SKIP
    [b'1', None]
    """

    def __init__(self, url: str, connect_timeout: float = 5.0, timeout: float = 30.0) -> None:
        if not supports_url(url):
            raise ValueError(f"AsyncRedisReader handles redis:// and unix:// URLs, not {urlsplit(url).scheme}://")
        self.url = url
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closer: AsyncGenerator[None, None] | None = None

    async def execute(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply; an error reply is raised as ``RespError``."""
        protocol = self._protocol
        if protocol is None or protocol.error is not None or self._loop is not asyncio.get_running_loop():
            protocol = await self._connect()
        reply = await protocol.send(encode_command(*args))
        if isinstance(reply, RespError):
            raise reply
        return reply

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # A connection belongs to one loop; a new loop (a new test, a new worker) opens its own.
            self._forget_loop()
            self._loop = loop
            self._closer = self._close_with_loop()
            await self._closer.asend(None)
        if self._connecting is not None:  # another request is already connecting: share it
            return await asyncio.shield(self._connecting)
        self._connecting = loop.create_future()
        try:
            protocol = await asyncio.wait_for(self._open(loop), self.connect_timeout)
        except BaseException as exc:
            connecting, self._connecting = self._connecting, None
            if not connecting.done():
                connecting.set_exception(exc if isinstance(exc, Exception) else ConnectionError("cancelled"))
                connecting.exception()  # retrieved: nobody else may be waiting
            raise
        self._protocol = protocol
        self._connecting.set_result(protocol)
        self._connecting = None
        return protocol

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            _, protocol = await loop.create_unix_connection(lambda: _Protocol(loop, self.timeout), unquote(parts.path))
            db_text = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p).get("db", "0")
        else:
            _, protocol = await loop.create_connection(
                lambda: _Protocol(loop, self.timeout), parts.hostname or "127.0.0.1", parts.port or 6379
            )
            db_text = parts.path.lstrip("/") or "0"
        handshake = []
        if parts.password is not None:
            user = unquote(parts.username) if parts.username else None
            auth = ("AUTH", user, unquote(parts.password)) if user else ("AUTH", unquote(parts.password))
            handshake.append(protocol.send(encode_command(*auth)))
        if int(db_text) != 0:
            handshake.append(protocol.send(encode_command("SELECT", db_text)))
        for reply in await asyncio.gather(*handshake):
            if isinstance(reply, RespError):
                protocol.close()
                raise reply
        return protocol

    async def _close_with_loop(self) -> AsyncGenerator[None, None]:
        """Closes the connection when its loop shuts down.

        ``asyncio.run`` (and uvicorn, and anyio's portals) call ``loop.shutdown_asyncgens()``
        before closing the loop, which closes this started, suspended generator and so runs
        the ``finally`` while the loop can still close the socket. Without it, a connection
        would outlive its loop and be left to the garbage collector.
        """
        try:
            yield
        finally:
            self._close_protocol()

    def _forget_loop(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            # The old loop is gone without shutting down its generators: run the finally by
            # hand (it never awaits), so no finalizer is left for a closed loop.
            try:
                closer.aclose().send(None)
            except (StopIteration, RuntimeError):
                pass
        self._close_protocol()
        self._protocol, self._connecting, self._loop = None, None, None

    def _close_protocol(self) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            try:
                protocol.close()
            except RuntimeError:  # the loop is already closed: nothing more can be done here
                pass

    def close(self) -> None:
        """Close the connection (from the loop's thread or after the loop has stopped)."""
        self._close_protocol()
