"""Alembic migrations of the SQL registry. Run them with `featurestore registry upgrade`."""

from pathlib import Path

SCRIPT_LOCATION = str(Path(__file__).resolve().parent)
