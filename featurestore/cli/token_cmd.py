"""`token create|list|revoke`: bearer tokens of the online server.

Tokens are granted in featurestore.yaml (``server.tokens``: name, SHA-256 digest, roles and an
optional ``expires_at``); a revocation is a row in the registry database, which every server
reads about once a second, so ``revoke`` takes effect fleet-wide without a restart.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from featurestore.config import TokenConfig
    from featurestore.tokens import Revocation

ROLES = ("read", "write", "admin")


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
    expiry = create.add_mutually_exclusive_group()
    expiry.add_argument(
        "--expires-in", metavar="DURATION", default=None,
        help="the token stops working after this long, e.g. 30d, 12h, 90m (default: never)",
    )
    expiry.add_argument(
        "--expires-at", metavar="ISO", default=None,
        help="the token stops working at this time, e.g. 2026-07-01T00:00:00Z (no zone: UTC)",
    )
    listing = sub.add_parser(
        "list", help="list tokens with their roles, expiry and state",
        description="List the tokens of server.tokens and the registry's revocations: name, digest, roles, "
        "expires_at and state (active, expired or revoked). Revoked digests no longer in "
        "featurestore.yaml are listed too.",
    )
    listing.add_argument("--format", choices=("table", "json"), default="table", help="default: table")
    revoke = sub.add_parser(
        "revoke", help="refuse a token on every server within seconds, without a restart",
        description="Record in the registry database that the token(s) of this name in server.tokens are "
        "revoked. Running servers refuse them within about 2 seconds; the entry may then be removed "
        "from featurestore.yaml.",
    )
    revoke.add_argument("name", help="the token's name in server.tokens")
    revoke.add_argument("--reason", default=None, help="a note kept with the revocation, e.g. 'leaked in CI log'")


def run(args: argparse.Namespace) -> int:
    if args.action == "create":
        return _create(args)
    from featurestore.store import FeatureStore

    store = FeatureStore(args.repo)
    try:
        tokens = store.config.server.tokens
        engine = store.registry.engine
        if args.action == "list":
            return _list(tokens, engine, store.project, args.format)
        return _revoke(tokens, engine, store.project, args.name, args.reason)
    finally:
        store.close()


def _create(args: argparse.Namespace) -> int:
    from featurestore.tokens import hash_token, new_token
    from registry.errors import UserError

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise UserError(f"unknown role(s) {', '.join(bad) or '(none)'}", hint="use read, write and/or admin")
    expires_at = _expiry(args.expires_in, args.expires_at)
    token = new_token()
    print(f"token (shown once, keep it secret): {token}")
    print("add to featurestore.yaml under server.tokens:")
    expiry = f", expires_at: {_iso(expires_at)}" if expires_at else ""
    print(f"  - {{name: {args.name}, sha256: {hash_token(token)}, roles: [{', '.join(roles)}]{expiry}}}")
    return 0


def _expiry(expires_in: str | None, expires_at: str | None) -> datetime | None:
    from registry.errors import UserError
    from registry.types import parse_duration

    now = datetime.now(timezone.utc)
    if expires_in is not None:
        try:
            seconds = parse_duration(expires_in)
        except ValueError as exc:
            raise UserError(f"--expires-in: {exc}", hint="e.g. --expires-in 30d, 12h or 90m") from None
        if seconds <= 0:
            raise UserError("--expires-in must be longer than 0", hint="e.g. --expires-in 30d")
        return (now + timedelta(seconds=seconds)).replace(microsecond=0)
    if expires_at is None:
        return None
    try:
        when = datetime.fromisoformat(expires_at.strip().replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--expires-at: {expires_at!r} is not an ISO 8601 time", hint="e.g. --expires-at 2026-07-01T00:00:00Z"
        ) from None
    when = when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
    if when <= now:
        raise UserError(f"--expires-at {_iso(when)} is in the past", hint="give a time in the future (UTC unless a zone is given)")
    return when


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _rows(tokens: list[TokenConfig], revoked: list[Revocation], now: datetime) -> list[dict[str, Any]]:
    """One row per configured token, then one per revoked digest no longer configured."""
    by_digest = {r.sha256: r for r in revoked}
    rows = []
    for t in tokens:
        revocation = by_digest.get(t.sha256)
        if revocation is not None:
            state = "revoked"
        elif t.expires_at is not None and t.expires_at <= now:
            state = "expired"
        else:
            state = "active"
        rows.append(_row(t.name, t.sha256, list(t.roles), t.expires_at, state, revocation, in_config=True))
    configured = {t.sha256 for t in tokens}
    for r in revoked:
        if r.sha256 not in configured:
            rows.append(_row(r.name, r.sha256, None, None, "revoked", r, in_config=False))
    return rows


def _row(
    name: str, sha256: str, roles: list[str] | None, expires_at: datetime | None, state: str,
    revocation: Revocation | None, *, in_config: bool,
) -> dict[str, Any]:
    return {
        "name": name,
        "sha256": sha256,
        "roles": roles,
        "expires_at": _iso(expires_at) if expires_at else None,
        "state": state,
        "revoked_at": _iso(revocation.revoked_at) if revocation else None,
        "reason": revocation.reason if revocation else None,
        "in_config": in_config,
    }


def _list(tokens: list[TokenConfig], engine: Any, project: str, fmt: str) -> int:
    from featurestore.tokens import revocations

    rows = _rows(tokens, revocations(engine, project), datetime.now(timezone.utc))
    if fmt == "json":
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No tokens: server.tokens is empty (the server checks nothing and serves on loopback only).")
        print("Create one with `featurestore token create --name NAME --roles read`.")
        return 0
    print(f"{'name':24}  {'sha256':12}  {'roles':17}  {'expires at (UTC)':20}  {'state':8}  note")
    for r in rows:
        roles = ",".join(r["roles"]) if r["roles"] is not None else "-"
        note = []
        if r["revoked_at"]:
            note.append(f"revoked {r['revoked_at']}")
        if r["reason"]:
            note.append(r["reason"])
        if not r["in_config"]:
            note.append("not in featurestore.yaml")
        print(
            f"{r['name'][:24]:24}  {r['sha256'][:12]}  {roles:17}  {r['expires_at'] or ('never' if r['in_config'] else '-'):20}  "
            f"{r['state']:8}  {'; '.join(note)}".rstrip()
        )
    return 0


def _revoke(tokens: list[TokenConfig], engine: Any, project: str, name: str, reason: str | None) -> int:
    from featurestore.tokens import revoke
    from registry.errors import UserError

    matching = [t for t in tokens if t.name == name]
    if not matching:
        known = sorted({t.name for t in tokens})
        raise UserError(
            f"no token named {name!r} in server.tokens",
            hint=f"known names: {', '.join(known)}" if known
            else "server.tokens is empty; `featurestore token list` shows earlier revocations",
        )
    for t in matching:
        if revoke(engine, project, t.name, t.sha256, reason):
            print(f"revoked token {name!r} (sha256 {t.sha256[:12]}...)")
        else:
            print(f"token {name!r} (sha256 {t.sha256[:12]}...) was already revoked")
    print("Running servers refuse it within about 2 seconds, without a restart.")
    print("Its entry may now be removed from server.tokens in featurestore.yaml (the revocation stays recorded).")
    return 0
