"""Feature jobs: learn item features (the Velox θ) from interactions and write them as the
Parquet source of a vector-valued feature view.

A job of ``type: als`` reads (user, item, rating) from its source (parquet, duckdb or postgres,
through ``featurestore.sources``, the readers the batch job uses), factorises it with
``als_factorize`` and writes, atomically, one row per item to its ``output``:

    {item join key} | {vector feature}... | {timestamp_field} | {created_timestamp_field}

The views a job feeds are those whose source is a ``parquet`` source whose ``path`` is the job's
``output``; their entity's join key names the item column and their vector features name the
factor columns. ``timestamp_field`` is the end of the interactions' time range (the newest
interaction: the factors describe the items as of then) and ``created_timestamp_field`` is now,
so re-running the job over the same interactions makes a newer row for the same event time.
Materializing the views (``featurestore jobs run`` does it) puts the factors in the online store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from featurestore.arrow_types import arrow_type
from featurestore.models.als import als_factorize
from featurestore.sources import Interval, open_source
from registry.errors import ConfigError, DataError
from registry.spec import FeatureJobSpec, ParquetSource
from registry.types import parse_dtype

#: Key of the output file's schema metadata holding the fit's settings (JSON: l2, seed, mean, validation).
FIT_METADATA = "featurestore.feature_job"

if TYPE_CHECKING:
    from featurestore.config import RepoConfig
    from registry.definitions import Definitions
    from registry.watcher import RegistryWatcher


@dataclass(frozen=True)
class FeatureJobResult:
    job: str
    output: Path
    views: tuple[str, ...]
    interactions: int
    dropped: int  # interactions with a null user, item or rating
    users: int
    items: int
    factors: int
    event_ts: datetime
    train_rmse: list[float] = field(default_factory=list)
    l2: float | None = None  # the penalty used (chosen, with l2: auto)
    validation: dict[str, Any] | None = None  # with l2: auto, how it was chosen
    biases: bool = False  # item biases were learned and written
    added: int = 0  # interactions from ``extra`` (logged feedback) not already in the source

    def summary(self) -> str:
        rmse = f"{self.train_rmse[-1]:.4f}" if self.train_rmse else "n/a"
        chosen = ""
        if self.validation is not None:
            loss = self.validation.get("validation_rmse")
            chosen = f"l2 {self.l2:g} chosen by validation RMSE {loss:.4f}; " if loss is not None else ""
        return (
            f"Feature job {self.job!r}: factorised {self.interactions:,} interactions of "
            f"{self.users:,} users and {self.items:,} items into {self.factors} factors"
            f"{' and item biases' if self.biases else ''} "
            f"({chosen}train RMSE {rmse}; {self.dropped:,} rows with nulls dropped"
            f"{f'; {self.added:,} of them from the logged feedback' if self.added else ''}). "
            f"Wrote {self.output} (event time {self.event_ts.isoformat()}), "
            f"which feeds: {', '.join(self.views)}."
        )


@dataclass(frozen=True)
class _Target:
    """The output file's columns, gathered from the views the job feeds."""

    item_key: str
    item_dtype: str
    vectors: dict[str, str]  # column -> dtype
    timestamp: str
    created: str | None
    biases: dict[str, str] = field(default_factory=dict)  # scalar columns -> dtype: the item bias


def views_fed_by(config: RepoConfig, defs: Definitions, job: FeatureJobSpec) -> list[str]:
    """Names of the views whose source is a parquet source at the job's output path.

    >>> views_fed_by(store.config, store.definitions(), job)  # doctest: +SKIP
    ['item_embedding']
    """
    want = _norm(config, job.output)
    sources = {
        name for name, s in defs.sources.items()
        if isinstance(s, ParquetSource) and _norm(config, s.path) == want
    }
    return [name for name, v in defs.feature_views.items() if v.source in sources]


