"""The diff between two sets of definitions, and which changes break existing consumers.

Breaking means: something that serving code, training code or stored data relies on would stop
working or change meaning. A breaking change is applied only when asked for explicitly.

A plan also says what the change asks of the data and of its consumers:

* ``backfills``: views whose stored history no longer answers their definition (a feature added,
  a dtype, aggregation or the entities changed; ``registry.evolution.backfill_reasons``), and
  views added again under the name of one removed earlier (``retired``): what the earlier view
  wrote answers another definition, so the whole range is materialized again.
  ``apply`` records them in the version's summary; ``materialize`` (incremental runs included)
  recomputes the view's whole history while one is pending (``evolution.pending_backfills``).
* ``losses``: feature services and models that lose a feature, or get it with another dtype,
  through a change of a view they read (a service naming a whole view, a model reading a
  service); a model's trained versions cannot be served until it is trained again.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from registry.definitions import Definitions, FeatureRef
from registry.errors import NotFoundError
from registry.evolution import backfill_reasons, feature_meaning
from registry.spec import FeatureSpec

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
class Backfill:
    """A view whose stored history must be computed again, and why."""

    view: str
    reasons: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.view}: {'; '.join(self.reasons)}"


@dataclass(frozen=True)
class Loss:
    """A feature service or model that loses features (``lost``) or gets them with another dtype
    (``retyped``: ``(ref, old dtype, new dtype)``) through a change of a view it reads."""

    kind: str
    name: str
    lost: tuple[str, ...] = ()
    retyped: tuple[tuple[str, str, str], ...] = ()

    def __str__(self) -> str:
        parts = [f"loses {', '.join(self.lost)}"] if self.lost else []
        parts += [f"{ref} becomes {new} (was {old})" for ref, old, new in self.retyped]
        tail = "; its trained versions cannot serve until it is trained again" if self.kind == "model" else ""
        return f"{self.kind} {self.name}: {'; '.join(parts)}{tail}"


@dataclass(frozen=True)
class Plan:
    base_version: int
    changes: list[Change] = field(default_factory=list)
    backfills: list[Backfill] = field(default_factory=list)
    losses: list[Loss] = field(default_factory=list)

    @property
    def breaking(self) -> list[Change]:
        return [c for c in self.changes if c.breaking]

    @property
    def empty(self) -> bool:
        return not self.changes

    def summary(self) -> str:
        counts = {a: sum(c.action == a for c in self.changes) for a in ("added", "changed", "removed")}
        text = ", ".join(f"{n} {a}" for a, n in counts.items())
        text = f"{text}; {len(self.breaking)} breaking"
        if self.backfills:
            text += f"; backfill: {', '.join(b.view for b in self.backfills)}"
        if self.losses:
            text += f"; features lost by: {', '.join(f'{x.kind} {x.name}' for x in self.losses)}"
        return text

    def render(self) -> str:
        if self.empty:
            return f"No changes: the registry (version {self.base_version}) matches the definitions."
        lines = [str(c) for c in self.changes]
        if self.backfills:
            lines.append("Backfill needed (the next `materialize`, incremental or not, recomputes the whole history):")
            lines += [f"    {b}" for b in self.backfills]
        if self.losses:
            lines.append("Feature services and models that lose features:")
            lines += [f"    {x}" for x in self.losses]
        lines.append(f"Plan against version {self.base_version}: {self.summary()}.")
        return "\n".join(lines)


def diff(
    old: Definitions,
    new: Definitions,
    base_version: int = 0,
    *,
    retired: Mapping[str, int] | None = None,
) -> Plan:
    """What applying ``new`` over ``old`` would change. ``retired``: feature views the registry
    held once and removed, with the version that removed them
    (``registry.evolution.retired_views``); one added again needs a whole-range backfill.

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
    retired = retired or {}
    backfills = []
    for c in changes:
        if c.kind != "feature_view":
            continue
        if c.action == "added" and c.name in retired:
            reason = f"re-added (removed at version {retired[c.name]}): the whole range"
            backfills.append(Backfill(c.name, (reason,)))
        elif c.action == "changed" and (
            reasons := backfill_reasons(old.feature_views[c.name], new.feature_views[c.name])
        ):
            backfills.append(Backfill(c.name, tuple(reasons)))
    return Plan(base_version, changes, backfills, _losses(old, new))


def _losses(old: Definitions, new: Definitions) -> list[Loss]:
    """Services and models (present before and after) whose resolved features shrink or change
    dtype. Changes to their own lists are in ``changes`` already; these come through views."""
    out: list[Loss] = []
    consumers = [("feature_service", n) for n in sorted(old.feature_services.keys() & new.feature_services.keys())]
    consumers += [("model", n) for n in sorted(old.models.keys() & new.models.keys())]
    for kind, name in consumers:
        before, after = _consumed(old, kind, name), _consumed(new, kind, name)
        if before is None or after is None:
            continue
        lost = tuple(str(r) for r in before if r not in after)
        retyped = tuple(
            (str(r), old.feature(r).dtype, new.feature(r).dtype)
            for r in before
            if r in after and old.feature(r).dtype != new.feature(r).dtype
        )
        if lost or retyped:
            out.append(Loss(kind, name, lost, retyped))
    return out


def _consumed(defs: Definitions, kind: str, name: str) -> list[FeatureRef] | None:
    try:
        if kind == "feature_service":
            return defs.resolve_features(name)
        spec = defs.models[name]
        items = defs.resolve_features(spec.feature_service or "") if not spec.features else defs.resolve_features(list(spec.features))
        return items + [r for r in defs.resolve_features(list(spec.user_features)) if r not in items]
    except NotFoundError:
        return None  # a dangling reference: validation reports it


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
                before, after = _meaning(old_f[name]), _meaning(new_f[name])
                if before != after:
                    details.append(
                        f"feature {name} aggregation {before or 'none'} -> {after or 'none'} "
                        "(breaking: stored values mean something else)"
                    )
                    breaking = True
                else:
                    details.append(f"feature {name} aggregation respelled (same meaning)")
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


def _meaning(feature: dict[str, Any]) -> str | None:
    return feature_meaning(FeatureSpec.model_validate(feature))


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."
