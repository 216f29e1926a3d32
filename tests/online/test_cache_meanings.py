"""The ``/predict`` item cache decodes an aggregated view's values with the writer's layout id,
which holds the features' meanings (issue 14, 2d): built from the same definition, the two
agree, and the cache's vectorised path reads them."""

from __future__ import annotations

import math

from featurestore.feature_cache import ViewDecoder
from featurestore.online.codec import ValueCodec

DTYPES, NAMES = ["int64", "float64"], ["n", "total"]
MEANINGS = ["count(*) window=3600s slide=3600s", None]


def test_values_of_an_aggregated_view_decode_with_the_writers_meanings() -> None:
    written = ValueCodec(DTYPES, NAMES, meanings=MEANINGS).encode_row([7, 2.5])
    decoder = ViewDecoder(DTYPES, NAMES, meanings=MEANINGS)
    assert decoder.decode([written]).tolist() == [[7.0, 2.5]]


def test_a_reader_without_the_meanings_would_not_read_them() -> None:
    """What the wiring prevents: the ids differ, so without a history nothing is trusted."""
    written = ValueCodec(DTYPES, NAMES, meanings=MEANINGS).encode_row([7, 2.5])
    assert ValueCodec(DTYPES, NAMES).layout_id != ValueCodec(DTYPES, NAMES, meanings=MEANINGS).layout_id
    try:
        row = ViewDecoder(DTYPES, NAMES).decode([written]).tolist()[0]
    except Exception:  # a value of an unknown layout may be refused outright
        return
    assert all(math.isnan(v) for v in row)
