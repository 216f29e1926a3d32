"""Where the evaluation store reads from: the feedback log, which holds every observation with
the prediction made for it before learning (``prediction``), the average user's (``baseline``)
and its slice, joined to the version's registry record.

Two places hold those rows, and a query reads both without reading a row twice:

* the offline view (``{offline}/{project}/_feedback/{model}/date=.../seq-...parquet``, written by
  ``featurestore models export-feedback`` and by every server every 10 s), read by DuckDB:
  the rows up to the view's ``sealed_through`` seq, whose files are complete and final;
* the registry database (``fs_feedback``) for the rows after that seq (the tail not sealed yet),
  read with one SQL query on the indexed (project, model, version, seq) prefix.

``observations(...)`` registers the union as the DuckDB view ``obs``:

    model, version, seq, ts, user_key, item_key, label, prediction, baseline, cohort, slice_value

``user_key``/``item_key`` are entity keys as the logs write them (``42``, ``7|a``); ``cohort`` is
``new`` or ``known`` (did the user have a trained state when it was scored); ``slice_value`` is
the value of the model's ``slice_column`` sent with the feedback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from featurestore.evaluation.window import Window
from registry.errors import NotFoundError

if TYPE_CHECKING:
    import duckdb

    from featurestore.context import ServiceContext
    from registry.model_versions import ModelVersion

OBS_SCHEMA = pa.schema(
    [
        ("model", pa.string()), ("version", pa.int64()), ("seq", pa.int64()),
        ("ts", pa.timestamp("us", tz="UTC")), ("user_key", pa.string()), ("item_key", pa.string()),
        ("label", pa.float64()), ("prediction", pa.float64()), ("baseline", pa.float64()),
        ("slice", pa.string()),
    ]
)
_INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32")
# Keys of the registry record's metrics that hold a held-out loss, in order of preference.
VALIDATION_KEYS = ("validation_loss", "loss_validation", "val_loss")


@dataclass(frozen=True)
class ModelInfo:
    """What a query needs to know about one model and the versions asked for."""

    name: str
    label: str  # the label column of the model (in the Parquet view)
    objective: str
    slice_column: str | None
    versions: dict[int, ModelVersion]
    user_keys: tuple[tuple[str, str], ...]  # (join key, dtype) of the user entity
    item_keys: tuple[tuple[str, str], ...]

    @property
    def logistic(self) -> bool:
        return self.objective == "logistic"


def model_infos(context: ServiceContext, selectors: list[str] | str | None) -> list[ModelInfo]:
    """``MODEL`` (every version) or ``MODEL:VERSION`` selectors; None: every trained model."""
    defs = context.definitions()
    if isinstance(selectors, str):
        selectors = [s for s in selectors.split(",") if s.strip()]
    wanted: dict[str, set[int] | None] = {}
    if not selectors:
        for name in defs.models:
            wanted[name] = None
    for sel in selectors or []:
        name, _, version = str(sel).strip().partition(":")
        defs.get("model", name)  # NotFoundError with the nearest name
        if version:
            if not version.lstrip("v").isdigit():
                raise NotFoundError(f"bad model selector {sel!r}", hint="use MODEL or MODEL:VERSION, e.g. taste:2")
            got = wanted.setdefault(name, set())
            if got is not None:
                got.add(int(version.lstrip("v")))
        else:
            wanted[name] = None
    out = []
    for name, versions in wanted.items():
        spec = defs.get("model", name)
        recorded = {v.version: v for v in context.model_versions.list(name)}
        if versions is not None:
            for v in sorted(versions - set(recorded)):
                raise NotFoundError(f"model {name!r} has no version {v}",
                                    hint=f"list versions with `featurestore models list {name}`")
            recorded = {v: recorded[v] for v in sorted(versions)}
        if not recorded and selectors:
            raise NotFoundError(f"model {name!r} has no trained version",
                                hint=f"train it with `featurestore train {name} --labels FILE`")
        if not recorded:
            continue
        keys = lambda entity: tuple((k.name, k.dtype) for k in defs.get("entity", entity).join_keys)
        out.append(ModelInfo(
            name=name,
            label=spec.label,
            objective=str(next(iter(recorded.values())).metrics.get("objective", spec.objective)),
            slice_column=spec.slice_column,
            versions=recorded,
            user_keys=keys(spec.user_entity),
            item_keys=keys(spec.item_entity),
        ))
    return out


def reference_loss(version: ModelVersion) -> tuple[str, float | None]:
    """("validation", loss) when the version recorded a held-out loss, else ("training", loss)."""
    for key in VALIDATION_KEYS:
        value = version.metrics.get(key)
        if isinstance(value, (int, float)):
            return "validation", float(value)
    value = version.metrics.get("loss")
    return "training", (float(value) if isinstance(value, (int, float)) else None)


def sealed_through(context: ServiceContext, model: str) -> int:
    """Every feedback seq up to this is in the model's sealed Parquet files (0: none)."""
    path = context.feedback_dir(model) / "_export.json"
    if not path.is_file():
        return 0
    return int(json.loads(path.read_text()).get("sealed_through", 0))


