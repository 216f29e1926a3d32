"""`export`: a point-in-time correct training dataset as one Parquet file.

Progress goes to stderr (a redrawn bar on a terminal, a line per quarter otherwise); the summary
(rows, and per feature how many values were found) and any warnings go to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from featurestore.export import ExportSummary, TrainingDataset


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "--entities",
        required=True,
        metavar="PATH_OR_SQL",
        help="the entity rows (keys, timestamp, labels): a Parquet file, directory or glob, "
        "or a DuckDB query such as \"select * from read_csv('labels.csv')\"",
    )
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--features",
        nargs="+",
        metavar="REF",
        help="feature references, `view` or `view:feature`, separated by spaces or commas",
    )
    what.add_argument(
        "--service", metavar="NAME", help="export the features of this feature service"
    )
    parser.add_argument("--out", required=True, metavar="PATH", help="the Parquet file to write")
    parser.add_argument(
        "--timestamp-column",
        default="event_timestamp",
        metavar="COLUMN",
        help="the entity rows' time column; naive times are UTC (default: event_timestamp)",
    )
    parser.add_argument(
        "--exclude-created-after",
        action="store_true",
        help="ignore feature rows created after the entity row's time (backfills cannot leak)",
    )
    parser.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="cap DuckDB's memory, e.g. 2GB; beyond it the join spills to disk",
    )
    parser.add_argument(
        "--temp-directory",
        default=None,
        metavar="DIR",
        help="where DuckDB spills (default: a private temporary directory)",
    )
    parser.add_argument(
        "--full-names",
        action="store_true",
        help="name feature columns view__feature (needed when two views share a feature name)",
    )
    parser.add_argument("--no-progress", action="store_true", help="do not show progress on stderr")


def run(args: argparse.Namespace) -> int:
    from featurestore.store import FeatureStore

    features: list[str] | str = args.service or [
        ref.strip() for arg in args.features for ref in arg.split(",") if ref.strip()
    ]
    store = FeatureStore(args.repo)
    try:
        started = time.monotonic()
        dataset = store.get_training_dataset(
            args.entities,
            features,
            timestamp_column=args.timestamp_column,
            exclude_created_after=args.exclude_created_after,
            memory_limit=args.memory_limit,
            temp_directory=args.temp_directory,
            full_names=args.full_names,
        )
        with dataset:
            bar = (
                None
                if args.no_progress
                else ProgressBar(sys.stderr, f"export {dataset.num_rows:,} rows")
            )
            try:
                summary = dataset.to_parquet(args.out, progress=bar.update if bar else None)
            finally:
                if bar is not None:
                    bar.finish()
            seconds = time.monotonic() - started
            print(render_summary(summary, len(dataset.columns), seconds, dataset))
    finally:
        store.close()
    return 0


def render_summary(
    summary: ExportSummary, columns: int, seconds: float, dataset: TrainingDataset
) -> str:
    rate = f" ({summary.rows / seconds:,.0f} rows/s)" if seconds > 0 else ""
    lines = [
        (
            f"Wrote {summary.rows:,} rows x {columns} columns to {summary.path} "
            f"in {seconds:.1f} s{rate}."
        )
    ]
    if dataset.features:
        lines.append("Feature coverage (values found / rows):")
        width = max(len(f"{f.view}:{f.feature}") for f in dataset.features)
        for f in dataset.features:
            found = summary.coverage[f.column]
            share = f"{100.0 * found / summary.rows:5.1f}%" if summary.rows else "    -"
            name = f"{f.view}:{f.feature}"
            column = f"  -> {f.column}" if f.column != f.feature else ""
            lines.append(f"  {name:<{width}}  {found:>12,}  {share}{column}")
    lines.extend(f"warning: {w}" for w in summary.warnings)
    return "\n".join(lines)


class ProgressBar:
    """A one-line bar redrawn in place on a terminal; on a pipe, one line per quarter done."""

    WIDTH = 30

    def __init__(self, stream: TextIO, label: str) -> None:
        self._stream = stream
        self._label = label
        self._tty = stream.isatty()
        self._started = time.monotonic()
        self._next_quarter = 25
        self._drawn = False

    def update(self, percent: float) -> None:
        percent = max(0.0, min(100.0, percent))
        elapsed = time.monotonic() - self._started
        if self._tty:
            filled = int(self.WIDTH * percent / 100)
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self._stream.write(f"\r{self._label} [{bar}] {percent:5.1f}% {elapsed:6.1f}s")
            self._stream.flush()
            self._drawn = True
        elif percent >= self._next_quarter:
            while self._next_quarter <= percent:
                self._next_quarter += 25
            self._stream.write(f"{self._label}: {int(percent)}% ({elapsed:.1f} s)\n")
            self._stream.flush()

    def finish(self) -> None:
        if self._tty and self._drawn:
            self._stream.write("\n")
            self._stream.flush()
