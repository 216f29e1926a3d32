"""`train MODEL --labels FILE` and `models list|show|activate|rollback MODEL`."""

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
        version = store.rollback_model(args.model)
        print(f"Model {args.model!r}: rolled back to version {version}.")
        return 0
    finally:
        store.close()


def _train(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    result = store.train(args.model, args.labels, timestamp_column=args.timestamp_column)
    print(result.summary())
    return 0


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
