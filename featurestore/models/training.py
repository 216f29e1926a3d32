"""Offline training of a per-user linear model: labels -> point-in-time features -> x ->
the average user and every known user -> a new model version.

Steps (``train_model``):

1. read the labels (user join keys, item join keys, the label, a timestamp, request features);
2. join the model's item and user features as of each label's timestamp through the
   point-in-time export (``featurestore.export.get_training_dataset``), so no row sees the future;
3. build x = [item features flattened, user features, request features, 1.0]; rows with a null
   feature (an item not materialized yet, say) or a null label are dropped and counted;
4. fit the average user (``fit_average``) and every user centred on it (``fit_users``);
5. record a new version (inactive), write every state to the online store under it, write the
   artifact to the offline store, then activate it: a server never switches to a version whose
   states are not all written.

The artifact (``models.artifacts``) restores the online state of a version exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.models.artifacts import write_artifact
from featurestore.models.fitting import RidgeValidation, fit_average, fit_users
from featurestore.models.linear import UserState, sigmoid
from featurestore.models.metrics import RunningLoss
from featurestore.models.state_store import DEFAULT_L2, ModelLayout, ModelStateStore
from featurestore.models.tuning import search_l2, validation_split
from featurestore.online.codec import encode_entity_keys
from registry.errors import ConflictError, DataError, UserError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext
    from registry.definitions import Definitions

DEFAULT_TIMESTAMP_COLUMN = "event_timestamp"
#: A point-in-time export: (entity_df, feature references, **options) -> a dataset.
Export = Callable[..., Any]


@dataclass(frozen=True)
class TrainingSet:
    """The assembled training rows of one model: x, labels and who they belong to."""

    layout: ModelLayout
    X: np.ndarray  # (n, d) float64
    y: np.ndarray  # (n,)
    user_keys: list[bytes]  # distinct users, sorted by first appearance
    user_index: np.ndarray  # (n,) index into user_keys
    items: int  # distinct items among the kept rows
    rows_read: int
    dropped_missing_features: int
    dropped_missing_label: int
    data_start: datetime | None
    data_end: datetime | None
    ts: np.ndarray | None = None  # (n,) int64 µs since the epoch of each kept row, when known
    item_index: np.ndarray | None = None  # (n,) index of each kept row's item among the distinct items


@dataclass(frozen=True)
class TrainResult:
    model: str
    version: int
    registry_version: int
    rows: int
    rows_dropped: int
    users: int
    items: int
    d: int
    metrics: dict[str, Any]
    artifact: str
    data_start: datetime | None
    data_end: datetime | None
    w_avg: np.ndarray = field(repr=False)
    active: bool = True

    def summary(self) -> str:
        m = self.metrics
        return (
            f"Trained model {self.model!r} version {self.version} ({'active' if self.active else 'inactive'}) "
            f"on {self.rows:,} rows "
            f"of {self.users:,} users and {self.items:,} items, d={self.d}; "
            f"{self.rows_dropped:,} rows dropped (features: {m['rows_dropped_missing_features']:,}, "
            f"label: {m['rows_dropped_missing_label']:,}). "
            f"Training {m['loss_name']}: personalised {m['loss']:.4f}, "
            f"average user {m['loss_average_user']:.4f}. "
            + (
                f"Validation {m['loss_name']} ({m['validation_rows']:,} newest rows of the users): "
                f"personalised {m['validation_loss']:.4f}, average user {m['validation_loss_average_user']:.4f}"
                f"{' with l2 ' + format(m['l2'], 'g') + ' chosen (l2: auto)' if m.get('l2_auto') else ''}. "
                if m.get("validation_loss") is not None else ""
            )
            + f"Artifact: {self.artifact}"
        )


# -- the steps ----------------------------------------------------------------------------------


def read_labels(labels: Any) -> pa.Table:
    """Labels as an Arrow table: a Parquet path (file, directory or glob), a table or a DataFrame."""
    if isinstance(labels, pa.Table):
        return labels
    if isinstance(labels, (str, Path)):
        import pyarrow.dataset as ds

        path = str(labels)
        if not any(c in path for c in "*?[") and not Path(path).exists():
            raise UserError(f"labels file {path} does not exist", hint="pass a Parquet file with --labels")
        try:
            return ds.dataset(path, format="parquet").to_table()
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"cannot read labels {path}: {exc}", hint="pass a Parquet file") from None
    if hasattr(labels, "to_arrow"):
        return labels.to_arrow()
    if hasattr(labels, "columns") and hasattr(labels, "dtypes"):  # a pandas DataFrame
        return pa.Table.from_pandas(labels, preserve_index=False)
    raise UserError(
        f"labels of type {type(labels).__name__} are not supported",
        hint="pass a Parquet path, a pyarrow Table or a pandas DataFrame",
    )


def build_training_set(
    export: Export,
    defs: Definitions,
    layout: ModelLayout,
    label: str,
    labels: pa.Table,
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    *,
    frozen_views: set[str] | frozenset[str] = frozenset(),
    frozen_at: datetime | None = None,
) -> TrainingSet:
    """Join point-in-time features onto the labels and assemble x (see the module docstring).

    Features of ``frozen_views`` (item views fed by a feature job) are joined as of
    ``frozen_at`` (default: now) for every row: the features this version is served with."""
    user_keys = [k.name for k in defs.entities[layout.user_entity].join_keys]
    item_keys = [k.name for k in defs.entities[layout.item_entity].join_keys]
    clash = set(user_keys) & set(item_keys)
    if clash:
        raise UserError(
            f"model {layout.model!r}: the user and item entities share join key(s) {sorted(clash)}",
            hint="give the item entity join keys with different names",
        )
    needed = [*user_keys, *item_keys, label, timestamp_column, *layout.request]
    missing = [c for c in dict.fromkeys(needed) if c not in labels.column_names]
    if missing:
        raise DataError(
            f"the labels have no column(s) {', '.join(missing)} (they have: "
            f"{', '.join(labels.column_names)})",
            hint=f"labels need {', '.join(dict.fromkeys(needed))}"
            + ("" if timestamp_column != DEFAULT_TIMESTAMP_COLUMN else "; or pass --timestamp-column"),
        )
    entity_df = unix_seconds_as_timestamps(labels.select(list(dict.fromkeys(needed))), timestamp_column)
    blocks = (*layout.item, *layout.user)
    frozen = [b.ref for b in blocks if b.view in frozen_views]
    live = [b.ref for b in blocks if b.view not in frozen_views]
    if not frozen:
        return assemble(defs, layout, label, _export(export, entity_df, live, timestamp_column),
                        timestamp_column, len(labels))
    # Learned item features are fixed per model version: every row sees the ones this version
    # is served with (the newest, as of the training), whatever its own time; the other
    # features are joined as of the row's time, as usual.
    rows = entity_df.append_column(_ROW, pa.array(np.arange(entity_df.num_rows, dtype=np.int64)))
    at = pa.array(np.full(rows.num_rows, frozen_at or datetime.now(timezone.utc)), pa.timestamp("us", tz="UTC"))
    pinned = rows.set_column(rows.schema.get_field_index(timestamp_column), timestamp_column, at)
    table = _by_row(_export(export, pinned, frozen, timestamp_column))
    base = _by_row(_export(export, rows, live, timestamp_column)) if live else rows
    for ref in frozen:
        name = "__".join(ref.split(":", 1))
        base = base.append_column(name, table[name]) if name not in base.column_names else base
    return assemble(defs, layout, label, base.drop_columns([_ROW]), timestamp_column, len(labels))


_ROW = "__featurestore_row"


def _export(export: Export, entity_df: pa.Table, refs: list[str], timestamp_column: str) -> pa.Table:
    dataset = export(entity_df, refs, timestamp_column=timestamp_column, full_names=True)
    try:
        return _as_arrow(dataset)
    finally:
        if hasattr(dataset, "close"):
            dataset.close()  # the export's DuckDB connection and spill directory


def _by_row(table: pa.Table) -> pa.Table:
    """The export's rows in the labels' order (it keeps every row, not their order)."""
    return table.sort_by(_ROW)


def frozen_item_views(config: Any, defs: Definitions, layout: ModelLayout) -> set[str]:
    """The model's item views that a feature job feeds: learned features, fixed per version."""
    from featurestore.models.feature_job import views_fed_by

    item_views = {b.view for b in layout.item}
    fed: set[str] = set()
    for job in defs.feature_jobs.values():
        fed |= item_views & set(views_fed_by(config, defs, job))
    return fed


