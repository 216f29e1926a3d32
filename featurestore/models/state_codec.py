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
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from featurestore.models.linear import StateBatch, UserState, new_user_state
from registry.errors import DataError

FORMAT_VERSION = 1
DTYPE_FLOAT64 = 1
_STATE_HEADER = struct.Struct("<2sBBHQQ")
_STATE_HEAD = struct.Struct("<2sBBH")  # magic, format, dtype, d: "a format-1 state of this d"
_COUNTS = struct.Struct("<QQ")  # n, version at offset 6
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


def state_size(d: int) -> int:
    """Bytes of an encoded state of dimension d."""
    return _STATE_HEADER.size + 8 * (2 * d + d * (d + 1))


def _state_head(d: int) -> tuple[bytes, int, int, int]:
    return (_STATE_MAGIC, FORMAT_VERSION, DTYPE_FLOAT64, d)


def read_weights(blobs: Sequence[bytes | None], d: int, w_avg: np.ndarray) -> np.ndarray:
    """Only the weights of each state, (k, d): what scoring needs without exploration.

    Reads w straight from the layout (the d float64 after the 22-byte header) instead of
    decoding both triangles as well; a missing blob is the average user ``w_avg``. Anything that
    is not a format-1 state of this d goes through ``decode_state``, which names what is wrong.

    >>> from featurestore.models.linear import new_user_state
    >>> read_weights([encode_state(new_user_state(np.array([1.0, 2.0]), 1.0)), None], 2, np.zeros(2)).tolist()
    [[1.0, 2.0], [0.0, 0.0]]
    """
    out = np.empty((len(blobs), d))
    size, head = state_size(d), _state_head(d)
    for i, blob in enumerate(blobs):
        if blob is None:
            out[i] = w_avg
        elif len(blob) == size and _STATE_HEAD.unpack_from(blob) == head:
            out[i] = np.frombuffer(blob, dtype=_F8, count=d, offset=_STATE_HEADER.size)
        else:
            w = decode_state(blob).w
            if w.shape != (d,):
                raise _other_d(w.shape[0], d)
            out[i] = w
    return out


def _other_d(found: int, d: int) -> DataError:
    return DataError(f"a stored user state has d={found}, the model version has d={d}", hint="train the model again")


# -- many states at once ------------------------------------------------------------------------


