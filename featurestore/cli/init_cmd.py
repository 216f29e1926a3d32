"""`init`: write a new feature repository: the working example with generated data, or a blank one.

An existing repository (a directory holding featurestore.yaml) is never overwritten without
``--force``: `init` over it would replace its definitions, and nothing could bring them back.
With ``--force``, the definition files already under ``features/`` (what the new repository's
``definitions: [features]`` would load) are moved into ``.featurestore-backup/`` first, and `init`
says where: left in place, they would make a blank repository not blank (or mix with the
example), and deleting them could lose files the tool did not write. Nothing is deleted.
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path

TEMPLATES = ("example", "blank")
#: Where ``init --force`` moves the definitions it would otherwise leave behind or overwrite; a
#: hidden directory, so neither the loader nor a later ``init`` sees it as definitions.
BACKUP_DIR = ".featurestore-backup"

# The blank template's one definition file: valid as it is (nothing is defined), with an example
# that is valid once uncommented (tests/cli/test_init_safety.py checks both).
BLANK_DEFINITIONS = """\
# yaml-language-server: $schema=../schema.json
# Feature definitions: this file and any other .yaml file under features/.
# `featurestore validate` checks them, `featurestore plan` shows the change, `featurestore apply`
# records it. Every key is described in docs/reference/yaml.md. For example:
#
# entities:
#   - name: user
#     join_keys: [{name: user_id, dtype: int64}]
#
# sources:
#   - name: clicks
#     type: parquet
#     path: data/source/clicks/*.parquet
#     timestamp_field: event_ts
#
# feature_views:
#   - name: user_clicks
#     entities: [user]
#     source: clicks
#     ttl: 7d
#     features:
#       - {name: clicks_1d, dtype: int64}
"""


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("directory", nargs="?", default="feature_repo", help="where to create it (default: feature_repo)")
    parser.add_argument("--project", default="demo", help="the project name (default: demo)")
    parser.add_argument(
        "--template", choices=TEMPLATES, default="example",
        help="example: the working example with generated ratings (default); "
        "blank: settings and an empty definitions file, nothing else",
    )
    parser.add_argument(
        "--force", action="store_true",
        help="write into a non-empty directory, or over an existing repository (its YAML "
        "definitions under features/ are moved to .featurestore-backup/, other files kept)",
    )


def run(args: argparse.Namespace) -> int:
    from featurestore.config import CONFIG_FILE
    from registry.errors import UserError
    from registry.spec import NAME_HELP, NAME_RE

    path = Path(args.directory).resolve()
    if not NAME_RE.match(args.project):
        raise UserError(f"bad project name {args.project!r}; expected {NAME_HELP}", hint="e.g. --project fraud")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a directory", hint="choose a new directory")
    if (path / CONFIG_FILE).exists() and not args.force:
        raise UserError(
            f"{path} already holds a feature repository ({CONFIG_FILE}); init would replace its definitions",
            hint=f"choose a new directory, or pass --force to overwrite it with the {args.template} template",
        )
    moved = move_definitions(path) if args.force else None
    if moved is not None:
        backup, files = moved
        print(
            f"Moved {len(files)} definition file(s) of the previous repository to "
            f"{backup.relative_to(path)}/ (move them back under features/ to restore them)."
        )
    if args.template == "blank":
        write_blank_repo(path, project=args.project, force=args.force)
        print(f"Created a blank repository in {path}.")
        print("Next:")
        print(f"  edit {Path(args.directory) / 'features' / 'definitions.yaml'}   # an example is in its comments")
        print(f"  featurestore -r {args.directory} validate")
        print(f"  featurestore -r {args.directory} plan")
        print(f"  featurestore -r {args.directory} apply")
        return 0
    from featurestore.example.repo import small_config, write_example_repo

    summary = write_example_repo(path, project=args.project, config=small_config(), force=args.force)
    print(
        f"Created the example repository in {summary['path']} "
        f"({summary['ratings']:,} ratings by {summary['users']} users of {summary['items']} items)."
    )
    print("Next:")
    print(f"  featurestore -r {args.directory} validate")
    print(f"  featurestore -r {args.directory} apply")
    print(f"  featurestore -r {args.directory} registry show")
    return 0


def write_blank_repo(path: Path, *, project: str, force: bool = False) -> None:
    """Settings, an empty (valid) definitions file, the JSON Schema and a .gitignore.

    >>> write_blank_repo(Path("fraud_repo"), project="fraud")  # doctest: +SKIP
    """
    import json

    from featurestore.config import CONFIG_FILE
    from featurestore.example.repo import CONFIG_YAML, GITIGNORE
    from registry.errors import UserError
    from registry.spec import definition_schema

    if path.exists() and any(path.iterdir()) and not force:
        raise UserError(
            f"{path} exists and is not empty",
            hint="choose a new directory, or pass --force to write the blank repository into it",
        )
    (path / "features").mkdir(parents=True, exist_ok=True)
    files = {
        CONFIG_FILE: CONFIG_YAML.format(project=project),
        "features/definitions.yaml": BLANK_DEFINITIONS,
        ".gitignore": GITIGNORE,
        "schema.json": json.dumps(definition_schema(), indent=2, sort_keys=True) + "\n",
    }
    for name, text in files.items():
        (path / name).write_text(text)


def move_definitions(path: Path) -> tuple[Path, list[Path]] | None:
    """Move the definition files under ``path/features`` (those the repository's loader reads:
    YAML, outside hidden directories) into a new ``.featurestore-backup/init-<UTC time>/``,
    keeping their paths; returns the backup directory and the files' new paths, or None when
    there were none. Other files stay where they are.

    >>> move_definitions(Path("fraud_repo"))  # doctest: +SKIP
    (PosixPath('fraud_repo/.featurestore-backup/init-20260101T120000123456Z'), [...])
    """
    from registry.validate import find_definition_files

    if not (path / "features").is_dir():
        return None
    files = find_definition_files(path, ["features"])
    if not files:
        return None
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    backup = path / BACKUP_DIR / f"init-{stamp}"
    backup.mkdir(parents=True)  # never exist_ok: a backup is never written into
    moved = []
    for file in files:
        target = backup / file.relative_to(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        file.rename(target)
        moved.append(target)
    return backup, moved
