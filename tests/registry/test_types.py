from __future__ import annotations

import pytest

from registry.types import DType, format_duration, parse_dtype, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0), (0, 0), ("90s", 90), ("15m", 900), ("12h", 43200), ("7d", 604800), ("2w", 1209600), ("1d12h", 129600), (3600, 3600)],
)
def test_durations(text: str | int, seconds: int) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("bad", ["", "7x", "1h1d", "-5m", "3 days", True, -1])
def test_bad_durations_say_what_is_accepted(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)  # type: ignore[arg-type]


def test_dtypes() -> None:
    assert parse_dtype("float32[16]") == DType("float32", 16)
    assert parse_dtype("float64[]") == DType("float64", 0)
    assert str(parse_dtype("int64[3]")) == "int64[3]"
    assert not parse_dtype("string").is_vector
    for bad in ("string[3]", "float32[0]", "double", "int64[x]"):
        with pytest.raises(ValueError):
            parse_dtype(bad)
