"""Values of a view that never changed are decoded on the codec's fast path, format 1 and
format 2 alike (review nit 2): the golden tests check what a value decodes to, not how, and a
lost fast path once made format-1 reads four times slower with every test green. These count
the calls of the slow path (``ValueCodec._decode_slow``, which holds the layout translator).

After the first format-1 value (which reads the view's history once, to learn the view never
changed) no value of the view's layout takes the slow path: directly through a codec, and
through ``get_online_features`` on the memory, embedded and Redis stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from featurestore import FeatureStore
from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.online.layouts import LayoutTranslator
from registry.evolution import aggregate_meaning
from tests.online.conftest import delete_redis_project
from tests.retrieval.conftest import NOW_US, make_repo

DTYPES = ["float32", "int64", "float64[3]", "bool"]
NAMES = ["a", "b", "v", "f"]
ROWS = [[0.5 * i, i, [1.0, 2.0, float(i)], i % 2 == 0] for i in range(50)]


def counting(codec: ValueCodec) -> list[bytes]:
    """The payloads ``codec`` sends down its slow path from now on."""
    seen: list[bytes] = []
    slow = codec._decode_slow

    def counted(payload: bytes) -> Any:
        seen.append(payload)
        return slow(payload)

    codec._decode_slow = counted  # type: ignore[method-assign]
    return seen


HISTORIES = {
    "names and dtypes": [(NAMES, DTYPES)],
    "as value_layouts gives it": [(tuple(NAMES), tuple(DTYPES), (None,) * 4)],
}


@pytest.mark.parametrize("history", HISTORIES.values(), ids=list(HISTORIES))
def test_a_never_changed_view_decodes_both_formats_on_the_fast_path(history: list) -> None:
    format_1 = [ValueCodec(DTYPES).encode_row(r) for r in ROWS]
    format_2 = [ValueCodec(DTYPES, NAMES).encode_row(r) for r in ROWS]
    codec = ValueCodec(DTYPES, NAMES)
    codec.other_layouts = LayoutTranslator(codec, lambda: history)
    slow = counting(codec)
    expected = [(r[0], r[1], tuple(r[2]), r[3]) for r in ROWS]
    assert codec.decode(format_1[0]) == expected[0]
    assert slow == [format_1[0]]  # once: the history is read, the view never changed
    slow.clear()
    assert codec.decode_many(format_1 + format_2) == expected + expected
    assert [codec.decode_status(p) for p in format_1 + format_2] == [(e, frozenset()) for e in expected * 2]
    assert slow == []


def test_an_aggregated_view_that_never_changed_stays_on_the_fast_path() -> None:
    meanings = [aggregate_meaning("count", None, 3600, 3600), aggregate_meaning("sum", "x", 3600, 3600)]
    dtypes, names = ["int64", "float64"], ["n", "total"]
    codec = ValueCodec(dtypes, names, meanings=meanings)
    codec.other_layouts = LayoutTranslator(codec, lambda: [(tuple(names), tuple(dtypes), tuple(meanings))])
    slow = counting(codec)
    format_1 = [ValueCodec(dtypes).encode_row([i, i / 2]) for i in range(20)]
    format_2 = [codec.encode_row([i, i / 2]) for i in range(20)]
    codec.decode(format_1[0])
    slow.clear()
    assert codec.decode_many(format_1 + format_2) == [(i, i / 2) for i in range(20)] * 2
    assert slow == []


@pytest.fixture(params=["memory", "embedded", pytest.param("redis", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FeatureStore]:
    project = "fast"
    if request.param == "redis":
        online: dict[str, Any] = {"type": "redis", "url": request.getfixturevalue("redis_url")}
        project = request.getfixturevalue("unique_project")
    else:
        online = {"type": request.param}
    fs = make_repo(tmp_path / "repo", online, project)
    yield fs
    fs.close()
    if request.param == "redis":
        delete_redis_project(online["url"], project)


def test_reads_of_a_never_changed_view_stay_on_the_fast_path(store: FeatureStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """user_stats (int64, float64) never changed: half its values are format 1 (written before
    format 2), half format 2 (the view's own codec); none has a null."""
    dtypes, names = ["int64", "float64"], ["clicks", "score"]
    users = list(range(1, 41))
    rows = [
        (
            encode_entity_key(["int64"], [u]),
            NOW_US,
            0,
            (ValueCodec(dtypes) if u % 2 else ValueCodec(dtypes, names)).encode_row([u, u / 4]),
        )
        for u in users
    ]
    store.online_store.write_latest("user_stats", rows)
    slow: list[bytes] = []
    real = ValueCodec._decode_slow

    def counted(self: ValueCodec, payload: bytes) -> Any:
        slow.append(payload)
        return real(self, payload)

    monkeypatch.setattr(ValueCodec, "_decode_slow", counted)
    entity_rows = [{"user_id": u} for u in users]
    first = store.get_online_features(["user_stats"], entity_rows).to_dict(include_status=True)
    assert first["clicks"] == users and set(first["clicks__status"]) == {"present"}
    assert len(slow) <= 1  # the first format-1 value reads the history, once
    slow.clear()
    for _ in range(3):
        again = store.get_online_features(["user_stats"], entity_rows).to_dict(include_status=True)
        assert again == first
    assert slow == []
