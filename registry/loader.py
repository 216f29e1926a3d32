"""Reading YAML definition files while remembering the line of every key.

PyYAML's node tree carries positions; pydantic's errors carry a location path. Keeping a map
from path to line lets every error name its file, line and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from registry.errors import DefinitionIssue

PathKey = tuple[Any, ...]


@dataclass
class LocatedDocument:
    """A parsed YAML document and the line (1-based) of every path in it."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of the deepest known prefix of ``path``."""
        for end in range(len(path), -1, -1):
            line = self.lines.get(tuple(path[:end]))
            if line is not None:
                return line
        return None

    def resolve(self, loc: tuple[Any, ...]) -> PathKey:
        """Map a pydantic error location onto this document's paths.

        pydantic inserts the discriminator tag of a union (``('sources', 0, 'parquet', 'path')``);
        parts that do not exist in the data are dropped so the line lookup still works.
        """
        node, out = self.data, []
        for part in loc:
            if isinstance(node, dict) and part in node:
                node = node[part]
                out.append(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                node = node[part]
                out.append(part)
            elif isinstance(node, (dict, list)):
                # A tag pydantic added, or a key that is missing: keep a missing key's name so
                # the message can say which one, but only as the last element.
                if part == loc[-1] and isinstance(part, str):
                    out.append(part)
                continue
        return tuple(out)

    def key_name(self, path: PathKey) -> str:
        """A readable key: list items are named by their ``name`` where they have one."""
        parts: list[str] = []
        node = self.data
        for part in path:
            if isinstance(part, int):
                item = node[part] if isinstance(node, list) and part < len(node) else None
                if isinstance(item, dict) and isinstance(item.get("name"), str):
                    parts.append(item["name"])
                else:
                    parts.append(f"[{part}]")
                node = item
            else:
                parts.append(str(part))
                node = node.get(part) if isinstance(node, dict) else None
        text = ".".join(parts)
        return text.replace(".[", "[") or "(top level)"


def _walk(node: yaml.Node, path: PathKey, lines: dict[PathKey, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if not isinstance(
                key_node, yaml.ScalarNode
            ) else _scalar(key_node)
            out[key] = _walk(value_node, path + (key,), lines)
            # The key's own line is the more useful one for "missing/extra key" errors.
            lines[path + (key,)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_walk(child, path + (i,), lines) for i, child in enumerate(node.value)]
    return _scalar(node)


_SCALAR_LOADER = yaml.SafeLoader("")


def _scalar(node: yaml.Node) -> Any:
    return _SCALAR_LOADER.construct_object(node, deep=True)


def load_yaml(path: Path, display: str | None = None) -> tuple[LocatedDocument | None, list[DefinitionIssue]]:
    """Parse one file; a syntax error becomes an issue with its line, never an exception."""
    name = display or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return None, [DefinitionIssue(name, None, "(file)", f"cannot read the file: {exc}")]
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        reason = exc.problem or str(exc)
        return None, [
            DefinitionIssue(name, line, "(syntax)", f"invalid YAML: {reason}; fix the syntax")
        ]
    nodes = [n for n in nodes if n is not None]
    if len(nodes) > 1:
        return None, [
            DefinitionIssue(
                name,
                nodes[1].start_mark.line + 1,
                "(file)",
                "a definition file holds one YAML document; split it into several files",
            )
        ]
    lines: dict[PathKey, int] = {}
    data = _walk(nodes[0], (), lines) if nodes else {}
    if data is None:
        data = {}
    return LocatedDocument(name, data, lines), []
