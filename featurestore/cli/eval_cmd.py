"""`featurestore eval query|validation|compare|drift`: the evaluation store from the command line
(docs/evaluation.md). Each prints a table, or CSV / JSON with ``--format``."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime
from typing import Any

FORMATS = ("table", "csv", "json")
_WINDOW = ("a duration back from now (90s, 15m, 1h, 7d, 2w), START..END of ISO 8601 times "
           "(either side may be empty), or `all`")


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.description = (
        "Query the evaluation store: model quality from the logged predictions and feedback, per model "
        "version, slice and time window (docs/evaluation.md)."
    )
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    query = sub.add_parser(
        "query", help="metrics per model version and slice over a window",
        description="Metrics of each model version on each slice over a window: one row per (model, version, "
        "slice[, bucket]). Every loss metric has an _average_user twin (the average user's predictions on the "
        "same rows).",
    )
    query.add_argument("--model", "-m", action="append", default=None, metavar="MODEL[:VERSION]",
                       help="a model (every version) or one version, e.g. taste:2; repeat for more (default: every trained model)")
    query.add_argument("--metric", action="append", default=None, metavar="NAME",
                       help="count, mean_label, mean_prediction, mse, rmse, mae, log_loss, auc, training_loss, "
                       "validation_loss; repeat or comma-separate (default: count, mean_label, mean_prediction and "
                       "rmse + mae, or log_loss + auc for logistic models)")
    query.add_argument("--slice", action="append", default=None, metavar="NAME",
                       help="all, users (new/known), items (new/known), slice_column (the model's declared slice "
                       "column); repeat or comma-separate (default: all four)")
    query.add_argument("--window", default="7d", help=f"{_WINDOW} (default: 7d)")
    query.add_argument("--every", default=None, metavar="DURATION",
                       help="also group by time buckets of this size (e.g. 1d): loss over time")

    validation = sub.add_parser(
        "validation", help="how much worse than at training is each model over a window",
        description="Each model's active version (or the given ones): the loss over the window's feedback beside the "
        "loss it recorded at training (held-out validation loss when recorded, else the training loss), and the "
        "relative change.",
    )
    validation.add_argument("--model", "-m", action="append", default=None, metavar="MODEL[:VERSION]",
                            help="default: the active version of every model")
    validation.add_argument("--window", default="7d", help=f"{_WINDOW} (default: 7d)")

    compare = sub.add_parser(
        "compare", help="versions A and B of a model on every slice over the same window",
        description="Two versions of a model side by side on every slice over the same window: a row per "
        "(slice, metric) with both values and the difference B - A.",
    )
    compare.add_argument("model", help="the model")
    compare.add_argument("a", type=int, help="version A")
    compare.add_argument("b", type=int, help="version B")
    compare.add_argument("--metric", action="append", default=None, metavar="NAME", help="as for `eval query`")
    compare.add_argument("--slice", action="append", default=None, metavar="NAME", help="as for `eval query`")
    compare.add_argument("--window", default="7d", help=f"{_WINDOW} (default: 7d)")

    drift = sub.add_parser(
        "drift", help="features drifted in a window, weighted by how much the model uses them",
        description="Per coordinate of the model's x: the Kolmogorov-Smirnov distance between the vectors served "
        "in the window and a reference, times |w| of the average user; most drifted first.",
    )
    drift.add_argument("model", help="the model")
    drift.add_argument("--version", type=int, default=None, help="default: the active version")
    drift.add_argument("--window", default="1h", help=f"{_WINDOW} (default: 1h)")
    drift.add_argument("--reference", default=None,
                       help="START..END, or a duration meaning that long just before the window "
                       "(default: what the version served in its first day)")

    for p in (query, validation, compare, drift):
        p.add_argument("--format", choices=FORMATS, default="table", help="table (default), csv or json")


def run(args: argparse.Namespace) -> int:
    from featurestore.evaluation import (
        compare_versions,
        drift_vs_validation,
        evaluate,
        feature_drift,
        notes_of,
    )
    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    try:
        if args.action == "query":
            table = evaluate(store, models=_flat(args.model), metrics=_flat(args.metric), slices=_flat(args.slice),
                             window=args.window, every=args.every)
            header = f"window {_meta(table, 'window')}"
            notes = notes_of(table)
        elif args.action == "validation":
            table = drift_vs_validation(store, models=_flat(args.model), window=args.window)
            header, notes = f"window {_meta(table, 'window')}", []
        elif args.action == "compare":
            table = compare_versions(store, args.model, args.a, args.b, window=args.window,
                                     metrics=_flat(args.metric), slices=_flat(args.slice))
            header = f"model {args.model!r}: a = version {args.a}, b = version {args.b}; window {_meta(table, 'window')}"
            notes = notes_of(table)
        else:
            table = feature_drift(store, args.model, window=args.window, reference=args.reference, version=args.version)
            score = _meta(table, "weighted_drift")
            header = (
                f"model {args.model!r} version {_meta(table, 'version')}: {_meta(table, 'window_vectors')} vectors in "
                f"{_meta(table, 'window')} vs {_meta(table, 'reference_vectors')} in the reference "
                f"({_meta(table, 'reference')}: {_meta(table, 'reference_window')}); "
                f"weighted drift {float(score):.4f}" if score else "weighted drift: no vectors to compare"
            )
            notes = []
        emit(table.to_pylist(), table.column_names, args.format, header=header, notes=notes)
    finally:
        store.close()
    return 0


def emit(rows: list[dict[str, Any]], columns: list[str], fmt: str, *, header: str = "", notes: list[str] = (),
         out: Any = None) -> None:
    """Print rows as an aligned table, CSV or JSON (``{"rows", "notes", "about"}``)."""
    out = out or sys.stdout
    if fmt == "json":
        json.dump({"about": header, "notes": list(notes), "rows": [{k: _plain(r[k]) for k in columns} for r in rows]},
                  out, indent=2)
        out.write("\n")
        return
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r[k] is None else _plain(r[k]) for k in columns])
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        return
    if header:
        print(header, file=out)
    cells = [[_cell(r[k]) for k in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r[k], (int, float)) or r[k] is None for r in rows) for k in columns]
    line = lambda vals: "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(vals, widths, numeric)).rstrip()
    print(line(columns), file=out)
    for row in cells:
        print(line(row), file=out)
    if not rows:
        print("(no rows: nothing logged in this window)", file=out)
    for note in notes:
        print(f"note: {note}", file=out)


def _flat(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _meta(table: Any, key: str) -> str:
    return ((table.schema.metadata or {}).get(key.encode(), b"")).decode()


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)
