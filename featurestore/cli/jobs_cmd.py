"""`jobs run NAME [--no-materialize]` and `jobs list`: feature jobs (learned item factors)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    run = sub.add_parser(
        "run", help="run a feature job, then materialize the views it feeds",
        description="Factorise the job's interactions into item factors, write them to the job's "
        "output and materialize the feature views whose source is that file.",
    )
    run.add_argument("name", help="the feature job (a name under `feature_jobs:`)")
    run.add_argument(
        "--no-materialize", action="store_true",
        help="only write the output file; materialize later with `featurestore materialize`",
    )
    sub.add_parser("list", help="list the feature jobs and the views they feed", description="List the feature jobs.")


def run(args: argparse.Namespace) -> int:
    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    try:
        if args.action == "list":
            return _list(store)
        result = store.run_feature_job(args.name)
        print(result.summary())
        if args.no_materialize:
            print(f"Not materialized; run `featurestore materialize` for: {', '.join(result.views)}.")
            return 0
        # The materializer is an outer layer (Beam); only this entry point may call it.
        from materializers.batch import materialize

        for summary in materialize(store, views=list(result.views)):
            if summary.skipped:
                print(f"  {summary.view}: skipped ({summary.skipped})")
            else:
                print(
                    f"  {summary.view}: materialized {summary.rows_online:,} rows online, "
                    f"{summary.rows_offline:,} offline ({summary.rows_rejected:,} rejected)"
                )
        return 0
    finally:
        store.close()


def _list(store) -> int:  # type: ignore[no-untyped-def]
    from featurestore.models.feature_job import views_fed_by

    defs = store.definitions()
    if not defs.feature_jobs:
        print("No feature jobs are applied.")
        return 0
    for name, job in defs.feature_jobs.items():
        views = views_fed_by(store.config, defs, job) or ["(no view)"]
        print(f"  {name:24} {job.type}  {job.factors} factors from {job.source} -> {job.output}  feeds {', '.join(views)}")
    return 0
