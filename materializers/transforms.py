"""The composite Beam transforms of materialization; every element is an Arrow record batch
(or table), never one Python object per row.

    ReadSource              splits -> record batches of the source's columns (+ __ordinal)
    ValidateAndCast         -> (valid, rejects): declared dtypes, layout columns; bad rows + reason
    DeduplicateBatches      one (entity key, event ts) per row inside each element (streams)
    DeduplicateByPartition  batch: stage by UTC date, then one (entity key, event ts) per day
    WriteOffline            (day, table) -> the offline partition, via layout.replace_interval
    WriteOnline             -> latest row per entity (a combine), -> OnlineStore.write_latest

Validation, casting, ``keep_latest`` and ``WriteOnline`` know nothing about batch runs, so the
streaming job reuses them unchanged; only the date staging is batch-specific.

Deduplication keeps, per (join keys, event timestamp), the row with the latest created
timestamp; exact ties go to the row read last (the highest ``__ordinal``), so a re-run over the
same files picks the same rows.

    >>> valid, rejects = batches | ValidateAndCast(schema, interval)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from featurestore.arrow_types import arrow_type
from featurestore.offline import layout
from materializers import progress
from materializers.rejects import REASON
from materializers.sources import ORDINAL, Interval, SourceReader
from registry.definitions import Definitions
from registry.errors import DataError
from registry.types import parse_dtype

EVENT_TS = layout.EVENT_TS
CREATED_TS = layout.CREATED_TS
ENTITY_KEY = "__entity_key"
REJECTS = "rejects"
METRICS_NAMESPACE = "featurestore.materialize"
#: Test-only: hard-exit the process after this many offline partitions were written.
CRASH_ENV = "FEATURESTORE_TEST_CRASH_AFTER_PARTITIONS"
TS_TYPE = layout.TS_TYPE


# -- the view's shape ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ViewSchema:
    """What a feature view reads and writes; small and picklable, shipped to every worker.

    >>> ViewSchema.of(definitions, "item_popularity").key_names  # doctest: +SKIP
    ('item_id',)
    """

    view: str
    source: str
    join_keys: tuple[tuple[str, str], ...]
    features: tuple[tuple[str, str], ...]
    timestamp_field: str
    created_timestamp_field: str | None = None
    ttl_seconds: int = 0
    online: bool = True

    @classmethod
    def of(cls, definitions: Definitions, view_name: str) -> ViewSchema:
        view = definitions.get("feature_view", view_name)
        source = definitions.get("source", view.source)
        keys = tuple(
            (k.name, k.dtype) for e in view.entities for k in definitions.entities[e].join_keys
        )
        return cls(
            view=view.name,
            source=source.name,
            join_keys=keys,
            features=tuple((f.name, f.dtype) for f in view.features),
            timestamp_field=source.timestamp_field,
            created_timestamp_field=source.created_timestamp_field,
            ttl_seconds=view.ttl_seconds,
            online=view.online,
        )

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.join_keys)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.features)

    def expected_columns(self) -> list[tuple[str, str]]:
        """``(source column, dtype)`` of every column read from the source."""
        cols = [*self.join_keys, (self.timestamp_field, "timestamp")]
        if self.created_timestamp_field:
            cols.append((self.created_timestamp_field, "timestamp"))
        cols += self.features
        return list(dict(cols).items())

    @property
    def source_columns(self) -> list[str]:
        return [c for c, _ in self.expected_columns()]

    def layout_schema(self) -> pa.Schema:
        """The offline store's columns (docs/offline-store.md)."""
        return layout.layout_schema(
            [(n, arrow_type(d)) for n, d in self.join_keys],
            [(n, arrow_type(d)) for n, d in self.features],
        )

    def validated_schema(self) -> pa.Schema:
        """What ValidateAndCast emits: the layout plus the read order."""
        return self.layout_schema().append(pa.field(ORDINAL, pa.int64()))


