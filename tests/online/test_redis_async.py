"""The asyncio Redis connection of the online read path (featurestore/online/redis_async.py).

The parser and the failure handling are tested against byte strings and a silent socket; the
pipelining, AUTH, SELECT and reconnects against the real Redis of tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis

from featurestore.online import redis_async
from featurestore.online.redis_async import AsyncRedisReader, RespError, encode_command, parse_reply
from featurestore.online.redis_store import RedisOnlineStore
from registry.errors import StoreUnavailableError

# -- the wire format ---------------------------------------------------------------------------


def test_encode_command_is_a_resp_array_of_bulk_strings() -> None:
    assert encode_command(b"MGET", "a", 7, b"x\r\ny") == b"*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\n7\r\n$4\r\nx\r\ny\r\n"


REPLIES = [
    (b"+OK\r\n", b"OK"),
    (b":42\r\n", 42),
    (b"$-1\r\n", None),
    (b"$0\r\n\r\n", b""),
    (b"$4\r\na\r\nb\r\n", b"a\r\nb"),  # binary payloads may hold CRLF: lengths, not delimiters
    (b"*3\r\n$1\r\nx\r\n$-1\r\n:5\r\n", [b"x", None, 5]),
    (b"*2\r\n*1\r\n+OK\r\n*0\r\n", [[b"OK"], []]),
    (b"*-1\r\n", None),
]


@pytest.mark.parametrize(("wire", "value"), REPLIES)
def test_parse_reply_at_every_cut(wire: bytes, value: object) -> None:
    assert parse_reply(wire + b"+next\r\n", 0) == (value, len(wire))
    # Whatever prefix has arrived, the parser either waits for more or gives the whole reply.
    for cut in range(len(wire)):
        got, pos = parse_reply(wire[:cut], 0)
        assert got is redis_async._INCOMPLETE and pos == 0


def test_error_replies_are_values_not_raised() -> None:
    got, pos = parse_reply(b"-WRONGTYPE bad\r\n", 0)
    assert isinstance(got, RespError) and str(got) == "WRONGTYPE bad" and pos == 16


def test_urls_it_serves() -> None:
    assert redis_async.supports_url("redis://127.0.0.1:6379/0")
    assert redis_async.supports_url("unix:///run/redis.sock?db=2")
    assert not redis_async.supports_url("rediss://host:6380/0")
    with pytest.raises(ValueError, match="rediss"):
        AsyncRedisReader("rediss://host:6380/0")


# -- failures without Redis ----------------------------------------------------------------------


def test_a_silent_server_times_out_and_fails_every_pending_command() -> None:
    async def scenario() -> tuple[list[object], object]:
        accepted: list[asyncio.StreamWriter] = []

        async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)  # reads nothing, answers nothing

        server = await asyncio.start_server(swallow, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncRedisReader(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        results = await asyncio.gather(*(client.execute("GET", f"k{i}") for i in range(3)), return_exceptions=True)
        # The stuck connection was dropped: the next command opens a new one (and times out too).
        again = await asyncio.gather(client.execute("GET", "k"), return_exceptions=True)
        client.close()
        server.close()
        for writer in accepted:
            writer.close()
        return results, again[0]

    results, again = asyncio.run(scenario())
    assert all(isinstance(r, TimeoutError) for r in results), results
    assert isinstance(again, TimeoutError)


def test_a_closed_port_fails_fast_with_connection_refused() -> None:
    client = AsyncRedisReader("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(client.execute("PING"))


# -- against the real Redis ----------------------------------------------------------------------


@pytest.fixture
def keys(redis_url: str, unique_project: str) -> Iterator[list[bytes]]:
    client = redis.Redis.from_url(redis_url)
    names = [f"{unique_project}:k{i}".encode() for i in range(300)]
    client.mset({name: b"v\r\n%d" % i for i, name in enumerate(names)})
    yield names
    client.delete(*names)
    client.close()


@pytest.mark.integration
def test_concurrent_commands_are_pipelined_and_matched_in_order(redis_url: str, keys: list[bytes]) -> None:
    async def scenario() -> list[object]:
        client = AsyncRedisReader(redis_url)
        try:
            return await asyncio.gather(
                *(client.execute(b"MGET", keys[i], b"missing", keys[-1 - i]) for i in range(300))
            )
        finally:
            client.close()

    got = asyncio.run(scenario())
    assert got == [[b"v\r\n%d" % i, None, b"v\r\n%d" % (299 - i)] for i in range(300)]


@pytest.mark.integration
def test_a_cancelled_caller_does_not_shift_the_replies(redis_url: str, keys: list[bytes]) -> None:
    async def scenario() -> list[object]:
        client = AsyncRedisReader(redis_url)
        try:
            await client.execute("PING")
            first = asyncio.ensure_future(client.execute(b"GET", keys[0]))
            second = asyncio.ensure_future(client.execute(b"GET", keys[1]))
            await asyncio.sleep(0)
            first.cancel()
            return [await second, await client.execute(b"GET", keys[2])]
        finally:
            client.close()

    assert asyncio.run(scenario()) == [b"v\r\n1", b"v\r\n2"]


@pytest.mark.integration
def test_error_reply_fails_only_its_own_command(redis_url: str, keys: list[bytes]) -> None:
    async def scenario() -> list[object]:
        client = AsyncRedisReader(redis_url)
        try:
            return await asyncio.gather(
                client.execute(b"GET", keys[0]), client.execute(b"NOSUCHCOMMAND"), client.execute(b"GET", keys[1]),
                return_exceptions=True,
            )
        finally:
            client.close()

    first, error, last = asyncio.run(scenario())
    assert (first, last) == (b"v\r\n0", b"v\r\n1")
    assert isinstance(error, RespError) and "unknown command" in str(error).lower()


@pytest.mark.integration
def test_select_and_auth_come_from_the_url(redis_url: str, unique_project: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"u{uuid.uuid4().hex[:8]}", "s3cret/pass"
    key = f"{unique_project}:in_db_3".encode()
    db3 = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/3")
    admin.execute_command("ACL", "SETUSER", user, "on", f">{password}", "~*", "+@all")
    db3.set(key, b"three")
    try:
        host = redis_url.split("://", 1)[1].split("/", 1)[0]
        good = AsyncRedisReader(f"redis://{user}:s3cret%2Fpass@{host}/3")
        bad = AsyncRedisReader(f"redis://{user}:wrong@{host}/3")

        async def scenario() -> tuple[object, BaseException | None]:
            value = await good.execute(b"GET", key)
            try:
                await bad.execute(b"GET", key)
            except RespError as exc:
                return value, exc
            return value, None

        value, refused = asyncio.run(scenario())
        assert value == b"three"
        assert refused is not None and "WRONGPASS" in str(refused)
    finally:
        good.close()
        bad.close()
        admin.execute_command("ACL", "DELUSER", user)
        db3.delete(key)
        db3.close()
        admin.close()


@pytest.mark.integration
def test_the_store_reconnects_after_its_connection_is_killed(redis_url: str, unique_project: str) -> None:
    store = RedisOnlineStore(unique_project, redis_url)
    admin = redis.Redis.from_url(redis_url)
    try:
        store.write_latest("users", [(b"1", 10, 0, b"one")])

        async def scenario() -> list[object]:
            before = await store.read_latest_async([("users", b"1")])
            host, port = store._async._protocol.transport.get_extra_info("sockname")[:2]
            assert admin.execute_command("CLIENT", "KILL", "ADDR", f"{host}:{port}") in (True, b"OK")
            await asyncio.sleep(0.05)  # the kill reaches the connection: it is now closed
            after = await store.read_latest_async([("users", b"1")])
            return [before, after]

        assert asyncio.run(scenario()) == [[(10, b"one")], [(10, b"one")]]
    finally:
        store.close()
        admin.delete(f"{unique_project}:users:1", f"{unique_project}:__meta__:newest:users")
        admin.close()


@pytest.mark.integration
def test_the_store_maps_a_redis_refusal_to_unavailable(redis_url: str, unique_project: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisOnlineStore(unique_project, redis_url)

    async def loading(*args: object) -> object:
        raise RespError("LOADING Redis is loading the dataset in memory")

    monkeypatch.setattr(store._async, "execute", loading)
    try:
        with pytest.raises(StoreUnavailableError, match="LOADING") as info:
            asyncio.run(store.read_latest_async([("users", b"1")]))
        assert info.value.retryable
    finally:
        store.close()