def unix_seconds_as_timestamps(table: pa.Table, column: str) -> pa.Table:
    """``column`` as a UTC timestamp when it holds numbers: Unix seconds (what ``/feedback``
    accepts for ``ts``), integers or fractional; any other type is left to the export's checks.

    >>> t = unix_seconds_as_timestamps(pa.table({"ts": [0, 1_700_000_000]}), "ts")
    >>> t["ts"].type, t["ts"][1].as_py().isoformat()
    (TimestampType(timestamp[us, tz=UTC]), '2023-11-14T22:13:20+00:00')
    """
    if column not in table.column_names:
        return table
    typ = table.schema.field(column).type
    if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
        return table
    seconds = pc.cast(table[column], pa.float64())
    if pc.any(pc.greater(pc.abs(seconds), 253402300799.0)).as_py():  # after 9999-12-31
        raise DataError(
            f"the timestamp column {column!r} holds numbers beyond the year 9999 as Unix seconds",
            hint="numbers are read as seconds since the epoch; convert milliseconds first (ms / 1000)",
        )
    micros = pc.cast(pc.round(pc.multiply(seconds, 1_000_000.0)), pa.int64())
    ts = pc.cast(micros, pa.timestamp("us", tz="UTC"))
    return table.set_column(table.schema.get_field_index(column), column, ts)


