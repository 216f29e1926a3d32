"""Helpers of the object-store tests: point a repository at an S3 prefix, read every object."""

from __future__ import annotations

import re
from pathlib import Path

from featurestore.offline import location
from featurestore.offline.location import ObjectPath, ObjectStoreOptions


def use_s3(repo: Path, uri: str, endpoint: str) -> ObjectPath:
    """Rewrite the repository's ``offline_store`` to ``uri`` on the test server."""
    config = repo / "featurestore.yaml"
    text = re.sub(r"offline_store: \{[^}]*\}\n", "", config.read_text())
    config.write_text(
        text + f"offline_store: {{path: '{uri}', endpoint_override: '{endpoint}'}}\n"
    )
    path = location.resolve(uri, repo, ObjectStoreOptions(endpoint))
    assert isinstance(path, ObjectPath)
    return path


def read_bytes(path: ObjectPath) -> bytes:
    with path.filesystem().open_input_stream(path.path) as source:
        return source.read()


def objects(root: ObjectPath, under: str = "") -> dict[str, bytes]:
    """Every object under ``root/under``: relative key -> bytes."""
    base = root / under if under else root
    return {o.relative_to(root): read_bytes(o) for o in base._list(recursive=True) if o.kind == "file"}


def local_files(root: Path, under: str = "") -> dict[str, bytes]:
    base = root / under if under else root
    if not base.is_dir():
        return {}
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()
    }


def partitions(files: dict[str, bytes]) -> dict[str, bytes]:
    """Only the views' partition files (no rejects, staging, nor anything hidden)."""
    return {
        k: v
        for k, v in files.items()
        if "/date=" in k and not any(part.startswith(("_", ".")) for part in k.split("/"))
    }
