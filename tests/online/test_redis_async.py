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
from featurestore.online.redis_async import AsyncRedisReader, ReplyParser, RespError, encode_command
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
def test_replies_parse_whatever_the_cut(wire: bytes, value: object) -> None:
    assert ReplyParser().feed(wire + b"+next\r\n") == [value, b"next"]
    # However the bytes arrive, the reply comes out once, whole, when its last byte does.
    for cut in range(1, len(wire)):
        parser = ReplyParser()
        assert parser.feed(wire[:cut]) == []
        assert parser.feed(wire[cut:]) == [value]
    parser = ReplyParser()
    got = [parser.feed(wire[i : i + 1]) for i in range(len(wire))]
    assert got[:-1] == [[]] * (len(wire) - 1) and got[-1] == [value]


def test_error_replies_are_values_not_raised() -> None:
    (got,) = ReplyParser().feed(b"-WRONGTYPE bad\r\n")
    assert isinstance(got, RespError) and str(got) == "WRONGTYPE bad"


def test_a_large_reply_in_small_reads_is_parsed_in_one_pass() -> None:
    """20,000 values of 1 KB in 64 KB reads: each element is consumed once (re-parsing from the
    start at every read took seconds and blocked the event loop)."""
    wire = b"*20000\r\n" + b"".join(b"$1024\r\n" + bytes([i % 251]) * 1024 + b"\r\n" for i in range(20_000))
    parser = ReplyParser()
    out: list = []
    for start in range(0, len(wire), 65_536):
        out += parser.feed(wire[start : start + 65_536])
        assert len(parser._buf) <= 1024 + 16  # at most one incomplete element is kept
    assert len(out) == 1 and len(out[0]) == 20_000 and out[0][7] == bytes([7]) * 1024


def test_the_url_is_read_as_the_blocking_client_reads_it() -> None:
    assert AsyncRedisReader("redis://127.0.0.1:6379?db=3").params["db"] == 3
    assert AsyncRedisReader("redis://u:p%40ss@h:7/2").params == {
        "username": "u", "password": "p@ss", "host": "h", "port": 7, "db": 2,
    }
    unix = AsyncRedisReader("unix:///run/r.sock?db=2&password=x").params
    assert (unix["path"], unix["db"], unix["password"]) == ("/run/r.sock", 2, "x")


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
            protocol = store._async._loops[asyncio.get_running_loop()].protocol
            host, port = protocol.transport.get_extra_info("sockname")[:2]
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


def test_a_cancelled_connector_does_not_fail_the_others_and_leaves_no_socket() -> None:
    async def scenario() -> tuple[list[object], int]:
        accepted: list[asyncio.StreamWriter] = []

        async def handshake_then_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(writer)
            await asyncio.sleep(0.1)  # slow to accept the first command
            while data := await reader.read(65_536):
                writer.write(b"+PONG\r\n" * data.count(b"PING"))

        server = await asyncio.start_server(handshake_then_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncRedisReader(f"redis://127.0.0.1:{port}/0", timeout=2)
        first = asyncio.ensure_future(client.execute("PING"))
        others = [asyncio.ensure_future(client.execute("PING")) for _ in range(4)]
        await asyncio.sleep(0.01)
        first.cancel()
        results = await asyncio.gather(*others, return_exceptions=True)
        client.close()
        server.close()
        for writer in accepted:
            writer.close()
        return results, len(accepted)

    results, connections = asyncio.run(scenario())
    assert results == [b"PONG"] * 4 and connections == 1


def test_a_handshake_without_an_answer_closes_its_socket() -> None:
    async def scenario() -> tuple[object, int]:
        peers: list[asyncio.StreamWriter] = []
        closed = 0

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal closed
            peers.append(writer)
            await reader.read()  # returns b"" when the client closes its side
            closed += 1

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = AsyncRedisReader(f"redis://:pw@127.0.0.1:{port}/0", connect_timeout=0.2, timeout=0.2)
        outcome = await asyncio.gather(client.execute("PING"), return_exceptions=True)
        await asyncio.sleep(0.1)
        client.close()
        server.close()
        for writer in peers:
            writer.close()
        return outcome[0], closed

    error, closed = asyncio.run(scenario())
    assert isinstance(error, TimeoutError) and closed == 1


@pytest.mark.integration
def test_two_threads_with_their_own_loops_share_one_reader(redis_url: str, keys: list[bytes]) -> None:
    import threading

    client = AsyncRedisReader(redis_url)
    errors: list[BaseException] = []
    results: list[object] = []

    def worker(offset: int) -> None:
        async def reads() -> None:
            for i in range(50):
                results.append(await client.execute(b"GET", keys[(offset + i) % len(keys)]))

        try:
            for _ in range(5):  # a new loop each time, as successive asyncio.run calls make
                asyncio.run(reads())
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n * 37,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    client.close()
    assert errors == [] and len(results) == 3 * 5 * 50
    assert all(isinstance(r, bytes) and r.startswith(b"v\r\n") for r in results)


@pytest.mark.integration
def test_the_store_reads_the_database_of_a_query_string_url(redis_url: str, unique_project: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    store = RedisOnlineStore(unique_project, f"{base}?db=4")
    try:
        store.write_latest("users", [(b"1", 10, 0, b"one")])
        assert asyncio.run(store.read_latest_async([("users", b"1")])) == store.read_latest([("users", b"1")]) == [(10, b"one")]
    finally:
        store.client.delete(f"{unique_project}:users:1", f"{unique_project}:__meta__:newest:users")
        store.close()


@pytest.mark.integration
def test_wrong_credentials_are_unavailable_with_a_hint_and_no_password(redis_url: str, unique_project: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user = f"u{uuid.uuid4().hex[:8]}"
    admin.execute_command("ACL", "SETUSER", user, "on", ">right", "~*", "+@all")
    host = redis_url.split("://", 1)[1].split("/", 1)[0]
    store = RedisOnlineStore(unique_project, f"redis://{host}/0?username={user}&password=wrong-secret")
    try:
        with pytest.raises(StoreUnavailableError) as info:
            asyncio.run(store.read_latest_async([("users", b"1")]))
        text = f"{info.value} {info.value.hint}"
        assert "WRONGPASS" in text and "check the user and password" in text
        assert "wrong-secret" not in text and "password=***" in text
    finally:
        store.close()
        admin.execute_command("ACL", "DELUSER", user)
        admin.close()


@pytest.mark.integration
def test_execute_many_sends_back_to_back_and_returns_error_replies(redis_url: str, keys: list[bytes]) -> None:
    host, port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    # ``address`` overrides the URL's host and port (a cluster node), keeping its credentials.
    reader = AsyncRedisReader("redis://unused:1/0", address=(host, int(port)))

    async def scenario() -> list[object]:
        try:
            return await reader.execute_many([(b"GET", keys[0]), (b"NOSUCHCOMMAND",), (b"MGET", keys[1], b"missing")])
        finally:
            reader.close()

    first, error, last = asyncio.run(scenario())
    assert first == b"v\r\n0" and last == [b"v\r\n1", None]
    assert isinstance(error, RespError) and "unknown command" in str(error).lower()


def test_execute_many_raises_a_lost_connection() -> None:
    reader = AsyncRedisReader("redis://127.0.0.1:1/0")
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(reader.execute_many([(b"PING",), (b"PING",)]))