def assemble(
    defs: Definitions,
    layout: ModelLayout,
    label: str,
    table: pa.Table,
    timestamp_column: str,
    rows_read: int | None = None,
) -> TrainingSet:
    """x, y and user indices from the joined table (features named ``view__feature``)."""
    n = table.num_rows
    X = np.empty((n, layout.d), dtype=np.float64)
    ok = np.ones(n, dtype=bool)
    col = 0
    for block in (*layout.item, *layout.user):
        name = f"{block.view}__{block.feature}"
        if name not in table.column_names:
            raise DataError(
                f"the training dataset has no column {name!r} for feature {block.ref}",
                hint="the point-in-time export should name features view__feature (full_names=True)",
            )
        values, valid = _numeric_block(table[name], block.width, block.ref)
        X[:, col : col + block.width] = values
        ok &= valid
        col += block.width
    for name in layout.request:
        values, valid = _numeric_block(table[name], 1, f"request feature {name}")
        X[:, col : col + 1] = values
        ok &= valid
        col += 1
    if layout.bias:
        X[:, col] = 1.0
    ok &= np.isfinite(X).all(axis=1) if n else ok
    y_col = table[label]
    y_valid = ~_null_mask(y_col)
    y = pc.cast(y_col, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False) if n else np.empty(0)
    y_valid &= np.isfinite(y)
    dropped_features = int((~ok).sum())
    dropped_label = int((ok & ~y_valid).sum())
    keep = ok & y_valid
    kept = table.filter(pa.array(keep)) if n else table
    user_dtypes = [k.dtype for k in defs.entities[layout.user_entity].join_keys]
    user_cols = [k.name for k in defs.entities[layout.user_entity].join_keys]
    item_cols = [k.name for k in defs.entities[layout.item_entity].join_keys]
    item_dtypes = [k.dtype for k in defs.entities[layout.item_entity].join_keys]
    keys = encode_entity_keys(user_dtypes, [kept[c] for c in user_cols]) if kept.num_rows else []
    encoded = pc.dictionary_encode(pa.array(keys, pa.binary()))
    user_index = encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp)
    item_encoded = pc.dictionary_encode(pa.array(
        encode_entity_keys(item_dtypes, [kept[c] for c in item_cols]) if kept.num_rows else [], pa.binary()))
    items = len(item_encoded.dictionary)
    start = end = None
    row_ts = None
    if kept.num_rows and timestamp_column in kept.column_names:
        ts = kept[timestamp_column]
        start, end = _as_datetime(pc.min(ts).as_py()), _as_datetime(pc.max(ts).as_py())
        row_ts = _micros(ts)
    return TrainingSet(
        layout=layout,
        X=X[keep],
        y=y[keep],
        user_keys=[bytes(k) for k in encoded.dictionary.to_pylist()],
        user_index=user_index,
        items=items,
        rows_read=rows_read if rows_read is not None else n,
        dropped_missing_features=dropped_features,
        dropped_missing_label=dropped_label,
        data_start=start,
        data_end=end,
        ts=row_ts,
        item_index=item_encoded.indices.to_numpy(zero_copy_only=False).astype(np.intp),
    )


