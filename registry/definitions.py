"""A complete, cross-checked set of definitions: what a repository declares, what a registry
version holds. Immutable; built by ``registry.validate`` from YAML or by the SQL registry from
its rows.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator

from pydantic import TypeAdapter

from registry.errors import NotFoundError
from registry.spec import (
    KINDS,
    EntitySpec,
    FeatureJobSpec,
    FeatureServiceSpec,
    FeatureSpec,
    FeatureViewSpec,
    ModelSpec,
    SourceSpec,
)

_SOURCE_ADAPTER: TypeAdapter[Any] = TypeAdapter(SourceSpec)
_PARSERS: dict[str, Any] = {
    "entity": EntitySpec.model_validate,
    "source": _SOURCE_ADAPTER.validate_python,
    "feature_view": FeatureViewSpec.model_validate,
    "feature_service": FeatureServiceSpec.model_validate,
    "feature_job": FeatureJobSpec.model_validate,
    "model": ModelSpec.model_validate,
}


def canonical_json(spec: Any) -> str:
    """The stable text of one object: what is hashed, diffed and stored."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class FeatureRef:
    view: str
    feature: str

    def __str__(self) -> str:
        return f"{self.view}:{self.feature}"


@dataclass(frozen=True)
class Definitions:
    entities: dict[str, EntitySpec] = field(default_factory=dict)
    sources: dict[str, Any] = field(default_factory=dict)
    feature_views: dict[str, FeatureViewSpec] = field(default_factory=dict)
    feature_services: dict[str, FeatureServiceSpec] = field(default_factory=dict)
    feature_jobs: dict[str, FeatureJobSpec] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)

    # -- building -----------------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, str]]) -> "Definitions":
        """Rebuild from stored ``(kind, name, canonical json)`` rows."""
        buckets: dict[str, dict[str, Any]] = {attr: {} for attr in KINDS.values()}
        for kind, name, spec_json in rows:
            buckets[KINDS[kind]][name] = _PARSERS[kind](json.loads(spec_json))
        return cls(**{k: dict(sorted(v.items())) for k, v in buckets.items()})

    # -- reading ------------------------------------------------------------------------------
    def objects(self) -> Iterator[tuple[str, str, Any]]:
        """Every object as ``(kind, name, spec)``, in apply order."""
        for kind, attr in KINDS.items():
            for name, spec in sorted(getattr(self, attr).items()):
                yield kind, name, spec

    def canonical(self) -> dict[tuple[str, str], str]:
        return {(kind, name): canonical_json(spec) for kind, name, spec in self.objects()}

    def content_hash(self) -> str:
        digest = hashlib.sha256()
        for (kind, name), text in sorted(self.canonical().items()):
            digest.update(f"{kind}\0{name}\0{text}\n".encode())
        return digest.hexdigest()

    def get(self, kind: str, name: str) -> Any:
        bucket = getattr(self, KINDS[kind])
        if name not in bucket:
            raise NotFoundError(
                f"no {kind.replace('_', ' ')} named {shown(name)}{_suggest(name, bucket)}",
                hint="run `featurestore registry show` to list what is applied",
            )
        return bucket[name]

    def join_keys(self, view: FeatureViewSpec) -> list[str]:
        """The view's join key columns, entity by entity, in declared order."""
        return [k.name for e in view.entities for k in self.entities[e].join_keys]

    def resolve_features(self, refs: list[str] | str) -> list[FeatureRef]:
        """Expand feature references or a feature service name into ``view:feature`` pairs.

        ``refs`` is a feature service name, or a list of ``view`` / ``view:feature``. Order is
        kept, duplicates are dropped, unknown names raise NotFoundError with the nearest name.
        """
        if isinstance(refs, str):
            service = self.get("feature_service", refs)
            refs = list(service.features)
        out: list[FeatureRef] = []
        for ref in refs:
            for resolved in self._resolve_one(ref):
                if resolved not in out:
                    out.append(resolved)
        return out

    def _resolve_one(self, ref: str) -> list[FeatureRef]:
        view_name, _, feature_name = ref.partition(":")
        view = self.feature_views.get(view_name)
        if view is None:
            raise NotFoundError(
                f"unknown feature view {shown(view_name)} in reference {shown(ref)}"
                f"{_suggest(view_name, self.feature_views)}",
                hint="write references as `view:feature` or `view`",
            )
        names = [f.name for f in view.features]
        if not feature_name:
            return [FeatureRef(view_name, n) for n in names]
        if feature_name not in names:
            candidates = [f"{view_name}:{n}" for n in names] + [
                f"{v}:{f.name}" for v, spec in self.feature_views.items() for f in spec.features
            ]
            raise NotFoundError(
                f"unknown feature {shown(ref)}{_suggest(ref, candidates)}",
                hint=f"view {view_name!r} has: {', '.join(names)}",
            )
        return [FeatureRef(view_name, feature_name)]

    def feature(self, ref: FeatureRef) -> FeatureSpec:
        view = self.feature_views[ref.view]
        return next(f for f in view.features if f.name == ref.feature)


def shown(text: str, limit: int = 80) -> str:
    """``text`` for an error message: repr'd and cut to ``limit`` characters, so a huge name sent
    by a client is not echoed back whole.

    >>> shown("x" * 100, 10)
    "'xxxxxxxxxx…' (100 characters)"
    """
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}"[:-1] + f"…' ({len(text):,} characters)"


def _suggest(name: str, options: Any) -> str:
    if len(name) > 200:  # no name is that long; difflib would spend seconds indexing it
        return ""
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""
