"""``get_training_dataset`` and its result, a lazy ``TrainingDataset``.

Nothing is computed until the dataset is read; each read runs the export query again in the
dataset's own DuckDB connection, whose memory is capped by ``memory_limit`` (DuckDB spills to
``temp_directory`` beyond it), so the output size does not bound memory: ``to_parquet`` and
``iter_batches`` stream. ``to_arrow`` and ``to_pandas`` hold the whole result, by nature.

An offline store on an object store (``s3://``, ``gs://``) is read through pyarrow's filesystem:
the partitions the export needs (the same date pruning) are copied into a private local
directory, and the same query runs over the copies, so the result is the one a local store
gives, and DuckDB needs no extension (httpfs) and still spills instead of holding the inputs in
memory. The copies live as long as the dataset.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from featurestore.config import RepoConfig
from featurestore.export import pit
from featurestore.export.entity_input import (
    EntityInput,
    check_key_type,
    open_entity_input,
    timestamp_sql,
)
from featurestore.offline import layout, location
from registry.definitions import Definitions
from registry.errors import ConfigError, DataError, UserError

DEFAULT_BATCH_ROWS = 65_536
_POLL_SECONDS = 0.2


@dataclass(frozen=True)
class ExportSummary:
    """What ``to_parquet`` wrote: rows, and per feature column how many values were found."""

    path: Path
    rows: int
    coverage: dict[str, int]  # feature column -> non-null values
    warnings: list[str] = field(default_factory=list)


class TrainingDataset:
    """Point-in-time correct features joined onto entity rows; read it one of four ways.

    >>> ds = store.get_training_dataset("labels.parquet", ["user_activity"])  # doctest: +SKIP
    >>> ds.to_parquet("train.parquet").rows  # doctest: +SKIP
    1000000
    >>> for batch in ds:  # pyarrow RecordBatches, in entity order  # doctest: +SKIP
    ...     ...
    """

    def __init__(
        self,
        con: Any,
        sql: str,
        *,
        num_rows: int,
        entity_columns: list[str],
        features: list[pit.FeatureColumn],
        missing_views: list[str],
        warnings: list[str],
        temp_dir: str | None,
        fetch_dir: str | None = None,
    ) -> None:
        self._con = con
        self.sql = sql
        self.num_rows = num_rows
        self.entity_columns = entity_columns
        self.features = features
        self.missing_views = missing_views
        self.warnings = warnings
        # The spill directory lives as long as the dataset, even if close() is never called.
        self._cleanup = weakref.finalize(self, _release, con, temp_dir, fetch_dir)

    @property
    def feature_columns(self) -> list[str]:
        return [f.column for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [*self.entity_columns, *self.feature_columns]

    def __repr__(self) -> str:
        return f"TrainingDataset({self.num_rows} rows, columns={self.columns})"

    # -- reading ------------------------------------------------------------------------------
    def to_arrow(self) -> Any:
        """The whole result as a pyarrow Table."""
        return _run(lambda: self._con.sql(self.sql).to_arrow_table())

    def to_pandas(self) -> Any:
        """The whole result as a pandas DataFrame (timestamps tz-aware, UTC)."""
        return self.to_arrow().to_pandas()

    def iter_batches(self, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Any]:
        """Stream the result as pyarrow RecordBatches of at most ``batch_rows`` rows, in order."""
        reader = _run(lambda: self._con.sql(self.sql).to_arrow_reader(batch_rows))
        try:
            yield from reader
        finally:
            reader.close()  # an open reader holds the connection

    def __iter__(self) -> Iterator[Any]:
        return self.iter_batches()

    def to_parquet(
        self, path: str | Path, *, progress: Callable[[float], None] | None = None
    ) -> ExportSummary:
        """Write the result to one Parquet file, streamed by DuckDB's ``COPY ... TO``.

        The file appears only when complete (written beside it, then renamed). ``progress`` is
        called with DuckDB's estimate in percent, from another thread, while the query runs.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        copy = f"COPY ({self.sql}) TO {pit.literal(str(tmp))} (FORMAT parquet, RETURN_STATS true)"
        try:
            with _Poller(self._con, progress):
                stats = _run(lambda: self._con.execute(copy).fetchall())
            os.replace(tmp, target)
        finally:
            if tmp.exists():
                tmp.unlink()
        if progress is not None:
            progress(100.0)
        rows = int(stats[0][1]) if stats else 0
        return ExportSummary(target, rows, self._coverage(target, rows, stats), list(self.warnings))

    def _coverage(self, target: Path, rows: int, stats: list[tuple[Any, ...]]) -> dict[str, int]:
        # COPY's RETURN_STATS gives each column's null count; count() is the fallback.
        column_stats = (stats[0][4] or {}) if stats else {}
        coverage: dict[str, int] = {}
        missing: list[str] = []
        for name in self.feature_columns:
            nulls = (column_stats.get(pit.quote(name)) or {}).get("null_count")
            if nulls is None:
                missing.append(name)
            else:
                coverage[name] = rows - int(nulls)
        if missing:
            counts = ", ".join(f"count({pit.quote(c)})" for c in missing)
            found = self._con.execute(
                f"SELECT {counts} FROM read_parquet({pit.literal(str(target))})"
            ).fetchall()[0]
            coverage.update(zip(missing, (int(v) for v in found)))
        return {name: coverage[name] for name in self.feature_columns}

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        """Close the DuckDB connection and remove the spill directory."""
        self._cleanup()

    def __enter__(self) -> TrainingDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_training_dataset(
    config: RepoConfig,
    definitions: Definitions,
    entity_df: Any,
    features: list[str] | str,
    *,
    timestamp_column: str = layout.EVENT_TS,
    exclude_created_after: bool = False,
    memory_limit: str | None = None,
    full_names: bool = False,
    temp_directory: str | Path | None = None,
    connection: Any = None,
) -> TrainingDataset:
    """Point-in-time correct ``features`` for every row of ``entity_df`` (docs/point-in-time.md).

    ``entity_df``: a pandas DataFrame, a pyarrow Table, a Parquet path/directory/glob, or a
    DuckDB SQL query. Every column is kept (the timestamp column normalized to UTC), then
    one column per feature. ``features``: references (``view`` or ``view:feature``) or a
    feature service name. ``exclude_created_after``: ignore rows created after the entity
    row's time. ``memory_limit`` (e.g. ``"2GB"``) caps DuckDB, which spills to
    ``temp_directory`` (default: a private temporary directory). ``connection``: run in a
    new cursor of this DuckDB connection instead of a private database.

    >>> ds = get_training_dataset(config, defs, labels, ["user_activity"])  # doctest: +SKIP
    >>> ds.to_pandas().columns.tolist()  # doctest: +SKIP
    ['user_id', 'event_timestamp', 'label', 'ratings_1d', 'mean_rating_1d']
    """
    joins, feature_columns = pit.plan_features(definitions, features, full_names=full_names)
    con, temp_dir = _connect(memory_limit, temp_directory, connection)
    fetch_dir = (
        tempfile.mkdtemp(prefix="featurestore-export-offline-")
        if location.is_remote(config.offline_path)
        else None
    )
    try:
        entity = open_entity_input(con, entity_df)
        ts_type = entity.require(timestamp_column, "the timestamp column")
        ts_sql = timestamp_sql(timestamp_column, ts_type)
        for join in joins:
            for key, dtype in join.keys:
                check_key_type(
                    key, entity.require(key, f"join key of view {join.view!r}"), dtype, join.view
                )
        _check_clashes(entity, feature_columns, full_names)
        num_rows, first, last = _run(
            lambda: con.execute(
                f"SELECT count(*), min({ts_sql}), max({ts_sql}) FROM {entity.source}"
            ).fetchall()[0]
        )
        bounds = pit.TimeBounds(first, last)
        warnings = _locate(con, config, joins, bounds, fetch_dir)
        if not exclude_created_after:  # that plan breaks ties by construction
            for join in joins:
                if join.files:
                    keys = [k for k, _ in join.keys]
                    join.ties = _run(partial(pit.has_key_time_ties, join.files, keys, con))
        sql = pit.build_query(
            entity.source,
            timestamp_column,
            ts_sql,
            joins,
            feature_columns,
            bounds,
            exclude_created_after=exclude_created_after,
        )
    except BaseException:
        _release(con, temp_dir, fetch_dir)
        raise
    return TrainingDataset(
        con,
        sql,
        num_rows=int(num_rows),
        entity_columns=list(entity.columns),
        features=feature_columns,
        missing_views=[j.view for j in joins if not j.has_data],
        warnings=warnings,
        temp_dir=temp_dir,
        fetch_dir=fetch_dir,
    )


