"""Format-1 values (every store written before format 2) are read on the fast path when the
view never changed, and by the history's rules when it did."""

from __future__ import annotations

from featurestore.online.codec import ValueCodec
from featurestore.online.layouts import LayoutTranslator

DTYPES = ["float32", "int64"]


def test_a_view_that_never_changed_reads_format_1_on_the_fast_path() -> None:
    old = ValueCodec(DTYPES).encode_row([1.5, 7])  # format 1
    codec = ValueCodec(DTYPES, ["a", "b"])
    codec.other_layouts = LayoutTranslator(codec, lambda: [(["a", "b"], DTYPES)])
    assert codec.legacy_is_current is False  # not before the history was read
    assert codec.decode_status(old) == ((1.5, 7), frozenset())
    assert codec.legacy_is_current is True
    calls = []
    codec.other_layouts = lambda payload: calls.append(payload)  # type: ignore[assignment, func-returns-value]
    assert codec.decode(old) == (1.5, 7) and calls == []  # no translator call: the fast path


def test_a_changed_view_keeps_format_1_on_the_history_rules() -> None:
    # b was retyped int64 -> float64: same width, so a format-1 value cannot say which it is.
    old = ValueCodec(DTYPES).encode_row([1.5, 7])
    codec = ValueCodec(["float32", "float64"], ["a", "b"])
    codec.other_layouts = LayoutTranslator(codec, lambda: [(["a", "b"], ["float32", "float64"]), (["a", "b"], DTYPES)])
    values, stale = codec.decode_status(old)
    assert codec.legacy_is_current is False
    assert values[0] == 1.5 and 1 in stale


def test_a_codec_without_history_reads_format_1_as_its_own_layout() -> None:
    old = ValueCodec(DTYPES).encode_row([2.0, None])
    assert ValueCodec(DTYPES, ["a", "b"]).decode_status(old) == ((2.0, None), frozenset())


def test_another_bitmap_width_of_the_same_size_trusts_nothing() -> None:
    """9 features (a 2-byte null bitmap) and 7 (1 byte) can give format-1 values of one size:
    every field sits a byte apart, so a shared prefix of names proves nothing (review 2a)."""
    old = ([*"abcdef", "p", "q", "r"], ["int64"] * 6 + ["bool"] * 3)
    new = ([*"abcdef", "x"], ["int64"] * 6 + ["int32"])
    payload = ValueCodec(old[1]).encode_row([1, 2, 3, 4, 5, 6, True, False, True])
    assert len(payload) == len(ValueCodec(new[1]).encode_row([1, 2, 3, 4, 5, 6, 7]))
    codec = ValueCodec(new[1], new[0])
    codec.other_layouts = LayoutTranslator(codec, lambda: [new, old])
    values, stale = codec.decode_status(payload)
    assert stale == frozenset(range(7)) and values == (None,) * 7  # never (256, 512, ...) as present
