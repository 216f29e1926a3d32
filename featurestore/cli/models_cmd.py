"""`train MODEL --labels FILE` and `models list|show|activate|rollback|status|replay|retrain|export-feedback MODEL`.

``retrain`` is an entry point, so it may run the materializer (an outer layer): it re-runs the
feature job feeding the model's item features, re-materializes that view, then trains on the
original labels plus the logged feedback (docs/feedback.md).
"""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    if verb == "train":
        parser.add_argument("model", help="the model to train (a name under `models:`)")
        parser.add_argument(
            "--labels", required=True,
            help="Parquet labels: user and item join keys, the model's label, a timestamp and any request features",
        )
        parser.add_argument(
            "--timestamp-column", default="event_timestamp",
            help="the labels' timestamp column (default: event_timestamp); features are joined as of it",
        )
        return
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="list a model's versions", description="List a model's versions; * marks the active one.")
    listing.add_argument("model")
    show = sub.add_parser("show", help="show one version", description="Show a version's metrics, data range, artifact and features.")
    show.add_argument("model")
    show.add_argument("--version", type=int, default=None, help="default: the active version")
    show.add_argument("--json", action="store_true", help="print JSON")
    activate = sub.add_parser(
        "activate", help="serve a version", description="Make a version the one served (servers switch within a second)."
    )
    activate.add_argument("model")
    activate.add_argument("version", type=int)
    rollback = sub.add_parser(
        "rollback", help="serve the previous version", description="Activate the version before the active one."
    )
    rollback.add_argument("model")
    status = sub.add_parser(
        "status", help="feedback quality and the stale flag",
        description="Loss of the personalised and the average-user predictions on the logged feedback "
        "(overall, recent, per slice), from the feedback log; stale when the recent loss is above the "
        "training loss by the model's stale_margin. A stale model with auto_retrain is retrained.",
    )
    status.add_argument("model")
    status.add_argument("--version", type=int, default=None, help="default: the active version")
    status.add_argument("--window", type=int, default=1_000, help="recent observations compared (default 1000)")
    status.add_argument("--min-observations", type=int, default=100, help="fewer recent ones never flag (default 100)")
    status.add_argument("--no-retrain", action="store_true", help="do not retrain, even with auto_retrain")
    status.add_argument("--json", action="store_true", help="print JSON")
    replay_p = sub.add_parser(
        "replay", help="rebuild user states from the trained states and the feedback log",
        description="Rebuild every user's state of a version from its training artifact plus the logged "
        "feedback of that version, in log order, and write the ones that differ (e.g. after Redis was lost). "
        "Pause feedback for the model while it runs.",
    )
    replay_p.add_argument("model")
    replay_p.add_argument("--version", type=int, default=None, help="default: the active version")
    replay_p.add_argument("--check", action="store_true", help="only report how many states differ; write nothing")
    retrain = sub.add_parser(
        "retrain", help="re-learn item features and retrain on the labels plus the feedback",
        description="Export the feedback, re-run the feature job feeding the model's item view (if any) and "
        "re-materialize that view, then train a new version on the original labels plus the logged feedback.",
    )
    retrain.add_argument("model")
    retrain.add_argument(
        "--labels", default=None,
        help="the original labels (default: the ones kept with the active version by `train`)",
    )
    retrain.add_argument("--timestamp-column", default="event_timestamp", help="of --labels (default event_timestamp)")
    retrain.add_argument("--no-feature-job", action="store_true", help="keep the current item features")
    export = sub.add_parser(
        "export-feedback", help="write the feedback log's offline Parquet view",
        description="Write the model's logged feedback to {offline}/{project}/_feedback/MODEL/date=.../seq-....parquet "
        "(idempotent: re-running writes the same files).",
    )
    export.add_argument("model")
    export.add_argument("--delay", type=float, default=0.0, help="only rows received at least this many seconds ago")


