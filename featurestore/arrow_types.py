"""How declared dtypes map to Arrow types (the one mapping every store and job uses)."""

from __future__ import annotations

import pyarrow as pa

from registry.types import parse_dtype

_SCALARS: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "string": pa.string(),
    "bytes": pa.binary(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


def arrow_type(dtype: str) -> pa.DataType:
    """The Arrow type of a declared dtype.

    >>> arrow_type("float32[4]")
    FixedSizeListType(fixed_size_list<item: float>[4])
    """
    parsed = parse_dtype(dtype)
    element = _SCALARS[parsed.element]
    if parsed.length is None:
        return element
    if parsed.length == 0:
        return pa.list_(element)
    return pa.list_(element, parsed.length)
