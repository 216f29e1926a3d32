"""Casting source columns to declared dtypes, row by row where needed. Pure Arrow, no Beam.

A column is converted in one vectorised cast; when that fails, the rows that fail are found by
bisection and come back null and flagged, so one bad value rejects one row, never a run.

    >>> out, problems = convert_column(pa.array(["1", "x"]), "n", "int64")
    >>> out.to_pylist()
    [1, None]
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.arrow_types import arrow_type
from featurestore.offline.layout import TS_TYPE
from registry.types import parse_dtype

Problem = tuple[np.ndarray, str]  # (rows mask, reason)


def _convert_rows(
    array: pa.Array, target: pa.DataType, convert: Callable[[pa.Array], pa.Array]
) -> tuple[pa.Array, np.ndarray | None]:
    """``convert`` the whole array; when that fails, bisect to find the rows that fail.

    Failing rows come back null and flagged. A clean array costs one conversion; k bad rows
    cost about k * log2(n) small ones, all vectorised.
    """
    try:
        return convert(array), None
    except (pa.ArrowInvalid, OverflowError):
        pass
    bad = np.zeros(len(array), dtype=bool)
    pieces: list[pa.Array] = []
    stack = [(0, array)]
    while stack:
        offset, part = stack.pop()
        try:
            pieces.append(convert(part))
            continue
        except (pa.ArrowInvalid, OverflowError):
            if len(part) == 1:
                bad[offset] = True
                pieces.append(pa.nulls(1, target))
                continue
        mid = len(part) // 2
        # Right half first, so the left one pops first and pieces stay in row order.
        stack.append((offset + mid, part.slice(mid)))
        stack.append((offset, part.slice(0, mid)))
    return pa.concat_arrays(pieces), bad


def mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def nulls(array: pa.Array) -> np.ndarray:
    if array.null_count == 0:
        return np.zeros(len(array), dtype=bool)
    return np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _decode(array: pa.Array) -> pa.Array:
    if pa.types.is_dictionary(array.type):
        return array.dictionary_decode()
    if pa.types.is_large_string(array.type) or pa.types.is_string_view(array.type):
        return array.cast(pa.string())
    return array


def _parse_timestamp_text(array: pa.Array) -> pa.Array:
    """ISO 8601 text: with a zone offset, or without one (then taken as UTC)."""
    try:
        return array.cast(TS_TYPE)
    except pa.ArrowInvalid:
        return array.cast(pa.timestamp("us")).cast(TS_TYPE)


def to_timestamp(array: pa.Array) -> tuple[pa.Array, np.ndarray | None]:
    """Any accepted timestamp column as timestamp[us, UTC]; naive values are UTC, finer units
    are truncated to microseconds, text is parsed. Returns the array and the unparseable rows."""
    array = _decode(array)
    t = array.type
    if t == TS_TYPE:
        return array, None
    if pa.types.is_timestamp(t):
        if t.unit == "ns":
            # Truncation to microseconds is intended (the stores keep microseconds).
            return pc.cast(array, pa.timestamp("us", t.tz), safe=False).cast(TS_TYPE), None
        return _convert_rows(
            array, TS_TYPE, lambda a: a.cast(pa.timestamp("us", t.tz)).cast(TS_TYPE)
        )
    if pa.types.is_date(t) or pa.types.is_null(t):
        return array.cast(TS_TYPE), None
    return _convert_rows(array, TS_TYPE, _parse_timestamp_text)


def _convert_scalar(array: pa.Array, dtype: str) -> tuple[pa.Array, np.ndarray | None]:
    target = arrow_type(dtype)
    array = _decode(array)
    if array.type == target:
        return array, None
    if dtype == "timestamp":
        return to_timestamp(array)
    if dtype == "float32" and not pa.types.is_float32(array.type):
        # Through float64, so values beyond float32's range are caught instead of becoming inf.
        wide, bad = _convert_rows(array, pa.float64(), lambda a: a.cast(pa.float64()))
        narrow = wide.cast(pa.float32())
        overflow = mask(pc.and_(pc.is_finite(wide), pc.invert(pc.is_finite(narrow))))
        if overflow.any():
            bad = overflow if bad is None else (bad | overflow)
            narrow = pc.if_else(pa.array(overflow), pa.scalar(None, pa.float32()), narrow)
        return narrow, bad
    return _convert_rows(array, target, lambda a: a.cast(target))


def _rows_with(array: pa.Array, element_mask: pa.Array) -> np.ndarray:
    """Rows of a list array that have at least one element where ``element_mask`` is true."""
    out = np.zeros(len(array), dtype=bool)
    parents = pc.list_parent_indices(array).filter(element_mask)
    if len(parents):
        out[parents.to_numpy(zero_copy_only=False)] = True
    return out


def _convert_vector(array: pa.Array, name: str, dtype: str) -> tuple[pa.Array, list[Problem]]:
    parsed = parse_dtype(dtype)
    target = arrow_type(dtype)
    if pa.types.is_null(array.type):
        return array.cast(target), []
    problems: list[Problem] = []
    structural = np.zeros(len(array), dtype=bool)
    if parsed.length:
        wrong = mask(pc.not_equal(pc.list_value_length(array), parsed.length))
        problems.append((wrong, f"feature {name}: vector length is not {parsed.length}"))
        structural |= wrong
    flat = pc.list_flatten(array)
    if flat.null_count:
        holes = _rows_with(array, flat.is_null())
        problems.append((holes, f"feature {name}: vector has null elements"))
        structural |= holes
    if structural.any():
        array = pc.if_else(pa.array(structural), pa.scalar(None, array.type), array)
    if array.type == target:
        return array, problems
    out, bad = _convert_rows(array, target, lambda a: a.cast(target))
    if bad is not None:
        problems.append((bad, f"feature {name} does not fit {dtype}"))
    if parsed.element == "float32" and not pa.types.is_float32(array.type.value_type):
        grew = _rows_with(out, pc.is_inf(pc.list_flatten(out))) & ~_rows_with(
            array, pc.is_inf(pc.list_flatten(array).cast(pa.float64()))
        )
        if grew.any():
            problems.append((grew, f"feature {name} does not fit {dtype}"))
            out = pc.if_else(pa.array(grew), pa.scalar(None, target), out)
    return out, problems


def convert_column(
    array: pa.Array, name: str, dtype: str, role: str = "feature"
) -> tuple[pa.Array, list[Problem]]:
    """Cast one source column to ``dtype``; rows that do not fit become null and are reported.

    >>> out, problems = convert_column(pa.array(["1", "x"]), "n", "int64")
    >>> out.to_pylist(), [(m.tolist(), r) for m, r in problems]
    ([1, None], [([False, True], 'feature n does not fit int64')])
    """
    if parse_dtype(dtype).is_vector:
        return _convert_vector(array, name, dtype)
    out, bad = _convert_scalar(array, dtype)
    return out, ([] if bad is None else [(bad, f"{role} {name} does not fit {dtype}")])
