"""The binary state layout: round trips, and golden bytes that pin docs/model-state.md."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.models.linear import UserState, learn_one, new_user_state
from featurestore.models.state_codec import (
    decode_state,
    decode_weights,
    encode_state,
    encode_weights,
)
from registry.errors import DataError

# The worked example of docs/model-state.md, byte for byte.
GOLDEN_STATE = UserState(
    w=np.array([0.5, -1.0]),
    A_inv=np.array([[0.25, 0.125], [0.125, 0.5]]),
    xtx=np.array([[2.0, 1.0], [1.0, 3.0]]),
    xty=np.array([1.5, -2.0]),
    n=3,
    version=7,
)
GOLDEN_BYTES = bytes.fromhex(
    "5653"  # magic "VS"
    "01"  # format version 1
    "01"  # dtype code 1 = float64
    "0200"  # d = 2 (uint16)
    "0300000000000000"  # n = 3 (uint64)
    "0700000000000000"  # version = 7 (uint64)
    "000000000000e03f"  # w[0] = 0.5
    "000000000000f0bf"  # w[1] = -1.0
    "000000000000d03f"  # A_inv[0, 0] = 0.25
    "000000000000c03f"  # A_inv[0, 1] = 0.125 (upper triangle, row by row)
    "000000000000e03f"  # A_inv[1, 1] = 0.5
    "0000000000000040"  # xtx[0, 0] = 2.0
    "000000000000f03f"  # xtx[0, 1] = 1.0
    "0000000000000840"  # xtx[1, 1] = 3.0
    "000000000000f83f"  # xty[0] = 1.5
    "00000000000000c0"  # xty[1] = -2.0
)


def test_golden_state_bytes() -> None:
    assert encode_state(GOLDEN_STATE) == GOLDEN_BYTES
    assert len(GOLDEN_BYTES) == 22 + 8 * 10


def test_golden_state_decodes_to_the_same_state() -> None:
    state = decode_state(GOLDEN_BYTES)
    assert (state.n, state.version, state.d) == (3, 7, 2)
    for field in ("w", "A_inv", "xtx", "xty"):
        assert np.array_equal(getattr(state, field), getattr(GOLDEN_STATE, field))


def test_golden_weights_bytes() -> None:
    golden = bytes.fromhex("565701010200000000000000e03f000000000000f0bf")
    assert encode_weights(np.array([0.5, -1.0])) == golden
    assert decode_weights(golden).tolist() == [0.5, -1.0]


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 20), k=st.integers(0, 10), seed=st.integers(0, 2**32 - 1))
def test_learned_states_round_trip_bit_for_bit(d: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = new_user_state(rng.normal(size=d), 0.5)
    for _ in range(k):
        state = learn_one(state, rng.normal(size=d), rng.normal())
    back = decode_state(encode_state(state))
    for field in ("w", "A_inv", "xtx", "xty"):
        assert np.array_equal(getattr(back, field), getattr(state, field))
    assert (back.n, back.version) == (state.n, state.version)
    assert len(encode_state(state)) == 22 + 8 * (2 * d + d * (d + 1))


def test_decoded_state_keeps_learning() -> None:
    state = decode_state(GOLDEN_BYTES)
    after = learn_one(state, np.array([1.0, 1.0]), 0.0)
    assert after.version == 8 and after.n == 4


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (GOLDEN_BYTES[:10], "only 10 bytes"),
        (GOLDEN_BYTES[:-8], "94 bytes for d=2, expected 102"),
        (b"XX" + GOLDEN_BYTES[2:], "magic"),
        (GOLDEN_BYTES[:3] + b"\x02" + GOLDEN_BYTES[4:], "dtype code 2"),
    ],
)
def test_corrupt_state_bytes_are_rejected(data: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        decode_state(data)


def test_a_newer_format_version_says_to_upgrade() -> None:
    with pytest.raises(DataError, match="format version 2") as info:
        decode_state(GOLDEN_BYTES[:2] + b"\x02" + GOLDEN_BYTES[3:])
    assert "upgrade" in (info.value.hint or "")


def test_weights_are_not_mistaken_for_a_state() -> None:
    with pytest.raises(DataError, match="magic"):
        decode_state(encode_weights(np.zeros(12)))


def test_an_asymmetric_matrix_is_refused_rather_than_half_lost() -> None:
    bad = UserState(
        GOLDEN_STATE.w, np.array([[1.0, 2.0], [0.0, 1.0]]), GOLDEN_STATE.xtx, GOLDEN_STATE.xty
    )
    with pytest.raises(DataError, match="A_inv .* not a symmetric"):
        encode_state(bad)
