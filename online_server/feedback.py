"""Placeholder: being built; ``register`` adds its routes to the app."""

from __future__ import annotations

from typing import Any


def register(app: Any, store: Any, server_metrics: Any) -> None:
    """Add the routes (none yet)."""
