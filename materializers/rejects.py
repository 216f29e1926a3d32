"""Rows that failed validation, kept with the reason: one Parquet file per run and view.

    {offline_path}/{project}/_rejects/{view}/{run_id}.parquet

Columns: the source columns the view reads, as the source typed them, then ``reason`` (e.g.
``null join key user_id``, ``feature price does not fit float32``). Workers write parts to the
run's staging directory; one step at the end merges them into the file with a streaming writer,
so memory holds one part at a time however many rows were rejected.

    >>> rejects | WriteRejects(rejects_path(offline, "demo", "user_activity", run_id),  # doctest: +SKIP
    ...                        staging_dir)
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq


def rejects_dir(offline_path: Path, project: str, view: str) -> Path:
    return Path(offline_path) / project / "_rejects" / view


def rejects_path(offline_path: Path, project: str, view: str, run_id: str) -> Path:
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


def merge_parts(parts: list[str], target: Path) -> int:
    """Write the parts into ``target`` (atomically), one part in memory at a time; rows written."""
    parts = sorted(parts)
    if not parts:
        return 0
    schemas = []
    for p in parts:
        with pa.memory_map(p) as source:
            schemas.append(pa.ipc.open_file(source).schema)
    schema = common_schema(schemas)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for p in parts:
                with pa.memory_map(p) as source:
                    table = pa.ipc.open_file(source).read_all()
                writer.write_table(_conform(table, schema))
                rows += table.num_rows
        tmp.replace(target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return rows


class _StagePartFn(beam.DoFn):
    def __init__(self, staging_dir: str) -> None:
        self.staging_dir = staging_dir

    def process(self, batch: pa.RecordBatch) -> Iterator[str]:
        directory = Path(self.staging_dir)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{uuid.uuid4().hex}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as writer:
            writer.write_batch(batch)
        yield str(path)


class _MergeFn(beam.DoFn):
    def __init__(self, target: str) -> None:
        self.target = target

    def process(self, parts: list[str]) -> Iterator[Any]:
        if parts:
            merge_parts(parts, Path(self.target))
            yield self.target


class WriteRejects(beam.PTransform):
    """Rejected rows -> one Parquet file at ``target`` (nothing when no row was rejected).

    Emits the file's path once written.
    """

    def __init__(self, target: str | Path, staging_dir: str | Path) -> None:
        super().__init__()
        self.target = str(target)
        self.staging_dir = str(staging_dir)

    def expand(self, rejects: beam.PCollection) -> beam.PCollection:
        return (
            rejects
            | "Stage" >> beam.ParDo(_StagePartFn(self.staging_dir))
            | "Parts" >> beam.combiners.ToList()
            | "Merge" >> beam.ParDo(_MergeFn(self.target))
        )