def _locate(
    con: Any,
    config: RepoConfig,
    joins: list[pit.ViewJoin],
    bounds: pit.TimeBounds,
    fetch_dir: str | None = None,
) -> list[str]:
    """Fill each join's files and present features; return warnings for what is missing.
    Files of an object store are copied under ``fetch_dir`` first (module docstring)."""
    warnings: list[str] = []
    for join in joins:
        join.has_data, files = pit.partition_files(
            config.offline_path, config.project, join.view, join.ttl_seconds, bounds
        )
        if fetch_dir is not None and files:
            files = location.fetch(files, Path(fetch_dir), config.offline_path)
        join.files = files
        if not join.has_data:
            warnings.append(
                f"feature view {join.view!r} has no offline data yet: its features are all null "
                f"(run `featurestore materialize`)"
            )
            continue
        if not join.files:
            continue
        types = _run(partial(pit.file_types, con, join.files))
        columns = {name for file in types.values() for name in file}
        needed = [k for k, _ in join.keys] + [layout.EVENT_TS, layout.CREATED_TS]
        absent = [c for c in needed if c not in columns]
        if absent:
            raise DataError(
                f"the offline files of feature view {join.view!r} lack columns {absent}",
                hint="re-materialize the view; its files are under "
                f"{layout.view_dir(config.offline_path, config.project, join.view)}",
            )
        join.present = {f.feature for f in join.features if f.feature in columns}
        join.groups = pit.group_files(join, types)
        join.same_schema = len({tuple(t.items()) for t in types.values()}) == 1
        for f in join.features:
            if f.feature not in join.present:
                warnings.append(
                    f"feature {f.view}:{f.feature} is not in the offline files read, so it is "
                    "all null (materialize the view again after adding a feature)"
                )
    return warnings


