"""Entity key and value encodings: round trips for every dtype, nulls, and pinned bytes."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.online.codec import (
    ValueCodec,
    decode_entity_key,
    encode_entity_key,
    encode_entity_keys,
    layout_id,
)
from registry.errors import DataError

# -- entity keys ---------------------------------------------------------------------------------


def test_entity_keys_are_readable() -> None:
    assert encode_entity_key(["int64"], [42]) == b"42"
    assert encode_entity_key(["int64", "int32"], [42, -7]) == b"42|-7"
    assert encode_entity_key(["string"], ["café"]) == "café".encode()
    assert encode_entity_key(["string", "bytes"], ["a|b", b"c\\d"]) == b"a\\|b|c\\\\d"
    assert encode_entity_key(["int64"], [np.int64(5)]) == b"5"


def test_separators_in_strings_cannot_make_two_keys_equal() -> None:
    # Without escaping, ("a|b", "c") and ("a", "b|c") would both be b"a|b|c".
    one = encode_entity_key(["string", "string"], ["a|b", "c"])
    two = encode_entity_key(["string", "string"], ["a", "b|c"])
    three = encode_entity_key(["string", "string"], ["a\\", "|c"])
    assert len({one, two, three}) == 3
    for key, values in [(one, ("a|b", "c")), (two, ("a", "b|c")), (three, ("a\\", "|c"))]:
        assert decode_entity_key(["string", "string"], key) == values


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("int64"), st.integers(-(2**63), 2**63 - 1)),
            st.tuples(st.just("int32"), st.integers(-(2**31), 2**31 - 1)),
            st.tuples(st.just("string"), st.text(alphabet=st.sampled_from("ab|\\é:"))),
            st.tuples(st.just("bytes"), st.binary(max_size=8)),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_entity_keys_round_trip_and_vectorised_matches_scalar(parts: list[tuple[str, Any]]) -> None:
    dtypes = [d for d, _ in parts]
    values = [v for _, v in parts]
    key = encode_entity_key(dtypes, values)
    assert decode_entity_key(dtypes, key) == tuple(values)
    arrow_types = {
        "int64": pa.int64(),
        "int32": pa.int32(),
        "string": pa.string(),
        "bytes": pa.binary(),
    }
    columns = [pa.array([v, v], arrow_types[d]) for d, v in parts]
    assert encode_entity_keys(dtypes, columns) == [key, key]


def test_vectorised_entity_keys_accept_chunked_and_narrow_columns() -> None:
    columns = [
        pa.chunked_array([pa.array([1, 2], pa.int16()), pa.array([3], pa.int16())]),
        pa.array(["x", "y|z", "w"], pa.large_string()),
    ]
    assert encode_entity_keys(["int64", "string"], columns) == [b"1|x", b"2|y\\|z", b"3|w"]


@pytest.mark.parametrize(
    ("dtypes", "columns", "message"),
    [
        (["int64"], [pa.array([1, None])], "null"),
        (["int32"], [pa.array([2**40])], "does not fit int32"),
        (["int64"], [pa.array([1.5])], "arrow type double"),
        (["float32"], [pa.array([1.5])], "cannot be encoded"),
        (["int64", "int64"], [pa.array([1])], "2 join key column"),
    ],
)
def test_bad_entity_key_columns(dtypes: list[str], columns: list[pa.Array], message: str) -> None:
    with pytest.raises(DataError, match=message):
        encode_entity_keys(dtypes, columns)


@pytest.mark.parametrize(
    ("dtypes", "values", "message"),
    [
        (["int64"], [None], "null"),
        (["int64"], ["42"], "must be an integer"),
        (["int64"], [True], "must be an integer"),
        (["int32"], [2**31], "out of range"),
        (["string"], [b"x"], "must be a str"),
        (["bytes"], ["x"], "must be bytes"),
        (["int64"], [1, 2], "expected 1 join key value"),
    ],
)
def test_bad_entity_key_values(dtypes: list[str], values: list[Any], message: str) -> None:
    with pytest.raises(DataError, match=message):
        encode_entity_key(dtypes, values)


# -- values -------------------------------------------------------------------------------------

ALL_DTYPES = [
    "bool",
    "int32",
    "int64",
    "float32",
    "float64",
    "string",
    "bytes",
    "timestamp",
    "float32[3]",
    "float64[2]",
    "int64[2]",
    "float32[]",
    "int32[]",
]
ALL_ARROW = [
    pa.bool_(),
    pa.int32(),
    pa.int64(),
    pa.float32(),
    pa.float64(),
    pa.string(),
    pa.binary(),
    pa.int64(),
    pa.list_(pa.float32(), 3),
    pa.list_(pa.float64()),
    pa.list_(pa.int64(), 2),
    pa.list_(pa.float32()),
    pa.large_list(pa.int32()),
]
ROWS: list[list[Any]] = [
    [
        True,
        1,
        2**40,
        0.5,
        1e300,
        "héllo",
        b"\x00|\\",
        1_700_000_000_000_000,
        [1.0, 2.5, -3.0],
        [0.1, 0.2],
        [7, -7],
        [1.5, 2.0],
        [1, 2, 3],
    ],
    [None] * 13,
    [False, -(2**31), -1, -0.25, -0.0, "", b"", -1, None, None, None, [], []],
    [
        None,
        0,
        None,
        None,
        3.5,
        None,
        b"x" * 300,
        None,
        [0.0, 0.0, 0.0],
        [1.0, 2.0],
        [0, 1],
        None,
        [-1],
    ],
]


def _as_decoded(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def test_every_dtype_round_trips_with_nulls() -> None:
    codec = ValueCodec(ALL_DTYPES)
    columns = [pa.array([r[i] for r in ROWS], t) for i, t in enumerate(ALL_ARROW)]
    payloads = codec.encode_rows(columns)
    expected = [tuple(_as_decoded(v) for v in r) for r in ROWS]
    assert codec.decode_many(payloads) == expected
    assert codec.decode_many([None, payloads[0]]) == [None, expected[0]]
    # The vectorised and the one-row encoders write the same bytes.
    assert payloads == [codec.encode_row(r) for r in ROWS]


@pytest.mark.parametrize("n_features", [1, 7, 8, 9, 17])
def test_null_bitmap_spans_bytes(n_features: int) -> None:
    codec = ValueCodec(["float64"] * n_features)
    rows = [[float(i) if (i + r) % 3 else None for i in range(n_features)] for r in range(3)]
    columns = [pa.array([row[i] for row in rows], pa.float64()) for i in range(n_features)]
    payloads = codec.encode_rows(columns)
    assert payloads == [codec.encode_row(row) for row in rows]
    assert [list(codec.decode(p)) for p in payloads] == rows
    assert len(payloads[0]) == 1 + (n_features + 7) // 8 + 8 * n_features


def test_single_vector_feature_decodes_to_a_one_tuple() -> None:
    codec = ValueCodec(["float32[16]"])
    vector = [float(i) for i in range(16)]
    column = pa.array([vector], pa.list_(pa.float32(), 16))
    assert codec.decode(codec.encode_rows([column])[0]) == (tuple(vector),)


def test_all_fixed_width_view_uses_one_struct() -> None:
    codec = ValueCodec(["float32"] * 10)
    assert codec.fixed_size == 1 + 2 + 40  # format byte, 2 bitmap bytes, 10 floats
    columns = [pa.array(np.arange(5, dtype=np.float32) + i) for i in range(10)]
    payloads = codec.encode_rows(columns)
    assert all(len(p) == 43 for p in payloads)
    assert codec.decode(payloads[4]) == tuple(float(4 + i) for i in range(10))


def test_timestamp_columns_are_stored_as_microseconds() -> None:
    codec = ValueCodec(["timestamp"])
    us = 1_700_000_000_123_456
    for column in (
        pa.array([us], pa.timestamp("us", tz="UTC")),
        pa.array([us * 1000 + 789], pa.timestamp("ns")),
        pa.array([us // 1000], pa.timestamp("ms")).cast(pa.timestamp("us")),
        pa.array([us], pa.int64()),
    ):
        expected = us if column.type != pa.timestamp("us") else us // 1000 * 1000
        assert codec.decode(codec.encode_rows([column])[0]) == (expected,)


GOLDEN_DTYPES = ["float32", "int64", "string", "float32[2]", "bool"]
GOLDEN_NAMES = ["ctr", "clicks", "country", "emb", "active"]
GOLDEN_BODY = (
    "10"  # null bitmap: feature 4 (active) is null
    "0000003f"  # ctr = 0.5
    "0300000000000000"  # clicks = 3
    "02000000"  # country: 2 bytes in the tail
    "0000803f000000c0"  # emb = [1.0, -2.0]
    "00"  # active: null, zero-filled
    "6672"  # tail: "fr"
)


def test_golden_payload_bytes() -> None:
    """The bytes of one row in format 2, pinned; docs/online-store.md walks through the same
    example."""
    codec = ValueCodec(GOLDEN_DTYPES, GOLDEN_NAMES)
    assert codec.layout_id == layout_id(GOLDEN_NAMES, GOLDEN_DTYPES) == 0x0A3D3BCF
    golden = bytes.fromhex(
        "02"  # format 2
        "cf3b3d0a"  # layout id 0x0a3d3bcf, uint32 little-endian
        + GOLDEN_BODY
    )
    columns = [
        pa.array([0.5], pa.float32()),
        pa.array([3]),
        pa.array(["fr"]),
        pa.array([[1.0, -2.0]], pa.list_(pa.float32(), 2)),
        pa.array([None], pa.bool_()),
    ]
    assert codec.encode_rows(columns) == [golden]
    assert codec.encode_row([0.5, 3, "fr", [1.0, -2.0], None]) == golden
    assert codec.decode(golden) == (0.5, 3, "fr", (1.0, -2.0), None)
    assert codec.decode_status(golden) == ((0.5, 3, "fr", (1.0, -2.0), None), frozenset())


def test_format_1_payloads_are_still_read() -> None:
    """Values materialized before format 2 (no layout id) decode by position, as they always
    did; a positional codec (no names) still writes them."""
    legacy = bytes.fromhex("01" + GOLDEN_BODY)
    assert ValueCodec(GOLDEN_DTYPES).encode_row([0.5, 3, "fr", [1.0, -2.0], None]) == legacy
    for codec in (ValueCodec(GOLDEN_DTYPES), ValueCodec(GOLDEN_DTYPES, GOLDEN_NAMES)):
        assert codec.decode(legacy) == (0.5, 3, "fr", (1.0, -2.0), None)
    # One that does not fit the view's layout is of an earlier layout: stale, not an error.
    wider = ValueCodec([*GOLDEN_DTYPES, "int64"], [*GOLDEN_NAMES, "n"])
    assert wider.decode_status(legacy) == ((None,) * 6, frozenset(range(6)))


def test_values_of_another_layout_are_stale_not_errors() -> None:
    old = ValueCodec(["int64", "float64"], ["a", "b"])
    new = ValueCodec(["int64", "int64"], ["a", "b"])  # b's dtype changed: same size, other id
    payload = old.encode_row([1, 2.5])
    assert len(payload) == new.fixed_size and new.layout_id != old.layout_id
    assert new.decode(payload) == (None, None)
    assert new.decode_status(payload) == ((None, None), frozenset({0, 1}))
    # A positional codec ignores the id: it reads by position (what format 1 always meant).
    assert ValueCodec(["int64", "float64"]).decode(payload) == (1, 2.5)


def test_chunked_columns_and_empty_input() -> None:
    codec = ValueCodec(["int64", "string"])
    columns = [pa.chunked_array([[1], [2]]), pa.chunked_array([["a"], ["b"]])]
    assert codec.decode_many(codec.encode_rows(columns)) == [(1, "a"), (2, "b")]
    assert codec.encode_rows([pa.array([], pa.int64()), pa.array([], pa.string())]) == []


@pytest.mark.parametrize(
    ("dtype", "column", "message"),
    [
        ("float32[2]", pa.array([[1.0, 2.0, 3.0]]), "length 3"),
        ("float32[2]", pa.array([[1.0, None]]), "null vector element"),
        ("int32", pa.array([2**40]), "does not fit dtype int32"),
        ("int64", pa.array([1.5]), "does not fit dtype int64"),
        ("string", pa.array([1]), "does not fit dtype string"),
        ("float32[]", pa.array([1.0]), "does not fit dtype float32"),
    ],
)
def test_bad_value_columns(dtype: str, column: pa.Array, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ValueCodec([dtype], ["f"]).encode_rows([column])


def test_bad_payloads_are_data_errors() -> None:
    codec = ValueCodec(["int64", "string"])
    payload = codec.encode_row([1, "abc"])
    with pytest.raises(DataError, match="does not match the view's layout"):
        codec.decode(payload[:5])
    with pytest.raises(DataError, match="does not match the view's layout"):
        codec.decode(payload[:-1])  # the tail is cut short
    with pytest.raises(DataError, match="does not match the view's layout"):
        codec.decode(payload + b"x")  # more bytes than the layout explains
    fixed = ValueCodec(["int64"])
    with pytest.raises(DataError, match="does not match the view's layout"):
        fixed.decode(ValueCodec(["int64", "int64"]).encode_row([1, 2]))  # a feature was dropped
    with pytest.raises(DataError, match="format 3"):
        codec.decode(b"\x03" + payload[1:])
    named = ValueCodec(["int64", "string"], ["n", "s"])
    own = named.encode_row([1, "abc"])
    with pytest.raises(DataError, match="does not match the view's layout"):
        named.decode(own[:-1])  # its own layout id, damaged: an error, never "stale"
    with pytest.raises(DataError, match="format 3"):
        named.decode(b"\x03" + own[1:])
    with pytest.raises(DataError, match="expected 2 values"):
        codec.encode_row([1])
    with pytest.raises(DataError, match="does not fit"):
        codec.encode_row(["x", "abc"])


def test_float32_values_decode_to_their_float32_value() -> None:
    codec = ValueCodec(["float32"])
    (value,) = codec.decode(codec.encode_row([0.1]))
    assert value == struct.unpack("<f", struct.pack("<f", 0.1))[0] != 0.1
