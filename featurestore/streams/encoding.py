"""How an event is written into a stream entry, and read back as Arrow: one encoder shared by
``FeatureStore.push`` / ``POST /push`` (which write) and the stream job (which reads).

**Entry layout**: one field, ``data``, holding a JSON object with one member per event column
(``EventSchema.all_columns``), named as in the view's batch source::

    XADD clicks * data '{"user_id":42,"ts":"2026-11-22T10:00:00.000000Z","clicks":3}'

JSON keeps numbers, booleans, nulls and vectors typed without a per-column convention, which
text fields could not, and it is what an HTTP client sends anyway. Values by dtype:

    int32, int64        a JSON integer (not 3.0, not "3")
    float32, float64    a JSON number
    bool                true / false
    string              a JSON string
    bytes               base64 text of the bytes
    timestamp           ISO 8601 text; the encoder writes UTC with microseconds and ``Z``;
                        text without an offset is UTC
    T[n], T[]           a JSON array of numbers (n of them for T[n])
    null / missing      null; allowed for features, not for join keys and timestamps

The stream job decodes a micro-batch of entries with ``pyarrow.json`` in one call (the members
of every entry joined by newlines) and falls back to entry-by-entry checks, with the same rules
as the encoder, only when that fails; entries that do not decode are rejected with a reason.
Members an event schema does not name are ignored by the job, refused by ``encode_events``.

    >>> payloads = encode_events([{"user_id": 42, "ts": "2026-11-22T10:00:00Z"}], schema)  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa

from featurestore.streams.schema import EventSchema
from registry.errors import DataError
from registry.types import parse_dtype

DATA_FIELD = b"data"
ORDINAL = "__ordinal"
ENTRY_ID = "__entry_id"
#: Bits of an entry id's sequence number in its ordinal (``ms << 20 | seq``).
_SEQ_BITS = 20
_INT_RANGE = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_FLOAT32_MAX = 3.4028234663852886e38


class EventError(DataError):
    """An event that does not fit its view: names the row (0-based) and the column."""

    def __init__(
        self,
        message: str,
        *,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.row = row
        self.column = column

    @property
    def field(self) -> str:
        """Where the problem is, as a request field path: ``rows.3.clicks``."""
        parts = ["rows"]
        if self.row is not None:
            parts.append(str(self.row))
        if self.column is not None:
            parts.append(self.column)
        return ".".join(parts)


# -- values ----------------------------------------------------------------------------------------


def _timestamp(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(
                f"{value!r} is not an ISO 8601 time (e.g. 2026-11-22T10:00:00Z)"
            ) from None
    else:
        raise ValueError(f"expected ISO 8601 text, got {type(value).__name__} {value!r}")  # noqa: TRY004
    moment = (
        moment.replace(tzinfo=timezone.utc)
        if moment.tzinfo is None
        else moment.astimezone(timezone.utc)
    )
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _number(value: Any, element: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {type(value).__name__} {value!r}")  # noqa: TRY004
    if element in _INT_RANGE:
        if not isinstance(value, int):
            raise ValueError(f"expected an integer, got {value!r}")
        low, high = _INT_RANGE[element]
        if not low <= value <= high:
            raise ValueError(f"{value} is out of range for {element}")
        return value
    number = float(value)
    if element == "float32" and math.isfinite(number) and abs(number) > _FLOAT32_MAX:
        raise ValueError(f"{value} is out of range for float32")
    return number


def canonical_value(value: Any, dtype: str) -> Any:
    """The JSON value an event holds for ``value`` of ``dtype``; ValueError says why not.

    >>> canonical_value("2026-11-22T11:00:00+01:00", "timestamp")
    '2026-11-22T10:00:00.000000Z'
    """
    if value is None:
        return None
    parsed = parse_dtype(dtype)
    if parsed.is_vector:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"expected a list of numbers, got {type(value).__name__}")
        if parsed.length and len(value) != parsed.length:
            raise ValueError(f"expected {parsed.length} numbers, got {len(value)}")
        return [_number(v, parsed.element) for v in value]
    element = parsed.element
    if element == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if element == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__} {value!r}")
        return value
    if element == "bytes":
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise ValueError(f"expected bytes, got {type(value).__name__}")
        return base64.b64encode(bytes(value)).decode("ascii")
    if element == "timestamp":
        return _timestamp(value)
    return _number(value, element)


# -- encoding --------------------------------------------------------------------------------------


def encode_events(rows: Sequence[Mapping[str, Any]], schema: EventSchema) -> list[bytes]:
    """The ``data`` field of one entry per row, after checking every row against the view.

    Raises EventError naming the first bad row and column: an unknown column, a missing join
    key or timestamp, a value of the wrong type.

    >>> encode_events([{"user_id": 1, "ts": "2026-11-22T10:00:00Z"}], schema)  # doctest: +SKIP
    [b'{"user_id":1,"ts":"2026-11-22T10:00:00.000000Z"}']
    """
    columns = schema.all_columns()
    known = {name for name, _ in columns}
    required = schema.required
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise EventError(
                f"row {i} of feature view {schema.view!r} is a {type(row).__name__}, not an object",
                row=i,
                hint="send each event as an object of column: value",
            )
        unknown = [str(k) for k in row if k not in known]
        if unknown:
            raise EventError(
                f"row {i}: unknown column {unknown[0]!r} for feature view {schema.view!r}",
                row=i,
                column=unknown[0],
                hint="the view's events have the columns " + ", ".join(sorted(known)),
            )
        event: dict[str, Any] = {}
        for name, dtype in columns:
            value = row.get(name)
            if value is None:
                if name in required:
                    raise EventError(
                        f"row {i}: column {name!r} is missing (a join key or timestamp of "
                        f"feature view {schema.view!r})",
                        row=i,
                        column=name,
                        hint=f"give every event a non-null {name!r}",
                    )
                continue
            try:
                event[name] = canonical_value(value, dtype)
            except ValueError as exc:
                raise EventError(
                    f"row {i}, column {name!r} ({dtype}): {exc}",
                    row=i,
                    column=name,
                    hint="see docs/streaming.md for the JSON value of each dtype",
                ) from None
        out.append(json.dumps(event, separators=(",", ":")).encode("utf-8"))
    return out


# -- decoding --------------------------------------------------------------------------------------


def json_type(dtype: str) -> pa.DataType:
    """The Arrow type a JSON member of ``dtype`` is read as; validation casts it afterwards."""
    parsed = parse_dtype(dtype)
    if parsed.is_vector:
        return pa.list_(pa.float64())
    return {
        "bool": pa.bool_(),
        "int32": pa.int64(),
        "int64": pa.int64(),
        "float32": pa.float64(),
        "float64": pa.float64(),
    }.get(parsed.element, pa.string())


def decode_schema(schema: EventSchema) -> pa.Schema:
    return pa.schema([(name, json_type(dtype)) for name, dtype in schema.all_columns()])


def ordinal_of(entry_id: bytes | str) -> int:
    """A stream entry id (``ms-seq``) as an int64 that orders like the id; the read order that
    breaks exact ties in deduplication (``ms << 20 | seq``).

    >>> ordinal_of(b"1700000000000-3")
    1782579200000000003
    """
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return (int(ms) << _SEQ_BITS) | min(int(seq or 0), (1 << _SEQ_BITS) - 1)


@dataclass(frozen=True)
class Decoded:
    """A micro-batch as Arrow: the event columns (JSON types), ``__ordinal`` and ``__entry_id``;
    and the entries that did not decode, ``(entry id, reason)``."""

    batch: pa.RecordBatch
    rejected: list[tuple[bytes, str]]


def decode_events(
    entries: Sequence[tuple[bytes, Mapping[bytes, bytes] | None]], schema: EventSchema
) -> Decoded:
    """Entries ``(id, fields)`` as read from the stream -> ``Decoded``."""
    ids = [entry_id for entry_id, _ in entries]
    payloads = [fields.get(DATA_FIELD) if fields else None for _, fields in entries]
    return decode_payloads(ids, payloads, schema)


def decode_payloads(
    ids: Sequence[bytes],
    payloads: Sequence[bytes | None],
    schema: EventSchema,
    joined: bytes | None = None,
) -> Decoded:
    """``data`` fields (None: the entry has none) -> ``Decoded``. ``joined``, when given, is
    ``b"\\n".join`` of the payloads, already made (by the reader's script)."""
    target = decode_schema(schema)
    good: list[tuple[bytes, bytes]] = []
    rejected: list[tuple[bytes, str]] = []
    for entry_id, data in zip(ids, payloads):
        if not data:
            rejected.append((entry_id, "the entry has no `data` field (deleted, or not an event)"))
        else:
            good.append((entry_id, data))
    if rejected:
        joined = None
    table = _decode_fast(good, target, schema, joined)
    if table is None:
        table, bad = _decode_slow(good, target, schema)
        rejected += bad
        bad_ids = {i for i, _ in bad}
        good = [(i, d) for i, d in good if i not in bad_ids]
    good_ids = pa.array([i for i, _ in good], pa.binary())
    table = table.append_column(ORDINAL, ordinals(good_ids))
    table = table.append_column(ENTRY_ID, good_ids)
    batch = table.combine_chunks().to_batches()
    return Decoded(batch[0] if batch else _empty(table.schema), rejected)


def ordinals(ids: pa.Array) -> pa.Array:
    """``ordinal_of`` over an Arrow array of entry ids, vectorised."""
    import pyarrow.compute as pc

    if not len(ids):
        return pa.array([], pa.int64())
    parts = pc.split_pattern(ids.cast(pa.string()), "-", max_splits=1)
    ms = pc.cast(pc.list_element(parts, 0), pa.int64())
    seq = pc.min_element_wise(pc.cast(pc.list_element(parts, 1), pa.int64()), (1 << _SEQ_BITS) - 1)
    return pc.bit_wise_or(pc.shift_left(ms, _SEQ_BITS), seq)


def _empty(schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array([], f.type) for f in schema], schema=schema)


