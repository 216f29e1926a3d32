"""The diff between two sets of definitions, and which changes break existing consumers.

Breaking means: something that serving code, training code or stored data relies on would stop
working or change meaning. A breaking change is applied only when asked for explicitly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from registry.definitions import Definitions

Action = Literal["added", "changed", "removed"]

# Removing these breaks whoever reads them; entities and sources are only reachable through them.
_BREAKING_REMOVALS = {"feature_view", "feature_service", "model"}


@dataclass(frozen=True)
class Change:
    kind: str
    name: str
    action: Action
    breaking: bool = False
    details: tuple[str, ...] = ()

    def __str__(self) -> str:
        sign = {"added": "+", "changed": "~", "removed": "-"}[self.action]
        flag = "  [BREAKING]" if self.breaking else ""
        head = f"{sign} {self.kind} {self.name}{flag}"
        return "\n".join([head, *(f"    {d}" for d in self.details)])


@dataclass(frozen=True)
class Plan:
    base_version: int
    changes: list[Change] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        counts = {a: sum(c.action == a for c in self.changes) for a in ("added", "changed", "removed")}
        text = ", ".join(f"{n} {a}" for a, n in counts.items())
        return f"{text}; {len(self.breaking)} breaking"

    def render(self) -> str:
        if self.empty:
            return f"No changes: the registry (version {self.base_version}) matches the definitions."
        lines = [str(c) for c in self.changes]
        lines.append(f"Plan against version {self.base_version}: {self.summary()}.")
        return "\n".join(lines)


def diff(old: Definitions, new: Definitions, base_version: int = 0) -> Plan:
    """What applying ``new`` over ``old`` would change.

    >>> diff(Definitions(), Definitions()).empty
    True
    """
    old_c, new_c = old.canonical(), new.canonical()
    changes: list[Change] = []
    order = {kind: i for i, (kind, _, _) in enumerate(_kinds())}
    for key in sorted(old_c.keys() | new_c.keys(), key=lambda k: (order.get(k[0], 99), k[1])):
        kind, name = key
        if key not in old_c:
            changes.append(Change(kind, name, "added"))
        elif key not in new_c:
            changes.append(Change(kind, name, "removed", breaking=kind in _BREAKING_REMOVALS))
        elif old_c[key] != new_c[key]:
            details, breaking = _compare(kind, json.loads(old_c[key]), json.loads(new_c[key]))
            changes.append(Change(kind, name, "changed", breaking, tuple(details)))
    return Plan(base_version, changes)


def _kinds() -> list[tuple[str, str, Any]]:
    from registry.spec import KINDS

    return [(k, v, None) for k, v in KINDS.items()]


def _compare(kind: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], bool]:
    details: list[str] = []
    breaking = False
    if kind == "feature_view":
        old_f = {f["name"]: f for f in old["features"]}
        new_f = {f["name"]: f for f in new["features"]}
        for name in old_f.keys() - new_f.keys():
            details.append(f"feature {name} removed (breaking: readers of it fail)")
            breaking = True
        for name in new_f.keys() - old_f.keys():
            details.append(f"feature {name} added ({new_f[name]['dtype']})")
        for name in old_f.keys() & new_f.keys():
            if old_f[name]["dtype"] != new_f[name]["dtype"]:
                details.append(
                    f"feature {name} dtype {old_f[name]['dtype']} -> {new_f[name]['dtype']} "
                    "(breaking: stored values have the old type)"
                )
                breaking = True
            if old_f[name].get("aggregation") != new_f[name].get("aggregation"):
                details.append(f"feature {name} aggregation changed (breaking: history differs)")
                breaking = True
        if old["entities"] != new["entities"]:
            details.append(
                f"entities {old['entities']} -> {new['entities']} (breaking: keys change)"
            )
            breaking = True
    elif kind == "entity" and old["join_keys"] != new["join_keys"]:
        details.append("join keys changed (breaking: stored keys no longer match)")
        breaking = True
    elif kind == "feature_service":
        removed = [f for f in old["features"] if f not in new["features"]]
        if removed:
            details.append(f"features removed: {', '.join(removed)} (breaking)")
            breaking = True
    elif kind == "model":
        for key in ("features", "feature_service", "user_features", "request_features", "bias"):
            if old.get(key) != new.get(key):
                details.append(f"{key} changed (breaking: weight vectors change dimension)")
                breaking = True
    skip = {"features", "entities", "join_keys"} if kind in ("feature_view", "entity") else set()
    for key in sorted(old.keys() | new.keys()):
        if key in skip or (kind == "model" and any(key in d.split()[0] for d in details)):
            continue
        if old.get(key) != new.get(key) and not any(d.startswith(f"{key} ") for d in details):
            details.append(f"{key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    return details, breaking


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
