"""Byte encodings of the online store: entity keys and feature values.

Both are data contracts (pinned by golden tests and written down in docs/online-store.md), so
change them only together with a new format byte. (Why one module of ~650 lines: the two
encodings are one contract with one format byte, pinned by one set of golden tests; kept
together, a format change is one reviewed diff. Reading values of an earlier layout of a view,
which needs the registry's history, lives in ``featurestore.online.layouts``.)

**Entity keys** are readable in ``redis-cli``: each join key value is written as text (integers in
decimal, strings as UTF-8, bytes as they are), ``\\`` and ``|`` inside strings and bytes are
escaped with a backslash, and the values of a composite key are joined with ``|``::

    (42,)            -> b"42"
    (42, 7)          -> b"42|7"
    ("a|b", "c\\\\") -> b"a\\|b|c\\\\\\\\"

**Values** of one feature view row (format 2)::

    byte 0           format byte, 0x02
    bytes 1..4       layout id, uint32: the first 4 bytes of SHA-256 over "name:dtype\\n" per
                     feature, in order (``layout_id``); another id is another layout of the view
    bytes 5..4+B     null bitmap, B = ceil(features / 8); bit i (byte i // 8, bit i % 8,
                     least significant first) is set when feature i is null
    fixed section    for each feature, in declaration order, little-endian and unpadded:
                     bool 1 byte, int32 4, int64 8, float32 4, float64 8, timestamp 8 (int64
                     microseconds since the epoch, UTC), a fixed vector T[n] n elements of T;
                     a variable-width feature (string, bytes, T[]) has its data length in bytes
                     here as uint32; a null feature holds zeros
    tail             the data of the variable-width features in declaration order: UTF-8 for
                     strings, raw bytes, packed elements for T[]

Format 1 (byte 0 is 0x01, no layout id, the null bitmap from byte 1) is what every value was
before format 2; it is still read, and still written by a positional codec (dtypes, no names).

Decoding is one precompiled ``struct.unpack_from`` plus, for views with vectors, one
``operator.itemgetter`` that slices the flat tuple into per-feature values; strings and
variable vectors are cut from the tail afterwards. Many values of a view's own layout without
nulls or variable-width features (what a serving read mostly meets) decode at once, as one numpy
record array over the joined payloads (``ValueCodec.decode_columns``), to the same Python values.
Vectors decode to tuples, timestamps to int microseconds. A value of another layout (another id,
or format 1 that does not fit) is not an error: its features are stale
(``ValueCodec.decode_status``).
"""

from __future__ import annotations

import hashlib
import operator
import struct
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from registry.errors import DataError
from registry.types import JOIN_KEY_DTYPES, parse_dtype

#: The value format a view's codec writes; format 1 (no layout id) is still read.
FORMAT_VERSION = 2
LEGACY_FORMAT = 1
_FRESH: frozenset[int] = frozenset()
KEY_SEPARATOR = b"|"
KEY_ESCAPE = b"\\"

_INT_KEY_DTYPES = ("int32", "int64")
_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
#: The bounds of each integer join key dtype: an ``int`` within them is keyed by its decimal text.
INT_KEY_RANGES = _INT_RANGES

# dtype element -> (struct code, numpy dtype, arrow type)
_ELEMENTS: dict[str, tuple[str, str, pa.DataType]] = {
    "bool": ("?", "?", pa.bool_()),
    "int32": ("i", "<i4", pa.int32()),
    "int64": ("q", "<i8", pa.int64()),
    "float32": ("f", "<f4", pa.float32()),
    "float64": ("d", "<f8", pa.float64()),
    "timestamp": ("q", "<i8", pa.int64()),
}
_VARIABLE_SCALARS = ("string", "bytes")


# -- entity keys -------------------------------------------------------------------------------


def _check_key_dtypes(dtypes: Sequence[str]) -> None:
    if not dtypes:
        raise DataError("an entity key needs at least one join key", hint="declare join_keys")
    for dtype in dtypes:
        if dtype not in JOIN_KEY_DTYPES:
            raise DataError(
                f"join key dtype {dtype!r} cannot be encoded",
                hint="use one of " + ", ".join(JOIN_KEY_DTYPES),
            )