def average_item(training: TrainingSet, views: set[str]) -> dict[str, Any]:
    """The average item of the learned item views: the mean over the training's distinct items
    of their coordinates of x (factors and bias), recorded with the version (``item_prior``, d
    numbers, null outside those views) and served for items the feature job has not learned."""
    layout = training.layout
    if training.item_index is None or not len(training.item_index):
        return {}
    cols: list[int] = []
    col = 0
    for block in layout.item:
        if block.view in views:
            cols += range(col, col + block.width)
        col += block.width
    first = np.unique(training.item_index, return_index=True)[1]
    mean = training.X[np.ix_(first, cols)].mean(axis=0)
    values: list[float | None] = [None] * layout.d
    for c, v in zip(cols, mean.tolist()):
        values[c] = float(v)
    return {"item_prior": values, "item_prior_views": sorted(views)}


def _feature_job_fits(config: Any, defs: Definitions, views: set[str]) -> dict[str, Any]:
    """How the item features of ``views`` were fitted, per feature job (the Parquet metadata its
    output carries: l2, seed, validation), recorded with the version."""
    import json

    import pyarrow.parquet as pq

    from featurestore.models.feature_job import FIT_METADATA, views_fed_by

    out: dict[str, Any] = {}
    for name, job in defs.feature_jobs.items():
        if not views & set(views_fed_by(config, defs, job)):
            continue
        try:
            meta = pq.read_schema(config.resolve(job.output)).metadata or {}
            out[name] = json.loads(meta[FIT_METADATA.encode()])
        except (OSError, KeyError, ValueError, pa.ArrowInvalid):
            continue  # written by an older version, or by hand: nothing to record
    return out


def label_clip(declared: tuple[float, float] | None, y: np.ndarray) -> tuple[float, float]:
    """The range predictions are clipped to: the declared ``label_range``, else the training
    labels' range."""
    if declared is not None:
        return float(declared[0]), float(declared[1])
    return float(y.min()), float(y.max())


