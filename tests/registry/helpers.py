"""Small builders of definitions for registry tests."""

from __future__ import annotations

from pathlib import Path
from textwrap import dedent

from registry.definitions import Definitions
from registry.validate import load_definitions

BASE = """\
entities:
  - name: user
    join_keys: [{name: user_id, dtype: int64}]
sources:
  - name: events
    type: parquet
    path: data/events.parquet
    timestamp_field: ts
feature_views:
  - name: user_stats
    entities: [user]
    source: events
    ttl: 1d
    features:
      - {name: clicks, dtype: int64}
      - {name: score, dtype: float32}
feature_services:
  - name: svc
    features: [user_stats]
"""


def write_repo(root: Path, files: dict[str, str]) -> Path:
    (root / "features").mkdir(parents=True, exist_ok=True)
    for old in (root / "features").glob("*.yaml"):
        old.unlink()
    for name, text in files.items():
        (root / "features" / name).write_text(dedent(text))
    return root


def definitions(root: Path, text: str = BASE) -> Definitions:
    write_repo(root, {"defs.yaml": text})
    return load_definitions(root, ["features"])