def _escape(raw: bytes) -> bytes:
    # The common case has neither byte; `in` is much cheaper than two replace() calls.
    if b"\\" in raw or b"|" in raw:
        return raw.replace(b"\\", b"\\\\").replace(b"|", b"\\|")
    return raw


def encode_entity_key(dtypes: Sequence[str], values: Sequence[Any]) -> bytes:
    """The store key of one entity, from its join key values in declaration order.

    >>> encode_entity_key(["int64", "string"], [42, "a|b"])
    b'42|a\\\\|b'
    """
    if len(dtypes) == 1 and len(values) == 1:
        # One integer join key, the common case: a type and a range check, then its text.
        value, bounds = values[0], _INT_RANGES.get(dtypes[0])
        if type(value) is int and bounds is not None and bounds[0] <= value <= bounds[1]:
            return b"%d" % value
    if len(dtypes) != len(values):
        raise DataError(
            f"expected {len(dtypes)} join key value(s), got {len(values)}: {list(values)!r}",
            hint="pass one value per join key of the entity, in declaration order",
        )
    parts = []
    for i, (dtype, value) in enumerate(zip(dtypes, values)):
        if value is None:
            raise DataError(f"join key #{i} is null", hint="entity keys cannot be null")
        if dtype in _INT_KEY_DTYPES:
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise DataError(
                    f"join key #{i} ({dtype}) must be an integer, got {value!r}",
                    hint="pass integers for integer join keys",
                )
            number = operator.index(value)
            low, high = _INT_RANGES[dtype]
            if not low <= number <= high:
                raise DataError(
                    f"join key #{i} ({dtype}) is out of range: {number}",
                    hint=f"{dtype} join keys lie in {low}..{high}",
                )
            parts.append(b"%d" % number)
        elif dtype == "string":
            if not isinstance(value, str):
                raise DataError(f"join key #{i} (string) must be a str, got {value!r}")
            parts.append(_escape(value.encode("utf-8")))
        elif dtype == "bytes":
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise DataError(f"join key #{i} (bytes) must be bytes, got {value!r}")
            parts.append(_escape(bytes(value)))
        else:
            _check_key_dtypes([dtype])
    return KEY_SEPARATOR.join(parts)


def encode_int_keys(dtype: str, values: Sequence[Any]) -> tuple[list[bytes], list[str]] | None:
    """(keys, the keys as text) of many values of one integer join key, in a few C-level passes
    (``map``, ``join``, ``split``) instead of a call per value; None when any value is not an
    in-range ``int`` of ``dtype``, so the caller's per-row path can name the bad one.

    >>> encode_int_keys("int64", [7, -1])
    ([b'7', b'-1'], ['7', '-1'])
    >>> encode_int_keys("int32", [2**31]) is None
    True
    """
    bounds = _INT_RANGES.get(dtype)
    if bounds is None or not values or set(map(type, values)) != {int}:
        return None
    if not (bounds[0] <= min(values) and max(values) <= bounds[1]):
        return None
    texts = list(map(str, values))
    return ",".join(texts).encode("ascii").split(b","), texts


def _key_column(i: int, dtype: str, column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One join key column as binary, already escaped."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count:
        raise DataError(
            f"join key #{i} has {column.null_count} null value(s)",
            hint="drop or fill rows with null join keys before writing them",
        )
    try:
        if dtype in _INT_KEY_DTYPES:
            if not pa.types.is_integer(column.type):
                raise DataError(f"join key #{i} ({dtype}) has arrow type {column.type}")
            # Arrow formats integers in C; casting to the declared width first checks the range.
            return (
                column.cast(pa.int64() if dtype == "int64" else pa.int32())
                .cast(pa.string())
                .cast(pa.binary())
            )
        if dtype == "string":
            text = column.cast(pa.string())
            escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), "|", "\\|")
            return escaped.cast(pa.binary())
        if dtype == "bytes":
            raw = column.cast(pa.binary())
            return pc.replace_substring(pc.replace_substring(raw, b"\\", b"\\\\"), b"|", b"\\|")
    except pa.ArrowInvalid as exc:
        raise DataError(f"join key #{i} does not fit {dtype}: {exc}") from None
    _check_key_dtypes([dtype])
    raise AssertionError("unreachable")  # pragma: no cover


