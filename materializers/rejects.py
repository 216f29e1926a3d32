"""Rows that failed validation, kept with the reason: one Parquet file per run and view.

    {offline_path}/{project}/_rejects/{view}/{run_id}.parquet

Columns: the source columns the view reads, as the source typed them, then ``reason`` (e.g.
``null join key user_id``, ``feature price does not fit float32``). Workers write parts to the
run's staging directory; one step at the end merges them into the file with a streaming writer,
so memory holds one part at a time however many rows were rejected. The file appears whole or
not at all (``location.parquet_writer``), on a local disk or an object store.

    >>> rejects | WriteRejects(rejects_path(offline, "demo", "user_activity", run_id),  # doctest: +SKIP
    ...                        staging_dir)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa

from featurestore.offline import location
from featurestore.offline.location import OfflinePath


def rejects_dir(offline_path: OfflinePath | str, project: str, view: str) -> OfflinePath:
    return location.coerce(offline_path) / project / "_rejects" / view


def rejects_path(offline_path: OfflinePath | str, project: str, view: str, run_id: str) -> OfflinePath:
    return rejects_dir(offline_path, project, view) / f"{run_id}.parquet"


def common_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """One schema every part casts to: promoted where Arrow can, text where it cannot (a glob
    of files that disagree on a column's type)."""
    try:
        return pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        names = list(dict.fromkeys(n for s in schemas for n in s.names))
        return pa.schema([pa.field(n, pa.string()) for n in names])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        if f.name in table.column_names:
            column = table.column(f.name)
            if (
                column.type != f.type
                and pa.types.is_string(f.type)
                and not (pa.types.is_string(column.type) or pa.types.is_null(column.type))
            ):
                # Text of anything: nested and binary values through their Python repr.
                column = pa.array(
                    [None if v is None else str(v) for v in column.to_pylist()], pa.string()
                )
            columns.append(column.cast(f.type))
        else:
            columns.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def merge_parts(parts: list[Any], target: OfflinePath | str) -> int:
    """Write the parts into ``target`` (atomically), one part in memory at a time; rows written.

    ``parts``: staging files, local paths (text) or object paths."""
    parts = sorted((location.coerce(p) for p in parts), key=str)
    if not parts:
        return 0
    schema = common_schema([_ipc_schema(p) for p in parts])
    rows = 0
    with location.parquet_writer(location.coerce(target), schema, compression="zstd") as writer:
        for p in parts:
            table = location.read_ipc(p)
            writer.write_table(_conform(table, schema))
            rows += table.num_rows
    return rows


def _ipc_schema(path: OfflinePath) -> pa.Schema:
    if location.is_remote(path):
        return location.read_ipc(path).schema  # staging parts are small: one batch each
    with pa.memory_map(str(path)) as source:
        return pa.ipc.open_file(source).schema


class _StagePartFn(beam.DoFn):
    def __init__(self, staging_dir: OfflinePath | str) -> None:
        self.staging_dir = location.coerce(staging_dir)

    def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
        path = self.staging_dir / f"{uuid.uuid4().hex}.arrow"
        location.write_ipc([batch], path)
        yield path if location.is_remote(path) else str(path)


class _MergeFn(beam.DoFn):
    def __init__(self, target: OfflinePath | str) -> None:
        self.target = location.coerce(target)

    def process(self, parts: list[Any]) -> Iterator[Any]:
        if parts:
            merge_parts(parts, self.target)
            yield str(self.target)


class WriteRejects(beam.PTransform):
    """Rejected rows -> one Parquet file at ``target`` (nothing when no row was rejected).

    Emits the file's path once written.
    """

    def __init__(self, target: OfflinePath | str, staging_dir: OfflinePath | str) -> None:
        super().__init__()
        self.target = location.coerce(target)
        self.staging_dir = location.coerce(staging_dir)

    def expand(self, rejects: beam.PCollection) -> beam.PCollection:
        return (
            rejects
            | "Stage" >> beam.ParDo(_StagePartFn(self.staging_dir))
            | "Parts" >> beam.combiners.ToList()
            | "Merge" >> beam.ParDo(_MergeFn(self.target))
        )