# -- type compatibility ----------------------------------------------------------------------------


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def compatible(found: pa.DataType, dtype: str) -> bool:
    """Whether a source column of Arrow type ``found`` can hold values of ``dtype``.

    Text is accepted for every scalar but ``bytes``-only targets and parsed row by row (a value
    that does not parse is a rejected row, not a failed run); numbers convert between widths,
    with rows that overflow or lose digits rejected.

    >>> compatible(pa.string(), "float64"), compatible(pa.bool_(), "float64")
    (True, False)
    """
    if pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        found = found.value_type
    parsed = parse_dtype(dtype)
    if parsed.is_vector:
        if not (
            pa.types.is_list(found)
            or pa.types.is_large_list(found)
            or pa.types.is_fixed_size_list(found)
        ):
            return False
        value = found.value_type
        return pa.types.is_null(value) or _is_number(value)
    element = parsed.element
    if element in ("int32", "int64", "float32", "float64"):
        return _is_number(found) or _is_text(found)
    if element == "bool":
        return pa.types.is_boolean(found) or _is_text(found)
    if element == "string":
        return _is_text(found)
    if element == "bytes":
        return (
            pa.types.is_binary(found)
            or pa.types.is_large_binary(found)
            or pa.types.is_fixed_size_binary(found)
            or pa.types.is_binary_view(found)
            or _is_text(found)
        )
    if element == "timestamp":
        return pa.types.is_timestamp(found) or pa.types.is_date(found) or _is_text(found)
    return False


def check_source_schema(schema: ViewSchema, found: pa.Schema, origin: str) -> None:
    """Raise DataError naming every missing or incompatible column of ``found``.

    Called on every file/query before a pipeline starts, so a mismatch fails the run before
    anything is written; ValidateAndCast calls it again per batch for streams.
    """
    problems = []
    for column, dtype in schema.expected_columns():
        index = found.get_field_index(column)
        if index < 0:
            problems.append(f"column {column!r} is missing (expected {dtype})")
            continue
        found_type = found.field(index).type
        if not compatible(found_type, dtype):
            problems.append(
                f"column {column!r} has type {found_type}, expected {dtype} ({arrow_type(dtype)})"
            )
    if problems:
        raise DataError(
            f"source {schema.source!r} of feature view {schema.view!r} does not match its "
            f"definition in {origin}: " + "; ".join(problems),
            hint="fix the source, or the feature view's dtypes (see docs/materialization.md "
            "for the types each dtype accepts), then `featurestore apply`",
        )


# -- row-level conversion --------------------------------------------------------------------------

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


