"""`token create`: make a bearer token for the online server and print its config entry."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = sub.add_parser(
        "create", help="print a new random token and the line to add to featurestore.yaml",
        description="Print a new token once, and its hashed entry for server.tokens. Only the hash is stored.",
    )
    create.add_argument("--name", required=True, help="who uses the token, e.g. ranking-service")
    create.add_argument(
        "--roles", default="read",
        help="comma-separated: read (features, predict), write (feedback, push), admin (models); default read",
    )


def run(args: argparse.Namespace) -> int:
    from featurestore.tokens import hash_token, new_token
    from registry.errors import UserError

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    bad = [r for r in roles if r not in ("read", "write", "admin")]
    if bad or not roles:
        raise UserError(f"unknown role(s) {', '.join(bad) or '(none)'}", hint="use read, write and/or admin")
    token = new_token()
    print(f"token (shown once, keep it secret): {token}")
    print("add to featurestore.yaml under server.tokens:")
    print(f"  - {{name: {args.name}, sha256: {hash_token(token)}, roles: [{', '.join(roles)}]}}")
    return 0
