"""Bearer token helpers shared by the CLI (`featurestore token create`) and the server."""

from __future__ import annotations

import hashlib
import secrets


def hash_token(token: str) -> str:
    """The SHA-256 hex digest stored in ``server.tokens`` instead of the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return "fs_" + secrets.token_urlsafe(32)
