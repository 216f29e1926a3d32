"""Load and check a repository's definition files, collecting every problem of the run.

Checks, in order: YAML syntax, each object's shape (pydantic), duplicate names across files,
references between objects (views -> entities and sources, services and models -> features),
and name clashes inside a view (a feature named like a join key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from registry.aggregations import check_aggregations
from registry.definitions import Definitions
from registry.errors import DefinitionError, DefinitionIssue, NotFoundError
from registry.loader import LocatedDocument, load_yaml
from registry.spec import KINDS, DefinitionFile

DEFINITION_SUFFIXES = (".yaml", ".yml")


def find_definition_files(root: Path, patterns: list[str]) -> list[Path]:
    """Files named by ``patterns`` (directories are searched recursively), sorted, unique."""
    found: set[Path] = set()
    for pattern in patterns:
        target = root / pattern
        if target.is_dir():
            found.update(p for p in target.rglob("*") if p.suffix in DEFINITION_SUFFIXES)
        elif target.is_file():
            found.add(target)
        else:
            found.update(p for p in root.glob(pattern) if p.is_file())
    return sorted(p for p in found if not any(part.startswith(".") for part in p.relative_to(root).parts))


def _message(error: dict[str, Any]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling against `featurestore schema`"
    if kind == "missing":
        return "required key is missing"
    if kind == "union_tag_invalid":
        return "unknown `type`; expected one of " + error.get("ctx", {}).get("expected_tags", "")
    if kind == "union_tag_not_found":
        return "missing `type`; expected one of parquet, duckdb, postgres"
    return msg.removeprefix("Value error, ")


def _shape_issues(doc: LocatedDocument, exc: ValidationError) -> list[DefinitionIssue]:
    issues = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc += ("type",)  # point at the discriminator, not the whole object
        path = doc.resolve(loc)
        issues.append(
            DefinitionIssue(doc.file, doc.line_of(path), doc.key_name(path), _message(error))
        )
    return issues


def load_definitions(root: Path, patterns: list[str]) -> Definitions:
    """Everything the repository declares, or DefinitionError listing every problem.

    >>> load_definitions(Path("my_repo"), ["features"])  # doctest: +SKIP
    """
    files = find_definition_files(root, patterns)
    if not files:
        raise DefinitionError(
            [
                DefinitionIssue(
                    str(root),
                    None,
                    "definitions",
                    f"no .yaml definition files found under {patterns}; "
                    "add some or set `definitions:` in featurestore.yaml",
                )
            ]
        )
    issues: list[DefinitionIssue] = []
    # (kind, name) -> (document, path) of its first declaration, to place later errors.
    origin: dict[tuple[str, str], tuple[LocatedDocument, tuple[Any, ...]]] = {}
    buckets: dict[str, dict[str, Any]] = {attr: {} for attr in KINDS.values()}
    # Names of objects that failed their own checks: a reference to one is not "unknown".
    broken: set[str] = set()
    broken_items: list[tuple[LocatedDocument, str, int, dict[str, Any]]] = []

    for path in files:
        doc, problems = load_yaml(path, str(path.relative_to(root)))
        issues += problems
        if doc is None:
            continue
        if not isinstance(doc.data, dict):
            issues.append(
                DefinitionIssue(
                    doc.file,
                    doc.line_of(()),
                    "(top level)",
                    "expected a mapping with keys " + ", ".join(KINDS.values()),
                )
            )
            continue
        try:
            whole = DefinitionFile.model_validate(doc.data)
            parsed = {attr: list(enumerate(getattr(whole, attr))) for attr in KINDS.values()}
        except ValidationError as exc:
            issues += _shape_issues(doc, exc)
            # Keep the objects that are valid so reference checks still run on them.
            parsed = _valid_part(doc.data)
            broken.update(_invalid_names(doc.data))
            broken_items += _invalid_items(doc, parsed)
        for kind, attr in KINDS.items():
            for index, spec in parsed.get(attr, []):
                key = (kind, spec.name)
                if key in origin:
                    first_doc, first_path = origin[key]
                    issues.append(
                        DefinitionIssue(
                            doc.file,
                            doc.line_of((attr, index)),
                            f"{attr}.{spec.name}",
                            f"duplicate {kind.replace('_', ' ')} name; first declared at "
                            f"{first_doc.file}:{first_doc.line_of(first_path)}",
                        )
                    )
                    continue
                origin[key] = (doc, (attr, index))
                buckets[attr][spec.name] = spec

    definitions = Definitions(**{k: dict(sorted(v.items())) for k, v in buckets.items()})
    issues += [
        issue
        for issue in _reference_issues(definitions, origin)
        if not any(f"'{name}'" in issue.message for name in broken)
    ]
    issues += _raw_reference_issues(definitions, broken_items)
    if issues:
        raise DefinitionError(issues)
    return definitions


def _valid_part(data: dict[str, Any]) -> dict[str, list[tuple[int, Any]]]:
    """The objects of a file that validate on their own, with their list index."""
    out: dict[str, list[tuple[int, Any]]] = {}
    for attr in KINDS.values():
        items = data.get(attr)
        if not isinstance(items, list):
            continue
        for index, item in enumerate(items):
            try:
                parsed = DefinitionFile.model_validate({attr: [item]})
            except ValidationError:
                continue
            out.setdefault(attr, []).append((index, getattr(parsed, attr)[0]))
    return out


def _invalid_items(
    doc: LocatedDocument, valid: dict[str, list[tuple[int, Any]]]
) -> list[tuple[LocatedDocument, str, int, dict[str, Any]]]:
    out = []
    for attr in KINDS.values():
        items = doc.data.get(attr)
        if not isinstance(items, list):
            continue
        good = {index for index, _ in valid.get(attr, [])}
        out += [(doc, attr, i, item) for i, item in enumerate(items) if i not in good and isinstance(item, dict)]
    return out


# attribute -> (field, kind it names) checked even on objects that failed their own checks,
# so one run reports a bad ttl and an unknown entity of the same view together.
_RAW_REFS = {
    "feature_views": [("entities", "entities"), ("source", "sources")],
    "feature_jobs": [("source", "sources")],
    "models": [("user_entity", "entities"), ("item_entity", "entities")],
}


_SINGULAR = {"entities": "entity", "sources": "source"}


def _raw_reference_issues(
    defs: Definitions, items: list[tuple[LocatedDocument, str, int, dict[str, Any]]]
) -> list[DefinitionIssue]:
    issues = []
    for doc, attr, index, item in items:
        for key, target in _RAW_REFS.get(attr, []):
            value = item.get(key)
            values = value if isinstance(value, list) else [value]
            for i, ref in enumerate(values):
                if isinstance(ref, str) and ref not in getattr(defs, target):
                    sub = (attr, index, key, i) if isinstance(value, list) else (attr, index, key)
                    issues.append(
                        DefinitionIssue(
                            doc.file, doc.line_of(sub), doc.key_name((attr, index)) + f".{key}",
                            f"unknown {_SINGULAR[target]} {ref!r}; declared {target}: {_names(getattr(defs, target))}",
                        )
                    )
    return issues


def _invalid_names(data: dict[str, Any]) -> set[str]:
    valid = {spec.name for items in _valid_part(data).values() for _, spec in items}
    return {
        item["name"]
        for attr in KINDS.values()
        for item in (data.get(attr) if isinstance(data.get(attr), list) else [])
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"] not in valid
    }


def _reference_issues(
    defs: Definitions,
    origin: dict[tuple[str, str], tuple[LocatedDocument, tuple[Any, ...]]],
) -> list[DefinitionIssue]:
    issues: list[DefinitionIssue] = []

    def report(kind: str, name: str, sub: tuple[Any, ...], key: str, message: str) -> None:
        doc, path = origin[(kind, name)]
        issues.append(DefinitionIssue(doc.file, doc.line_of(path + sub), key, message))

    def check_refs(kind: str, name: str, attr: str, refs: list[str]) -> None:
        for i, ref in enumerate(refs):
            try:
                defs.resolve_features([ref])
            except NotFoundError as exc:
                report(kind, name, (attr, i), f"{KINDS[kind]}.{name}.{attr}", exc.message)

    for name, view in defs.feature_views.items():
        for i, entity in enumerate(view.entities):
            if entity not in defs.entities:
                report(
                    "feature_view", name, ("entities", i), f"feature_views.{name}.entities",
                    f"unknown entity {entity!r}; declared entities: {_names(defs.entities)}",
                )
        if view.source not in defs.sources:
            report(
                "feature_view", name, ("source",), f"feature_views.{name}.source",
                f"unknown source {view.source!r}; declared sources: {_names(defs.sources)}",
            )
        keys = {k.name for e in view.entities if e in defs.entities for k in defs.entities[e].join_keys}
        for i, feature in enumerate(view.features):
            if feature.name in keys:
                report(
                    "feature_view", name, ("features", i, "name"),
                    f"feature_views.{name}.features.{feature.name}",
                    "a feature cannot share its name with a join key of the view's entities",
                )
        if any(f.aggregation is not None for f in view.features):
            source = defs.sources.get(view.source)
            reserved = set(keys)
            if source is not None:
                reserved |= {source.timestamp_field, source.created_timestamp_field}
            for problem in check_aggregations(view, reserved).problems:
                if problem.feature_index is None:
                    report("feature_view", name, ("features",), f"feature_views.{name}.features", problem.message)
                else:
                    feature = view.features[problem.feature_index]
                    report(
                        "feature_view", name, ("features", problem.feature_index, "aggregation"),
                        f"feature_views.{name}.features.{feature.name}.aggregation", problem.message,
                    )
    for name, service in defs.feature_services.items():
        check_refs("feature_service", name, "features", service.features)
    for name, job in defs.feature_jobs.items():
        if job.source not in defs.sources:
            report(
                "feature_job", name, ("source",), f"feature_jobs.{name}.source",
                f"unknown source {job.source!r}; declared sources: {_names(defs.sources)}",
            )
    for name, model in defs.models.items():
        for attr in ("user_entity", "item_entity"):
            entity = getattr(model, attr)
            if entity not in defs.entities:
                report(
                    "model", name, (attr,), f"models.{name}.{attr}",
                    f"unknown entity {entity!r}; declared entities: {_names(defs.entities)}",
                )
        check_refs("model", name, "features", model.features)
        check_refs("model", name, "user_features", model.user_features)
        if model.feature_service and model.feature_service not in defs.feature_services:
            report(
                "model", name, ("feature_service",), f"models.{name}.feature_service",
                f"unknown feature service {model.feature_service!r}; declared: "
                f"{_names(defs.feature_services)}",
            )
    return issues


def _names(bucket: dict[str, Any]) -> str:
    return ", ".join(sorted(bucket)) or "(none)"
