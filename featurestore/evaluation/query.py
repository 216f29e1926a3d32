"""The evaluation query: models x metrics x slices x time window, over the feedback log.

Each logged observation carries the label, the personalised prediction made for it before it
was learned (``prediction``) and the average user's (``baseline``: the version's ``w_avg`` times
the same x), so a query is a group-by over those rows (``source.observations``), run by DuckDB:

    metric            per (model, version, slice[, time bucket])
    count             observations with a prediction
    mean_label        mean label
    mean_prediction   mean prediction (beside mean_label: calibration)
    mse, rmse, mae    squared / absolute error (any objective; on probabilities mse is Brier)
    log_loss, auc     logistic models only (null otherwise); log loss clipped at machine epsilon
    training_loss     the version's training loss, from its registry record
    validation_loss   its held-out loss, when training recorded one (else null)

Every loss metric and ``mean_prediction`` has an ``..._average_user`` twin: the same metric of
the average user's predictions on the same rows, the baseline personalisation must beat.

Slices: ``all``; ``users=new|known`` (the user had no trained state when scored, or had one);
``items=new|known`` (the item was not, or was, in the version's training data: see
``source.known_items``; no item slice for a version whose training items are unknown); ``{slice_column}={value}`` for a model that declares a slice column
(a model without one has no such rows; the table's ``notes`` metadata says so).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from featurestore.evaluation import source
from featurestore.evaluation.window import MAX_SECONDS, Window
from registry.errors import ConfigError
from registry.types import parse_duration

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

LOSS_METRICS = ("mean_prediction", "mse", "rmse", "mae", "log_loss", "auc")
METRICS = ("count", "mean_label", *LOSS_METRICS, "training_loss", "validation_loss")
SLICES = ("all", "users", "items", "slice_column")
_EPS = 2.220446049250313e-16  # float64 machine epsilon, as the training and monitoring log loss
_SLICE_ORDER = {"all": 0, "users=known": 1, "users=new": 2, "items=known": 3, "items=new": 4}


def context_of(store_or_context: Any) -> ServiceContext:
    """A ``ServiceContext`` from a ``FeatureStore`` (its ``.context``) or a context."""
    return getattr(store_or_context, "context", store_or_context)


def default_metrics(logistic: bool) -> tuple[str, ...]:
    return ("count", "mean_label", "mean_prediction", *(("log_loss", "auc") if logistic else ("rmse", "mae")))


def evaluate(
    store_or_context: Any,
    models: list[str] | str | None = None,
    metrics: list[str] | str | None = None,
    slices: list[str] | str | None = None,
    window: str | Window | None = None,
    *,
    every: str | None = None,
) -> pa.Table:
    """The metrics of each model version on each slice over the window, one row per
    (model, version, slice[, bucket]).

    ``models``: ``MODEL`` (every version) or ``MODEL:VERSION`` (None: every trained model);
    ``metrics``: names from ``METRICS`` (None: count, mean label and prediction, and rmse + mae,
    or log_loss + auc for logistic models); ``slices``: from ``SLICES`` (None: all of them);
    ``window``: ``7d``, ``START..END`` or None for everything (``Window.parse``); ``every``: a
    duration to also group by time bucket (``1d``: loss over time), the column ``bucket``.

    >>> evaluate(store, models=["taste"], window="7d").to_pandas()  # doctest: +SKIP
       model  version        slice  count  mean_label  ...  rmse  rmse_average_user ...
    """
    import duckdb

    context = context_of(store_or_context)
    infos = source.model_infos(context, models)
    wanted_metrics = _metrics(metrics, infos)
    wanted_slices = _slices(slices)
    win = Window.parse(window)
    bucket_seconds = _every(every)
    notes: list[str] = []
    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        source.observations(con, context, infos, win)
        if "items" in wanted_slices:
            for model, origin in source.known_items(con, context, infos).items():
                notes.append(f"{model}: known items from {origin}")
        if "slice_column" in wanted_slices:
            notes += [f"{i.name}: no slice_column declared, no slice-column rows" for i in infos if not i.slice_column]
        models_table = pa.table({
            "model": pa.array([i.name for i in infos], pa.string()),
            "logistic": pa.array([i.logistic for i in infos], pa.bool_()),
            "slice_column": pa.array([i.slice_column for i in infos], pa.string()),
        })
        con.register("model_info", models_table)
        table = con.sql(_sql(wanted_metrics, wanted_slices, bucket_seconds)).to_arrow_table()
    finally:
        con.close()
    table = _with_registry_metrics(table, infos, wanted_metrics)
    table = _sorted(table, bucket_seconds is not None)
    meta = {"window": win.label, "notes": json.dumps(notes), "metrics": json.dumps(list(wanted_metrics))}
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})


def notes_of(table: pa.Table) -> list[str]:
    """The notes an evaluation table carries (slices skipped, where known items came from)."""
    meta = table.schema.metadata or {}
    return list(json.loads(meta.get(b"notes", b"[]")))


# -- SQL -----------------------------------------------------------------------------------------


def _sql(metrics: tuple[str, ...], slices: tuple[str, ...], bucket_seconds: int | None) -> str:
    item_join = (
        "LEFT JOIN known_items k ON o.model = k.model AND o.version = k.version AND o.item_key = k.item_key"
        if "items" in slices else ""
    )
    item_cohort = "CASE WHEN k.item_key IS NULL THEN 'new' ELSE 'known' END" if "items" in slices else "NULL"
    bucket = (f"time_bucket(INTERVAL '{bucket_seconds} seconds', o.ts, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
              if bucket_seconds else "NULL")
    base = (
        f"SELECT o.model, o.version, {bucket} AS bucket, o.label AS y, o.prediction AS p, o.baseline AS b, "
        f"o.cohort, o.slice_value, {item_cohort} AS item_cohort, m.logistic, m.slice_column "
        f"FROM obs o JOIN model_info m ON o.model = m.model {item_join}"
    )
    exploded = []
    if "all" in slices:
        exploded.append("SELECT *, 'all' AS slice FROM base")
    if "users" in slices:
        exploded.append("SELECT *, 'users=' || cohort AS slice FROM base WHERE cohort IN ('new', 'known')")
    if "items" in slices:
        exploded.append(
            "SELECT *, 'items=' || item_cohort AS slice FROM base b "
            "WHERE EXISTS (SELECT 1 FROM item_versions v WHERE v.model = b.model AND v.version = b.version)"
        )
    if "slice_column" in slices:
        exploded.append(
            "SELECT *, slice_column || '=' || slice_value AS slice FROM base "
            "WHERE slice_column IS NOT NULL AND slice_value IS NOT NULL"
        )
    keys = "model, version, slice, bucket"
    clip = lambda c: f"greatest(least({c}, {1 - _EPS!r}), {_EPS!r})"
    cols = ["count(*) AS count"]
    for name in metrics:
        for col, suffix in (("p", ""), ("b", "_average_user")):
            if name == "count" or name in ("training_loss", "validation_loss"):
                continue
            if name == "mean_label":
                if suffix:
                    continue
                expr = "avg(y)"
            elif name == "mean_prediction":
                expr = f"avg({col})"
            elif name == "mse":
                expr = f"avg(({col} - y) * ({col} - y))"
            elif name == "rmse":
                expr = f"sqrt(avg(({col} - y) * ({col} - y)))"
            elif name == "mae":
                expr = f"avg(abs({col} - y))"
            elif name == "log_loss":
                expr = (f"CASE WHEN bool_and(logistic) THEN avg(-(y * ln({clip(col)}) "
                        f"+ (1 - y) * ln(1 - {clip(col)}))) END")
            elif name == "auc":
                expr = (f"CASE WHEN bool_and(logistic) AND sum(y) > 0 AND sum(1 - y) > 0 THEN "
                        f"(sum(CASE WHEN y = 1 THEN r_{col} END) - sum(y) * (sum(y) + 1) / 2) "
                        f"/ (sum(y) * sum(1 - y)) END")
            else:  # pragma: no cover - _metrics checked the names
                raise AssertionError(name)
            cols.append(f"{expr} AS {name}{suffix}")
    ranked = "rows_"
    rank_cols = ""
    if "auc" in metrics:
        # The Mann-Whitney form of the AUC: ties get the mean of their ranks.
        rank_cols = ", " + ", ".join(
            f"rank() OVER (PARTITION BY {keys} ORDER BY {c}) + (count(*) OVER (PARTITION BY {keys}, {c}) - 1) / 2.0 AS r_{c}"
            for c in ("p", "b")
        )
    return (
        f"WITH base AS ({base}), rows_ AS ({' UNION ALL '.join(exploded)}), "
        f"ranked AS (SELECT *{rank_cols} FROM {ranked}) "
        f"SELECT {keys}, {', '.join(cols)} FROM ranked GROUP BY {keys}"
    )


# -- checks and shaping --------------------------------------------------------------------------


def _metrics(metrics: list[str] | str | None, infos: list[source.ModelInfo]) -> tuple[str, ...]:
    if metrics is None or metrics == [] or metrics == "":
        out: dict[str, None] = {}
        for info in infos or []:
            out.update(dict.fromkeys(default_metrics(info.logistic)))
        return tuple(out) or default_metrics(False)
    names = [m.strip() for m in (metrics.split(",") if isinstance(metrics, str) else metrics) if m.strip()]
    for name in names:
        if name not in METRICS:
            raise ConfigError(f"unknown metric {name!r}", hint="use any of " + ", ".join(METRICS))
    return tuple(dict.fromkeys(["count", *names]))


def _slices(slices: list[str] | str | None) -> tuple[str, ...]:
    if slices is None or slices == [] or slices == "":
        return SLICES
    names = [s.strip() for s in (slices.split(",") if isinstance(slices, str) else slices) if s.strip()]
    for name in names:
        if name not in SLICES:
            raise ConfigError(f"unknown slice {name!r}", hint="use any of " + ", ".join(SLICES))
    return tuple(dict.fromkeys(names))


def _every(every: str | None) -> int | None:
    if every is None or every == "":
        return None
    try:
        seconds = parse_duration(every)
    except ValueError:
        raise ConfigError(f"bad bucket size {every!r}", hint="use a duration such as 1h or 1d") from None
    if seconds <= 0 or seconds > MAX_SECONDS:
        raise ConfigError(f"bad bucket size {every!r}", hint="use a duration such as 1h or 1d")
    return seconds


def _with_registry_metrics(table: pa.Table, infos: list[source.ModelInfo], metrics: tuple[str, ...]) -> pa.Table:
    if "bucket" in table.column_names and table.column("bucket").null_count == table.num_rows:
        table = table.drop_columns(["bucket"])
    for name in ("training_loss", "validation_loss"):
        if name not in metrics:
            continue
        values: dict[tuple[str, int], float | None] = {}
        for info in infos:
            for version, recorded in info.versions.items():
                kind, loss = source.reference_loss(recorded)
                if name == "training_loss":
                    loss = recorded.metrics.get("loss")
                    loss = float(loss) if isinstance(loss, (int, float)) else None
                elif kind != "validation":
                    loss = None
                values[(info.name, version)] = loss
        column = [values.get((m, v)) for m, v in zip(table["model"].to_pylist(), table["version"].to_pylist())]
        table = table.append_column(name, pa.array(column, pa.float64()))
    return table


def _sorted(table: pa.Table, bucketed: bool) -> pa.Table:
    if table.num_rows == 0:
        return table
    order = [(_SLICE_ORDER.get(s, 9), s) for s in table["slice"].to_pylist()]
    table = table.append_column("_slice_order", pa.array([o[0] for o in order], pa.int32()))
    keys = [("model", "ascending"), ("version", "ascending"), ("_slice_order", "ascending"), ("slice", "ascending")]
    if bucketed:
        keys.append(("bucket", "ascending"))
    return table.sort_by(keys).drop_columns(["_slice_order"])


# -- the one-call questions ----------------------------------------------------------------------


def drift_vs_validation(store_or_context: Any, models: list[str] | str | None = None, window: str | Window = "7d") -> pa.Table:
    """How much worse is each model's active version over ``window`` than at training?

    One row per model: the loss it trained with (``loss_name``: mean squared error or log loss),
    the reference (``reference``: ``validation`` when training recorded a held-out loss, else
    ``training``), that loss, the same loss over the window's feedback (personalised and average
    user), the count, and ``change`` = window loss / reference loss - 1 (+0.25: 25% worse).

    >>> drift_vs_validation(store, window="7d").to_pylist()  # doctest: +SKIP
    [{'model': 'taste', 'version': 3, 'loss_name': 'squared_error', 'reference': 'training', ...}]
    """
    context = context_of(store_or_context)
    selectors = models
    if selectors is None or selectors == []:
        active = context.model_versions.active_versions()
        selectors = [f"{name}:{v}" for name, v in sorted(active.items()) if name in context.definitions().models]
    elif isinstance(selectors, str):
        selectors = [s for s in selectors.split(",") if s.strip()]
    resolved = []
    for sel in selectors:
        name, _, version = sel.partition(":")
        if not version:
            active = context.model_versions.active_versions().get(name)
            version = str(active) if active is not None else ""
        resolved.append(f"{name}:{version}" if version else name)
    infos = source.model_infos(context, resolved) if resolved else []
    table = evaluate(context, models=resolved, metrics=["mse", "log_loss"], slices=["all"], window=window) if resolved else None
    rows = []
    for info in infos:
        for version, recorded in info.versions.items():
            kind, reference = source.reference_loss(recorded)
            found = None
            if table is not None:
                for r in table.to_pylist():
                    if r["model"] == info.name and r["version"] == version:
                        found = r
            key = "log_loss" if info.logistic else "mse"
            loss = found[key] if found else None
            base = found[f"{key}_average_user"] if found else None
            change = (loss / reference - 1.0) if (loss is not None and reference) else None
            rows.append({
                "model": info.name, "version": version,
                "loss_name": "log_loss" if info.logistic else "squared_error",
                "reference": kind, "reference_loss": reference,
                "window_loss": loss, "window_loss_average_user": base,
                "count": found["count"] if found else 0,
                "change": change if change is None or math.isfinite(change) else None,
            })
    schema = pa.schema([
        ("model", pa.string()), ("version", pa.int64()), ("loss_name", pa.string()), ("reference", pa.string()),
        ("reference_loss", pa.float64()), ("window_loss", pa.float64()), ("window_loss_average_user", pa.float64()),
        ("count", pa.int64()), ("change", pa.float64()),
    ])
    out = pa.Table.from_pylist(rows, schema=schema)
    return out.replace_schema_metadata({b"window": Window.parse(window).label.encode()})


def compare_versions(
    store_or_context: Any,
    model: str,
    a: int,
    b: int,
    *,
    window: str | Window | None = None,
    metrics: list[str] | str | None = None,
    slices: list[str] | str | None = None,
) -> pa.Table:
    """Versions ``a`` and ``b`` of ``model`` side by side on every slice over the same window:
    one row per (slice, metric) with both values and ``difference`` = b - a.

    >>> compare_versions(store, "taste", 1, 2, window="7d").to_pandas()  # doctest: +SKIP
             slice   metric        a        b  difference  count_a  count_b
    """
    table = evaluate(store_or_context, models=[f"{model}:{a}", f"{model}:{b}"], metrics=metrics, slices=slices, window=window)
    metric_names = [c for c in table.column_names if c not in ("model", "version", "slice", "count")]
    by: dict[tuple[str, int], dict[str, Any]] = {(r["slice"], r["version"]): r for r in table.to_pylist()}
    slice_names = list(dict.fromkeys(r["slice"] for r in table.to_pylist()))
    rows = []
    for s in slice_names:
        ra, rb = by.get((s, a), {}), by.get((s, b), {})
        for m in metric_names:
            va, vb = ra.get(m), rb.get(m)
            rows.append({
                "slice": s, "metric": m, "a": va, "b": vb,
                "difference": (vb - va) if va is not None and vb is not None else None,
                "count_a": ra.get("count", 0), "count_b": rb.get("count", 0),
            })
    schema = pa.schema([
        ("slice", pa.string()), ("metric", pa.string()), ("a", pa.float64()), ("b", pa.float64()),
        ("difference", pa.float64()), ("count_a", pa.int64()), ("count_b", pa.int64()),
    ])
    meta = dict(table.schema.metadata or {})
    meta[b"versions"] = json.dumps([a, b]).encode()
    return pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata(meta)
