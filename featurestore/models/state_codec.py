"""Binary layout of a user's model state and of the average-user weights (docs/model-state.md).

All integers and floats are little-endian, whatever the machine.

User state, ``d`` features (8·(2d + d(d+1)) + 22 bytes; 2,454 at d = 16):

    offset  size  field
    0       2     magic  b"VS"
    2       1     format version (1)
    3       1     dtype code (1 = float64; nothing else is written yet)
    4       2     d        uint16
    6       8     n        uint64  observations folded in
    14      8     version  uint64  update counter (optimistic concurrency)
    22      8d    w
    ..      4d(d+1)  A_inv, upper triangle, row by row (A_inv[0,0], A_inv[0,1], ..., A_inv[d-1,d-1])
    ..      4d(d+1)  xtx,   upper triangle, same order
    ..      8d    xty

Only one triangle is stored because the maths keeps A_inv and xtx exactly symmetric; that
saves almost half the bytes of a state. Average-user weights: b"VW", format, dtype, d (uint16),
then d float64 — 6 + 8d bytes.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import numpy as np

from featurestore.models.linear import UserState
from registry.errors import DataError

FORMAT_VERSION = 1
DTYPE_FLOAT64 = 1
_STATE_HEADER = struct.Struct("<2sBBHQQ")
_WEIGHTS_HEADER = struct.Struct("<2sBBH")
_STATE_MAGIC = b"VS"
_WEIGHTS_MAGIC = b"VW"
_F8 = np.dtype("<f8")


def encode_state(state: UserState) -> bytes:
    """Serialise a UserState (see the module docstring for the layout).

    >>> from featurestore.models.linear import new_user_state
    >>> len(encode_state(new_user_state(np.zeros(2), 1.0)))
    102
    """
    d = state.d
    if not 0 < d < 1 << 16:
        raise DataError(f"cannot encode a state with d={d}", hint="d must be in 1..65535")
    for name in ("A_inv", "xtx"):
        m = getattr(state, name)
        # Only the upper triangle is written, so anything more than rounding apart would be lost.
        if m.shape != (d, d) or np.abs(m - m.T).max() > 1e-12 * np.abs(m).max():
            raise DataError(
                f"{name} of the state is not a symmetric {d}x{d} matrix",
                hint="build states with featurestore.models.linear, which keeps them symmetric",
            )
    if state.xty.shape != (d,) or state.n < 0 or state.version < 0:
        raise DataError("malformed user state", hint="xty must have shape (d,); n, version >= 0")
    upper = _upper(d)
    header = _STATE_HEADER.pack(
        _STATE_MAGIC, FORMAT_VERSION, DTYPE_FLOAT64, d, state.n, state.version
    )
    body = np.concatenate((state.w, state.A_inv[upper], state.xtx[upper], state.xty))
    return header + body.astype(_F8, copy=False).tobytes()


def decode_state(data: bytes) -> UserState:
    """Parse bytes written by ``encode_state``.

    >>> from featurestore.models.linear import new_user_state
    >>> decode_state(encode_state(new_user_state(np.array([1.0, 2.0]), 1.0))).w.tolist()
    [1.0, 2.0]
    """
    if len(data) < _STATE_HEADER.size:
        raise _corrupt("user state", f"only {len(data)} bytes")
    magic, fmt, dtype, d, n, version = _STATE_HEADER.unpack_from(data)
    _check_header("user state", magic, _STATE_MAGIC, fmt, dtype)
    tri = d * (d + 1) // 2
    floats = 2 * d + 2 * tri
    expected = _STATE_HEADER.size + 8 * floats
    if d == 0 or len(data) != expected:
        raise _corrupt("user state", f"{len(data)} bytes for d={d}, expected {expected}")
    body = np.frombuffer(data, dtype=_F8, count=floats, offset=_STATE_HEADER.size)
    w, a, x, xty = np.split(body, [d, d + tri, d + 2 * tri])
    return UserState(
        w=w.astype(np.float64),
        A_inv=_from_upper(a, d),
        xtx=_from_upper(x, d),
        xty=xty.astype(np.float64),
        n=n,
        version=version,
    )


def encode_weights(w: np.ndarray) -> bytes:
    """Serialise the average-user weight vector.

    >>> encode_weights(np.array([1.0])).hex()
    '565701010100000000000000f03f'
    """
    w = np.asarray(w)
    if w.ndim != 1 or not 0 < w.shape[0] < 1 << 16:
        raise DataError(
            f"weights have shape {w.shape}", hint="pass a 1-D vector of 1..65535 floats"
        )
    header = _WEIGHTS_HEADER.pack(_WEIGHTS_MAGIC, FORMAT_VERSION, DTYPE_FLOAT64, w.shape[0])
    return header + w.astype(_F8).tobytes()


def decode_weights(data: bytes) -> np.ndarray:
    """Parse bytes written by ``encode_weights``.

    >>> decode_weights(bytes.fromhex('565701010100000000000000f03f')).tolist()
    [1.0]
    """
    if len(data) < _WEIGHTS_HEADER.size:
        raise _corrupt("weights", f"only {len(data)} bytes")
    magic, fmt, dtype, d = _WEIGHTS_HEADER.unpack_from(data)
    _check_header("weights", magic, _WEIGHTS_MAGIC, fmt, dtype)
    expected = _WEIGHTS_HEADER.size + 8 * d
    if d == 0 or len(data) != expected:
        raise _corrupt("weights", f"{len(data)} bytes for d={d}, expected {expected}")
    return np.frombuffer(data, dtype=_F8, count=d, offset=_WEIGHTS_HEADER.size).astype(np.float64)


@lru_cache(maxsize=64)
def _upper(d: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(d)


def _from_upper(values: np.ndarray, d: int) -> np.ndarray:
    rows, cols = _upper(d)
    m = np.empty((d, d))
    m[rows, cols] = values
    m[cols, rows] = values
    return m


def _check_header(what: str, magic: bytes, want: bytes, fmt: int, dtype: int) -> None:
    if magic != want:
        raise _corrupt(what, f"magic {magic!r}, expected {want!r}")
    if fmt != FORMAT_VERSION:
        raise DataError(
            f"{what} is in format version {fmt}; this build reads version {FORMAT_VERSION}",
            hint="upgrade the package that reads it, or re-materialize the states",
        )
    if dtype != DTYPE_FLOAT64:
        raise _corrupt(what, f"dtype code {dtype}, expected {DTYPE_FLOAT64} (float64)")


def _corrupt(what: str, detail: str) -> DataError:
    return DataError(
        f"bytes are not a valid encoded {what}: {detail}",
        hint="the key may hold something else or be truncated; re-write it from the model",
    )