def key_sql(keys: tuple[tuple[str, str], ...]) -> str | None:
    """A DuckDB expression giving the log's text form of an entity key from its join key
    columns (``encode_entity_key``: integers in decimal, ``\\`` and ``|`` escaped, ``|`` between
    parts); None for a dtype it cannot spell (bytes keys)."""
    parts = []
    for name, dtype in keys:
        column = '"' + name.replace('"', '""') + '"'
        if dtype in _INT_DTYPES:
            parts.append(f"CAST({column} AS VARCHAR)")
        elif dtype == "string":
            parts.append(f"replace(replace({column}, '\\', '\\\\'), '|', '\\|')")
        else:
            return None
    return " || '|' || ".join(parts)


def observations(
    con: duckdb.DuckDBPyConnection, context: ServiceContext, infos: list[ModelInfo], window: Window,
) -> dict[str, Any]:
    """Register the view ``obs`` (see the module docstring) for these models, versions and
    window; returns what was read from where (``parquet_through``, ``tail_rows``)."""
    parts: list[str] = []
    stats: dict[str, Any] = {"parquet_through": {}, "tail_rows": {}}
    for n, info in enumerate(infos):
        sealed = sealed_through(context, info.name)
        versions = ", ".join(str(v) for v in info.versions)
        files = _parquet_files(context.feedback_dir(info.name))
        user_sql, item_sql = key_sql(info.user_keys), key_sql(info.item_keys)
        if sealed and files and user_sql and item_sql:
            stats["parquet_through"][info.name] = sealed
            label = '"' + info.label.replace('"', '""') + '"'
            where = [f"seq <= {sealed}", f"model_version IN ({versions})", "prediction IS NOT NULL"]
            where += _ts_filter("event_timestamp", window)
            parts.append(
                f"SELECT {_quote(info.name)} AS model, CAST(model_version AS BIGINT) AS version, "
                f"CAST(seq AS BIGINT) AS seq, event_timestamp AS ts, {user_sql} AS user_key, "
                f"{item_sql} AS item_key, CAST({label} AS DOUBLE) AS label, prediction, baseline, slice "
                f"FROM read_parquet({_quote_list(files)}, union_by_name = true) WHERE {' AND '.join(where)}"
            )
        else:
            sealed = 0
        tail = _tail(context, info, sealed, window)
        stats["tail_rows"][info.name] = tail.num_rows
        con.register(f"_tail_{n}", tail)
        parts.append(f"SELECT * FROM _tail_{n}")
    if not parts:
        con.register("_empty", OBS_SCHEMA.empty_table())
        parts.append("SELECT * FROM _empty")
    union = " UNION ALL ".join(f"({p})" for p in parts)
    con.execute(
        "CREATE OR REPLACE TEMP VIEW obs AS SELECT *, "
        "CASE WHEN slice IS NULL THEN NULL ELSE split_part(slice, '|', 1) END AS cohort, "
        "CASE WHEN strpos(slice, '|') > 0 THEN substr(slice, strpos(slice, '|') + 1) END AS slice_value "
        f"FROM ({union})"
    )
    return stats