def run_feature_job(
    config: RepoConfig,
    watcher: RegistryWatcher,
    name: str,
    *,
    now: datetime | None = None,
    extra: pa.Table | None = None,
) -> FeatureJobResult:
    """Run one feature job on the applied definitions and write its output (no materialization;
    ``featurestore jobs run`` materializes the fed views afterwards).

    ``extra`` holds more interactions (columns user, item, rating, ts: the logged feedback of a
    model, at ``models retrain``); a row equal to one of the source's (same user, item, rating
    and time: an interactions pipeline wrote it there too) is counted once.

    It reads the job's source and writes a Parquet file: the configuration and the latest
    applied definitions are all it needs (no online store is opened).

    >>> run_feature_job(store.config, store.watcher, "item_factors").views  # doctest: +SKIP
    ('item_embedding',)
    """
    defs = watcher.refresh(force=True).definitions  # the latest applied, not a snapshot's
    job: FeatureJobSpec = defs.get("feature_job", name)
    views = views_fed_by(config, defs, job)
    target = _target(defs, job, views)
    table, dropped = read_interactions(config, defs, job)
    added = 0
    if extra is not None and extra.num_rows:
        table, added = _with_extra(table, extra, name)
    if table.num_rows == 0:
        raise DataError(
            f"feature job {name!r}: source {job.source!r} has no interactions with a user, item and rating",
            hint="check the source's data and the job's user_column, item_column and rating_column",
        )
    users = table["user"].to_numpy(zero_copy_only=False)
    items = table["item"].to_numpy(zero_copy_only=False)
    ratings = table["rating"].to_numpy(zero_copy_only=False).astype(np.float64)
    import pyarrow.compute as pc

    ts = pc.cast(table["ts"], pa.timestamp("us", tz="UTC")).to_numpy(zero_copy_only=False).astype("int64")
    result = als_factorize(
        users, items, ratings, job.factors, job.l2, job.iterations, getattr(job, "seed", 0),
        biases=bool(target.biases), timestamps=ts,
    )

    newest = pc.max(table["ts"]).as_py()
    created = now or datetime.now(timezone.utc)
    event_ts = _utc(newest) if newest is not None else created
    output = _write_output(
        config, job, target, result.item_ids, result.item_factors, event_ts, created, result.item_bias,
        {"l2": result.l2, "seed": getattr(job, "seed", 0), "mean": result.mean, "validation": result.validation},
    )
    return FeatureJobResult(
        job=name,
        output=output,
        views=tuple(views),
        interactions=table.num_rows,
        dropped=dropped,
        users=len(result.user_ids),
        items=len(result.item_ids),
        factors=job.factors,
        event_ts=event_ts,
        train_rmse=list(result.train_rmse),
        l2=result.l2,
        validation=result.validation,
        biases=result.item_bias is not None,
        added=added,
    )


def read_interactions(config: RepoConfig, defs: Definitions, job: FeatureJobSpec) -> tuple[pa.Table, int]:
    """(user, item, rating, ts) of the job's source, rows with nulls dropped; and how many were.

    The source is read whole (every split, every event time) by the reader the batch job uses,
    so a job reads parquet, duckdb and postgres sources alike.

    >>> table, dropped = read_interactions(store.config, store.definitions(), job)  # doctest: +SKIP
    >>> table.column_names  # doctest: +SKIP
    ['user', 'item', 'rating', 'ts']
    """
    import pyarrow.compute as pc

    source = defs.get("source", job.source)
    # Output column -> (source column, the setting that names it).
    wanted = {
        "user": (job.user_column, "user_column"),
        "item": (job.item_column, "item_column"),
        "rating": (job.rating_column, "rating_column"),
        "ts": (source.timestamp_field, "the source's timestamp_field"),
    }
    reader = open_source(
        source,
        columns=[column for column, _ in wanted.values()],
        timestamp_field=source.timestamp_field,
        interval=Interval.everything(),
        root=config.root,
        batch_rows=config.materialization.batch_rows,
        postgres_url=config.postgres_url,
    )
    failed = f"feature job {job.name!r}: reading source {job.source!r} failed"
    with _prefixed(failed):
        schemas = list(reader.schemas())
    for origin, schema in schemas:  # before reading anything: a typo fails fast
        for column, setting in wanted.values():
            if schema.get_field_index(column) < 0:
                raise DataError(
                    f"{failed}: {origin} has no column {column!r} ({setting})",
                    hint=f"it has {', '.join(schema.names)}; check the job's user_column, "
                    "item_column and rating_column against the source",
                )
    with _prefixed(failed):
        batches = [batch for split in reader.splits() for batch in reader.read(split)]
    if not batches:
        batches = [pa.schema([schemas[0][1].field(c) for c, _ in wanted.values()]).empty_table()]
    # Files of one glob may differ in width (int32 here, int64 there): widen, as DuckDB did.
    try:
        table = pa.concat_tables(
            [pa.table({name: b.column(column) for name, (column, _) in wanted.items()}) for b in batches],
            promote_options="permissive",
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(
            f"{failed}: its files disagree on a column's type: {exc}",
            hint="give every file of the source the same column types, or cast them in a duckdb source's query",
        ) from None
    try:
        table = table.set_column(2, "rating", table["rating"].cast(pa.float64()))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"{failed}: column {job.rating_column!r} (rating_column) is not numeric: {exc}",
            hint="point rating_column at a numeric column, or cast it in a duckdb source's query",
        ) from None
    valid = pc.and_(
        pc.and_(pc.is_valid(table["user"]), pc.is_valid(table["item"])), pc.is_valid(table["rating"])
    )
    kept = table.filter(valid)
    return kept, table.num_rows - kept.num_rows


