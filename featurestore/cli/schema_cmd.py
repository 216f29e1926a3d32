"""`schema`: write the JSON Schema of definition files, for editors (YAML language server)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument(
        "-o", "--out", default=None,
        help="write to this file (default: standard output). Point editors at it with "
        "`# yaml-language-server: $schema=PATH` at the top of a definition file",
    )


def run(args: argparse.Namespace) -> int:
    from registry.spec import definition_schema

    text = json.dumps(definition_schema(), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"Wrote the JSON Schema to {args.out}.")
    return 0