class BatchStateCodec:
    """``encode_state`` / ``decode_state`` for many users at once (docs/model-state.md, format 1).

    One ``np.frombuffer`` over the joined blobs instead of a decode per user: the layout is a
    22-byte header then float64s, so a structured dtype reads all of them. Anything that does not
    look like a format-1 float64 state of this d goes through ``decode_state``, which raises its
    precise error. Output is byte-identical to ``encode_state`` (a test pins it).

    >>> codec = BatchStateCodec(2)
    >>> batch, stored = codec.decode([None], np.array([1.0, 2.0]), l2=1.0)
    >>> batch.w.tolist(), stored.tolist()
    ([[1.0, 2.0]], [False])
    """

    @staticmethod
    @lru_cache(maxsize=64)
    def of(d: int) -> BatchStateCodec:
        """The codec of dimension d, built once per process (its index tables cost O(d²))."""
        return BatchStateCodec(d)

    def __init__(self, d: int) -> None:
        self.d = d
        self.upper = np.triu_indices(d)
        tri = d * (d + 1) // 2
        self.floats = 2 * d + 2 * tri
        self.dtype = np.dtype(
            [("magic", "S2"), ("format", "u1"), ("code", "u1"), ("d", "<u2"), ("n", "<u8"),
             ("version", "<u8"), ("body", "<f8", (self.floats,))]
        )
        self._cuts = (d, d + tri, d + 2 * tri)
        rows, cols = self.upper
        self._flat_upper = rows * d + cols
        self._flat_lower = cols * d + rows
        # For every cell of a d x d matrix, its index in the row-by-row upper triangle.
        self._from_triangle = np.empty(d * d, np.intp)
        self._from_triangle[self._flat_upper] = np.arange(len(rows))
        self._from_triangle[self._flat_lower] = np.arange(len(rows))

    def decode(self, blobs: Sequence[bytes | None], w_avg: np.ndarray, l2: float) -> tuple[StateBatch, np.ndarray]:
        """(states, stored): a missing blob is the average user (``new_user_state``)."""
        k, d = len(blobs), self.d
        if k == 1:
            s = self.decode_one(blobs[0], w_avg, l2)
            return (StateBatch(s.w[None], s.A_inv[None], s.xtx[None], s.xty[None], np.array([s.n], np.int64),
                               np.array([s.version], np.int64)), np.array([blobs[0] is not None]))
        stored = np.fromiter((b is not None for b in blobs), bool, k)
        w = np.empty((k, d))
        A_inv = np.empty((k, d, d))
        xtx = np.empty((k, d, d))
        xty = np.empty((k, d))
        n = np.zeros(k, np.int64)
        version = np.zeros(k, np.int64)
        fresh = np.flatnonzero(~stored)
        if fresh.size:
            w[fresh] = w_avg
            A_inv[fresh] = np.eye(d) / l2
            xtx[fresh] = 0.0
            xty[fresh] = 0.0
        where = np.flatnonzero(stored)
        if where.size:
            present = [blobs[i] for i in where.tolist()]
            size = self.dtype.itemsize
            arr = None
            # One frombuffer pays off from a few states on; one state decodes faster alone.
            if len(present) > 2 and all(len(b) == size for b in present):  # type: ignore[arg-type]
                arr = np.frombuffer(b"".join(present), dtype=self.dtype)  # type: ignore[arg-type]
                if not ((arr["magic"] == _STATE_MAGIC).all() and (arr["format"] == FORMAT_VERSION).all()
                        and (arr["code"] == DTYPE_FLOAT64).all() and (arr["d"] == d).all()):
                    arr = None
            if arr is None:
                for i, blob in zip(where.tolist(), present):
                    s = decode_state(blob)  # type: ignore[arg-type]
                    if s.d != d:
                        raise _other_d(s.d, d)
                    w[i], A_inv[i], xtx[i], xty[i], n[i], version[i] = s.w, s.A_inv, s.xtx, s.xty, s.n, s.version
            else:
                body = arr["body"]
                a, b, c = self._cuts
                w[where] = body[:, :a]
                for target, part in ((A_inv, body[:, a:b]), (xtx, body[:, b:c])):
                    # One gather from the triangle to every cell: cheaper than two scatters.
                    full = np.take(part, self._from_triangle, axis=1).reshape(-1, d, d)
                    if len(where) == k:
                        target[...] = full
                    else:
                        target[where] = full
                xty[where] = body[:, c:]
                n[where] = arr["n"].astype(np.int64)
                version[where] = arr["version"].astype(np.int64)
        return StateBatch(w, A_inv, xtx, xty, n, version), stored

    def decode_one(self, blob: bytes | None, w_avg: np.ndarray, l2: float) -> UserState:
        """One state (the single-observation path: a third of ``decode_state``'s cost)."""
        d = self.d
        if blob is None:
            return new_user_state(w_avg, l2)
        if len(blob) != self.dtype.itemsize or _STATE_HEAD.unpack_from(blob) != _state_head(d):
            s = decode_state(blob)  # raises its precise error, or reads another d
            if s.d != d:
                raise _other_d(s.d, d)
            return s
        body = np.frombuffer(blob, _F8, self.floats, _STATE_HEADER.size)
        a, b, c = self._cuts
        A_inv = np.empty(d * d)
        xtx = np.empty(d * d)
        A_inv[self._flat_upper] = body[a:b]
        A_inv[self._flat_lower] = body[a:b]
        xtx[self._flat_upper] = body[b:c]
        xtx[self._flat_lower] = body[b:c]
        n, version = _COUNTS.unpack_from(blob, 6)
        return UserState(body[:a].copy(), A_inv.reshape(d, d), xtx.reshape(d, d), body[c:].copy(), n, version)

    def encode_one(self, state: UserState) -> bytes:
        """``encode_state`` of one state, byte for byte, with the checks the maths makes true."""
        if state.d != self.d or not (np.array_equal(state.A_inv, state.A_inv.T) and np.array_equal(state.xtx, state.xtx.T)):
            return encode_state(state)
        flat = self._flat_upper
        body = np.concatenate((state.w, state.A_inv.ravel()[flat], state.xtx.ravel()[flat], state.xty))
        return _STATE_HEADER.pack(_STATE_MAGIC, FORMAT_VERSION, DTYPE_FLOAT64, self.d, state.n, state.version) + body.tobytes()

    def encode(self, batch: StateBatch) -> list[bytes]:
        """One blob per state, byte-identical to ``encode_state``."""
        k = len(batch)
        if k == 0:
            return []
        if k == 1:
            return [self.encode_one(batch.first())]
        # The maths keeps both matrices exactly symmetric; only the upper triangle is written,
        # so anything else must go through encode_state, which refuses it by name.
        if not (np.array_equal(batch.A_inv, batch.A_inv.swapaxes(1, 2))
                and np.array_equal(batch.xtx, batch.xtx.swapaxes(1, 2))):
            return [encode_state(s) for s in batch.to_states()]
        d, flat = self.d, self._flat_upper
        arr = np.empty(k, dtype=self.dtype)
        arr["magic"], arr["format"], arr["code"], arr["d"] = _STATE_MAGIC, FORMAT_VERSION, DTYPE_FLOAT64, d
        arr["n"], arr["version"] = batch.n, batch.version
        arr["body"] = np.concatenate(
            (batch.w, batch.A_inv.reshape(k, d * d)[:, flat], batch.xtx.reshape(k, d * d)[:, flat], batch.xty), axis=1
        )
        raw = arr.tobytes()
        size = self.dtype.itemsize
        return [raw[i : i + size] for i in range(0, k * size, size)]