def restore_output(config: RepoConfig, defs: Definitions, name: str, previous: pa.Table, event_ts: datetime,
                   *, now: datetime | None = None) -> Path:
    """Write a job's previous output again as its newest: the same factors, at ``event_ts`` (at
    least their own time) and created now, so materializing the fed views serves them again
    (``models retrain`` does this when it keeps the active version, which was trained on them).
    """
    job: FeatureJobSpec = defs.get("feature_job", name)
    target = _target(defs, job, views_fed_by(config, defs, job))
    from featurestore.offline.layout import write_atomic

    table = previous
    n = table.num_rows
    ts_type = pa.timestamp("us", tz="UTC")
    if n and target.timestamp in table.column_names:
        import pyarrow.compute as pc

        own = pc.max(table[target.timestamp]).as_py()
        event_ts = max(_utc(own), event_ts) if own is not None else event_ts
        table = table.set_column(table.schema.get_field_index(target.timestamp), target.timestamp,
                                 pa.array([event_ts] * n, ts_type))
    if target.created and target.created in table.column_names:
        table = table.set_column(table.schema.get_field_index(target.created), target.created,
                                 pa.array([now or datetime.now(timezone.utc)] * n, ts_type))
    path = config.resolve(job.output)
    write_atomic(table, path)
    return path


# -- internals ----------------------------------------------------------------------------------


