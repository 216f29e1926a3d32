"""The registry as the console shows it: objects of any version, field by field, and the
field-level difference between two versions."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.definitions import Definitions, canonical_json

# The kinds in the order the console lists them, with their plural titles.
KIND_TITLES = {
    "entity": "Entities", "source": "Sources", "feature_view": "Feature views",
    "feature_service": "Feature services", "feature_job": "Feature jobs", "model": "Models",
}


def spec_dict(spec: Any) -> dict[str, Any]:
    """A definition as plain JSON data (its canonical form, the one the registry hashes)."""
    return json.loads(canonical_json(spec))  # type: ignore[no-any-return]


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted paths to leaves: lists of named objects are keyed by name, other lists by index.

    >>> flatten({"features": [{"name": "a", "dtype": "int64"}], "ttl": "1d"})
    {'features[a].dtype': 'int64', 'features[a].name': 'a', 'ttl': '1d'}
    """
    out: dict[str, Any] = {}
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = {}
        for key in sorted(value):
            out.update(flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list):
        named = all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in value) and value
        if not value and prefix:
            out[prefix] = []
        for i, item in enumerate(value):
            out.update(flatten(item, f"{prefix}[{item['name'] if named else i}]"))
    else:
        out[prefix] = value
    return out


def objects(defs: Definitions) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """kind -> [(name, fields)] for every object of a version, in KIND_TITLES order."""
    grouped: dict[str, list[tuple[str, dict[str, Any]]]] = {kind: [] for kind in KIND_TITLES}
    for kind, name, spec in defs.objects():
        grouped.setdefault(kind, []).append((name, flatten(spec_dict(spec))))
    return grouped


@dataclass(frozen=True)
class FieldChange:
    path: str
    old: Any
    new: Any

    @property
    def action(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"


@dataclass(frozen=True)
class ObjectDiff:
    kind: str
    name: str
    action: str  # added | removed | changed
    fields: list[FieldChange] = field(default_factory=list)


def diff(old: Definitions, new: Definitions) -> list[ObjectDiff]:
    """Every object added, removed or changed from ``old`` to ``new``, with its changed fields.

    >>> diff(Definitions(), Definitions())
    []
    """
    a = {(k, n): flatten(spec_dict(s)) for k, n, s in old.objects()}
    b = {(k, n): flatten(spec_dict(s)) for k, n, s in new.objects()}
    order = list(KIND_TITLES)
    out = []
    for key in sorted(set(a) | set(b), key=lambda kn: (order.index(kn[0]) if kn[0] in order else 99, kn[1])):
        before, after = a.get(key), b.get(key)
        if before == after:
            continue
        action = "added" if before is None else "removed" if after is None else "changed"
        before, after = before or {}, after or {}
        fields = [
            FieldChange(path, before.get(path), after.get(path))
            for path in sorted(set(before) | set(after))
            if before.get(path) != after.get(path)
        ]
        out.append(ObjectDiff(key[0], key[1], action, fields))
    return out
