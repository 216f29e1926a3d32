"""The shortcuts of the online read path give what the row-by-row path gives (issue 19).

``get_online_features`` decodes one entity without the per-view lists, and many entities of a
view's own layout at once (``ValueCodec.decode_columns``, one numpy record array). Both must
give the same values, statuses (and which columns share a status list) and event times as the
plain loop, kept here as ``row_by_row`` (the assembly as it was before the shortcuts), for any
mix of missing, expired, null, vector, string, format-1 and earlier-layout values. Nothing
runs: the plans are built by hand and the replies are made up.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest

from featurestore.online.codec import ValueCodec, encode_entity_key
from featurestore.online.layouts import LayoutTranslator
from featurestore.retrieval import (
    _BATCH_ROWS,
    EXPIRED,
    NOT_FOUND,
    PRESENT,
    STALE_LAYOUT,
    RetrievalPlan,
    _assemble,
    _key,
    _ViewPlan,
)
from registry.errors import DataError, InputError

NOW = 1_700_000_000_000_000
TTL = 3_600_000_000


def row_by_row(
    plan: RetrievalPlan, n: int, results: list[Any], now: int
) -> tuple[dict, dict, dict]:
    """(values, statuses, event times) as the assembly computed them before the shortcuts."""
    values: dict[str, list[Any]] = {}
    statuses: dict[str, list[str]] = {}
    stamps: dict[str, list[Any]] = {}
    offset = 0
    for vp in plan.views:
        chunk = results[offset : offset + n]
        offset += n
        decoded: list[Any] = []
        status: list[str] = []
        times: list[Any] = []
        stale: dict[int, frozenset[int]] = {}
        for hit in chunk:
            if hit is None:
                decoded.append(None)
                status.append(NOT_FOUND)
                times.append(None)
                continue
            event_ts, payload = hit
            times.append(event_ts)
            if vp.ttl_us and event_ts <= now - vp.ttl_us:
                decoded.append(None)
                status.append(EXPIRED)
            else:
                row, old = vp.codec.decode_status(payload)
                if old:
                    stale[len(decoded)] = old
                decoded.append(row)
                status.append(PRESENT)
        for pick, column in zip(vp.picks, vp.columns):
            values[column] = [None if d is None else d[pick] for d in decoded]
        statuses.update(dict.fromkeys(vp.columns, status))
        stamps.update(dict.fromkeys(vp.columns, times))
        for r, old in stale.items():
            for pick, column in zip(vp.picks, vp.columns):
                if pick in old:
                    if statuses[column] is status:
                        statuses[column] = list(status)
                    statuses[column][r] = STALE_LAYOUT
    return {c: values[c] for c in plan.columns}, statuses, stamps


def sharing(statuses: dict[str, list[str]]) -> list[list[str]]:
    """Which columns share one status list object."""
    groups: dict[int, list[str]] = {}
    for column, status in statuses.items():
        groups.setdefault(id(status), []).append(column)
    return sorted(groups.values())


# Two views of one entity: scalars only (the batch path's home) and vectors with a string.
SCALARS = (
    ["float32", "int64", "bool", "timestamp", "int32", "float64"],
    ["a", "b", "c", "d", "e", "f"],
)
VECTORS = (["float32[3]", "int64", "string", "float64[]"], ["v", "n", "s", "w"])
# user_stats once had only (a, b): its values of that layout answer a and b, the rest is stale.
OLD_SCALARS = (["float32", "int64"], ["a", "b"])


def view_plan(
    name: str, layout: tuple[list[str], list[str]], wanted: list[str], ttl: int
) -> _ViewPlan:
    dtypes, names = layout
    codec = ValueCodec(dtypes, names)
    codec.other_layouts = LayoutTranslator(
        codec, lambda: [(names, dtypes), (OLD_SCALARS[1], OLD_SCALARS[0])]
    )
    return _ViewPlan(
        view=name,
        key_names=("user_id",),
        key_dtypes=("int64",),
        codec=codec,
        picks=tuple(names.index(w) for w in wanted),
        columns=tuple(wanted),
        ttl_us=ttl,
    )


def make_plan(request_order: list[str]) -> RetrievalPlan:
    scalars = view_plan("scalars", SCALARS, [c for c in request_order if c in SCALARS[1]], TTL)
    vectors = view_plan("vectors", VECTORS, [c for c in request_order if c in VECTORS[1]], 0)
    return RetrievalPlan((scalars, vectors), tuple(request_order), ("user_id",))


def scalar_row(rng: random.Random) -> list[Any]:
    return [
        rng.choice([0.5, -1.25, 3.0]),
        rng.randint(-(2**40), 2**40),
        rng.random() < 0.5,
        rng.randint(0, 2**52),
        rng.randint(-(2**31), 2**31 - 1),
        rng.random(),
    ]


def vector_row(rng: random.Random) -> list[Any]:
    return [
        [1.0, rng.choice([0.5, 2.0]), -3.0],
        rng.randint(0, 9),
        rng.choice(["", "ab", "été"]),
        [rng.random() for _ in range(rng.randint(0, 3))],
    ]


def reply(kind: str, codec: ValueCodec, row: list[Any], rng: random.Random) -> Any:
    """A store reply of ``kind`` for one entity of one view."""
    fresh = NOW - rng.randint(0, TTL - 1)
    if kind == "missing":
        return None
    if kind == "expired":
        return (NOW - TTL - rng.randint(0, 10), codec.encode_row(row))
    if kind == "null":
        row = list(row)
        row[rng.randrange(len(row))] = None
        return (fresh, codec.encode_row(row))
    if kind == "format1":
        return (fresh, ValueCodec(list(codec.dtypes)).encode_row(row))
    if kind == "old_layout":
        return (fresh, ValueCodec(*OLD_SCALARS).encode_row(row[:2]))
    return (fresh, codec.encode_row(row))


def replies(plan: RetrievalPlan, n: int, kinds: list[str], rng: random.Random) -> list[Any]:
    out = []
    for vp in plan.views:
        make = scalar_row if vp.view == "scalars" else vector_row
        for _ in range(n):
            kind = rng.choice(kinds)
            if kind == "old_layout" and vp.view != "scalars":
                kind = "fresh"
            out.append(reply(kind, vp.codec, make(rng), rng))
    return out


ORDERS = {
    "grouped": ["a", "c", "b", "v", "s"],
    "interleaved": ["s", "a", "v", "f", "d", "w", "n", "e"],
}
MIXES = {
    "fresh": ["fresh"],
    "fresh and missing": ["fresh", "fresh", "missing"],
    "fresh and expired": ["fresh", "expired"],
    "nulls": ["fresh", "null"],
    "format 1": ["fresh", "format1"],
    "only format 1": ["format1"],
    "earlier layout": ["fresh", "old_layout"],
    "everything": ["fresh", "missing", "expired", "null", "format1", "old_layout"],
}


@pytest.mark.parametrize("n", [1, 2, _BATCH_ROWS - 1, _BATCH_ROWS, 50])
@pytest.mark.parametrize("mix", MIXES.values(), ids=list(MIXES))
@pytest.mark.parametrize("order", ORDERS.values(), ids=list(ORDERS))
def test_the_shortcuts_give_what_the_row_by_row_path_gives(
    n: int, mix: list[str], order: list[str]
) -> None:
    rng = random.Random(f"{n}{mix}{order}")
    for _ in range(20):
        plan = make_plan(order)
        results = replies(plan, n, mix, rng)
        rows = [{"user_id": i} for i in range(n)]
        want_values, want_statuses, want_times = row_by_row(plan, n, results, NOW)
        got = _assemble(plan, rows, results, True, NOW)
        assert got.values == want_values
        assert list(got.values) == list(want_values)  # request order
        assert got.statuses == want_statuses
        assert list(got.statuses) == list(want_statuses)
        assert sharing(got.statuses) == sharing(want_statuses)
        assert got.event_timestamps == want_times
        assert _assemble(plan, rows, results, False, NOW).to_dict(include_status=True) == {
            "user_id": list(range(n)),
            **want_values,
            **{f"{c}__status": s for c, s in want_statuses.items()},
        }


def test_values_are_fresh_lists_per_call() -> None:
    """A caller may change a returned list: it is its own, never a list of another column or call."""
    plan = make_plan(ORDERS["grouped"])
    rng = random.Random(3)
    for n in (1, 50):
        results = replies(plan, n, ["fresh"], rng)
        rows = [{"user_id": i} for i in range(n)]
        first = _assemble(plan, rows, results, False, NOW)
        second = _assemble(plan, rows, results, False, NOW)
        lists = list(first.values.values()) + list(second.values.values())
        assert len({id(v) for v in lists}) == len(lists)
        assert all(type(v) is list for v in lists)


# -- ValueCodec.decode_columns -------------------------------------------------------------------


@pytest.mark.parametrize("layout", [SCALARS, (["float32[2]", "bool", "int32[3]"], ["x", "y", "z"])])
@pytest.mark.parametrize("n", [1, 3, 200])
def test_decode_columns_is_decode_transposed(layout: tuple[list[str], list[str]], n: int) -> None:
    dtypes, names = layout
    rng = random.Random(n)
    make = {
        "float32": lambda: rng.choice([0.0, -0.0, 1.5, float("inf")]),
        "int64": lambda: rng.randint(-(2**63), 2**63 - 1),
        "bool": lambda: rng.random() < 0.5,
        "timestamp": lambda: rng.randint(0, 2**60),
        "int32": lambda: rng.randint(-(2**31), 2**31 - 1),
        "float64": rng.random,
        "float32[2]": lambda: [0.25, rng.choice([1.0, -2.5])],
        "int32[3]": lambda: [rng.randint(-5, 5) for _ in range(3)],
    }
    for codec in (ValueCodec(dtypes, names), ValueCodec(dtypes)):
        payloads = [codec.encode_row([make[d]() for d in dtypes]) for _ in range(n)]
        rows = [codec.decode(p) for p in payloads]
        columns = codec.decode_columns(payloads)
        assert columns == [list(c) for c in zip(*rows)]
        assert [[type(v) for v in c] for c in columns] == [[type(v) for v in c] for c in zip(*rows)]


def test_decode_columns_declines_what_it_cannot_read_exactly() -> None:
    codec = ValueCodec(["float32", "int64"], ["a", "b"])
    good = codec.encode_row([0.5, 1])
    other = ValueCodec(["float32", "int64"], ["a", "c"]).encode_row([0.5, 1])  # another layout id
    assert codec.decode_columns([good, good]) == [[0.5, 0.5], [1, 1]]
    assert codec.decode_columns([]) is None
    assert codec.decode_columns([good, codec.encode_row([None, 1])]) is None  # a null
    assert codec.decode_columns([good, other]) is None
    assert (
        codec.decode_columns([good, ValueCodec(["float32", "int64"]).encode_row([0.5, 1])]) is None
    )
    # The same total size, split otherwise: every length is checked, not only the sum.
    assert codec.decode_columns([good[:-1], good + good[-1:]]) is None
    assert (
        ValueCodec(["string"], ["s"]).decode_columns(
            [ValueCodec(["string"], ["s"]).encode_row(["x"])]
        )
        is None
    )


def test_decode_columns_reads_format_1_only_once_it_is_known_to_be_the_views() -> None:
    dtypes, names = ["int64", "float64"], ["a", "b"]
    legacy = [ValueCodec(dtypes).encode_row([i, i / 2]) for i in range(10)]
    plain = ValueCodec(dtypes, names)  # no layout history: format 1 is taken to be its layout
    assert plain.decode_columns(legacy) == [list(range(10)), [i / 2 for i in range(10)]]
    viewed = ValueCodec(dtypes, names)
    viewed.other_layouts = LayoutTranslator(viewed, lambda: [(names, dtypes)])
    assert viewed.decode_columns(legacy) is None  # the history is not read yet
    viewed.decode(legacy[0])  # reads it: the view never changed
    assert viewed.decode_columns(legacy) == [list(range(10)), [i / 2 for i in range(10)]]


# -- entity keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_the_one_row_key_is_the_codecs_key(dtype: str) -> None:
    """``_key`` shortcuts a single integer join key; its key and its errors are the codec's."""
    vp = _ViewPlan("users", ("user_id",), (dtype,), ValueCodec(["int64"], ["a"]), (0,), ("a",), 0)
    low, high = (-(2**63), 2**63 - 1) if dtype == "int64" else (-(2**31), 2**31 - 1)
    for value in (0, 1, -1, 42, low, high, 10**12 if dtype == "int64" else 10**6):
        assert _key(vp, {"user_id": value}, 0) == encode_entity_key([dtype], [value])
    for bad in (low - 1, high + 1, True, 1.0, "1", None, np.int64(3)):
        try:
            want: Any = encode_entity_key([dtype], [bad])
        except DataError:
            with pytest.raises(InputError, match="entity_rows.4"):
                _key(vp, {"user_id": bad}, 4)
        else:
            assert _key(vp, {"user_id": bad}, 4) == want
    with pytest.raises(InputError, match="has no join key 'user_id'"):
        _key(vp, {"item_id": 1}, 0)
    with pytest.raises(InputError, match="is not a mapping"):
        _key(vp, [1], 0)  # type: ignore[arg-type]
