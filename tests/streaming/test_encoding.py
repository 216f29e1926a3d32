"""The event encoding shared by push and the stream job: what is accepted, the errors, and
that decoding (fast and entry-by-entry) gives the same Arrow columns."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow as pa
import pytest

from featurestore.streams.encoding import (
    ENTRY_ID,
    ORDINAL,
    EventError,
    canonical_value,
    decode_events,
    encode_events,
    ordinal_of,
)
from featurestore.streams.schema import EventSchema

SCHEMA = EventSchema(
    view="v",
    join_keys=(("user_id", "int64"), ("country", "string")),
    timestamp_field="ts",
    created_timestamp_field=None,
    columns=(
        ("clicks", "int32"),
        ("score", "float32"),
        ("emb", "float32[2]"),
        ("ok", "bool"),
        ("raw", "bytes"),
        ("seen", "timestamp"),
    ),
)
ROW = {
    "user_id": 7,
    "country": "fr",
    "ts": "2026-11-22T11:00:00+01:00",
    "clicks": 3,
    "score": 0.5,
    "emb": [1, 2.5],
    "ok": True,
    "raw": b"\x00\xff",
    "seen": datetime(2026, 1, 1, tzinfo=timezone.utc),
}


def entries(payloads: list[bytes]) -> list[tuple[bytes, dict[bytes, bytes]]]:
    return [(f"1795000000000-{i}".encode(), {b"data": p}) for i, p in enumerate(payloads)]


def test_encode_writes_canonical_json() -> None:
    [payload] = encode_events([ROW], SCHEMA)
    assert payload == (
        b'{"user_id":7,"country":"fr","ts":"2026-11-22T10:00:00.000000Z","clicks":3,"score":0.5,'
        b'"emb":[1.0,2.5],"ok":true,"raw":"AP8=","seen":"2026-01-01T00:00:00.000000Z"}'
    )


@pytest.mark.parametrize(
    ("change", "column", "words"),
    [
        ({"user_id": None}, "user_id", "is missing"),
        ({"ts": None}, "ts", "is missing"),
        ({"clicks": "3"}, "clicks", "expected a number"),
        ({"clicks": 2**40}, "clicks", "out of range for int32"),
        ({"clicks": 3.0}, "clicks", "expected an integer"),
        ({"score": 1e39}, "score", "out of range for float32"),
        ({"emb": [1.0]}, "emb", "expected 2 numbers"),
        ({"ok": 1}, "ok", "expected true or false"),
        ({"ts": "yesterday"}, "ts", "not an ISO 8601 time"),
        ({"colour": "red"}, "colour", "unknown column"),
    ],
)
def test_bad_rows_name_the_row_and_the_column(change: dict, column: str, words: str) -> None:
    with pytest.raises(EventError) as err:
        encode_events([ROW, {**ROW, **change}], SCHEMA)
    assert err.value.row == 1 and err.value.column == column
    assert err.value.field == f"rows.1.{column}" and words in err.value.message
    assert "row 1" in err.value.message


def test_decode_fast_and_slow_give_the_same_columns() -> None:
    payloads = encode_events([ROW, {**ROW, "clicks": None, "emb": None, "raw": None}], SCHEMA)
    fast = decode_events(entries(payloads), SCHEMA)
    # A bad entry makes the one-call JSON read fail: every entry is then checked by itself.
    slow = decode_events(entries([*payloads, b'{"user_id": "x"}', b"[1]", b"not json"]), SCHEMA)
    assert fast.rejected == []
    assert [r for _, r in slow.rejected] == [
        "column user_id (int64): expected a number, got str 'x'",
        "`data` is a JSON list, not an object",
        "`data` is not JSON: Expecting value: line 1 column 1 (char 0)",
    ]
    assert slow.batch.slice(0, 2).equals(fast.batch)
    got = fast.batch.to_pylist()
    assert got[0]["raw"] == b"\x00\xff" and got[0]["emb"] == [1.0, 2.5] and got[1]["clicks"] is None
    assert got[0]["ts"] == "2026-11-22T10:00:00.000000Z"
    assert fast.batch.column(ENTRY_ID).to_pylist() == [b"1795000000000-0", b"1795000000000-1"]
    assert fast.batch.schema.field(ORDINAL).type == pa.int64()


def test_entries_without_data_are_rejected_not_fatal() -> None:
    decoded = decode_events([(b"1-0", None), (b"1-1", {b"other": b"x"})], SCHEMA)
    assert decoded.batch.num_rows == 0 and len(decoded.rejected) == 2


def test_ordinals_follow_entry_ids() -> None:
    ids = [b"1795000000000-0", b"1795000000000-7", b"1795000000001-0"]
    ordinals = [ordinal_of(i) for i in ids]
    assert ordinals == sorted(ordinals) and len(set(ordinals)) == 3


def test_canonical_timestamps_are_utc_microseconds() -> None:
    assert canonical_value("2026-11-22 10:00:00", "timestamp") == "2026-11-22T10:00:00.000000Z"
    assert (
        canonical_value(datetime(2026, 11, 22, 10, 0, 0, 5), "timestamp")
        == "2026-11-22T10:00:00.000005Z"
    )
