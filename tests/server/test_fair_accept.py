"""Several workers share one listening socket: ``serve`` runs each on ``FairAcceptLoop``, whose
servers accept one connection per wake-up (docs/serving.md, "Connections spread over the
workers")."""

from __future__ import annotations

import asyncio
from asyncio.selector_events import BaseSelectorEventLoop
from typing import Any

import pytest

from featurestore.cli import serve_cmd
from featurestore.cli.uvicorn_nodelay import FAIR_ACCEPT, FairAcceptLoop


def test_the_loop_accepts_one_connection_per_wake_up_and_serves_them_all(monkeypatch: pytest.MonkeyPatch) -> None:
    assert FAIR_ACCEPT  # the private method still has the parameter on this Python
    backlogs: list[int] = []
    start = BaseSelectorEventLoop._start_serving

    def spy(self: Any, factory: Any, sock: Any, sslcontext: Any = None, server: Any = None, backlog: int = 100,
            *args: Any, **kwargs: Any) -> None:
        backlogs.append(backlog)
        start(self, factory, sock, sslcontext, server, backlog, *args, **kwargs)

    monkeypatch.setattr(BaseSelectorEventLoop, "_start_serving", spy)

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    async def main() -> list[bytes]:
        server = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=64)
        port = server.sockets[0].getsockname()[1]

        async def one(i: int) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"%d\n" % i)
            await writer.drain()
            line = await reader.readline()
            writer.close()
            return line

        try:
            return await asyncio.gather(*(one(i) for i in range(20)))
        finally:
            server.close()

    loop = FairAcceptLoop()
    try:
        answers = loop.run_until_complete(main())
    finally:
        loop.close()
    assert answers == [b"%d\n" % i for i in range(20)]
    assert backlogs == [1]  # one accept per readiness event


@pytest.mark.parametrize(("workers", "loop"), [(1, "auto"), (2, "featurestore.cli.uvicorn_nodelay:FairAcceptLoop")])
def test_serve_picks_the_loop_by_the_number_of_workers(monkeypatch: pytest.MonkeyPatch, workers: int, loop: str) -> None:
    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def config(app: str, **options: Any) -> Any:
        seen.update(options)
        raise Stop  # before anything is bound

    monkeypatch.setattr(serve_cmd, "nodelay_config", config)
    with pytest.raises(Stop):
        serve_cmd.serve("x:app", workers=workers)
    assert seen.get("loop", "auto") == loop
