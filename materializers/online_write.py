"""Writing the latest value per entity to the online store, batch and stream alike.

``OnlineWriter`` is the one write path: rows in the layout -> entity keys and payloads ->
``OnlineStore.write_latest`` (newer-only). The batch job wraps it in ``WriteOnline`` (a combine
keyed by a bucket of the entity key first keeps one row per entity, so memory follows entities,
not rows; entity keys are encoded for the latest rows only); the stream job calls it on every
micro-batch after ``latest_per_entity``.

    >>> writer = OnlineWriter(schema, store)  # doctest: +SKIP
    >>> writer.write(latest_per_entity(table, schema))  # doctest: +SKIP
    1200
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.sources import ORDINAL
from materializers import progress
from materializers.dedup import as_table, keep_latest
from materializers.metrics import counter
from materializers.schema import CREATED_TS, EVENT_TS, ViewSchema

ENTITY_KEY = "__entity_key"


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


def with_entity_key(table: pa.Table, schema: ViewSchema) -> pa.Table:
    """The columns the online store needs, led by the encoded entity key (``__entity_key``)."""
    from featurestore.online.codec import encode_entity_keys

    keys = pa.array(
        encode_entity_keys(
            [d for _, d in schema.join_keys], [table.column(k) for k in schema.key_names]
        ),
        pa.binary(),
    )
    columns = [c for c in (EVENT_TS, CREATED_TS, ORDINAL) if c in table.column_names]
    return table.select([*columns, *schema.feature_names]).add_column(0, ENTITY_KEY, keys)


def latest_per_entity(table: pa.Table | pa.RecordBatch, schema: ViewSchema) -> pa.Table:
    """One row per entity, the latest by (event, created, ordinal), keyed by ``__entity_key``."""
    keyed = with_entity_key(as_table(table), schema)
    return keep_latest(keyed, [ENTITY_KEY], [EVENT_TS, CREATED_TS, ORDINAL])


class OnlineWriter:
    """Encodes rows keyed by ``__entity_key`` and writes them, ``CHUNK`` rows at a time.

    Holds an open store; create it where it is used (a DoFn's setup), never pickle it.
    """

    CHUNK = 50_000

    def __init__(self, schema: ViewSchema, store: Any) -> None:
        from featurestore.online.codec import ValueCodec

        self.schema = schema
        self.store = store
        from registry.evolution import feature_meaning

        by_feature = {a.feature: feature_meaning(a) for a in schema.aggregates}
        self.codec = ValueCodec(
            [d for _, d in schema.features],
            list(schema.feature_names),
            meanings=[by_feature.get(n) for n in schema.feature_names],
        )

    def write(self, table: pa.Table | None) -> Iterator[int]:
        """Write ``table`` (``__entity_key``, event and created times, the features); yields the
        rows written per chunk (newer-only: an older row than the stored one is not)."""
        if table is None or not table.num_rows:
            return
        s = self.schema
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
            yield self.store.write_latest(s.view, rows, ttl_seconds=s.ttl_seconds)


def join_key_buckets(table: pa.Table, schema: ViewSchema, buckets: int) -> np.ndarray:
    """A bucket in [0, buckets) per row, from its join keys; the same in every process.

    A single integer join key is hashed in numpy (a multiplicative hash: 10 ms per million
    rows); other keys are encoded and go through ``key_buckets``.

    >>> from types import SimpleNamespace
    >>> schema = SimpleNamespace(join_keys=[("user_id", "int64")], key_names=["user_id"])
    >>> join_key_buckets(pa.table({"user_id": [7, 7, 8]}), schema, 16).tolist()
    [2, 2, 11]
    """
    if len(schema.join_keys) == 1:
        column = table.column(schema.key_names[0])
        if pa.types.is_integer(column.type) and not column.null_count:
            values = column.to_numpy().astype(np.uint64, copy=False)
            with np.errstate(over="ignore"):  # wrapping is the point of the hash
                mixed = values * np.uint64(0x9E3779B97F4A7C15)
            return ((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int64)
    return key_buckets(with_entity_key(table, schema).column(ENTITY_KEY).combine_chunks(), buckets)


def slim(table: pa.Table, schema: ViewSchema) -> pa.Table:
    """The columns the latest-row combine needs: join keys, times, read order, features."""
    columns = [c for c in (EVENT_TS, CREATED_TS, ORDINAL) if c in table.column_names]
    return table.select([*schema.key_names, *columns, *schema.feature_names])


class _KeyByEntityFn(beam.DoFn):
    """Rows -> ``(bucket, table)``: split by a stable bucket of the join keys. The entity keys
    are encoded later, for the latest rows only (a tenth of the rows in a typical run)."""

    def __init__(self, schema: ViewSchema, buckets: int) -> None:
        self.schema = schema
        self.buckets = buckets

    def process(self, element: pa.Table | pa.RecordBatch) -> Iterator[tuple[int, pa.Table]]:
        table = as_table(element)
        if not table.num_rows:
            return
        rows = slim(table, self.schema)
        if self.buckets == 1:
            yield 0, rows
            return
        bucket = join_key_buckets(rows, self.schema, self.buckets)
        # One stable sort and slices, instead of one filter per bucket.
        order = np.argsort(bucket, kind="stable")
        ordered = rows.take(pa.array(order))
        counts = np.bincount(bucket, minlength=self.buckets)
        at = 0
        for b, n in enumerate(counts.tolist()):
            if n:
                yield b, ordered.slice(at, n)
                at += n


class LatestPerKey(beam.CombineFn):
    """Combines tables into the latest row per ``keys`` (default ``__entity_key``) by (event,
    created, ordinal).

    Accumulators are lists of tables compacted once they hold more pending rows than the
    compacted part, so memory stays near the number of entities and work near n log n.
    """

    def __init__(self, keys: tuple[str, ...] = (ENTITY_KEY,)) -> None:
        super().__init__()
        self.keys = tuple(keys)

    def create_accumulator(self) -> list[pa.Table]:
        return []

    def add_input(self, acc: list[pa.Table], table: pa.Table) -> list[pa.Table]:
        return self._maybe_compact([*acc, table])

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

    def _compact(self, acc: list[pa.Table]) -> list[pa.Table]:
        # Also for a single table: one input element may hold several rows of an entity.
        if not acc:
            return acc
        table = acc[0] if len(acc) == 1 else pa.concat_tables(acc)
        return [keep_latest(table, list(self.keys), [EVENT_TS, CREATED_TS, ORDINAL])]


class _WriteLatestFn(beam.DoFn):
    """Writes each bucket's latest rows; the store is opened in setup (never pickled)."""

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
        self.rows = counter("rows_online")

    def setup(self) -> None:
        from featurestore.online.factory import open_online_store

        self.store = open_online_store(self.online_config, self.project, Path(self.root))
        self.writer = OnlineWriter(self.schema, self.store)

    def teardown(self) -> None:
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    def process(self, element: tuple[int, pa.Table | None]) -> Iterator[int]:
        _, table = element
        if table is not None and ENTITY_KEY not in table.column_names:
            table = with_entity_key(table, self.schema)
        written = 0
        for n in self.writer.write(table):
            written += n
            self.rows.inc(n)
            progress.add(self.progress_key, "online", n)
        if table is not None and table.num_rows:
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
            | "LatestPerEntity" >> beam.CombinePerKey(LatestPerKey(tuple(self.schema.key_names)))
            | "Write" >> beam.ParDo(self.write)
        )
