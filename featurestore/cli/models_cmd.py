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
    retrain.add_argument(
        "--activate", choices=("if-no-worse", "always", "never"), default="if-no-worse",
        help="activate the new version: when its validation loss is no worse than the active version's "
        "recent feedback loss (default), always, or never (compare, then `models activate`)",
    )
    retrain.add_argument(
        "--tolerance", type=float, default=0.0,
        help="with if-no-worse: accept a validation loss up to this fraction worse (default 0)",
    )
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
                    feature_job=not args.no_feature_job, activate=args.activate, tolerance=args.tolerance)
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
            f"Model {s.model!r} version {s.version} ({s.loss_name}): training loss {_num(s.training_loss)}"
            + (f", validation loss {_num(s.baseline_loss)}" if s.baseline == "validation" else "") + "; "
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
    if retrains:  # judged stale on min_observations: the new version is compared on as many
        retrain(store, args.model, min_observations=args.min_observations)
    return 0


def retrain(store, model: str, *, labels=None, timestamp_column: str = "event_timestamp",  # type: ignore[no-untyped-def]
            feature_job: bool = True, activate: str = "if-no-worse", tolerance: float = 0.0,
            min_observations: int = 100) -> object:
    """Close the loop: export the feedback, re-learn the item features that feed ``model`` from
    their source plus the logged feedback (feature job + materialization), train a new version
    on the original labels plus the feedback, and activate it when it is no worse
    (``decide_activation``). A version not activated leaves the previous item features served."""
    from featurestore.feedback.export import (
        EVENT_TS,
        export_feedback,
        retrain_labels,
        save_training_labels,
        training_labels,
    )
    from featurestore.models.training import read_labels, train_model
    from registry.errors import UserError

    if activate not in ("if-no-worse", "always", "never"):
        raise UserError(f"activate must be if-no-worse, always or never, got {activate!r}")
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
    previous: dict[str, object] = {}
    features_at = None
    if feature_job:
        previous, features_at = _rerun_feature_jobs(store, model)
    # The item features a feature job learned are joined as of the training (training.py), so
    # every row, old label or feedback, sees the ones the new version is served with.
    table = retrain_labels(store.context, model, original)
    result = train_model(store.context, model, table, timestamp_column=EVENT_TS,
                         export=store.get_training_dataset, activate=False)
    save_training_labels(store.context, model, result.version, original, EVENT_TS)
    ok, reason = decide_activation(store, model, active, result.metrics, activate, tolerance, min_observations)
    if ok:
        store.activate_model(model, result.version)
        result = _replace(result, active=True)
    print(result.summary())
    if ok:
        print(f"Activated version {result.version}: {reason}.")
    else:
        print(f"Kept version {active} active: {reason}; `featurestore models activate {model} {result.version}` "
              "serves the new one (after re-running the feature job).")
        if previous:
            _restore_feature_jobs(store, previous, features_at)
    return result


def decide_activation(store, model: str, active, metrics, policy: str, tolerance: float,  # type: ignore[no-untyped-def]
                      min_observations: int = 100) -> tuple[bool, str]:
    """(activate?, why). ``if-no-worse``: the new version's validation loss (each user's newest
    rows, held out) against the active version's loss on its recent feedback (the last 1,000
    observations, scored before they were learned: also held out), or its own validation loss
    when fewer than ``min_observations`` were logged; worse by more than ``tolerance`` (a
    fraction) keeps it."""
    if policy == "always":
        return True, "--activate always"
    if policy == "never":
        return False, "--activate never"
    if active is None:
        return True, "no version was active"
    new = metrics.get("validation_loss")
    if new is None:
        return True, "the new version has no validation loss to compare (no user has two rows)"
    from featurestore.feedback import model_status

    status = model_status(store.context, model, active, min_observations=min_observations)
    if status.recent.count >= min_observations and status.recent.personalised is not None:
        old, what = status.recent.personalised, f"version {active}'s loss on its last {status.recent.count:,} feedback observations"
    else:
        old = store.model_versions.get(model, active).metrics.get("validation_loss")
        what = f"version {active}'s validation loss"
    if old is None:
        return True, f"version {active} has no loss to compare with"
    verdict = new <= old * (1.0 + tolerance)
    return verdict, f"validation loss {new:.4f} {'<=' if verdict else '>'} {what} {old:.4f}" + (
        f" x (1 + {tolerance:g})" if tolerance else "")


def _replace(result, **changes):  # type: ignore[no-untyped-def]
    from dataclasses import replace

    return replace(result, **changes)


def _rerun_feature_jobs(store, model: str):  # type: ignore[no-untyped-def]
    """Run every feature job feeding one of the model's item views on its source plus the
    model's logged feedback, and materialize its views. Returns (job -> its previous output
    table, to restore if the new version is not activated; the newest event time written)."""
    import pyarrow.parquet as pq

    from featurestore.feedback.export import feedback_interactions
    from featurestore.models.feature_job import run_feature_job, views_fed_by
    from featurestore.models.state_store import ModelLayout

    defs = store.definitions()
    layout = ModelLayout.from_spec(defs, defs.get("model", model))
    item_views = {b.view for b in layout.item}
    extra = feedback_interactions(store.context, model)
    previous: dict[str, object] = {}
    newest = None
    for name, job in sorted(defs.feature_jobs.items()):
        if not item_views & set(views_fed_by(store.config, defs, job)):
            continue
        path = store.config.resolve(job.output)
        if path.is_file():
            previous[name] = pq.read_table(path)
        result = run_feature_job(store.config, store.watcher, name, extra=extra)
        print(result.summary())
        _materialize(store, result.views)
        newest = result.event_ts if newest is None else max(newest, result.event_ts)
    return previous, newest


def _restore_feature_jobs(store, previous, event_ts) -> None:  # type: ignore[no-untyped-def]
    """Serve the item features the active version was trained on again."""
    from featurestore.models.feature_job import restore_output, views_fed_by

    defs = store.definitions()
    for name, table in previous.items():
        restore_output(store.config, defs, name, table, event_ts)
        views = views_fed_by(store.config, defs, defs.get("feature_job", name))
        print(f"Restored the item features of feature job {name!r} (feeding {', '.join(views)}).")
        _materialize(store, views)


def _materialize(store, views) -> None:  # type: ignore[no-untyped-def]
    # The materializer is an outer layer (Beam); only this entry point may call it.
    from materializers.batch import materialize

    for summary in materialize(store, views=list(views), progress=False):
        print(f"  {summary.view}: materialized {summary.rows_online:,} rows online, {summary.rows_offline:,} offline")


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
