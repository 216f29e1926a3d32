"""The embedded store's write path: rows are written in key order and bound as the caller's
tuples (``featurestore/online/embedded.py``); what a reader sees must not depend on either.

Each test checks the embedded store against the in-memory store, the reference backend.
"""

from __future__ import annotations

import multiprocessing
import random
import time
from pathlib import Path
from typing import Any

import pytest

from featurestore.online.embedded import EmbeddedOnlineStore, _sql_text
from featurestore.online.memory import MemoryOnlineStore
from registry.errors import DataError


@pytest.fixture
def embedded(tmp_path: Path, unique_project: str) -> Any:
    store = EmbeddedOnlineStore(unique_project, tmp_path / "online.db")
    yield store
    store.close()


@pytest.fixture
def memory(unique_project: str) -> Any:
    store = MemoryOnlineStore(unique_project)
    yield store
    store.close()
    MemoryOnlineStore.drop_project(unique_project)


def _shuffled_rows(rng: random.Random, n: int, keys: int) -> list[tuple[bytes, int, int, bytes]]:
    # Few distinct times, so equal (event, created) pairs of one key meet often: the later row
    # in the call must win them, which sorting by key must not undo.
    return [
        (b"%d" % rng.randrange(keys), rng.randrange(5), rng.randrange(3), b"r%d" % i)
        for i in range(n)
    ]


@pytest.mark.parametrize("chunk_rows", [1, 7, 5_000])
def test_any_key_order_ends_as_the_reference(
    embedded: EmbeddedOnlineStore, memory: MemoryOnlineStore, chunk_rows: int
) -> None:
    embedded.write_chunk_rows = chunk_rows  # ties split across transactions, too
    rng = random.Random(chunk_rows)
    for _ in range(4):
        rows = _shuffled_rows(rng, 400, 60)
        assert embedded.write_latest("users", rows) == memory.write_latest("users", rows)
    keys = [("users", b"%d" % k) for k in range(61)]
    assert embedded.read_latest(keys) == memory.read_latest(keys)
    assert embedded.newest_event_ts(["users"]) == memory.newest_event_ts(["users"])


def test_keys_sort_as_bytes_not_as_text(
    embedded: EmbeddedOnlineStore, memory: MemoryOnlineStore
) -> None:
    rows = [(k, 1, 0, k) for k in (b"\xff", b"", b"\x00", b"a\x00", b"a", b"10", b"9", b"-1")]
    assert embedded.write_latest("v", rows) == memory.write_latest("v", rows) == len(rows)
    keys = [("v", k) for k, *_ in rows]
    assert embedded.read_latest(keys) == memory.read_latest(keys)


def test_a_bad_row_inside_a_batch_is_a_data_error(embedded: EmbeddedOnlineStore) -> None:
    rows: list[Any] = [(b"1", 1, 0, b"x"), ("2", 1, 0, b"str key"), (b"3", 1, 0, b"x")]
    with pytest.raises(DataError, match="entity_key: bytes"):
        embedded.write_latest("users", rows)
    with pytest.raises(DataError, match="entity_key: bytes"):
        embedded.write_latest("users", [(b"1", 1, 0, b"x"), ()])
    assert embedded.read_latest([("users", b"1")]) == [None]


def test_names_are_quoted_as_sql_text() -> None:
    assert _sql_text("users") == "'users'"
    assert _sql_text("it's") == "'it''s'"


def test_generators_and_ttl_still_apply(embedded: EmbeddedOnlineStore) -> None:
    now = time.time_ns() // 1000
    rows = ((b"%d" % i, now - i * 3_600_000_000, 0, b"x") for i in range(5))
    assert embedded.write_latest("users", rows, ttl_seconds=2 * 3600 + 1) == 3
    got = embedded.read_latest([("users", b"%d" % i) for i in range(5)])
    assert [r is not None for r in got] == [True, True, True, False, False]


# -- another process reads while this one writes ------------------------------------------------

KEYS, ROUNDS = 3_000, 6


def _read_while_written(path: str, project: str, done: Any, out: Any) -> None:
    store = EmbeddedOnlineStore(project, path)
    keys = [("v", b"%d" % k) for k in range(KEYS)]
    reads, seen = 0, [-1] * KEYS
    try:
        while not done.is_set() or reads == 0:
            for i, got in enumerate(store.read_latest(keys)):
                ts = -1 if got is None else got[0]
                # A key's time never goes back, and its payload is the one written with it.
                if ts < seen[i] or (got is not None and got[1] != b"%d:%d" % (i, ts)):
                    out.put(f"key {i}: {got} after time {seen[i]}")
                    return
                seen[i] = ts
            reads += 1
        out.put(reads)
    finally:
        store.close()


def test_a_reader_in_another_process_sees_each_key_move_forward(
    tmp_path: Path, unique_project: str
) -> None:
    path = str(tmp_path / "online.db")
    writer = EmbeddedOnlineStore(unique_project, path)
    writer.write_chunk_rows = 500  # many transactions, so the reader lands between them
    context = multiprocessing.get_context("spawn")
    done, out = context.Event(), context.Queue()
    reader = context.Process(
        target=_read_while_written, args=(path, unique_project, done, out), daemon=True
    )
    reader.start()
    rng = random.Random(0)
    try:
        for round_ in range(ROUNDS):
            order = list(range(KEYS))
            rng.shuffle(order)
            writer.write_latest(
                "v", [(b"%d" % k, round_, 0, b"%d:%d" % (k, round_)) for k in order]
            )
    finally:
        done.set()
        result = out.get(timeout=60)
        reader.join(timeout=60)
        writer.close()
    assert isinstance(result, int) and result > 0, result
