"""Bearer tokens: making them, and the registry's record of revoked ones.

A token is granted by its SHA-256 digest in ``server.tokens`` of featurestore.yaml; the token
itself is never stored. Revoking one is a row in the registry database
(``fs_token_revocations``), not a config edit, because every server of a fleet already reads that
database and refuses the digest within seconds, with no restart and no config rollout (see
``online_server.auth``). Used by the CLI (`featurestore token create|list|revoke`) and the server.

>>> digest = hash_token(new_token())
>>> len(digest)
64
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from registry import tables as t


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in ``server.tokens`` instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return "fs_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Revocation:
    """One revoked digest of a project; ``name`` is the token's name when it was revoked."""

    name: str
    sha256: str
    revoked_at: datetime
    reason: str | None


def revoke(engine: Engine, project: str, name: str, sha256: str, reason: str | None = None) -> bool:
    """Record that ``sha256`` is revoked; True if it was not revoked before.

    Idempotent: revoking a digest again keeps the first record (its time and reason).

    >>> revoke(engine, "demo", "ranking-service", hash_token(token), "leaked")  # doctest: +SKIP
    True
    """
    r = t.token_revocations
    row = {
        "project": project, "sha256": sha256, "name": name,
        "revoked_at": datetime.now(timezone.utc), "reason": reason,
    }
    try:
        with engine.begin() as conn:
            if _is_revoked(conn, project, sha256):
                return False
            conn.execute(sa.insert(r).values(**row))
    except sa.exc.IntegrityError:
        # Another process revoked it between our read and our insert: the same outcome.
        return False
    return True


def revoked_digests(engine: Engine, project: str) -> frozenset[str]:
    """Every revoked digest of ``project`` (what a server refuses)."""
    r = t.token_revocations
    with engine.connect() as conn:
        rows = conn.execute(sa.select(r.c.sha256).where(r.c.project == project))
        return frozenset(row[0] for row in rows)


def revocations(engine: Engine, project: str) -> list[Revocation]:
    """The revocations of ``project``, oldest first (for `featurestore token list`)."""
    r = t.token_revocations
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(r.c.name, r.c.sha256, r.c.revoked_at, r.c.reason)
            .where(r.c.project == project)
            .order_by(r.c.revoked_at, r.c.sha256)
        ).all()
    return [Revocation(name, digest, _utc(at), reason) for name, digest, at, reason in rows]


def _is_revoked(conn: sa.Connection, project: str, sha256: str) -> bool:
    r = t.token_revocations
    found = conn.execute(
        sa.select(r.c.sha256).where(r.c.project == project, r.c.sha256 == sha256)
    ).first()
    return found is not None


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; only UTC is ever written.
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value