def encode_entity_keys(
    dtypes: Sequence[str], columns: Sequence[pa.Array | pa.ChunkedArray]
) -> list[bytes]:
    """Vectorised ``encode_entity_key`` over Arrow columns, one per join key.

    >>> encode_entity_keys(["int64", "int64"], [pa.array([1, 2]), pa.array([7, 8])])
    [b'1|7', b'2|8']
    """
    _check_key_dtypes(dtypes)
    if len(dtypes) != len(columns):
        raise DataError(f"expected {len(dtypes)} join key column(s), got {len(columns)}")
    parts = [_key_column(i, d, c) for i, (d, c) in enumerate(zip(dtypes, columns))]
    if len(parts) == 1:
        return parts[0].to_pylist()
    joined = pc.binary_join_element_wise(*parts, pa.scalar(KEY_SEPARATOR, pa.binary()))
    return joined.to_pylist()


def decode_entity_key(dtypes: Sequence[str], key: bytes) -> tuple[Any, ...]:
    """The join key values of a store key (the inverse of ``encode_entity_key``).

    Used for inspection and tests, not on a hot path.

    >>> decode_entity_key(["int64", "string"], b"42|a\\\\|b")
    (42, 'a|b')
    """
    _check_key_dtypes(dtypes)
    parts: list[bytes] = []
    current = bytearray()
    i, n = 0, len(key)
    while i < n:
        byte = key[i]
        if byte == 0x5C and i + 1 < n:  # backslash: take the next byte literally
            current.append(key[i + 1])
            i += 2
            continue
        if byte == 0x7C:  # separator
            parts.append(bytes(current))
            current = bytearray()
        else:
            current.append(byte)
        i += 1
    parts.append(bytes(current))
    if len(parts) != len(dtypes):
        raise DataError(f"entity key {key!r} has {len(parts)} part(s), expected {len(dtypes)}")
    out: list[Any] = []
    for dtype, part in zip(dtypes, parts):
        if dtype in _INT_KEY_DTYPES:
            out.append(int(part))
        elif dtype == "string":
            out.append(part.decode("utf-8"))
        else:
            out.append(part)
    return tuple(out)


# -- values ------------------------------------------------------------------------------------


class _Field:
    """How one feature is laid out; built once per codec."""

    __slots__ = ("arrow", "code", "dtype", "element", "length", "name", "np_dtype", "variable")

    def __init__(self, name: str, dtype: str) -> None:
        parsed = parse_dtype(dtype)
        self.name = name
        self.dtype = dtype
        self.element = parsed.element
        self.length = parsed.length  # None scalar, 0 variable vector, n fixed vector
        self.variable = parsed.element in _VARIABLE_SCALARS or parsed.length == 0
        if parsed.element in _VARIABLE_SCALARS:
            self.code, self.np_dtype, self.arrow = "", "", pa.binary()
        else:
            self.code, self.np_dtype, self.arrow = _ELEMENTS[parsed.element]


