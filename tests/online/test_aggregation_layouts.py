"""The aggregation is part of an online value's layout (issue 14, 2d): a ``count`` over 1h
changed to a ``count`` over 7d keeps its name and dtype, but its old values mean something else,
so they read ``stale_layout`` until the view is materialized again; a plain feature whose name
and dtype are unchanged stays valid, and a view without aggregations keeps its layout id (the
golden bytes of tests/online/test_codec.py).

``LayoutTranslator`` is given the view's history directly here, in the 3-tuple form
``registry.evolution.value_layouts`` returns.
"""

from __future__ import annotations

from featurestore.online.codec import ValueCodec, layout_id
from featurestore.online.layouts import LayoutTranslator
from registry.evolution import (
    ViewVersion,
    aggregate_meaning,
    backfill_reasons,
    feature_meaning,
    value_layouts,
)
from registry.plan import diff
from registry.spec import FeatureViewSpec

NAMES = ("txn_count", "amount_sum")
DTYPES = ("int64", "float64")
H1 = (aggregate_meaning("count", None, 3600, 3600), aggregate_meaning("sum", "amount", 3600, 3600))
D7 = (aggregate_meaning("count", None, 7 * 86400, 3600), H1[1])  # only the count changed
OLD, NEW = (NAMES, DTYPES, H1), (NAMES, DTYPES, D7)


def reader(layout: tuple, history: list) -> ValueCodec:
    codec = ValueCodec(list(layout[1]), list(layout[0]), meanings=list(layout[2]))
    codec.other_layouts = LayoutTranslator(codec, lambda: history)
    return codec


def test_a_view_without_aggregations_keeps_its_layout_id() -> None:
    names, dtypes = ["ctr", "clicks"], ["float32", "int64"]
    assert layout_id(names, dtypes, [None, None]) == layout_id(names, dtypes) == 0x87222D85
    assert ValueCodec(dtypes, names, meanings=[None, None]).layout_id == 0x87222D85


def test_the_aggregation_is_part_of_the_layout_id() -> None:
    assert layout_id(NAMES, DTYPES, H1) != layout_id(NAMES, DTYPES, D7) != layout_id(NAMES, DTYPES)


def test_a_changed_aggregation_is_stale_and_the_unchanged_one_answers() -> None:
    old = ValueCodec(list(DTYPES), list(NAMES), meanings=list(H1)).encode_row([15, 99.5])
    codec = reader(NEW, [NEW, OLD])
    assert codec.decode_status(old) == ((None, 99.5), frozenset({0}))
    # A value written under the new definition is read on the fast path, whole.
    assert codec.decode_status(codec.encode_row([16, 100.0])) == ((16, 100.0), frozenset())


def test_values_whose_id_predates_meanings() -> None:
    """Values written before meanings went into the id carry the id of names and dtypes alone:
    the history says what they can be (review 2d)."""
    blind = ValueCodec(list(DTYPES), list(NAMES)).encode_row([15, 99.5])
    # The view never changed: every feature answers.
    assert reader(NEW, [NEW]).decode_status(blind) == ((15, 99.5), frozenset())
    # Its count changed: the value may be of either meaning, so the count is stale.
    assert reader(NEW, [NEW, OLD]).decode_status(blind) == ((None, 99.5), frozenset({0}))


def test_format_1_values_trust_only_what_every_layout_means_alike() -> None:
    legacy = ValueCodec(list(DTYPES)).encode_row([15, 99.5])  # format 1: no id at all
    assert reader(NEW, [NEW]).decode_status(legacy) == ((15, 99.5), frozenset())
    values, stale = reader(NEW, [NEW, OLD]).decode_status(legacy)
    assert values[0] is None and 0 in stale


def test_a_plain_view_reads_a_history_with_meanings_as_before() -> None:
    names, dtypes = ("a", "b"), ("int64", "float64")
    old = ValueCodec(list(dtypes), list(names)).encode_row([7, 0.5])
    codec = ValueCodec(["int64", "float64", "int32"], ["a", "b", "c"])
    codec.other_layouts = LayoutTranslator(codec, lambda: [(("a", "b", "c"), ("int64", "float64", "int32"), (None,) * 3), (names, dtypes, (None, None))])
    assert codec.decode_status(old) == ((7, 0.5, None), frozenset({2}))


def test_a_codec_given_no_meanings_reads_by_names_and_dtypes() -> None:
    """A reader that does not pass meanings compares names and dtypes only: what it always did."""
    codec = ValueCodec(list(DTYPES), list(NAMES))
    codec.other_layouts = LayoutTranslator(codec, lambda: [NEW, OLD])
    blind = ValueCodec(list(DTYPES), list(NAMES)).encode_row([15, 99.5])
    assert codec.decode_status(blind) == ((15, 99.5), frozenset())


VIEW = {"name": "txns", "entities": ["user"], "source": "s"}


def view(count: dict, **extra: object) -> FeatureViewSpec:
    return FeatureViewSpec.model_validate({**VIEW, **extra, "features": [
        {"name": "txn_count", "dtype": "int64", "aggregation": count},
        {"name": "amount_sum", "dtype": "float64", "aggregation": {"function": "sum", "column": "amount", "window": "1h"}},
    ]})


def test_the_meaning_ignores_spelling() -> None:
    a = view({"function": "count", "window": "7d", "slide": "1h"})
    b = view({"function": "count", "window": "1w", "slide": "60m"})
    assert [feature_meaning(f) for f in a.features] == [feature_meaning(f) for f in b.features]
    assert feature_meaning(a.features[0]) == "count(*) window=604800s slide=3600s"
    tumbling = view({"function": "count", "window": "1h"})
    assert feature_meaning(tumbling.features[0]) == feature_meaning(view({"function": "count", "window": "1h", "slide": "1h"}).features[0])
    assert backfill_reasons(a, b) == []


def test_value_layouts_and_the_plan_see_an_aggregation_change() -> None:
    from registry.definitions import Definitions

    h1 = view({"function": "count", "window": "1h"})
    d7 = view({"function": "count", "window": "7d", "slide": "1h"})
    layouts = value_layouts([ViewVersion(2, None, d7), ViewVersion(1, 2, h1)])
    assert [lay[2][0] for lay in layouts] == ["count(*) window=604800s slide=3600s", "count(*) window=3600s slide=3600s"]
    assert backfill_reasons(h1, d7) == [
        "feature txn_count aggregation count(*) window=3600s slide=3600s -> count(*) window=604800s slide=3600s"
    ]
    plan = diff(Definitions(feature_views={"txns": h1}), Definitions(feature_views={"txns": d7}))
    assert [b.view for b in plan.backfills] == ["txns"]
    [change] = plan.changes
    assert change.breaking and "aggregation count(*) window=3600s" in change.details[0]
    # Respelled, same meaning: neither breaking nor a backfill.
    same = diff(Definitions(feature_views={"txns": d7}), Definitions(feature_views={"txns": view({"function": "count", "window": "1w", "slide": "1h"})}))
    assert same.backfills == [] and not same.breaking
