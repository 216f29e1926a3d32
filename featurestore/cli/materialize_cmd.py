"""`materialize`: run the Beam batch job, sources -> offline + online stores, view by view.

    featurestore materialize                         every view, from the epoch to now
    featurestore materialize user_activity --start 2026-01-01 --end 2026-02-01
    featurestore materialize --incremental           from each watermark minus the lookback
    featurestore materialize -- --runner FlinkRunner --flink_master localhost:8081

Everything after ``--`` goes to Beam's PipelineOptions unchanged; so do options this command
does not know when they come after the view names (``--runner=FlinkRunner``). Beam is imported
only in ``run``, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

EPILOG = """\
Beam options: put them after `--`, e.g.
  featurestore materialize -- --runner FlinkRunner --flink_master localhost:8081 \\
      --setup_file ./pyproject.toml
The default runner is Beam's in-process Python runner. See docs/materialization.md.
"""

# Options of this command that may also appear among the views (argparse stops at the first
# positional and leaves the rest to us).
_OPTIONS = {
    "--start": ("start", True),
    "--end": ("end", True),
    "--incremental": ("incremental", False),
    "--no-progress": ("no_progress", False),
}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--start",
        default=None,
        help="start of the event-time interval, ISO 8601, UTC unless it has an offset "
        "(default: the epoch)",
    )
    parser.add_argument("--end", default=None, help="end of the interval, exclusive (default: now)")
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="start each view at its watermark minus materialization.lookback (late data)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress on stderr")
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="VIEW ... [-- BEAM_OPTION ...]",
        help="feature views to materialize (default: all), then Beam pipeline options",
    )


def split_rest(rest: list[str]) -> tuple[list[str], dict[str, object], list[str]]:
    """``(views, our options, beam args)`` from what follows the first view name.

    >>> split_rest(["a", "--start", "2026-01-01", "b", "--", "--runner", "FlinkRunner"])
    (['a', 'b'], {'start': '2026-01-01'}, ['--runner', 'FlinkRunner'])
    """
    from featurestore.cli.beam_args import split_rest as split

    return split(rest, _OPTIONS)


class _DropApitools(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


_DROP_APITOOLS = _DropApitools()


def _quiet_beam_logging() -> None:
    """Beam logs a DoFn's error with its traceback before re-raising it, and warns about
    optional GCP clients at import; we report errors ourselves, in one line with a hint."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for handler in root.handlers:
        if _DROP_APITOOLS not in handler.filters:
            handler.addFilter(_DROP_APITOOLS)
    logging.getLogger("apache_beam").setLevel(logging.ERROR)
    logging.getLogger("apache_beam.runners.common").setLevel(logging.CRITICAL)
    logging.getLogger("apache_beam.runners.portability.fn_api_runner").setLevel(logging.CRITICAL)


def run(args: argparse.Namespace) -> int:
    views, ours, beam_args = split_rest(list(args.rest or []))
    for key, value in ours.items():
        setattr(args, key, value)
    if not getattr(args, "debug", False):
        _quiet_beam_logging()
    from featurestore.store import FeatureStore
    from materializers.batch import materialize
    from materializers.progress import format_summary

    store = FeatureStore(args.repo)
    try:
        summaries = materialize(
            store,
            views or None,
            start=args.start,
            end=args.end,
            incremental=args.incremental,
            pipeline_args=beam_args,
            progress=not args.no_progress,
        )
    finally:
        store.close()
    print(format_summary(summaries))
    sys.stdout.flush()
    return 0