def run(args: argparse.Namespace) -> int:
    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    try:
        if args.verb == "train":
            return _train(store, args)
        if args.action == "list":
            return _list(store, args.model)
        if args.action == "show":
            return _show(store, args)
        if args.action == "activate":
            store.activate_model(args.model, args.version)
            print(f"Model {args.model!r}: version {args.version} is now active.")
            return 0
        if args.action == "status":
            return _status(store, args)
        if args.action == "replay":
            from featurestore.feedback import replay

            print(replay(store.context, args.model, args.version, write=not args.check).summary())
            return 0
        if args.action == "retrain":
            retrain(store, args.model, labels=args.labels, timestamp_column=args.timestamp_column,
                    feature_job=not args.no_feature_job)
            return 0
        if args.action == "export-feedback":
            from featurestore.feedback.export import export_feedback

            print(export_feedback(store.context, args.model, delay_seconds=args.delay).summary())
            return 0
        version = store.rollback_model(args.model)
        print(f"Model {args.model!r}: rolled back to version {version}.")
        return 0
    finally:
        store.close()


def _train(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from featurestore.feedback.export import save_training_labels

    result = store.train(args.model, args.labels, timestamp_column=args.timestamp_column)
    print(result.summary())
    # Kept so that `models retrain` can re-train on these labels plus the logged feedback.
    save_training_labels(store.context, args.model, result.version, args.labels, args.timestamp_column)
    return 0


def _status(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from featurestore.feedback import model_status

    s = model_status(store.context, args.model, args.version, window=args.window, min_observations=args.min_observations)
    retrains = s.stale and s.auto_retrain and not args.no_retrain
    if args.json:
        print(json.dumps({**s.to_dict(), "retraining": retrains}, indent=2, sort_keys=True))
    else:
        print(
            f"Model {s.model!r} version {s.version} ({s.loss_name}): training loss {_num(s.training_loss)}; "
            f"stale above {_num(s.threshold)} (stale_margin {s.stale_margin:g}) over the last {s.window:,} "
            f"observations (at least {s.min_observations:,})."
        )
        print(f"  {'feedback':32}  {'count':>9}  {'personalised':>12}  {'average user':>12}")
        rows = [("all", s.overall), (f"recent (last {s.window:,})", s.recent), *s.slices.items()]
        for name, summary in rows:
            print(f"  {name:32}  {summary.count:>9,}  {_num(summary.personalised):>12}  {_num(summary.average_user):>12}")
        if not s.stale:
            print("Status: ok.")
        elif retrains:
            print(f"Status: STALE; auto_retrain is on: retraining {s.model!r} now.")
        else:
            print(f"Status: STALE; run `featurestore models retrain {s.model}`"
                  + (" (or `models status` without --no-retrain)." if s.auto_retrain else "."))
    if retrains:
        retrain(store, args.model)
    return 0


def retrain(store, model: str, *, labels=None, timestamp_column: str = "event_timestamp",  # type: ignore[no-untyped-def]
            feature_job: bool = True) -> object:
    """Export the feedback, re-learn the item features that feed ``model`` (feature job +
    materialization), then train a new version on the original labels plus the feedback."""
    from featurestore.feedback.export import (
        EVENT_TS,
        JOIN_TS,
        export_feedback,
        retrain_labels,
        save_training_labels,
        training_labels,
    )
    from featurestore.models.training import read_labels
    from registry.errors import UserError

    defs = store.definitions()
    defs.get("model", model)
    active = store.model_versions.active_versions().get(model)
    print(export_feedback(store.context, model).summary())
    if labels is not None:
        original = read_labels(labels)
        if timestamp_column != EVENT_TS:
            original = original.drop_columns([c for c in original.column_names if c == EVENT_TS])
            original = original.rename_columns([EVENT_TS if c == timestamp_column else c for c in original.column_names])
    else:
        original = training_labels(store.context, model, active) if active is not None else None
        if original is None:
            raise UserError(
                f"model {model!r} has no saved training labels"
                + (f" for its active version {active}" if active is not None else ""),
                hint=f"pass the original labels: `featurestore models retrain {model} --labels FILE`",
            )
    features_after = None
    if feature_job:
        features_after = _rerun_feature_jobs(store, model)
    table = retrain_labels(store.context, model, original, features_after=features_after)
    result = store.train(model, table, timestamp_column=JOIN_TS if features_after is not None else EVENT_TS)
    save_training_labels(store.context, model, result.version, original, EVENT_TS)
    print(result.summary())
    return result


def _rerun_feature_jobs(store, model: str):  # type: ignore[no-untyped-def]
    """Run every feature job feeding one of the model's item views and materialize its views;
    the newest event time of the features written (None when no job feeds the model)."""
    from featurestore.models.feature_job import views_fed_by
    from featurestore.models.state_store import ModelLayout

    defs = store.definitions()
    layout = ModelLayout.from_spec(defs, defs.get("model", model))
    item_views = {b.view for b in layout.item}
    newest = None
    for name, job in sorted(defs.feature_jobs.items()):
        if not item_views & set(views_fed_by(store.config, defs, job)):
            continue
        result = store.run_feature_job(name)
        print(result.summary())
        # The materializer is an outer layer (Beam); only this entry point may call it.
        from materializers.batch import materialize

        for summary in materialize(store, views=list(result.views), progress=False):
            print(f"  {summary.view}: materialized {summary.rows_online:,} rows online, {summary.rows_offline:,} offline")
        newest = result.event_ts if newest is None else max(newest, result.event_ts)
    return newest


def _list(store, model: str) -> int:  # type: ignore[no-untyped-def]
    store.definitions().get("model", model)
    versions = store.model_versions.list(model)
    if not versions:
        print(f"Model {model!r} has no versions yet: run `featurestore train {model} --labels FILE`.")
        return 0
    active = store.model_versions.active_versions().get(model)
    print(f"  {'version':>7}  {'created (UTC)':19}  {'registry':>8}  {'rows':>9}  {'loss':>9}  {'avg user':>9}  data")
    for v in versions:
        mark = "*" if v.version == active else " "
        rows = v.metrics.get("rows")
        loss, base = v.metrics.get("loss"), v.metrics.get("loss_average_user")
        span = f"{_day(v.data_start)} .. {_day(v.data_end)}"
        print(
            f"{mark} {v.version:>7}  {v.created_at:%Y-%m-%d %H:%M:%S}  {v.registry_version:>8}  "
            f"{rows if rows is not None else '-':>9}  {_num(loss):>9}  {_num(base):>9}  {span}"
        )
    return 0


def _show(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    from registry.errors import NotFoundError

    store.definitions().get("model", args.model)
    version = args.version
    active = store.model_versions.active_versions().get(args.model)
    if version is None:
        if active is None:
            raise NotFoundError(
                f"model {args.model!r} has no active version",
                hint=f"train it with `featurestore train {args.model} --labels FILE`",
            )
        version = active
    v = store.model_versions.get(args.model, version)
    body = {
        "model": v.model,
        "version": v.version,
        "active": v.version == active,
        "created_at": v.created_at.isoformat(),
        "registry_version": v.registry_version,
        "data_start": v.data_start.isoformat() if v.data_start else None,
        "data_end": v.data_end.isoformat() if v.data_end else None,
        "metrics": v.metrics,
        "artifact": v.artifact,
    }
    from pathlib import Path

    manifest = Path(v.artifact) / "manifest.json" if v.artifact else None
    if manifest is not None and manifest.is_file():
        body["columns"] = json.loads(manifest.read_text())["layout"]["columns"]
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    for key, value in body.items():
        if key == "metrics":
            print("metrics:")
            for name, metric in sorted(value.items()):
                print(f"  {name}: {metric}")
        elif key == "columns":
            print(f"columns ({len(value)}): {', '.join(value)}")
        else:
            print(f"{key}: {value}")
    return 0


def _day(value) -> str:  # type: ignore[no-untyped-def]
    return f"{value:%Y-%m-%d}" if value is not None else "-"


def _num(value) -> str:  # type: ignore[no-untyped-def]
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"
