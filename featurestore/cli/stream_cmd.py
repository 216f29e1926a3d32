"""`stream`: run the Beam streaming job, events -> online + offline stores, until stopped.

    featurestore stream                             every view with a stream_source
    featurestore stream user_clicks --consumer job-1
    featurestore stream -- --runner PortableRunner --job_endpoint localhost:8099 \
        --environment_type EXTERNAL --environment_config 127.0.0.1:50000

Ctrl-C or SIGTERM stops it after the micro-batch in hand (a second one at once); on a runner
whose workers are other processes, when the pipeline run in hand ends (docs/streaming.md,
"Other runners"). Everything after ``--`` goes to Beam's PipelineOptions unchanged, as for
``materialize``; so do options this command does not know when they come after the view names.
Beam is imported only in ``run``; ``materializers.stream.check_stream_options`` refuses what
cannot run the job.
"""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
Every duration takes 90s, 15m, 1h... Beam options go after `--`, as for `materialize`.
The default runner is Beam's in-process Python runner. See docs/streaming.md.
"""

# Options that may also appear after the view names: name -> (attribute, takes a value).
_OPTIONS = {
    "--consumer": ("consumer", True),
    "--window": ("window", True),
    "--grace": ("grace", True),
    "--allowed-lateness": ("lateness", True),
    "--max-entries": ("max_entries", True),
    "--block-ms": ("block_ms", True),
    "--stats-interval": ("stats_interval", True),
    "--claim-idle": ("claim_idle", True),
    "--generation": ("generation", True),
}


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument(
        "--consumer",
        default=None,
        help="this job's name in each view's consumer group (default: HOSTNAME-stream); a "
        "restarted job with the same name re-reads what it had not acknowledged",
    )
    parser.add_argument(
        "--window", default="1m", help="offline file window, a divisor of a day (default 1m)"
    )
    parser.add_argument(
        "--grace", default="5s", help="a window is written this long after it ends (default 5s)"
    )
    parser.add_argument(
        "--allowed-lateness",
        dest="lateness",
        default="1h",
        help="aggregations: events later than this after their window are dropped (default 1h)",
    )
    parser.add_argument(
        "--max-entries", type=int, default=4000, help="entries per read (default 4000)"
    )
    parser.add_argument(
        "--block-ms", type=int, default=100, help="how long a read waits for entries (default 100)"
    )
    parser.add_argument(
        "--stats-interval",
        default="10s",
        help="how often freshness is printed and stored (default 10s)",
    )
    parser.add_argument(
        "--claim-idle",
        default="5m",
        help="take over entries other consumers left unacknowledged this long (default 5m)",
    )
    parser.add_argument(
        "--generation",
        default="10m",
        help="start a fresh pipeline run this often, writing every buffered window (default 10m)",
    )
    parser.add_argument(
        "rest",
        nargs=argparse.REMAINDER,
        metavar="VIEW ... [-- BEAM_OPTION ...]",
        help="feature views to stream (default: all with a stream_source), then Beam options",
    )


def split_rest(rest: list[str]) -> tuple[list[str], dict[str, object], list[str]]:
    """``(views, our options, beam args)`` from what follows the first view name.

    >>> split_rest(["a", "--consumer", "j1", "b", "--", "--runner", "FlinkRunner"])
    (['a', 'b'], {'consumer': 'j1'}, ['--runner', 'FlinkRunner'])
    """
    from featurestore.cli.beam_args import split_rest as split

    return split(rest, _OPTIONS)


def _seconds(option: str, value: object) -> int:
    from registry.errors import ConfigError
    from registry.types import parse_duration

    try:
        return parse_duration(str(value))
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}", hint="e.g. 90s, 15m, 1h") from None


def options_from(args: argparse.Namespace) -> object:
    """The job's StreamOptions from parsed arguments."""
    from materializers.stream_plan import StreamOptions, default_consumer

    return StreamOptions(
        consumer=args.consumer or default_consumer(),
        window_seconds=_seconds("--window", args.window),
        grace_seconds=_seconds("--grace", args.grace),
        lateness_seconds=_seconds("--allowed-lateness", args.lateness),
        max_entries=int(args.max_entries),
        block_ms=int(args.block_ms),
        stats_seconds=float(_seconds("--stats-interval", args.stats_interval)) or 10.0,
        claim_idle_seconds=_seconds("--claim-idle", args.claim_idle),
        generation_seconds=float(_seconds("--generation", args.generation)) or 600.0,
    )


def run(args: argparse.Namespace) -> int:
    views, ours, beam_args = split_rest(list(args.rest or []))
    for key, value in ours.items():
        setattr(args, key, value)
    from featurestore.cli.materialize_cmd import _quiet_beam_logging

    if not getattr(args, "debug", False):
        _quiet_beam_logging()
    from featurestore.store import FeatureStore
    from materializers.stream import run_stream

    options = options_from(args)
    store = FeatureStore(args.repo)
    try:
        run_stream(store, views or None, options, pipeline_args=beam_args)  # type: ignore[arg-type]
    finally:
        store.close()
    sys.stdout.flush()
    return 0
