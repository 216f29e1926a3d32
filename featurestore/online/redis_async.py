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

It speaks RESP2 over TCP or a Unix socket, with AUTH and SELECT from the URL, read by redis-py's
own URL parser (so ``?db=`` and ``?password=`` mean what they mean to the blocking client). TLS
(``rediss://``) is not handled here: the store falls back to its blocking client in a worker
thread. Replies are parsed incrementally (``ReplyParser``): a large reply arriving in many reads
costs one pass. Each event loop using a reader gets its own connection, closed when that loop
shuts down its async generators (``asyncio.run``, uvicorn and anyio do) or by ``close()``.
"""

from __future__ import annotations

import asyncio
import collections
import time
import weakref
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

from featurestore import tracing

__all__ = ["AsyncRedisReader", "ReplyParser", "RespError", "encode_command", "supports_url"]


class RespError(Exception):
    """An error reply from Redis (``-ERR ...``): the message, without the leading ``-``."""


def _name(command: bytes | str | int) -> str:
    return command.decode() if isinstance(command, bytes) else str(command)


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


class ReplyParser:
    """RESP2 replies from a byte stream, resumable: bytes are fed as they arrive and each
    complete element is consumed once, so a large reply arriving in many reads costs one pass
    (re-parsing it from its start on every read would be quadratic and block the loop).

    Bulk strings are bytes (None for nil), integers int, simple strings bytes; an error reply is
    a ``RespError`` instance (returned, not raised, so it fails only its own command).

    >>> parser = ReplyParser()
    >>> parser.feed(b"*2\\r\\n$1\\r\\na\\r\\n$-1")
    []
    >>> parser.feed(b"\\r\\n+OK\\r\\n")
    [[b'a', None], b'OK']
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        # Arrays being filled, innermost last: [items so far, items still expected].
        self._stack: list[list[Any]] = []

    def feed(self, data: bytes) -> list[Any]:
        """Add ``data``; return the top-level replies it completed, in order."""
        buf = self._buf
        buf += data
        stack = self._stack
        out: list[Any] = []
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            kind = buf[pos]
            if kind == 36:  # $ bulk string
                size = int(buf[pos + 1 : end])
                if size < 0:
                    value: Any = None
                    pos = end + 2
                else:
                    start = end + 2
                    if len(buf) < start + size + 2:
                        break
                    value = bytes(buf[start : start + size])
                    pos = start + size + 2
            elif kind == 42:  # * array
                count = int(buf[pos + 1 : end])
                pos = end + 2
                if count > 0:
                    stack.append([[], count])
                    continue
                value = None if count < 0 else []
            elif kind == 43:  # + simple string
                value, pos = bytes(buf[pos + 1 : end]), end + 2
            elif kind == 58:  # : integer
                value, pos = int(buf[pos + 1 : end]), end + 2
            elif kind == 45:  # - error
                value, pos = RespError(buf[pos + 1 : end].decode(errors="replace")), end + 2
            else:
                raise ConnectionError(f"unexpected reply from Redis starting with {bytes([kind])!r}")
            # Put the element in its array; a completed array is itself an element.
            while stack:
                top = stack[-1]
                top[0].append(value)
                top[1] -= 1
                if top[1]:
                    break
                value = stack.pop()[0]
            else:
                out.append(value)
        del buf[:pos]  # what is left is at most one incomplete element
        return out


class _Protocol(asyncio.Protocol):
    """The connection: writes commands, matches replies to futures in order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiters: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self.outgoing: list[bytes] = []
        self.parser = ReplyParser()
        self.error: BaseException | None = None
        self._watchdog: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            replies = self.parser.feed(data)
        except (ConnectionError, ValueError, IndexError) as exc:
            self._fail(ConnectionError(f"bad reply from Redis: {exc}"))
            return
        waiters = self.waiters
        for value in replies:
            if not waiters:
                self._fail(ConnectionError("Redis sent a reply nobody asked for"))
                return
            future = waiters.popleft()[0]
            if not future.done():  # a caller that was cancelled is simply skipped
                future.set_result(value)

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


class _LoopConnection:
    """The connection of one event loop, and what closes it when that loop shuts down."""

    def __init__(self) -> None:
        self.protocol: _Protocol | None = None
        self.connecting: asyncio.Task[_Protocol] | None = None
        self.closer: AsyncGenerator[None, None] | None = None

    def connected(self, task: asyncio.Task[_Protocol]) -> None:
        """The connect task's done callback (runs before its awaiting callers resume)."""
        if self.connecting is task:
            self.connecting = None
        if not task.cancelled() and task.exception() is None:  # a failure is seen by callers
            self.protocol = task.result()

    def close(self) -> None:
        protocol, self.protocol = self.protocol, None
        if protocol is not None:
            try:
                protocol.close()
            except RuntimeError:  # the loop is already closed: nothing more can be done here
                pass


class AsyncRedisReader:
    """One pipelined connection per event loop to the Redis at ``url``.

    >>> reader = AsyncRedisReader("redis://127.0.0.1:6379/0")  # doctest: +SKIP
    >>> await reader.execute(b"MGET", b"a", b"b")  # doctest: +SKIP
    [b'1', None]
    """

    def __init__(
        self, url: str, connect_timeout: float = 5.0, timeout: float = 30.0, *, address: tuple[str, int] | None = None
    ) -> None:
        """``address``: connect to this host and port instead of the URL's, with the URL's
        credentials (a Redis Cluster node, ``redis_cluster_async``)."""
        if not supports_url(url):
            raise ValueError(f"AsyncRedisReader handles redis:// and unix:// URLs, not {urlsplit(url).scheme}://")
        # The blocking client's own parser, so both read the same database with the same
        # credentials whatever the URL's form (path or ?db=, user-info or ?password=).
        from redis.connection import parse_url

        self.url = url
        self.params = parse_url(url)
        if address is not None:
            self.params.pop("path", None)
            self.params["host"], self.params["port"] = address
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        # Several loops may use one reader (successive asyncio.run calls, a test client's
        # portal thread): each has its own connection, dropped with its loop.
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopConnection] = (
            weakref.WeakKeyDictionary()
        )

    async def execute(self, *args: bytes | str | int) -> Any:
        """Send one command and return its reply; an error reply is raised as ``RespError``,
        a connection that cannot be opened or is lost as ``ConnectionError``/``OSError``, a
        reply that does not come as ``TimeoutError``."""
        if tracing.enabled():
            with tracing.span(f"redis {_name(args[0])}", self._span_attributes(1)):
                return await self._execute(args)
        return await self._execute(args)

    async def _execute(self, args: tuple[bytes | str | int, ...]) -> Any:
        loop = asyncio.get_running_loop()
        conn = self._loops.get(loop)
        protocol = None if conn is None else conn.protocol
        if protocol is None or protocol.error is not None:
            protocol = await self._connect(loop)
        reply = await protocol.send(encode_command(*args))
        if isinstance(reply, RespError):
            raise reply
        return reply

    def _span_attributes(self, commands: int) -> dict[str, Any]:
        return {"db.system": "redis", "server.address": str(self.params.get("host", "")),
                "server.port": int(self.params.get("port", 0) or 0), "db.redis.commands": commands}

    async def execute_many(self, commands: list[tuple[bytes | str | int, ...]]) -> list[Any]:
        """Send several commands back to back on this loop's connection (nothing else comes
        between them, so ``ASKING`` applies to the command after it) and return their replies
        in order; an error reply is returned as a ``RespError`` value, not raised. Connection
        failures raise as for ``execute``."""
        if tracing.enabled():
            with tracing.span(f"redis pipeline {_name(commands[0][0]) if commands else ''}".rstrip(),
                              self._span_attributes(len(commands))):
                return await self._execute_many(commands)
        return await self._execute_many(commands)

    async def _execute_many(self, commands: list[tuple[bytes | str | int, ...]]) -> list[Any]:
        loop = asyncio.get_running_loop()
        conn = self._loops.get(loop)
        protocol = None if conn is None else conn.protocol
        if protocol is None or protocol.error is not None:
            protocol = await self._connect(loop)
        futures = [protocol.send(encode_command(*command)) for command in commands]
        # Every future is awaited (a lost connection fails them all), so none is left with an
        # exception nobody retrieved.
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            # An error reply is a RespError *value*; anything else raised is the connection's.
            if isinstance(reply, BaseException) and not isinstance(reply, RespError):
                raise reply
        return replies

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        conn = self._loops.get(loop)
        if conn is None:
            conn = self._loops[loop] = _LoopConnection()
            conn.closer = self._close_with_loop(conn)
            await conn.closer.asend(None)
        if conn.connecting is None:
            # Its own task, so a caller cancelled while connecting does not fail the others,
            # and the connection is kept even if every caller was cancelled meanwhile.
            conn.connecting = loop.create_task(self._open(loop))
            conn.connecting.add_done_callback(conn.connected)
        return await asyncio.shield(conn.connecting)

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Protocol:
        params = self.params

        def factory() -> _Protocol:
            return _Protocol(loop, self.timeout)

        try:
            if "path" in params:
                opening = loop.create_unix_connection(factory, params["path"])
            else:
                opening = loop.create_connection(factory, params.get("host", "127.0.0.1"), params.get("port", 6379))
            _, protocol = await asyncio.wait_for(opening, self.connect_timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            raise TimeoutError(f"could not connect to Redis within {self.connect_timeout:g} s") from None
        try:
            handshake = []
            if params.get("password") is not None:
                user = params.get("username")
                auth = ("AUTH", user, params["password"]) if user else ("AUTH", params["password"])
                handshake.append(protocol.send(encode_command(*auth)))
            if int(params.get("db") or 0) != 0:
                handshake.append(protocol.send(encode_command("SELECT", int(params["db"]))))
            for reply in await asyncio.gather(*handshake):
                if isinstance(reply, RespError):
                    raise reply
        except BaseException:
            protocol.close()  # a refused or unanswered handshake leaves no socket behind
            raise
        return protocol

    async def _close_with_loop(self, conn: _LoopConnection) -> AsyncGenerator[None, None]:
        """Closes the loop's connection when the loop shuts down.

        ``asyncio.run`` (and uvicorn, and anyio's portals) call ``loop.shutdown_asyncgens()``
        before closing the loop, which closes this started, suspended generator and so runs
        the ``finally`` while the loop can still close the socket. A loop closed without that
        leaves its socket to the garbage collector.
        """
        try:
            yield
        finally:
            conn.close()

    def close(self) -> None:
        """Close every loop's connection (from any thread, before or after the loops end)."""
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, conn in list(self._loops.items()):
            if loop.is_running() and loop is not current:
                loop.call_soon_threadsafe(conn.close)  # only its own thread may touch it
                continue
            closer, conn.closer = conn.closer, None
            if closer is not None:
                # Finish the generator by hand (its finally never awaits), so no finalizer is
                # left for a loop that may be closed.
                try:
                    closer.aclose().send(None)
                except (StopIteration, RuntimeError):
                    pass
            conn.close()
        self._loops.clear()

