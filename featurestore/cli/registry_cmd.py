"""`validate`, `plan`, `apply` and `registry versions|show|upgrade`."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    if verb == "apply":
        parser.add_argument(
            "--allow-breaking", action="store_true",
            help="apply even when the plan has breaking changes (review `plan` first)",
        )
        parser.add_argument("-m", "--message", default="", help="a note stored with the version")
        parser.add_argument(
            "--expected-version", type=int, default=None,
            help="fail if the registry is no longer at this version (the one `plan` showed)",
        )
    elif verb == "registry":
        sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
        sub.add_parser("versions", help="list the applied versions", description="List the applied versions.")
        show = sub.add_parser(
            "show", help="show applied objects", description="Show applied objects, at the latest or any earlier version."
        )
        show.add_argument(
            "kind", nargs="?",
            choices=["entity", "source", "feature_view", "feature_service", "feature_job", "model"],
            help="only objects of this kind",
        )
        show.add_argument("name", nargs="?", help="only the object of this name (prints its full spec)")
        show.add_argument("--version", type=int, default=None, help="a registry version (default: latest)")
        show.add_argument("--json", action="store_true", help="print JSON")
        upgrade = sub.add_parser(
            "upgrade", help="migrate the registry database to this release's schema",
            description="Run the Alembic migrations in migrations/ against the registry database.",
        )
        upgrade.add_argument("--revision", default="head", help="target revision (default: head)")


def run(args: argparse.Namespace) -> int:
    if args.verb == "registry" and args.action == "upgrade":
        return _upgrade(args)
    if args.verb == "validate":
        return _validate(args)
    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    try:
        if args.verb == "plan":
            print(store.plan().render())
            return 0
        if args.verb == "apply":
            return _apply(store, args)
        if args.action == "versions":
            return _versions(store)
        return _show(store, args)
    finally:
        store.close()


def _validate(args: argparse.Namespace) -> int:
    # The YAML and the configuration only: no registry database, no stores (and none of their
    # imports), so validating is fast enough for a pre-commit hook.
    from featurestore.config import load_config
    from registry.validate import load_definitions

    config = load_config(args.repo)
    defs = load_definitions(config.root, config.definitions)
    counts = ", ".join(
        f"{len(getattr(defs, attr))} {attr.replace('_', ' ')}"
        for attr in ("entities", "sources", "feature_views", "feature_services", "feature_jobs", "models")
    )
    print(f"OK: {counts}.")
    return 0


def _apply(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    plan, info = store.apply(
        allow_breaking=args.allow_breaking, message=args.message, expected_version=args.expected_version
    )
    print(plan.render())
    if info is None:
        return 0
    commit = f", git {info.git_commit[:12]}" if info.git_commit else ""
    print(f"Applied registry version {info.version} (hash {info.content_hash[:12]}{commit}).")
    return 0


def _versions(store) -> int:  # type: ignore[no-untyped-def]
    versions = store.registry_versions()
    if not versions:
        print("Nothing applied yet: run `featurestore apply`.")
        return 0
    print(f"{'version':>7}  {'applied at (UTC)':19}  {'by':12}  {'hash':12}  {'git':12}  changes")
    for v in versions:
        print(
            f"{v.version:>7}  {v.applied_at:%Y-%m-%d %H:%M:%S}  {v.applied_by[:12]:12}  "
            f"{v.content_hash[:12]}  {(v.git_commit or '-')[:12]:12}  {v.summary}"
        )
    return 0


def _show(store, args: argparse.Namespace) -> int:  # type: ignore[no-untyped-def]
    defs = store.definitions(args.version)
    if args.name:
        spec = defs.get(args.kind, args.name)
        print(json.dumps(spec.model_dump(mode="json"), indent=2, sort_keys=True))
        return 0
    rows = [(kind, name, spec) for kind, name, spec in defs.objects() if args.kind in (None, kind)]
    if args.json:
        print(json.dumps([{"kind": k, "name": n, "spec": s.model_dump(mode="json")} for k, n, s in rows], indent=2))
        return 0
    version = args.version if args.version is not None else store.registry.head_version()
    print(f"Registry version {version} of project {store.project}:")
    if not rows:
        print("  (empty)")
    for kind, name, spec in rows:
        description = getattr(spec, "description", "")
        print(f"  {kind:16} {name:24} {description}")
    return 0


def _upgrade(args: argparse.Namespace) -> int:
    from featurestore.config import load_config
    from registry.db import create_engine, current_revision, upgrade

    config = load_config(args.repo)
    engine = create_engine(config.registry_url)
    before = current_revision(engine)
    after = upgrade(engine, args.revision)
    engine.dispose()
    if before == after:
        print(f"The registry database is already at revision {after}.")
    else:
        print(f"Upgraded the registry database from {before or '(empty)'} to {after}.")
    return 0
