"""Value types (dtypes) and durations as written in the YAML definitions.

A dtype is one of the scalar names below, or a vector: ``float32[16]`` (fixed length 16) or
``float32[]`` (any length). Vectors hold numbers only. Durations are written ``90s``, ``15m``,
``12h``, ``7d``, ``2w`` or combined (``1d12h``); ``0`` means "never expires".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCALAR_DTYPES: tuple[str, ...] = (
    "bool",
    "int32",
    "int64",
    "float32",
    "float64",
    "string",
    "bytes",
    "timestamp",
)
NUMERIC_DTYPES: tuple[str, ...] = ("int32", "int64", "float32", "float64")
# Join keys must hash and compare exactly, so floats and vectors are not allowed there.
JOIN_KEY_DTYPES: tuple[str, ...] = ("int32", "int64", "string", "bytes")

_VECTOR_RE = re.compile(r"^(?P<elem>[a-z0-9]+)\[(?P<len>[0-9]*)\]$")
_DURATION_RE = re.compile(r"^(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_UNIT_SECONDS = (7 * 86400, 86400, 3600, 60, 1)

DTYPE_HELP = (
    "one of " + ", ".join(SCALAR_DTYPES) + ", or a numeric vector such as float32[16] or float64[]"
)
DURATION_HELP = "a duration such as 90s, 15m, 12h, 7d, 2w or 1d12h (0 for no expiry)"


@dataclass(frozen=True)
class DType:
    """A parsed dtype. ``length`` is None for scalars, 0 for any-length vectors."""

    element: str
    length: int | None = None

    @property
    def is_vector(self) -> bool:
        return self.length is not None

    def __str__(self) -> str:
        if self.length is None:
            return self.element
        return f"{self.element}[{self.length or ''}]"


def parse_dtype(text: str) -> DType:
    """Parse a dtype string; raise ValueError with what would be accepted.

    >>> parse_dtype("float32[16]")
    DType(element='float32', length=16)
    """
    if not isinstance(text, str):
        raise ValueError(f"dtype must be a string, {DTYPE_HELP}")
    if text in SCALAR_DTYPES:
        return DType(text)
    match = _VECTOR_RE.match(text)
    if match and match["elem"] in NUMERIC_DTYPES:
        length = int(match["len"]) if match["len"] else 0
        if match["len"] and length == 0:
            raise ValueError("a fixed-length vector needs a length of at least 1")
        return DType(match["elem"], length)
    raise ValueError(f"unknown dtype {text!r}; expected {DTYPE_HELP}")


def parse_duration(value: str | int) -> int:
    """Parse a duration into whole seconds.

    >>> parse_duration("1d12h")
    129600
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a duration cannot be negative; expected {DURATION_HELP}")
        return value
    text = str(value).strip()
    if text == "0":
        return 0
    match = _DURATION_RE.match(text)
    if not text or not match or not any(match.groups()):
        raise ValueError(f"bad duration {value!r}; expected {DURATION_HELP}")
    return sum(int(g) * unit for g, unit in zip(match.groups(), _UNIT_SECONDS) if g)


def format_duration(seconds: int) -> str:
    """The canonical spelling of a duration, the inverse of ``parse_duration``."""
    if seconds == 0:
        return "0"
    out = []
    for suffix, unit in zip("wdhms", _UNIT_SECONDS):
        count, seconds = divmod(seconds, unit)
        if count:
            out.append(f"{count}{suffix}")
    return "".join(out)