def _decode_fast(
    good: list[tuple[bytes, bytes]],
    target: pa.Schema,
    schema: EventSchema,
    joined: bytes | None = None,
) -> pa.Table | None:
    import pyarrow.json as pj

    if not good:
        return target.empty_table()
    lines = joined if joined is not None else b"\n".join(d for _, d in good)
    try:
        table = pj.read_json(
            io.BytesIO(lines),
            read_options=pj.ReadOptions(use_threads=False, block_size=max(1 << 20, len(lines) + 1)),
            parse_options=pj.ParseOptions(
                explicit_schema=target, unexpected_field_behavior="ignore", newlines_in_values=False
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return None
    if table.num_rows != len(good):
        return None  # an entry held a newline or several objects: check them one by one
    table = table.select(target.names)
    try:
        return _unbase64(table, schema)
    except ValueError:
        return None


def _unbase64(table: pa.Table, schema: EventSchema) -> pa.Table:
    for name, dtype in schema.all_columns():
        if dtype == "bytes":
            values = [None if v is None else _b64(v) for v in table.column(name).to_pylist()]
            index = table.column_names.index(name)
            table = table.set_column(index, name, pa.array(values, pa.binary()))
    return table


def _b64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{text[:40]!r} is not base64") from None


def _decode_value(value: Any, dtype: str) -> Any:
    """One member as the fast path would read it: text stays text for timestamps (validation
    parses it, with the batch job's rules), base64 becomes bytes."""
    if value is None or dtype not in ("bytes", "timestamp"):
        return canonical_value(value, dtype)
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__} {value!r}")  # noqa: TRY004
    return _b64(value) if dtype == "bytes" else value


def _decode_slow(
    good: list[tuple[bytes, bytes]], target: pa.Schema, schema: EventSchema
) -> tuple[pa.Table, list[tuple[bytes, str]]]:
    columns = schema.all_columns()
    values: dict[str, list[Any]] = {name: [] for name, _ in columns}
    rejected: list[tuple[bytes, str]] = []
    for entry_id, data in good:
        try:
            event = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            rejected.append((entry_id, f"`data` is not JSON: {exc}"))
            continue
        if not isinstance(event, dict):
            rejected.append((entry_id, f"`data` is a JSON {type(event).__name__}, not an object"))
            continue
        row: dict[str, Any] = {}
        reason = None
        for name, dtype in columns:
            try:
                row[name] = _decode_value(event.get(name), dtype)
            except ValueError as exc:
                reason = f"column {name} ({dtype}): {exc}"
                break
        if reason is not None:
            rejected.append((entry_id, reason))
            continue
        for name, _ in columns:
            values[name].append(row[name])
    arrays = []
    for name, dtype in columns:
        type_ = pa.binary() if dtype == "bytes" else target.field(name).type
        arrays.append(pa.array(values[name], type_))
    names = [name for name, _ in columns]
    return pa.Table.from_arrays(arrays, names=names), rejected