def _with_extra(table: pa.Table, extra: pa.Table, name: str) -> tuple[pa.Table, int]:
    """The interactions plus the ``extra`` rows that are not already among them."""
    import pyarrow.compute as pc

    try:
        extra = pa.table({
            "user": extra["user"].cast(table.schema.field("user").type),
            "item": extra["item"].cast(table.schema.field("item").type),
            "rating": extra["rating"].cast(pa.float64()),
            "ts": extra["ts"].cast(table.schema.field("ts").type),
        })
    except (KeyError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(
            f"feature job {name!r}: the extra interactions do not fit its source's columns: {exc}",
            hint="pass user, item, rating and ts columns of the source's types",
        ) from None
    extra = extra.filter(pc.and_(pc.and_(pc.is_valid(extra["user"]), pc.is_valid(extra["item"])),
                                 pc.is_valid(extra["rating"])))
    keys = ["user", "item", "rating", "ts"]
    seen = table.select(keys).group_by(keys).aggregate([])
    seen = seen.append_column("__seen", pa.array(np.ones(seen.num_rows, dtype=bool)))
    joined = extra.join(seen, keys=keys, join_type="left outer")
    new = joined.filter(pc.is_null(joined["__seen"])).select(keys)
    return pa.concat_tables([table.select(keys), new]), new.num_rows


@contextmanager
def _prefixed(prefix: str) -> Iterator[None]:
    """Re-raise a reader's DataError with the job in front, so the message names both."""
    try:
        yield
    except DataError as exc:
        raise DataError(f"{prefix}: {exc.message}", hint=exc.hint) from None


def _target(defs: Definitions, job: FeatureJobSpec, views: list[str]) -> _Target:
    if not views:
        raise ConfigError(
            f"feature job {job.name!r} feeds no feature view: no parquet source has path {job.output!r}",
            hint="declare a parquet source with that `path` and a view with a vector feature on it",
        )
    item_key: tuple[str, str] | None = None
    vectors: dict[str, str] = {}
    biases: dict[str, str] = {}
    timestamp, created = None, None
    for name in views:
        view = defs.feature_views[name]
        keys = [k for e in view.entities for k in defs.entities[e].join_keys]
        if len(keys) != 1:
            raise ConfigError(
                f"feature job {job.name!r} feeds view {name!r}, whose entities have "
                f"{len(keys)} join keys; a job writes one item key",
                hint="key the view by one entity with one join key",
            )
        key = (keys[0].name, keys[0].dtype)
        if item_key is not None and key != item_key:
            raise ConfigError(f"feature job {job.name!r} feeds views keyed by {item_key[0]} and {key[0]}")
        item_key = key
        for feature in view.features:
            dtype = parse_dtype(feature.dtype)
            if not dtype.is_vector and dtype.element in ("float32", "float64"):
                biases[feature.name] = feature.dtype  # a scalar: the item bias b_i
                continue
            if not dtype.is_vector or dtype.length not in (0, job.factors):
                raise ConfigError(
                    f"feature job {job.name!r} writes {job.factors} factors, but view {name!r} "
                    f"declares {feature.name}: {feature.dtype}",
                    hint=f"declare the factors as float32[{job.factors}] (and the item bias, if wanted, "
                    "as a float32 or float64 scalar)",
                )
            vectors[feature.name] = feature.dtype
        source = defs.sources[view.source]
        timestamp = source.timestamp_field
        created = source.created_timestamp_field or created
    assert item_key is not None and timestamp is not None
    if not vectors:
        raise ConfigError(
            f"feature job {job.name!r} feeds views with no vector feature for its factors",
            hint=f"declare a feature of dtype float32[{job.factors}]",
        )
    return _Target(item_key[0], item_key[1], vectors, timestamp, created, biases)


def _write_output(
    config: RepoConfig,
    job: FeatureJobSpec,
    target: _Target,
    item_ids: np.ndarray,
    factors: np.ndarray,
    event_ts: datetime,
    created: datetime,
    item_bias: np.ndarray | None = None,
    fit: dict[str, Any] | None = None,
) -> Path:
    from featurestore.offline.layout import write_atomic

    n = len(item_ids)
    try:
        keys = pa.array(item_ids.tolist(), arrow_type(target.item_dtype))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(
            f"feature job {job.name!r}: item ids of column {job.item_column!r} do not fit "
            f"{target.item_key} ({target.item_dtype}): {exc}"
        ) from None
    columns: dict[str, Any] = {target.item_key: keys}
    for name, dtype in target.vectors.items():
        element = arrow_type(dtype).value_type
        flat = pa.array(factors.reshape(-1), pa.float32()).cast(element)
        if parse_dtype(dtype).length:
            columns[name] = pa.FixedSizeListArray.from_arrays(flat, job.factors)
        else:
            offsets = pa.array(np.arange(0, n * job.factors + 1, job.factors, dtype=np.int32))
            columns[name] = pa.ListArray.from_arrays(offsets, flat)
    for name, dtype in target.biases.items():
        assert item_bias is not None
        columns[name] = pa.array(item_bias.astype(np.float64), pa.float64()).cast(arrow_type(dtype))
    ts_type = pa.timestamp("us", tz="UTC")
    columns[target.timestamp] = pa.array([event_ts] * n, ts_type)
    if target.created:
        columns[target.created] = pa.array([created] * n, ts_type)
    path = config.resolve(job.output)
    table = pa.table(columns)
    if fit is not None:  # how the factors were fitted (the chosen l2), for `models show`
        table = table.replace_schema_metadata({FIT_METADATA: json.dumps(fit, sort_keys=True, default=float)})
    write_atomic(table, path)
    return path


def _norm(config: RepoConfig, path: str) -> str:
    if "://" in path and not path.startswith("file://"):
        return path
    return str(config.resolve(path.removeprefix("file://")).resolve())


def _utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
    raise DataError(
        f"the interactions' timestamp is a {type(value).__name__}, expected a timestamp",
        hint="make the source's timestamp_field a timestamp column",
    )