class _Body:
    """The struct of one value layout behind a header of ``prefix`` bytes (format byte, and in
    format 2 the layout id), and its full (slow-path) decoding."""

    __slots__ = (
        "fields", "null_bytes", "plain_size", "prefix", "records", "shape", "size", "struct",
        "variable",
    )

    def __init__(self, fields: list[_Field], prefix: int) -> None:
        self.fields = fields
        self.prefix = prefix
        self.null_bytes = (len(fields) + 7) // 8
        codes = []
        # Where each feature sits in the flat unpacked tuple: an index or a slice (vectors).
        picks: list[int | slice] = []
        position = 1
        for f in fields:
            if f.variable:
                codes.append("I")
                picks.append(position)
                position += 1
            elif f.length:
                codes.append(f"{f.length}{f.code}")
                picks.append(slice(position, position + f.length))
                position += f.length
            else:
                codes.append(f.code)
                picks.append(position)
                position += 1
        self.struct = struct.Struct(f"<{prefix + self.null_bytes}s" + "".join(codes))
        self.size = self.struct.size
        self.shape = self._make_shape(picks, position)
        self.records: np.dtype | None = None  # of ``columns``, made on first use
        self.variable = [(i, f) for i, f in enumerate(fields) if f.variable]
        # The exact size of every payload of a layout without variable-width features.
        self.plain_size = -1 if self.variable else self.size

    @staticmethod
    def _make_shape(picks: list[int | slice], end: int) -> Callable[[tuple], tuple]:
        if all(isinstance(p, int) for p in picks):
            # Scalars only: the values are the flat tuple minus the header.
            return operator.itemgetter(slice(1, end))
        getter = operator.itemgetter(*picks)
        if len(picks) == 1:
            return lambda flat: (getter(flat),)
        return getter  # type: ignore[return-value]

    def columns(self, payloads: Sequence[bytes], clean: bytes) -> list[list[Any]] | None:
        """Per feature, its values in ``payloads`` when every one is fixed-width and starts with
        ``clean`` (the format byte, the layout id, no null); None when any is not. The joined
        payloads are read as one numpy record array: a ``tolist`` per feature instead of a
        ``struct`` call per payload."""
        n = len(payloads)
        # Every length is checked: equal totals alone could hide a short and a long payload.
        if not n or self.plain_size < 0 or list(map(len, payloads)).count(self.size) != n:
            return None
        if self.records is None:
            self.records = np.dtype(
                [("header", f"V{self.prefix + self.null_bytes}")]
                + [
                    (f"f{i}", f.np_dtype, (f.length,) if f.length else ())
                    for i, f in enumerate(self.fields)
                ]
            )
        table = np.frombuffer(b"".join(payloads), self.records)
        if table["header"].tobytes() != clean * n:
            return None
        columns = [table[name].tolist() for name in self.records.names[1:]]
        # Struct gives a vector as a tuple and numpy as a list: the tuples are what decode gives.
        for i, f in enumerate(self.fields):
            if f.length:
                columns[i] = list(map(tuple, columns[i]))
        return columns

    def decode(self, payload: bytes, corrupt: Callable[[bytes], DataError]) -> tuple[Any, ...]:
        """Every feature of ``payload`` (the header's format and id already checked)."""
        try:
            flat = self.struct.unpack_from(payload)
        except struct.error:
            raise corrupt(payload) from None
        out = list(self.shape(flat))
        offset = self.size
        for i, f in self.variable:
            size = out[i]
            end = offset + size
            if end > len(payload) or (f.length == 0 and size % struct.calcsize(f.code)):
                raise corrupt(payload)
            if f.element == "string":
                out[i] = payload[offset:end].decode("utf-8")
            elif f.element == "bytes":
                out[i] = payload[offset:end]
            else:
                out[i] = struct.unpack_from(
                    f"<{size // struct.calcsize(f.code)}{f.code}", payload, offset
                )
            offset = end
        if offset != len(payload):
            raise corrupt(payload)
        nulls = int.from_bytes(flat[0][self.prefix :], "little")
        if nulls:
            for i in range(len(out)):
                if nulls >> i & 1:
                    out[i] = None
        return tuple(out)


def layout_id(
    names: Sequence[str], dtypes: Sequence[str], meanings: Sequence[str | None] | None = None
) -> int:
    """The 32-bit id of a view's value layout: its features' names, dtypes and meanings, in order.

    The first four bytes, little-endian, of SHA-256 over ``name:dtype\\n`` per feature, or
    ``name:dtype:meaning\\n`` for a feature with a meaning (an aggregation: function, column,
    window and slide, ``registry.evolution.feature_meaning``). Format 2 payloads carry it, so a
    reader can tell a value written under another layout of the view: a count over 1h and one
    over 7d of the same name and dtype have different ids. A view without aggregations has the
    id it always had (no meaning, the same text).

    >>> hex(layout_id(["ctr", "clicks"], ["float32", "int64"]))
    '0x87222d85'
    """
    meanings = meanings or [None] * len(names)
    text = "".join(
        f"{n}:{d}\n" if m is None else f"{n}:{d}:{m}\n" for n, d, m in zip(names, dtypes, meanings)
    )
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "little")


