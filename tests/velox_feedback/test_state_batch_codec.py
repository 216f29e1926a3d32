"""BatchStateCodec: many states at once, byte for byte what encode_state / decode_state do."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.models.linear import local_rows
from featurestore.models.state_codec import BatchStateCodec
from featurestore.models.fitting import fit_users
from featurestore.models.linear import StateBatch, learn_many, new_user_state
from featurestore.models.state_codec import decode_state, encode_state
from registry.errors import DataError


def _states(d: int, objective: str = "squared_error") -> list:
    rng = np.random.default_rng(d)
    X = np.column_stack([rng.normal(size=(60, d - 1)), np.ones(60)])
    y = (rng.random(60) < 0.5).astype(float) if objective == "logistic" else rng.normal(size=60)
    trained = fit_users(rng.integers(0, 5, 60), X, y, 1.0, np.zeros(d), objective=objective)  # type: ignore[arg-type]
    states = list(trained.values()) + [new_user_state(rng.normal(size=d), 2.0)]
    return learn_many(states, X[: len(states)], y[: len(states)], objective)  # type: ignore[arg-type]


@pytest.mark.parametrize(("d", "objective"), [(1, "squared_error"), (5, "squared_error"), (16, "logistic")])
def test_encode_and_decode_match_the_single_state_codec(d: int, objective: str) -> None:
    states = _states(d, objective)
    codec = BatchStateCodec(d)
    blobs = codec.encode(StateBatch.from_states(states))
    assert blobs == [encode_state(s) for s in states]
    w_avg = np.arange(d, dtype=float)
    batch, stored = codec.decode([None, *blobs, None], w_avg, l2=4.0)
    assert stored.tolist() == [False] + [True] * len(states) + [False]
    for i, s in enumerate(states, start=1):
        for name in ("w", "A_inv", "xtx", "xty"):
            np.testing.assert_array_equal(getattr(batch, name)[i], getattr(decode_state(blobs[i - 1]), name))
        assert (batch.n[i], batch.version[i]) == (s.n, s.version)
    # The single-state path (one observation per request) is the same bytes both ways.
    for s, blob in zip(states, blobs):
        assert codec.encode_one(s) == blob
        one = codec.decode_one(blob, w_avg, 4.0)
        assert (one.n, one.version) == (s.n, s.version) and codec.encode_one(one) == blob
        np.testing.assert_array_equal(one.A_inv, decode_state(blob).A_inv)
    fresh = new_user_state(w_avg, 4.0)
    np.testing.assert_array_equal(codec.decode_one(None, w_avg, 4.0).A_inv, fresh.A_inv)
    np.testing.assert_array_equal(batch.w[0], fresh.w)
    np.testing.assert_array_equal(batch.A_inv[-1], fresh.A_inv)


def test_anything_else_goes_through_the_precise_decoder() -> None:
    codec = BatchStateCodec(3)
    good = encode_state(new_user_state(np.zeros(3), 1.0))
    with pytest.raises(DataError, match="not a valid encoded user state"):
        codec.decode([good, b"VS" + good[2:-8]], np.zeros(3), 1.0)
    other_d = encode_state(new_user_state(np.zeros(2), 1.0))
    with pytest.raises(DataError, match="d=2"):
        codec.decode([other_d], np.zeros(3), 1.0)
    with pytest.raises(DataError, match="d=2"):
        codec.decode([other_d, good, good], np.zeros(3), 1.0)
    with pytest.raises(DataError, match="not a valid encoded user state"):
        codec.decode_one(good[:-1], np.zeros(3), 1.0)


def test_local_rows_keeps_first_appearance_order() -> None:
    distinct, local = local_rows(np.array([7, 3, 7, 9, 3]))
    assert distinct.tolist() == [7, 3, 9] and local.tolist() == [0, 1, 0, 2, 1]