def _check_clashes(
    entity: EntityInput, features: list[pit.FeatureColumn], full_names: bool
) -> None:
    # DuckDB column names are case-insensitive, so "Rating" and "rating" clash too.
    taken = {c.lower(): c for c in entity.columns}
    for feature in features:
        if feature.column.lower() in taken:
            raise UserError(
                f"the entity rows already have a column {taken[feature.column.lower()]!r}, "
                f"the name of feature {feature.view}:{feature.feature} in the output",
                hint="rename that column"
                + ("" if full_names else ", or pass full_names=True (--full-names)"),
            )


def _connect(
    memory_limit: str | None, temp_directory: str | Path | None, connection: Any
) -> tuple[Any, str | None]:
    import duckdb

    con = connection.cursor() if connection is not None else duckdb.connect(":memory:")
    temp_dir: str | None = None
    try:
        # Output timestamps are UTC whatever the machine's zone. Progress is polled, not printed,
        # and tracked only while a caller asks for it (_Poller): it costs the query time.
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET enable_progress_bar = false")
        con.execute("SET enable_progress_bar_print = false")
        if memory_limit is not None:
            con.execute(f"SET memory_limit = {pit.literal(str(memory_limit))}")
        if temp_directory is None and connection is None:
            # DuckDB's default is ./.tmp under the working directory; keep spills private.
            temp_dir = tempfile.mkdtemp(prefix="featurestore-export-")
            temp_directory = temp_dir
        if temp_directory is not None:
            con.execute(f"SET temp_directory = {pit.literal(str(temp_directory))}")
    except duckdb.Error as exc:
        _release(con, temp_dir)
        raise ConfigError(
            f"bad export setting: {exc}", hint="memory_limit looks like '2GB' or '512MB'"
        ) from None
    return con, temp_dir


def _release(con: Any, *directories: str | None) -> None:
    con.close()
    for directory in directories:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


def _run(call: Callable[[], Any]) -> Any:
    """Run a DuckDB call, turning running out of memory into an error that says what to do."""
    import duckdb

    try:
        return call()
    except duckdb.OutOfMemoryException as exc:
        raise UserError(
            f"the export ran out of memory: {exc}",
            hint="raise memory_limit (--memory-limit), or point temp_directory at a disk "
            "with room to spill",
        ) from None


class _Poller:
    """Calls ``progress(percent)`` from a thread while the connection runs a query."""

    def __init__(self, con: Any, progress: Callable[[float], None] | None) -> None:
        self._con = con
        self._progress = progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Poller:
        if self._progress is not None:
            self._con.execute("SET enable_progress_bar = true")
            self._thread = threading.Thread(target=self._poll, name="export-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._con.execute("SET enable_progress_bar = false")

    def _poll(self) -> None:
        assert self._progress is not None
        while not self._stop.wait(_POLL_SECONDS):
            value = self._con.query_progress()
            if value >= 0:
                self._progress(float(value))