class ValueCodec:
    """Encodes and decodes the feature values of one feature view (formats 1 and 2, see module
    doc).

    With ``names``, the codec is a view's: it writes format 2 (stamped with ``layout_id``) and
    reads values of its own layout, telling apart those written under another one: their
    features are returned as None and reported by ``decode_status`` (``other_layouts``, when
    given, recovers what is still valid; ``featurestore.online.layouts``). ``meanings`` (one per
    feature, None for a plain one) go into the layout id: pass the view's aggregations
    (``registry.evolution.feature_meaning``) so a changed aggregation is another layout. Without
    ``names`` it is positional (tests, benchmarks): it writes format 1 and reads either format by
    position.

    >>> codec = ValueCodec(["float32", "int64", "string"])
    >>> codec.decode(codec.encode_row([0.5, 3, "ab"]))
    (0.5, 3, 'ab')
    """

    def __init__(
        self,
        dtypes: Sequence[str],
        names: Sequence[str] | None = None,
        *,
        other_layouts: Callable[[bytes], tuple[tuple[Any, ...], frozenset[int]]] | None = None,
        meanings: Sequence[str | None] | None = None,
    ) -> None:
        if not dtypes:
            raise DataError("a value codec needs at least one feature")
        positional = names is None
        names = [f"#{i}" for i in range(len(dtypes))] if names is None else list(names)
        if len(names) != len(dtypes):
            raise DataError(f"{len(names)} feature names for {len(dtypes)} dtypes")
        if meanings is not None and len(meanings) != len(dtypes):
            raise DataError(f"{len(meanings)} feature meanings for {len(dtypes)} dtypes")
        self.dtypes = tuple(dtypes)
        self.names: tuple[str, ...] | None = None if positional else tuple(names)
        #: Per feature, what its values mean beyond name and dtype (None: plain; all None: None).
        self.meanings = tuple(meanings) if meanings and any(m is not None for m in meanings) else None
        self._fields = [_Field(n, d) for n, d in zip(names, dtypes)]
        self._null_bytes = (len(self._fields) + 7) // 8
        if positional:
            self.format, self.layout_id = LEGACY_FORMAT, None
            self._prefix = bytes([LEGACY_FORMAT])
        else:
            self.format, self.layout_id = FORMAT_VERSION, layout_id(names, dtypes, self.meanings)
            self._prefix = bytes([FORMAT_VERSION]) + self.layout_id.to_bytes(4, "little")
        self.other_layouts = other_layouts
        self._body = _Body(self._fields, len(self._prefix))
        self._bodies = {self.format: self._body}
        self._unpack_from = self._body.struct.unpack_from
        self.fixed_size = self._body.size
        #: What every payload this codec writes starts with: the format byte and, in format 2,
        #: the layout id (a vectorised reader compares it, then reads the null bitmap after it).
        self.prefix = self._prefix
        #: Bytes before the fixed section: the prefix and the null bitmap.
        self.header_size = len(self._prefix) + self._null_bytes
        self._clean_header = self._prefix + b"\x00" * self._null_bytes
        self._shape = self._body.shape
        self._plain_size = self._body.plain_size
        # Format-1 values are what every store written before format 2 holds: read them as fast
        # as format 2 when they are known to be of this layout (``legacy_is_current``).
        legacy = self._legacy_body = self._bodies.setdefault(LEGACY_FORMAT, _Body(self._fields, 1))
        self._legacy_unpack = legacy.struct.unpack_from
        self._legacy_shape = legacy.shape
        self._legacy_plain_size = legacy.plain_size
        self._legacy_clean = bytes([LEGACY_FORMAT]) + b"\x00" * self._null_bytes
        #: Whether a format-1 value that fits this codec's dtypes is of this layout: true for a
        #: codec without a layout history (what format-1 readers always did); a view's
        #: ``LayoutTranslator`` sets it once the view's history shows it never changed.
        self.legacy_is_current = other_layouts is None
        self._all_stale = frozenset(range(len(self._fields)))
        self._nothing = (None,) * len(self._fields)
        self._np_dtype = np.dtype(
            [("header", "u1", (self.header_size,))]
            + [
                (f"f{i}", "<u4" if f.variable else f.np_dtype, (f.length,) if f.length else ())
                for i, f in enumerate(self._fields)
            ]
        )
        assert self._np_dtype.itemsize == self.fixed_size

    # -- decoding (the serving hot path) --------------------------------------------------------
    def decode(self, payload: bytes) -> tuple[Any, ...]:
        """The feature values of one stored payload, in declaration order; None for a feature
        a value of another layout does not hold (see ``decode_status``).

        >>> codec = ValueCodec(["int32", "float32[2]"])
        >>> codec.decode(bytes.fromhex("0100070000000000803f00000040"))
        (7, (1.0, 2.0))
        """
        size = len(payload)
        if size == self._plain_size:
            flat = self._unpack_from(payload)
            # One comparison covers format, layout id, "no nulls" and "no variable-width tail".
            if flat[0] == self._clean_header:
                return self._shape(flat)
        elif size == self._legacy_plain_size and self.legacy_is_current:
            flat = self._legacy_unpack(payload)
            if flat[0] == self._legacy_clean:
                return self._legacy_shape(flat)
        return self._decode_slow(payload)[0]

    def decode_status(self, payload: bytes) -> tuple[tuple[Any, ...], frozenset[int]]:
        """``(values, stale)``: ``stale`` holds the positions of the features the payload cannot
        answer because it was written under another layout of the view (a feature added since,
        or whose dtype changed); empty for a payload of this layout.

        >>> old = ValueCodec(["int64"], ["a"]).encode_row([7])
        >>> ValueCodec(["int64", "float64"], ["a", "b"]).decode_status(old)
        ((None, None), frozenset({0, 1}))
        """
        size = len(payload)
        if size == self._plain_size:
            flat = self._unpack_from(payload)
            if flat[0] == self._clean_header:
                return self._shape(flat), _FRESH
        elif size == self._legacy_plain_size and self.legacy_is_current:
            flat = self._legacy_unpack(payload)
            if flat[0] == self._legacy_clean:
                return self._legacy_shape(flat), _FRESH
        return self._decode_slow(payload)

    def decode_columns(self, payloads: Sequence[bytes]) -> list[list[Any]] | None:
        """Per feature, in declaration order, its values in ``payloads`` (a new list of
        ``len(payloads)`` values each), decoded at once; None unless every payload is of this
        codec's layout, holds no null and no variable-width feature (the common case of a
        serving read): the caller then decodes them one by one with ``decode_status``, which
        tells the rest apart. The values are those ``decode`` gives.

        >>> codec = ValueCodec(["int32", "float32[2]"])
        >>> rows = [codec.encode_row([7, [1.0, 2.0]]), codec.encode_row([8, [3.0, 4.0]])]
        >>> codec.decode_columns(rows)
        [[7, 8], [(1.0, 2.0), (3.0, 4.0)]]
        """
        columns = self._body.columns(payloads, self._clean_header)
        if columns is None and self.legacy_is_current and self._legacy_body is not self._body:
            columns = self._legacy_body.columns(payloads, self._legacy_clean)
        return columns

    def decode_many(self, payloads: Sequence[bytes | None]) -> list[tuple[Any, ...] | None]:
        """``decode`` over many payloads; ``None`` (a missing key) stays ``None``."""
        decode = self.decode
        return [None if p is None else decode(p) for p in payloads]

    def decode_positional(self, payload: bytes) -> tuple[Any, ...]:
        """``payload`` read by position with this codec's dtypes, whatever layout id it carries
        (format 1 has none); DataError when it does not fit them."""
        fmt = payload[0] if payload else -1
        body = self._bodies.get(fmt)
        if body is None:
            if fmt not in (LEGACY_FORMAT, FORMAT_VERSION):
                raise self._unknown_format(fmt)
            body = self._bodies[fmt] = _Body(self._fields, 1 if fmt == LEGACY_FORMAT else 5)
        return body.decode(payload, self._corrupt)

    def _decode_slow(self, payload: bytes) -> tuple[tuple[Any, ...], frozenset[int]]:
        if len(payload) < 2 or (payload[0] == FORMAT_VERSION and len(payload) < 5):
            raise self._corrupt(payload)
        fmt = payload[0]
        if self.names is None or (fmt == FORMAT_VERSION and payload[:5] == self._prefix):
            # A positional codec reads any format by position; a view's codec its own layout.
            return self.decode_positional(payload), _FRESH
        if fmt not in (LEGACY_FORMAT, FORMAT_VERSION):
            raise self._unknown_format(fmt)
        if self.other_layouts is not None:
            return self.other_layouts(payload)
        if fmt == LEGACY_FORMAT:
            # Format 1 has no layout id: a value that fits this layout is taken to be of it
            # (what format 1 readers always did); one that does not is of another layout.
            try:
                return self.decode_positional(payload), _FRESH
            except DataError:
                pass
        return self._nothing, self._all_stale

    def _unknown_format(self, fmt: int) -> DataError:
        return DataError(
            f"online value has format {fmt}, this version reads formats "
            f"{LEGACY_FORMAT} and {FORMAT_VERSION}",
            hint="upgrade featurestore, or re-materialize the view with this version",
        )

    def _corrupt(self, payload: bytes) -> DataError:
        return DataError(
            f"online value of {len(payload)} bytes does not match the view's layout "
            f"({', '.join(self.dtypes)})",
            hint="the stored value is damaged or not a feature value; materialize the view again",
        )

    # -- encoding --------------------------------------------------------------------------------
    def encode_row(self, values: Sequence[Any]) -> bytes:
        """One row of Python values (None for null) as a payload; for streams and tests.

        >>> ValueCodec(["int32", "float32[2]"]).encode_row([7, [1.0, 2.0]]).hex()
        '0100070000000000803f00000040'
        """
        if len(values) != len(self._fields):
            raise DataError(f"expected {len(self._fields)} values, got {len(values)}")
        nulls = 0
        flat: list[Any] = []
        tail: list[bytes] = []
        for i, (f, value) in enumerate(zip(self._fields, values)):
            if value is None:
                nulls |= 1 << i
                if f.variable:
                    flat.append(0)
                else:
                    flat.extend([0] * (f.length or 1))
                continue
            if f.variable:
                if f.element == "string":
                    data = value.encode("utf-8")
                elif f.element == "bytes":
                    data = bytes(value)
                else:
                    data = struct.pack(f"<{len(value)}{f.code}", *value)
                flat.append(len(data))
                tail.append(data)
            elif f.length:
                if len(value) != f.length:
                    raise DataError(
                        f"feature {f.name} ({f.dtype}) got a vector of length {len(value)}"
                    )
                flat.extend(value)
            else:
                flat.append(value)
        header = self._prefix + nulls.to_bytes(self._null_bytes, "little")
        try:
            fixed = self._body.struct.pack(header, *flat)
        except struct.error as exc:
            raise DataError(f"a value does not fit the view's dtypes: {exc}") from None
        return fixed + b"".join(tail) if tail else fixed

    def encode_rows(self, columns: Sequence[pa.Array | pa.ChunkedArray]) -> list[bytes]:
        """Payloads of many rows from Arrow columns, one per feature in declaration order.

        The fixed section of every row is filled column by column into one numpy structured
        array, so the per-row Python work is one bytes object (plus a join for views with
        strings or variable vectors).

        >>> ValueCodec(["float32", "int64"]).encode_rows([pa.array([0.5]), pa.array([3])])[0].hex()
        '01000000003f0300000000000000'
        """
        if len(columns) != len(self._fields):
            raise DataError(f"expected {len(self._fields)} columns, got {len(columns)}")
        arrays = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns]
        n = len(arrays[0]) if arrays else 0
        for f, a in zip(self._fields, arrays):
            if len(a) != n:
                raise DataError(f"column {f.name} has {len(a)} rows, expected {n}")
        if n == 0:
            return []
        table = np.zeros(n, dtype=self._np_dtype)
        nulls = np.zeros((n, len(self._fields)), dtype=bool)
        tails: list[list[bytes]] = []
        for i, (f, array) in enumerate(zip(self._fields, arrays)):
            if array.null_count:
                nulls[:, i] = array.is_null().to_numpy(zero_copy_only=False)
            try:
                if f.variable:
                    sizes, data = self._variable_column(f, array)
                    table[f"f{i}"] = sizes
                    tails.append(data)
                elif f.length:
                    self._fill_vector(table[f"f{i}"], f, array, nulls[:, i])
                else:
                    table[f"f{i}"] = self._scalar_numpy(f, array)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, TypeError) as exc:
                raise DataError(
                    f"column {f.name} ({array.type}) does not fit dtype {f.dtype}: {exc}",
                    hint="cast the source column or fix the feature's dtype",
                ) from None
        header = table["header"]
        prefix = len(self._prefix)
        header[:, :prefix] = np.frombuffer(self._prefix, np.uint8)
        header[:, prefix:] = np.packbits(nulls, axis=1, bitorder="little")
        # A void view turns each record into one bytes object in C, without a Python slice loop.
        fixed = table.view(f"V{self.fixed_size}").tolist()
        if not tails:
            return fixed
        if len(tails) == 1:
            return [a + b for a, b in zip(fixed, tails[0])]
        return [b"".join(parts) for parts in zip(fixed, *tails)]

    @staticmethod
    def _scalar_numpy(f: _Field, array: pa.Array) -> np.ndarray:
        if f.element == "timestamp" and pa.types.is_timestamp(array.type):
            # Sub-microsecond precision is dropped on purpose: the store keeps microseconds.
            array = pc.cast(array, pa.timestamp("us", array.type.tz), safe=False)
            array = array.view(pa.int64())
        filled = array.cast(f.arrow).fill_null(False if f.element == "bool" else 0)
        return filled.to_numpy(zero_copy_only=False)

    @staticmethod
    def _flat_values(f: _Field, array: pa.Array) -> np.ndarray:
        if not (
            pa.types.is_list(array.type)
            or pa.types.is_large_list(array.type)
            or pa.types.is_fixed_size_list(array.type)
        ):
            raise TypeError("expected a list column")
        values = pc.list_flatten(array)
        if values.null_count:
            raise DataError(
                f"feature {f.name} ({f.dtype}) has {values.null_count} null vector element(s)",
                hint="fill them (e.g. with 0) or make the whole vector null",
            )
        return values.cast(f.arrow).to_numpy(zero_copy_only=False)

    def _fill_vector(
        self, target: np.ndarray, f: _Field, array: pa.Array, null: np.ndarray
    ) -> None:
        lengths = pc.list_value_length(array).fill_null(f.length).to_numpy(zero_copy_only=False)
        if (lengths != f.length).any():
            bad = int(lengths[lengths != f.length][0])
            raise DataError(f"feature {f.name} ({f.dtype}) got a vector of length {bad}")
        values = self._flat_values(f, array).reshape(-1, int(f.length or 1))
        if null.any():
            target[~null] = values
        else:
            target[:] = values

    def _variable_column(self, f: _Field, array: pa.Array) -> tuple[np.ndarray, list[bytes]]:
        if f.element in _VARIABLE_SCALARS:
            if f.element == "string" and not (
                pa.types.is_string(array.type) or pa.types.is_large_string(array.type)
            ):
                raise TypeError("expected a string column")
            raw = array.cast(pa.binary()).fill_null(b"")
            sizes = pc.binary_length(raw).to_numpy(zero_copy_only=False)
            return sizes, raw.to_pylist()
        counts = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        data = self._flat_values(f, array).tobytes()
        itemsize = struct.calcsize(f.code)
        sizes = counts.astype(np.int64) * itemsize
        ends = np.cumsum(sizes).tolist()
        starts = [0, *ends[:-1]]
        return sizes, [data[s:e] for s, e in zip(starts, ends)]
