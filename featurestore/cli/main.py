"""Entry point of the ``featurestore`` command.

Start-up must stay fast (`--help`, `validate` and `plan` answer well under a second), so only the
module of the verb being run is imported, and verb modules import heavy libraries (Beam, DuckDB,
scikit-learn, FastAPI) inside their ``run``. Exit codes: 0 ok, 1 user error, 2 internal error.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from typing import Sequence

# verb -> (module, one-line help). Every module has add_arguments(parser) and run(args) -> int.
VERBS: dict[str, tuple[str, str]] = {
    "init": ("featurestore.cli.init_cmd", "create a repository: the working example (default) or a blank one"),
    "validate": ("featurestore.cli.registry_cmd", "check the YAML definitions, listing every problem"),
    "plan": ("featurestore.cli.registry_cmd", "show what `apply` would change in the registry"),
    "apply": ("featurestore.cli.registry_cmd", "write the definitions as a new registry version"),
    "registry": ("featurestore.cli.registry_cmd", "inspect and upgrade the registry (versions, show, upgrade)"),
    "schema": ("featurestore.cli.schema_cmd", "write the JSON Schema of the definition files"),
    "materialize": ("featurestore.cli.materialize_cmd", "run the Beam batch job: sources -> offline + online stores"),
    "export": ("featurestore.cli.export_cmd", "export a point-in-time correct training dataset"),
    "serve": ("featurestore.cli.serve_cmd", "run the online HTTP server"),
    "stream": ("featurestore.cli.stream_cmd", "run the Beam streaming job: events -> online + offline stores"),
    "demo": ("featurestore.cli.demo_cmd", "run the whole flow on a generated example, then print a report"),
    "token": ("featurestore.cli.token_cmd", "bearer tokens of the server: create (prints it once), list, revoke"),
    "jobs": ("featurestore.cli.jobs_cmd", "run feature jobs (learned item factors) and materialize their views"),
    "train": ("featurestore.cli.models_cmd", "train a per-user linear model as a new version"),
    "eval": ("featurestore.cli.eval_cmd", "query the evaluation store: model quality per version, slice and window; drift"),
    "ui": ("featurestore.cli.ui_cmd", "serve the web console: registry, lineage, freshness, model quality"),
    "online": ("featurestore.cli.online_cmd", "online store operations: move-to-cluster (copy a single Redis into a Redis Cluster)"),
    "models": ("featurestore.cli.models_cmd", "model versions and feedback: list, show, activate, rollback, status, replay, retrain, export-feedback"),
}

EPILOG = "Run `featurestore VERB --help` for a verb's options. Docs: docs/reference/cli.md and README.md"


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``verb``'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(
        prog="featurestore",
        description="A Velox-style feature store: YAML definitions, Beam materialization, "
        "point-in-time export and online per-user models.",
        epilog=EPILOG,
    )
    _add_common(parser)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name, (module, help_text) in VERBS.items():
        verb_parser = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(verb_parser, suppress=True)
        if name == verb:
            importlib.import_module(module).add_arguments(verb_parser, name)
    return parser


def _add_common(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    # Accepted before and after the verb; the verb's copy must not reset the global value.
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "-r", "--repo", default=default if suppress else ".",
        help="the feature repository (a directory with featurestore.yaml); default: here",
    )
    parser.add_argument(
        "--debug", action="store_true", default=default if suppress else False,
        help="show the full traceback of an error",
    )


def _find_verb(argv: Sequence[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in ("-r", "--repo"):
            skip = True
            continue
        if not arg.startswith("-"):
            return arg if arg in VERBS else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verb = _find_verb(argv)
    parser = build_parser(verb)
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 1
    from registry.errors import FeatureStoreError

    try:
        module = importlib.import_module(VERBS[args.verb][0])
        return int(module.run(args) or 0)
    except FeatureStoreError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence turns a crash into one line
        if args.debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"internal error: {type(exc).__name__}: {first}", file=sys.stderr)
        print("hint: re-run with --debug for the traceback, and report it", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