def fit(
    training: TrainingSet,
    *,
    l2_auto: bool = False,
    label_range: tuple[float, float] | None = None,
) -> tuple[np.ndarray, dict[bytes, UserState], dict[str, Any]]:
    """The average user, every user's state and the training metrics.

    Before fitting, each user's newest rows (``models.tuning.validation_split``, by the rows'
    timestamps) are a validation slice: with ``l2_auto`` λ is chosen on it (``search_l2``);
    either way the version records its validation loss (an honest baseline for staleness),
    then everything is fitted on all rows with that λ. Squared-error predictions are clipped to
    ``label_clip(label_range, y)`` in the losses, as they are when served.
    """
    layout = training.layout
    if training.X.shape[0] == 0:
        raise DataError(
            f"no training rows left for model {layout.model!r} "
            f"({training.dropped_missing_features} dropped for missing features, "
            f"{training.dropped_missing_label} for a missing label)",
            hint="materialize the model's feature views for the labels' time range first",
        )
    objective: Any = layout.objective
    squared = layout.objective == "squared_error"
    clip = label_clip(label_range, training.y) if squared else None
    validation = RidgeValidation(
        training.user_index,
        training.X,
        training.y,
        validation_split(training.user_index, training.ts),
        objective=objective,
        bias=layout.bias,
        clip=clip,
    )
    tuned: dict[str, Any] = {"l2_auto": l2_auto}
    if l2_auto:
        if validation.rows:
            best, _, tried = search_l2(validation.loss)
            layout = replace(layout, l2=best)
            tuned["l2_candidates"] = tried
        else:  # no user has two rows: nothing to validate on
            layout = replace(layout, l2=DEFAULT_L2)
        training = replace(training, layout=layout)
    val_loss, val_base = validation.losses(layout.l2) if validation.rows else (None, None)
    tuned.update(validation_loss=val_loss, validation_loss_average_user=val_base, validation_rows=validation.rows)
    w_avg = fit_average(training.X, training.y, layout.l2, objective=objective, bias=layout.bias)
    by_index = fit_users(
        training.user_index, training.X, training.y, layout.l2, w_avg, objective=objective
    )
    # fit_users was given row indices into user_keys as ids, so its keys are those ints.
    states = {training.user_keys[cast(int, i)]: s for i, s in by_index.items()}
    W = np.zeros((len(training.user_keys), layout.d))
    for i, s in by_index.items():
        W[cast(int, i)] = s.w
    personal = np.einsum("nd,nd->n", training.X, W[training.user_index])
    average = training.X @ w_avg
    if layout.objective == "logistic":
        personal, average = sigmoid(personal), sigmoid(average)
    elif clip is not None:
        personal, average = np.clip(personal, *clip), np.clip(average, *clip)
    loss = RunningLoss.for_objective(layout.objective).update(training.y, personal)
    base = RunningLoss.for_objective(layout.objective).update(training.y, average)
    metrics = {
        "objective": layout.objective,
        "loss_name": loss.loss,
        "loss": loss.mean,
        "loss_average_user": base.mean,
        "rows": int(training.X.shape[0]),
        "rows_read": training.rows_read,
        "rows_dropped_missing_features": training.dropped_missing_features,
        "rows_dropped_missing_label": training.dropped_missing_label,
        "users": len(states),
        "items": training.items,
        "d": layout.d,
        "l2": layout.l2,
        # The range feedback labels are checked against when the model declares none.
        "label_min": float(training.y.min()),
        "label_max": float(training.y.max()),
        **tuned,
    }
    if clip is not None:
        metrics["clip_min"], metrics["clip_max"] = clip
    return w_avg, states, metrics


def train_model(
    context: ServiceContext,
    model: str,
    labels: Any,
    *,
    timestamp_column: str = DEFAULT_TIMESTAMP_COLUMN,
    export: Export | None = None,
    activate: bool = True,
) -> TrainResult:
    """Train ``model`` on ``labels`` and make the result its active version (with
    ``activate=False`` it is recorded, published and written, but not served: ``models
    retrain`` activates it only when it is no worse).

    ``export(entity_df, features, **options)`` is the point-in-time export the features come
    from (``FeatureStore.get_training_dataset``; by default the same over the context's config).

    >>> train_model(store.context, "taste", "labels.parquet").version  # doctest: +SKIP
    1
    """
    snapshot = context.watcher.refresh()
    defs = snapshot.definitions
    registry_version = snapshot.version
    spec = defs.get("model", model)
    layout = ModelLayout.from_spec(defs, spec)
    table = read_labels(labels)
    if export is None:
        export = _point_in_time(context, defs)
    frozen = frozen_item_views(context.config, defs, layout)
    training = build_training_set(export, defs, layout, spec.label, table, timestamp_column, frozen_views=frozen)
    w_avg, states, metrics = fit(training, l2_auto=spec.l2 == "auto", label_range=spec.label_range)
    layout = replace(layout, l2=float(metrics["l2"]))
    if frozen:
        metrics.update(average_item(training, frozen))
        fitted = _feature_job_fits(context.config, defs, frozen)
        if fitted:
            metrics["feature_jobs"] = fitted

    # Record the version inactive first: its states must be written before a server can pick it.
    expected = max((v.version for v in context.model_versions.list(model)), default=0) + 1
    directory = context.artifact_dir(model, expected)
    recorded = context.model_versions.add(
        model,
        registry_version=registry_version,
        data_start=training.data_start,
        data_end=training.data_end,
        metrics=metrics,
        artifact=str(directory),
        activate=False,
    )
    if recorded.version != expected:
        raise ConflictError(
            f"another training of model {model!r} recorded version {expected} at the same time",
            hint="re-run the training",
        )
    ModelStateStore(context.online_store, model, recorded.version).publish(layout, w_avg, states)
    write_artifact(
        directory,
        layout=layout,
        w_avg=w_avg,
        states=states,
        manifest={
            "model": model,
            "version": recorded.version,
            "registry_version": registry_version,
            "created_at": recorded.created_at.isoformat(),
            "data_start": _iso(training.data_start),
            "data_end": _iso(training.data_end),
            "metrics": metrics,
        },
    )
    if activate:
        context.model_versions.activate(model, recorded.version)
        context.watcher.refresh()  # this process serves the new version at once
    return TrainResult(
        model=model,
        version=recorded.version,
        registry_version=registry_version,
        rows=metrics["rows"],
        rows_dropped=training.dropped_missing_features + training.dropped_missing_label,
        users=len(states),
        items=training.items,
        d=layout.d,
        metrics=metrics,
        artifact=str(directory),
        data_start=training.data_start,
        data_end=training.data_end,
        w_avg=w_avg,
        active=activate,
    )


