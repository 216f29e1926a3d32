"""The offline view of the feedback log: Parquet files that training reads as labels.

    {offline_path}/{project}/_feedback/{model}/date=YYYY-MM-DD/seq-{first:012d}-{last:012d}.parquet
    {offline_path}/{project}/_feedback/{model}/_export.json      {"sealed_through": seq}

The log is the source of truth; these files are derived from it by ``export_feedback``. The seq
space is cut into fixed blocks of ``BLOCK_ROWS`` (block b is seq b·B+1 .. (b+1)·B); a block's files
(one per event date of its rows) are always written whole, from the log, and rewritten on every
export until the block is *sealed* — all its seqs are below the horizon — after which the
watermark in ``_export.json`` moves past it. So re-running an export writes the same files, and a
crash at any point leaves nothing that a re-run does not fix.

The horizon is the newest seq received at least ``delay_seconds`` ago. On PostgreSQL, seqs are
handed out at insert but become visible at commit, so a smaller seq may appear after a larger
one; the server exports with a delay of a few seconds so a block is never sealed before every
insert into it has committed. Columns (one row per observation):

    user join keys, item join keys   the entities' dtypes (decoded from the logged entity keys)
    {the model's label}              float64
    event_timestamp                  timestamp[us, UTC]: when it happened (``ts``)
    {request features}               float64, from the logged x (models with request features)
    feedback_id, seq, model_version, prediction_id, prediction, baseline, slice

which is what ``featurestore train`` takes as labels. ``retrain_labels`` joins them to a model's
original labels for ``featurestore models retrain``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.arrow_types import arrow_type
from featurestore.online.codec import decode_entity_key
from registry.errors import DataError, NotFoundError

if TYPE_CHECKING:
    from featurestore.context import ServiceContext

BLOCK_ROWS = 100_000
STATE_FILE = "_export.json"
EVENT_TS = "event_timestamp"
JOIN_TS = "join_timestamp"
LABELS_FILE = "labels.parquet"
TS_TYPE = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class ExportResult:
    model: str
    rows: int  # rows written by this run (blocks are rewritten whole, so a row may be counted again)
    files: int
    sealed_through: int  # every seq up to this is in sealed files
    horizon: int  # the newest seq exported

    def summary(self) -> str:
        return (
            f"Model {self.model!r}: wrote {self.rows:,} feedback row(s) in {self.files} file(s) up to seq "
            f"{self.horizon:,} (sealed through {self.sealed_through:,})."
        )


def export_feedback(
    context: ServiceContext, model: str, *, delay_seconds: float = 0.0, block_rows: int = BLOCK_ROWS
) -> ExportResult:
    """Bring the offline view of ``model``'s feedback up to date from the log (idempotent).

    >>> export_feedback(store.context, "taste").files  # doctest: +SKIP
    1
    """
    import sqlalchemy as sa

    from featurestore.offline.layout import write_atomic
    from registry import tables as t

    spec = context.definitions().get("model", model)
    directory = context.feedback_dir(model)
    state = _read_state(directory)
    sealed = int(state.get("sealed_through", 0))
    if state.get("block_rows", block_rows) != block_rows:
        raise DataError(
            f"the feedback view of {model!r} was written in blocks of {state['block_rows']} rows",
            hint="export with the same block size, or delete the _feedback directory to rewrite it",
        )
    f = t.feedback
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=delay_seconds)
    with context.engine.connect() as conn:
        horizon = conn.execute(
            sa.select(sa.func.max(f.c.seq)).where(
                f.c.project == context.project, f.c.model == model, f.c.seq > sealed, f.c.received_at <= cutoff
            )
        ).scalar()
    if horizon is None:
        return ExportResult(model, 0, 0, sealed, sealed)
    horizon = int(horizon)
    columns = _Columns(context, spec)
    rows = files = 0
    for block in range(sealed // block_rows, (horizon - 1) // block_rows + 1):
        lo, hi = block * block_rows + 1, (block + 1) * block_rows
        with context.engine.connect() as conn:
            result = conn.execute(
                sa.select(f.c.seq, f.c.feedback_id, f.c.model_version, f.c.user_key, f.c.item_key, f.c.label,
                          f.c.event_ts, f.c.prediction_id, f.c.prediction, f.c.baseline, f.c.slice,
                          *([f.c.features] if columns.request else []))
                .where(f.c.project == context.project, f.c.model == model, f.c.seq >= lo, f.c.seq <= min(hi, horizon))
                .order_by(f.c.seq)
            ).all()
        if result:
            table = columns.table(result)
            days = pc.strftime(table[EVENT_TS], format="%Y-%m-%d")
            for day in sorted(set(days.to_pylist())):
                part = table.filter(pc.equal(days, day))
                write_atomic(part, directory / f"date={day}" / f"seq-{lo:012d}-{hi:012d}.parquet")
                files += 1
            rows += table.num_rows
        if hi <= horizon:
            sealed = hi
            _write_state(directory, {"sealed_through": sealed, "block_rows": block_rows})
    return ExportResult(model, rows, files, sealed, horizon)


def read_feedback_view(context: ServiceContext, model: str) -> pa.Table | None:
    """Every exported feedback row of ``model`` (None when nothing was exported)."""
    import pyarrow.dataset as ds

    directory = context.feedback_dir(model)
    if not directory.is_dir() or not any(directory.glob("date=*/*.parquet")):
        return None
    # The date directories are a layout detail: event_timestamp holds the full time.
    table = ds.dataset(str(directory), format="parquet", partitioning=None).to_table()
    return table.sort_by([("seq", "ascending")])


def feedback_interactions(context: ServiceContext, model: str) -> pa.Table | None:
    """The exported feedback of ``model`` as interactions for its feature jobs: columns user,
    item, rating (the label) and ts; None when nothing was exported or an entity has several
    join keys (a feature job reads one user and one item column)."""
    spec = context.definitions().get("model", model)
    cols = _Columns(context, spec)
    if len(cols.user_names) != 1 or len(cols.item_names) != 1:
        return None
    table = read_feedback_view(context, model)
    if table is None or not table.num_rows:
        return None
    return pa.table({
        "user": table[cols.user_names[0]],
        "item": table[cols.item_names[0]],
        "rating": table[spec.label].cast(pa.float64()),
        "ts": table[EVENT_TS],
    })


# -- labels for (re)training --------------------------------------------------------------------


def save_training_labels(context: ServiceContext, model: str, version: int, labels: Any, timestamp_column: str) -> Path:
    """Keep a copy of the labels a version was trained on beside its artifact, so ``models
    retrain`` can re-train on them plus the logged feedback. The timestamp is renamed
    ``event_timestamp`` (an older column of that name is dropped)."""
    from featurestore.models.training import read_labels, unix_seconds_as_timestamps
    from featurestore.offline.layout import write_atomic

    # Unix seconds are kept as the timestamps they mean (a cast would read them as µs).
    table = unix_seconds_as_timestamps(read_labels(labels), timestamp_column)
    if timestamp_column != EVENT_TS:
        if EVENT_TS in table.column_names:
            table = table.drop_columns([EVENT_TS])
        table = table.rename_columns([EVENT_TS if c == timestamp_column else c for c in table.column_names])
    target = context.artifact_dir(model, version) / LABELS_FILE
    write_atomic(table, target)
    return target


def training_labels(context: ServiceContext, model: str, version: int) -> pa.Table | None:
    """The labels saved with a version by ``save_training_labels``, None if there are none."""
    import pyarrow.parquet as pq

    path = context.artifact_dir(model, version) / LABELS_FILE
    return pq.read_table(path) if path.is_file() else None


def retrain_labels(context: ServiceContext, model: str, original: pa.Table, *, features_after: datetime | None = None) -> pa.Table:
    """The original labels plus every exported feedback row of ``model``, in one schema:
    join keys, the label, the request features and ``event_timestamp``.

    With ``features_after`` (the event time of item features just re-learned by a feature job),
    a ``join_timestamp`` column is max(event_timestamp, features_after + 1 µs): train on it so
    every row joins the re-learned features, as served from now on — the features of a row's own
    time would be the old ones, in another basis (see docs/feedback.md, retraining).
    """
    spec = context.definitions().get("model", model)
    cols = _Columns(context, spec)
    needed = [*cols.user_names, *cols.item_names, spec.label, *cols.request, EVENT_TS]
    missing = [c for c in needed if c not in original.column_names]
    if missing:
        raise DataError(
            f"the original labels of model {model!r} have no column(s) {', '.join(missing)}",
            hint=f"labels need {', '.join(needed)}",
        )
    from featurestore.models.training import unix_seconds_as_timestamps

    schema = pa.schema([(name, typ) for name, typ in cols.schema() if name in needed])
    parts = [_conform(unix_seconds_as_timestamps(original.select(needed), EVENT_TS), schema)]
    feedback = read_feedback_view(context, model)
    if feedback is not None and feedback.num_rows:
        parts.append(_conform(feedback.select(needed), schema))
    table = pa.concat_tables(parts)
    if features_after is not None:
        floor = pa.scalar(features_after + timedelta(microseconds=1), TS_TYPE)
        ts = table[EVENT_TS]
        table = table.append_column(JOIN_TS, pc.if_else(pc.less(ts, floor), floor, ts))
    return table


# -- internals ----------------------------------------------------------------------------------


class _Columns:
    """How log rows of one model become the view's columns."""

    def __init__(self, context: ServiceContext, spec: Any) -> None:
        defs = context.definitions()
        self.context = context
        self.spec = spec
        self.label = spec.label
        user_entity = defs.get("entity", spec.user_entity)
        item_entity = defs.get("entity", spec.item_entity)
        self.user_names = [k.name for k in user_entity.join_keys]
        self.user_dtypes = [k.dtype for k in user_entity.join_keys]
        self.item_names = [k.name for k in item_entity.join_keys]
        self.item_dtypes = [k.dtype for k in item_entity.join_keys]
        self.request = list(spec.request_features)
        self._offsets: dict[int, int | None] = {}

    def schema(self) -> list[tuple[str, pa.DataType]]:
        return [
            *((n, arrow_type(d)) for n, d in zip(self.user_names, self.user_dtypes)),
            *((n, arrow_type(d)) for n, d in zip(self.item_names, self.item_dtypes)),
            (self.label, pa.float64()),
            *((n, pa.float64()) for n in self.request),
            (EVENT_TS, TS_TYPE),
        ]

    def table(self, rows: Sequence[Any]) -> pa.Table:
        n = len(rows)
        data: dict[str, Any] = {}
        users = _decode_keys(self.user_dtypes, [r.user_key for r in rows])
        items = _decode_keys(self.item_dtypes, [r.item_key for r in rows])
        for i, (name, dtype) in enumerate(zip(self.user_names, self.user_dtypes)):
            data[name] = pa.array([u[i] for u in users], arrow_type(dtype))
        for i, (name, dtype) in enumerate(zip(self.item_names, self.item_dtypes)):
            data[name] = pa.array([v[i] for v in items], arrow_type(dtype))
        data[self.label] = pa.array([float(r.label) for r in rows], pa.float64())
        data[EVENT_TS] = pa.array([_utc(r.event_ts) for r in rows], TS_TYPE)
        if self.request:
            values = np.full((n, len(self.request)), np.nan)
            for k, r in enumerate(rows):
                start = self._request_offset(int(r.model_version))
                if start is not None:
                    x = np.frombuffer(r.features, dtype="<f8")
                    values[k] = x[start : start + len(self.request)]
            for j, name in enumerate(self.request):
                data[name] = pa.array(values[:, j], pa.float64(), from_pandas=True)
        data["feedback_id"] = pa.array([r.feedback_id for r in rows], pa.string())
        data["seq"] = pa.array([int(r.seq) for r in rows], pa.int64())
        data["model_version"] = pa.array([int(r.model_version) for r in rows], pa.int32())
        data["prediction_id"] = pa.array([r.prediction_id for r in rows], pa.string())
        data["prediction"] = pa.array([r.prediction for r in rows], pa.float64())
        data["baseline"] = pa.array([r.baseline for r in rows], pa.float64())
        data["slice"] = pa.array([r.slice for r in rows], pa.string())
        return pa.table(data)

    def _request_offset(self, version: int) -> int | None:
        """Where the request features sit in x of ``version`` (None: that layout lacks them)."""
        if version not in self._offsets:
            from featurestore.models.artifacts import read_artifact
            from featurestore.models.state_store import ModelStateStore

            try:
                layout = ModelStateStore(self.context.online_store, self.spec.name, version).layout()
            except NotFoundError:
                recorded = self.context.model_versions.get(self.spec.name, version)
                layout = read_artifact(Path(recorded.artifact))[1]
            start = layout.item_width + layout.user_width
            self._offsets[version] = start if list(layout.request) == self.request else None
        return self._offsets[version]


def _decode_keys(dtypes: list[str], texts: list[str]) -> list[tuple[Any, ...]]:
    if dtypes in (["int64"], ["int32"]):
        return [(int(t),) for t in texts]  # the common case, without the general parser
    return [decode_entity_key(dtypes, t.encode("utf-8")) for t in texts]


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    columns = []
    for f in schema:
        column = table[f.name]
        if pa.types.is_timestamp(f.type) and pa.types.is_timestamp(column.type) and column.type.tz is None:
            column = pc.assume_timezone(column, "UTC")
        try:
            columns.append(column.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise DataError(f"labels column {f.name!r} ({column.type}) does not fit {f.type}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=schema)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _write_state(directory: Path, state: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".{STATE_FILE}.{uuid.uuid4().hex}.tmp"
    tmp.write_text(json.dumps(state, sort_keys=True) + "\n")
    os.replace(tmp, directory / STATE_FILE)
