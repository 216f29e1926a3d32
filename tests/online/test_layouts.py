"""Values written under an earlier layout of a view: what is still valid decodes, the rest is stale.

``LayoutTranslator`` is given the view's history directly here; tests/materializers/
test_schema_evolution.py runs the same through the registry, the stores and HTTP.
"""

from __future__ import annotations

import pytest

from featurestore.online.codec import ValueCodec
from featurestore.online.layouts import LayoutTranslator
from registry.errors import DataError

V1 = (("clicks", "score", "tag"), ("int32", "float32", "string"))
V2 = (("clicks", "score", "bonus"), ("int32", "float64", "float64"))  # tag gone, score retyped, bonus added


def codec_of(layout: tuple, history: list | None = None) -> ValueCodec:
    names, dtypes = layout
    codec = ValueCodec(list(dtypes), list(names))
    if history is not None:
        codec.other_layouts = LayoutTranslator(codec, lambda: history)
    return codec


def test_a_value_of_an_earlier_layout_answers_its_unchanged_features() -> None:
    old = codec_of(V1).encode_row([7, 0.5, "x"])
    reader = codec_of(V2, [V2, V1])
    assert reader.decode_status(old) == ((7, None, None), frozenset({1, 2}))
    assert reader.decode(old) == (7, None, None)
    # Its own values take the fast path, untouched.
    assert reader.decode_status(reader.encode_row([1, 2.5, 3.0])) == ((1, 2.5, 3.0), frozenset())


def test_features_moved_to_another_position_are_found_by_name() -> None:
    old = codec_of((("a", "b", "c"), ("int64", "string", "float64"))).encode_row([1, "b", 3.0])
    reader = codec_of((("c", "a"), ("float64", "int64")), [(("a", "b", "c"), ("int64", "string", "float64"))])
    assert reader.decode_status(old) == ((3.0, 1), frozenset())


def test_without_history_or_with_an_unknown_layout_every_feature_is_stale() -> None:
    old = codec_of(V1).encode_row([7, 0.5, "x"])
    assert codec_of(V2).decode_status(old) == ((None, None, None), frozenset({0, 1, 2}))
    assert codec_of(V2, [V2]).decode_status(old) == ((None, None, None), frozenset({0, 1, 2}))


def test_history_that_cannot_be_read_now_is_asked_again() -> None:
    answers: list[list | None] = [None, [V2, V1]]
    reader = codec_of(V2)
    reader.other_layouts = LayoutTranslator(reader, lambda: answers.pop(0))
    old = codec_of(V1).encode_row([7, 0.5, "x"])
    assert reader.decode_status(old)[1] == frozenset({0, 1, 2})  # the registry was down
    assert reader.decode_status(old) == ((7, None, None), frozenset({1, 2}))
    assert reader.decode_status(old) == ((7, None, None), frozenset({1, 2}))  # kept: not asked again
    assert answers == []


def test_a_damaged_value_of_an_earlier_layout_is_still_an_error() -> None:
    old = codec_of(V1).encode_row([7, 0.5, "x"])
    with pytest.raises(DataError, match="does not match the view's layout"):
        codec_of(V2, [V2, V1]).decode(old[:-1])


def test_format_1_values_are_placed_by_size_and_ambiguity_is_stale() -> None:
    """Format 1 has no layout id: the newest layout a value fits is taken, and only the features
    every fitting layout agrees on (the common prefix) are trusted."""
    a1 = (("a", "b"), ("int64", "float64"))
    a2 = (("a", "b", "c"), ("int64", "float64", "int32"))
    legacy = ValueCodec(["int64", "float64"]).encode_row([7, 0.5])  # written before format 2
    assert legacy[0] == 1
    # A feature added since: only the old layout fits.
    assert codec_of(a2, [a2, a1]).decode_status(legacy) == ((7, 0.5, None), frozenset({2}))
    # b retyped to a type of the same width: both layouts fit, b cannot be told apart.
    a3 = (("a", "b"), ("int64", "int64"))
    assert codec_of(a3, [a3, a1]).decode_status(legacy) == ((7, None), frozenset({1}))
    # Without history, a value that fits is read as before (what format 1 readers always did).
    assert codec_of(a1).decode_status(legacy) == ((7, 0.5), frozenset())
    assert codec_of(a2).decode_status(legacy) == ((None, None, None), frozenset({0, 1, 2}))