# -- helpers ------------------------------------------------------------------------------------


def _point_in_time(context: ServiceContext, defs: Definitions) -> Export:
    def export(entity_df: Any, features: list[str], **options: Any) -> Any:
        from featurestore.export import get_training_dataset

        return get_training_dataset(context.config, defs, entity_df, features, **options)

    return export


def _as_arrow(dataset: Any) -> pa.Table:
    if isinstance(dataset, pa.Table):
        return dataset
    for method in ("to_arrow", "to_table"):
        if hasattr(dataset, method):
            return getattr(dataset, method)()
    if hasattr(dataset, "to_pandas"):
        return pa.Table.from_pandas(dataset.to_pandas(), preserve_index=False)
    if hasattr(dataset, "columns") and hasattr(dataset, "dtypes"):
        return pa.Table.from_pandas(dataset, preserve_index=False)
    raise DataError(f"the training dataset is a {type(dataset).__name__}, expected an Arrow table")


def _null_mask(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.is_null().to_numpy(zero_copy_only=False) if column.null_count else np.zeros(len(column), bool)


def _numeric_block(column: pa.ChunkedArray | pa.Array, width: int, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(values (n, width) float64 with NaN where null, valid mask) of a scalar or vector column."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    valid = ~_null_mask(column)
    out = np.full((n, width), np.nan)
    t = column.type
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        present = column.filter(pa.array(valid))
        lengths = pc.list_value_length(present).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != width).any():
            bad = int(lengths[lengths != width][0])
            raise DataError(f"{what} has a vector of length {bad}, the model expects {width}")
        flat = pc.list_flatten(present)
        values = pc.cast(flat, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        out[valid] = values.reshape(-1, width)
        return out, valid & np.isfinite(out).all(axis=1)
    if width != 1:
        raise DataError(f"{what} is a {t} column, the model expects a vector of {width}")
    try:
        values = pc.cast(column, pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(f"{what} ({t}) is not numeric: {exc}") from None
    out[:, 0] = values
    return out, valid & np.isfinite(values)


def _micros(column: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """Microseconds since the epoch of a timestamp or date column (None for another type)."""
    t = column.type
    if pa.types.is_date(t):
        column = pc.cast(column, pa.timestamp("us"))
    elif not pa.types.is_timestamp(t):
        return None
    else:
        column = pc.cast(column, pa.timestamp("us", tz=t.tz))
    return np.asarray(pc.cast(column, pa.int64()).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)


def _as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if hasattr(value, "to_pydatetime"):
        return _as_datetime(value.to_pydatetime())
    return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