def _mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow array as numpy, nulls as False."""
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _nulls(array: pa.Array) -> np.ndarray:
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
        overflow = _mask(pc.and_(pc.is_finite(wide), pc.invert(pc.is_finite(narrow))))
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
        wrong = _mask(pc.not_equal(pc.list_value_length(array), parsed.length))
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


# -- validation ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Validated:
    valid: pa.RecordBatch
    rejects: pa.RecordBatch | None
    rows_read: int


class _Flags:
    """The first reason each row is rejected for."""

    def __init__(self, n: int) -> None:
        self.bad = np.zeros(n, dtype=bool)
        self.reason = np.empty(n, dtype=object)

    def add(self, mask: np.ndarray | None, reason: str) -> None:
        if mask is None or not mask.any():
            return
        new = mask & ~self.bad
        self.reason[new] = reason
        self.bad |= mask


def validate_batch(
    batch: pa.RecordBatch, schema: ViewSchema, interval: Interval | None = None
) -> Validated:
    """Check and cast one batch of source rows to the view's layout.

    Rows whose event time is outside ``interval`` are dropped (they belong to another run);
    rows with a null join key, a null or unparseable timestamp, or a value that does not fit
    its dtype are returned in ``rejects`` (the source columns plus ``reason``). ``valid`` has
    the layout's columns plus ``__ordinal`` when the source gave one.
    """
    check_source_schema(schema, batch.schema, "a record batch")
    event, event_bad = to_timestamp(batch.column(schema.timestamp_field))
    if interval is not None:
        inside = pc.and_(
            pc.greater_equal(event, pa.scalar(interval.start, TS_TYPE)),
            pc.less(event, pa.scalar(interval.end, TS_TYPE)),
        )
        keep = pc.or_kleene(pc.is_null(event), inside)
        if keep.false_count:
            keep_np = _mask(keep)
            batch, event = batch.filter(keep), event.filter(keep)
            event_bad = None if event_bad is None else event_bad[keep_np]
    n = batch.num_rows
    flags = _Flags(n)
    ts = schema.timestamp_field
    flags.add(event_bad, f"unparseable event timestamp {ts}")
    flags.add(_nulls(event), f"null event timestamp {ts}")
    columns: dict[str, pa.Array] = {}
    if schema.created_timestamp_field:
        created, created_bad = to_timestamp(batch.column(schema.created_timestamp_field))
        flags.add(created_bad, f"unparseable created timestamp {schema.created_timestamp_field}")
        flags.add(_nulls(created), f"null created timestamp {schema.created_timestamp_field}")
    else:
        # Without a created column the event time stands in: deterministic across re-runs.
        created = event
    for name, dtype in schema.join_keys:
        source = batch.column(name)
        flags.add(_nulls(source), f"null join key {name}")
        columns[name], problems = convert_column(source, name, dtype, role="join key")
        for mask, reason in problems:
            flags.add(mask, reason)
    columns[EVENT_TS], columns[CREATED_TS] = event, created
    for name, dtype in schema.features:
        columns[name], problems = convert_column(batch.column(name), name, dtype)
        for mask, reason in problems:
            flags.add(mask, reason)
    out_schema = schema.layout_schema()
    arrays = [columns[f.name] for f in out_schema]
    if ORDINAL in batch.schema.names:
        out_schema = out_schema.append(pa.field(ORDINAL, pa.int64()))
        arrays.append(batch.column(ORDINAL))
    rejects = None
    if flags.bad.any():
        good = pa.array(~flags.bad)
        arrays = [a.filter(good) for a in arrays]
        bad = pa.array(flags.bad)
        rejected = batch.filter(bad)
        if ORDINAL in rejected.schema.names:
            rejected = rejected.drop_columns([ORDINAL])
        rejects = rejected.append_column(
            REASON, pa.array(flags.reason[flags.bad].tolist(), pa.string())
        )
    valid = pa.RecordBatch.from_arrays(arrays, schema=out_schema)
    return Validated(valid, rejects, n)


# -- deduplication ---------------------------------------------------------------------------------


def keep_latest(table: pa.Table, keys: Sequence[str], order: Sequence[str]) -> pa.Table:
    """One row per ``keys``: the one with the greatest ``order`` columns (compared in turn).

    The result is sorted by ``keys``. Order columns missing from the table are ignored.

    >>> t = pa.table({"k": [1, 1, 2], "ts": [5, 7, 1], "v": ["a", "b", "c"]})
    >>> keep_latest(t, ["k"], ["ts"])["v"].to_pylist()
    ['b', 'c']
    """
    if table.num_rows <= 1:
        return table
    order = [c for c in order if c in table.column_names]
    sort_keys = [(k, "ascending") for k in keys] + [(c, "descending") for c in order]
    ordered = table.take(pc.sort_indices(table, sort_keys=sort_keys))
    n = ordered.num_rows
    same: pa.Array | None = None
    for k in keys:
        column = ordered.column(k).combine_chunks()
        equal = pc.equal(column.slice(1), column.slice(0, n - 1))
        same = equal if same is None else pc.and_(same, equal)
    first = np.ones(n, dtype=bool)
    assert same is not None
    first[1:] = ~_mask(same)
    if first.all():
        return ordered
    return ordered.filter(pa.array(first))


def dedup_rows(table: pa.Table, schema: ViewSchema) -> pa.Table:
    """One row per (join keys, event timestamp): latest created wins, then the last read."""
    return keep_latest(table, [*schema.key_names, EVENT_TS], [CREATED_TS, ORDINAL])


def _as_table(element: pa.Table | pa.RecordBatch) -> pa.Table:
    return element if isinstance(element, pa.Table) else pa.Table.from_batches([element])


def _counter(name: str) -> Any:
    return Metrics.counter(METRICS_NAMESPACE, name)


# -- transforms ------------------------------------------------------------------------------------


class _ReadSplitFn(beam.DoFn):
    def __init__(self, reader: SourceReader, progress_key: str | None) -> None:
        self.reader = reader
        self.progress_key = progress_key
        self.rows = _counter("source_rows")

    def process(self, split: tuple[int, str]) -> Iterator[pa.RecordBatch]:
        for batch in self.reader.read(split):
            self.rows.inc(batch.num_rows)
            progress.add(self.progress_key, "read", batch.num_rows)
            yield batch


class ReadSource(beam.PTransform):
    """Record batches of a source: its splits, spread over workers, each read in batches."""

    def __init__(self, reader: SourceReader, progress_key: str | None = None) -> None:
        super().__init__()
        self.reader = reader
        self.progress_key = progress_key

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Splits" >> beam.Create(self.reader.splits())
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadSplitFn(self.reader, self.progress_key))
        )


class _ValidateFn(beam.DoFn):
    def __init__(self, schema: ViewSchema, interval: Interval | None) -> None:
        self.schema = schema
        self.interval = interval
        self.read = _counter("rows_read")
        self.rejected = _counter("rows_rejected")

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        result = validate_batch(batch, self.schema, self.interval)
        self.read.inc(result.rows_read)
        if result.valid.num_rows:
            yield result.valid
        if result.rejects is not None:
            self.rejected.inc(result.rejects.num_rows)
            yield beam.pvalue.TaggedOutput(REJECTS, result.rejects)


class ValidateAndCast(beam.PTransform):
    """``valid, rejects = batches | ValidateAndCast(schema, interval)``.

    ``valid``: record batches in the view's layout (plus ``__ordinal``); ``rejects``: the bad
    rows' source columns plus ``reason``. A batch with a missing or incompatible column fails
    the pipeline with DataError (a schema problem is not a row problem).
    """

    def __init__(self, schema: ViewSchema, interval: Interval | None = None) -> None:
        super().__init__()
        self.schema = schema
        self.interval = interval

    def expand(self, batches: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        out = batches | "Check" >> beam.ParDo(_ValidateFn(self.schema, self.interval)).with_outputs(
            REJECTS, main="valid"
        )
        return out.valid, out[REJECTS]


class _DedupFn(beam.DoFn):
    def __init__(self, schema: ViewSchema) -> None:
        self.schema = schema

    def process(self, element: pa.Table | pa.RecordBatch) -> Iterator[pa.Table]:
        yield dedup_rows(_as_table(element), self.schema)


class DeduplicateBatches(beam.PTransform):
    """Deduplicate inside each element (e.g. a stream window's batch); see ``dedup_rows``."""

    def __init__(self, schema: ViewSchema) -> None:
        super().__init__()
        self.schema = schema

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        return batches | "Dedup" >> beam.ParDo(_DedupFn(self.schema))


def _read_ipc(path: str) -> pa.Table:
    with pa.memory_map(path) as source:
        return pa.ipc.open_file(source).read_all()


class _StageByDateFn(beam.DoFn):
    """Writes valid rows to Arrow files under ``{staging}/date=YYYY-MM-DD/``; emits
    ``(date, path)``. Buffers at most a few batches, so memory does not grow with the data."""

    def __init__(self, staging_dir: str, batch_rows: int) -> None:
        self.staging_dir = staging_dir
        self.batch_rows = batch_rows

    def start_bundle(self) -> None:
        self.buffers: dict[int, list[pa.RecordBatch]] = {}
        self.sizes: dict[int, int] = {}

    def process(self, batch: pa.RecordBatch) -> Iterator[tuple[str, str]]:
        if not batch.num_rows:
            return
        days = pc.cast(batch.column(EVENT_TS), pa.date32()).to_numpy(zero_copy_only=False)
        days = days.astype("datetime64[D]").astype(np.int64)
        if (days == days[0]).all():
            parts = [(int(days[0]), batch)]
        else:
            order = np.argsort(days, kind="stable")
            batch, days = batch.take(pa.array(order)), days[order]
            cuts = [0, *(np.flatnonzero(np.diff(days)) + 1).tolist(), len(days)]
            parts = [(int(days[a]), batch.slice(a, b - a)) for a, b in itertools.pairwise(cuts)]
        for day, part in parts:
            self.buffers.setdefault(day, []).append(part)
            self.sizes[day] = self.sizes.get(day, 0) + part.num_rows
            if self.sizes[day] >= self.batch_rows:
                yield self._flush(day)
        if sum(self.sizes.values()) >= 4 * self.batch_rows:
            for day in list(self.buffers):
                yield self._flush(day)

    def finish_bundle(self) -> Iterator[Any]:
        for day in list(self.buffers):
            yield GlobalWindows.windowed_value(self._flush(day))

    def _flush(self, day: int) -> tuple[str, str]:
        batches = self.buffers.pop(day)
        self.sizes.pop(day)
        iso = (date(1970, 1, 1) + timedelta(days=day)).isoformat()
        directory = Path(self.staging_dir) / f"date={iso}"
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4().hex}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batches[0].schema) as writer:
            for b in batches:
                writer.write_batch(b)
        return iso, str(path)


