"""`init`: write a small, working example feature repository with generated data."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("directory", nargs="?", default="feature_repo", help="where to create it (default: feature_repo)")
    parser.add_argument("--project", default="demo", help="the project name (default: demo)")
    parser.add_argument("--force", action="store_true", help="write into a non-empty directory")


def run(args: argparse.Namespace) -> int:
    from featurestore.example.repo import small_config, write_example_repo

    summary = write_example_repo(
        Path(args.directory), project=args.project, config=small_config(), force=args.force
    )
    print(
        f"Created the example repository in {summary['path']} "
        f"({summary['ratings']:,} ratings by {summary['users']} users of {summary['items']} items)."
    )
    print("Next:")
    print(f"  featurestore -r {args.directory} validate")
    print(f"  featurestore -r {args.directory} apply")
    print(f"  featurestore -r {args.directory} registry show")
    return 0
