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


def definition_schema() -> dict:
    from registry.spec import DefinitionFile

    schema = DefinitionFile.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "featurestore definition file"
    return schema


def run(args: argparse.Namespace) -> int:
    text = json.dumps(definition_schema(), indent=2, sort_keys=True) + "\n"
    if args.out is None:
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"Wrote the JSON Schema to {args.out}.")
    return 0