class _MergeDayFn(beam.DoFn):
    def __init__(self, schema: ViewSchema) -> None:
        self.schema = schema

    def process(self, element: tuple[str, Any]) -> Iterator[tuple[str, pa.Table]]:
        day, paths = element
        files = sorted({p for p in paths if p})
        if files:
            table = pa.concat_tables([_read_ipc(p) for p in files])
        else:
            table = self.schema.validated_schema().empty_table()
        # Sorted by (join keys, event time); replace_interval's stable sort by event time then
        # gives the fixed (event time, join keys) order that makes re-runs write identical files.
        yield day, dedup_rows(table, self.schema)


class DeduplicateByPartition(beam.PTransform):
    """Valid batches -> ``(date, table)``: every UTC date's rows, deduplicated.

    Duplicates share their event time and so their date, which makes per-date deduplication
    exact. Rows go through staging files rather than a shuffle of the data, so memory is
    bounded by the largest day on any runner. ``days`` adds dates to emit even without rows
    (existing partitions inside the run's interval, whose old rows must be replaced).
    """

    def __init__(
        self, schema: ViewSchema, staging_dir: str, batch_rows: int, days: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.schema = schema
        self.staging_dir = staging_dir
        self.batch_rows = batch_rows
        self.days = list(days)

    def expand(self, valid: beam.PCollection) -> beam.PCollection:
        staged = valid | "Stage" >> beam.ParDo(_StageByDateFn(self.staging_dir, self.batch_rows))
        known = valid.pipeline | "KnownDays" >> beam.Create([(d, None) for d in self.days])
        return (
            (staged, known)
            | "All" >> beam.Flatten()
            | "ByDate" >> beam.GroupByKey()
            | "Merge" >> beam.ParDo(_MergeDayFn(self.schema))
        )


_partitions_written = 0


def _crash_hook() -> None:
    """Test-only: die like a killed process after N partitions (see tests/materializers)."""
    global _partitions_written
    limit = os.environ.get(CRASH_ENV)
    if not limit:
        return
    _partitions_written += 1
    if _partitions_written >= int(limit):
        os._exit(75)


class _WritePartitionFn(beam.DoFn):
    def __init__(
        self,
        schema: ViewSchema,
        offline_path: str,
        project: str,
        interval: Interval,
        progress_key: str | None,
    ) -> None:
        self.schema = schema
        self.offline_path = offline_path
        self.project = project
        self.interval = interval
        self.progress_key = progress_key
        self.rows = _counter("rows_offline")
        self.partitions = _counter("partitions_written")

    def process(self, element: tuple[str, pa.Table]) -> Iterator[pa.Table]:
        day, table = element
        day_start = datetime.combine(date.fromisoformat(day), datetime.min.time(), timezone.utc)
        start = max(self.interval.start, day_start)
        end = min(self.interval.end, day_start + timedelta(days=1))
        target = self.schema.layout_schema()
        written = layout.replace_interval(
            Path(self.offline_path),
            self.project,
            self.schema.view,
            table.select(target.names).cast(target),
            start,
            end,
        )
        self.rows.inc(written)
        self.partitions.inc()
        progress.add(self.progress_key, "partitions", 1)
        progress.add(self.progress_key, "offline", written)
        _crash_hook()
        if table.num_rows:
            yield table


class WriteOffline(beam.PTransform):
    """``(date, table)`` -> that date's partition rewritten for the run's interval, atomically.

    Emits the tables written, so the online write follows the offline one.
    """

    def __init__(
        self,
        schema: ViewSchema,
        offline_path: str | Path,
        project: str,
        interval: Interval,
        progress_key: str | None = None,
    ) -> None:
        super().__init__()
        self.fn = _WritePartitionFn(schema, str(offline_path), project, interval, progress_key)

    def expand(self, days: beam.PCollection) -> beam.PCollection:
        return days | "Replace" >> beam.ParDo(self.fn)


def key_buckets(keys: pa.Array, buckets: int) -> np.ndarray:
    """A bucket in [0, buckets) per binary key, the same on every worker and in every run
    (Python's ``hash`` is salted per process). crc32 in a loop: about 0.1 s per million keys,
    faster than the vectorised byte hashes tried.

    >>> key_buckets(pa.array([b"42", b"", b"42"]), 16).tolist()
    [8, 0, 8]
    """
    crc32 = zlib.crc32
    return np.fromiter(
        (crc32(k) % buckets for k in keys.to_pylist()), dtype=np.int64, count=len(keys)
    )


class _KeyByEntityFn(beam.DoFn):
    """Rows -> ``(bucket, table)``: the entity key encoded (``__entity_key``), the columns the
    online store needs, split by a stable bucket of the key."""

    def __init__(self, schema: ViewSchema, buckets: int) -> None:
        self.schema = schema
        self.buckets = buckets

    def process(self, element: pa.Table | pa.RecordBatch) -> Iterator[tuple[int, pa.Table]]:
        from featurestore.online.codec import encode_entity_keys

        table = _as_table(element)
        if not table.num_rows:
            return
        s = self.schema
        keys = pa.array(
            encode_entity_keys([d for _, d in s.join_keys], [table.column(k) for k in s.key_names]),
            pa.binary(),
        )
        columns = [c for c in (EVENT_TS, CREATED_TS, ORDINAL) if c in table.column_names]
        slim = table.select([*columns, *s.feature_names]).add_column(0, ENTITY_KEY, keys)
        if self.buckets == 1:
            yield 0, slim
            return
        bucket = key_buckets(keys, self.buckets)
        for b in np.unique(bucket).tolist():
            yield b, slim.filter(pa.array(bucket == b))


class LatestPerKey(beam.CombineFn):
    """Combines tables into the latest row per ``__entity_key`` by (event, created, ordinal).

    Accumulators are lists of tables compacted once they hold more pending rows than the
    compacted part, so memory stays near the number of entities and work near n log n.
    """

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, acc: list[pa.Table], table: pa.Table) -> list[pa.Table]:
        acc.append(table)
        return self._maybe_compact(acc)

    def merge_accumulators(self, accumulators: Any) -> list[pa.Table]:
        merged = [t for acc in accumulators for t in acc]
        return self._maybe_compact(merged)

    def compact(self, acc: list[pa.Table]) -> list[pa.Table]:
        # Called before an accumulator crosses the shuffle: send one reduced table.
        return self._compact(acc)

    def extract_output(self, acc: list[pa.Table]) -> pa.Table | None:
        compact = self._compact(acc)
        return compact[0] if compact else None

    #: Pending rows always allowed before compacting, so small inputs are not sorted each time.
    MIN_PENDING = 8_192

    def _maybe_compact(self, acc: list[pa.Table]) -> list[pa.Table]:
        if len(acc) > 1 and sum(t.num_rows for t in acc[1:]) > max(
            acc[0].num_rows, self.MIN_PENDING
        ):
            return self._compact(acc)
        return acc

    @staticmethod
    def _compact(acc: list[pa.Table]) -> list[pa.Table]:
        if len(acc) <= 1:
            return acc
        return [keep_latest(pa.concat_tables(acc), [ENTITY_KEY], [EVENT_TS, CREATED_TS, ORDINAL])]