def known_items(con: duckdb.DuckDBPyConnection, context: ServiceContext, infos: list[ModelInfo]) -> dict[str, str]:
    """Register the tables ``known_items(model, version, item_key)``, the items each version
    was trained on, and ``item_versions(model, version)``, the versions for which that is known.

    The items of a version are those of the labels kept with it (``featurestore train`` keeps
    them beside the artifact) plus those of the model's feedback received before the version
    was created (what a retrain learns from). A version with neither (trained from the
    SDK, no earlier feedback) is not in ``item_versions``: its rows get no item slice rather than
    all counting as new. Returns, per model, where the item sets came from."""
    import pyarrow.parquet as pq

    frames: list[pa.Table] = []
    covered: list[tuple[str, int]] = []
    origin: dict[str, str] = {}
    for info in infos:
        item_sql = key_sql(info.item_keys)
        sources: list[str] = []
        for version, recorded in info.versions.items():
            keys: set[str] = set()
            found = False
            labels = context.artifact_dir(info.name, version) / "labels.parquet"
            if labels.is_file() and item_sql:
                names = [k for k, _ in info.item_keys]
                if all(n in pq.read_schema(labels).names for n in names):
                    rows = con.execute(
                        f"SELECT DISTINCT {item_sql} FROM read_parquet({_quote(str(labels))})"
                    ).fetchall()
                    keys.update(r[0] for r in rows)
                    sources.append("kept training labels")
                    found = True
            before = _feedback_items_before(context, info.name, version, recorded.created_at)
            if before:
                keys.update(before)
                sources.append("feedback before training")
                found = True
            if found:
                covered.append((info.name, version))
            frames.append(pa.table({
                "model": pa.array([info.name] * len(keys), pa.string()),
                "version": pa.array([version] * len(keys), pa.int64()),
                "item_key": pa.array(sorted(keys), pa.string()),
            }))
        missing = [v for v in info.versions if (info.name, v) not in covered]
        text = " + ".join(dict.fromkeys(sources)) or "nowhere"
        if missing:
            text += (f"; version(s) {', '.join(map(str, missing))}: training items unknown (no kept labels, "
                     "no earlier feedback), so no item slice")
        origin[info.name] = text
    schema = pa.schema([("model", pa.string()), ("version", pa.int64()), ("item_key", pa.string())])
    con.register("_known_items", pa.concat_tables(frames) if frames else schema.empty_table())
    con.execute("CREATE OR REPLACE TEMP TABLE known_items AS SELECT DISTINCT * FROM _known_items")
    con.register("_item_versions", pa.table({
        "model": pa.array([m for m, _ in covered], pa.string()),
        "version": pa.array([v for _, v in covered], pa.int64()),
    }))
    con.execute("CREATE OR REPLACE TEMP TABLE item_versions AS SELECT * FROM _item_versions")
    return origin


# -- helpers -------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote_list(items: list[str]) -> str:
    return "[" + ", ".join(_quote(i) for i in items) + "]"


def _ts_filter(column: str, window: Window) -> list[str]:
    out = []
    if window.start is not None:
        out.append(f"{column} >= TIMESTAMPTZ {_quote(window.start.isoformat())}")
    if window.end is not None:
        out.append(f"{column} < TIMESTAMPTZ {_quote(window.end.isoformat())}")
    return out


def _parquet_files(directory: Path) -> list[str]:
    return sorted(str(p) for p in directory.glob("date=*/*.parquet")) if directory.is_dir() else []


def _tail(context: ServiceContext, info: ModelInfo, after_seq: int, window: Window) -> pa.Table:
    import sqlalchemy as sa

    from registry import tables as t

    f = t.feedback
    query = sa.select(
        f.c.model_version, f.c.seq, f.c.event_ts, f.c.user_key, f.c.item_key, f.c.label, f.c.prediction,
        f.c.baseline, f.c.slice,
    ).where(
        f.c.project == context.project, f.c.model == info.name, f.c.model_version.in_(list(info.versions)),
        f.c.seq > after_seq, f.c.prediction.is_not(None),
    )
    if window.start is not None:
        query = query.where(f.c.event_ts >= window.start)
    if window.end is not None:
        query = query.where(f.c.event_ts < window.end)
    with context.engine.connect() as conn:
        rows = conn.execute(query).all()
    columns = list(zip(*rows)) if rows else [()] * 9
    return pa.table(
        [
            pa.array([info.name] * len(rows), pa.string()),
            pa.array(columns[0], pa.int64()),
            pa.array(columns[1], pa.int64()),
            pa.array([_utc(v) for v in columns[2]], pa.timestamp("us", tz="UTC")),
            pa.array(columns[3], pa.string()),
            pa.array(columns[4], pa.string()),
            pa.array(columns[5], pa.float64()),
            pa.array(columns[6], pa.float64()),
            pa.array(columns[7], pa.float64()),
            pa.array(columns[8], pa.string()),
        ],
        schema=OBS_SCHEMA,
    )


def _feedback_items_before(context: ServiceContext, model: str, version: int, before: datetime) -> set[str]:
    # Feedback received before a version existed went to earlier versions: the (model, version)
    # index prefix keeps this from scanning the version's own rows.
    import sqlalchemy as sa

    from registry import tables as t

    f = t.feedback
    with context.engine.connect() as conn:
        return set(conn.execute(
            sa.select(f.c.item_key).distinct().where(
                f.c.project == context.project, f.c.model == model, f.c.model_version < version,
                f.c.received_at < before,
            )
        ).scalars())


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