class _WriteLatestFn(beam.DoFn):
    """Encodes payloads and writes them; the store is opened in setup (never pickled)."""

    CHUNK = 50_000

    def __init__(
        self,
        schema: ViewSchema,
        online_config: Any,
        project: str,
        root: str,
        progress_key: str | None,
    ) -> None:
        self.schema = schema
        self.online_config = online_config
        self.project = project
        self.root = root
        self.progress_key = progress_key
        self.rows = _counter("rows_online")

    def setup(self) -> None:
        from featurestore.online.codec import ValueCodec
        from featurestore.online.factory import open_online_store

        self.store = open_online_store(self.online_config, self.project, Path(self.root))
        self.codec = ValueCodec(
            [d for _, d in self.schema.features], list(self.schema.feature_names)
        )

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    def process(self, element: tuple[int, pa.Table | None]) -> Iterator[int]:
        _, table = element
        if table is None or not table.num_rows:
            return
        s = self.schema
        written = 0
        for start in range(0, table.num_rows, self.CHUNK):
            part = table.slice(start, self.CHUNK)
            payloads = self.codec.encode_rows([part.column(f) for f in s.feature_names])
            rows = list(
                zip(
                    part.column(ENTITY_KEY).to_pylist(),
                    pc.cast(part.column(EVENT_TS), pa.int64()).to_pylist(),
                    pc.cast(part.column(CREATED_TS), pa.int64()).to_pylist(),
                    payloads,
                )
            )
            n = self.store.write_latest(s.view, rows, ttl_seconds=s.ttl_seconds)
            written += n
            self.rows.inc(n)
            progress.add(self.progress_key, "online", n)
        yield written


class WriteOnline(beam.PTransform):
    """Rows (tables or batches in the layout) -> the latest value per entity in the online store.

    A combine keyed by a bucket of the entity key keeps one row per entity (memory follows the
    number of entities, not rows); ``write_latest`` then keeps it only if newer than what the
    store holds, so re-runs and late older rows are harmless. Emits rows written per bucket.
    """

    def __init__(
        self,
        schema: ViewSchema,
        online_config: Any,
        project: str,
        root: str | Path,
        buckets: int = 16,
        progress_key: str | None = None,
    ) -> None:
        super().__init__()
        self.schema = schema
        self.buckets = buckets
        self.write = _WriteLatestFn(schema, online_config, project, str(root), progress_key)

    def expand(self, tables: beam.PCollection) -> beam.PCollection:
        return (
            tables
            | "KeyByEntity" >> beam.ParDo(_KeyByEntityFn(self.schema, self.buckets))
            | "LatestPerEntity" >> beam.CombinePerKey(LatestPerKey())
            | "Write" >> beam.ParDo(self.write)
        )
