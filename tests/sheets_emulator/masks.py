"""Field masks: "userEnteredFormat.backgroundColor", "gridProperties/rowCount", "a(b,c)".

The API uses the same little language to say which fields a write touches
(a narrow mask is how sheetrunner avoids wiping a user's bold text) and which
fields a read returns, so both uses share one parser.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

Path = tuple[str, ...]
_MISSING = object()


def parse(mask: str) -> list[Path]:
    """Parse `a.b,c(d,e/f)` into [("a","b"), ("c","d"), ("c","e","f")]; ValueError if broken."""
    paths, rest = _parse_list(mask.replace(" ", ""), ())
    if rest:
        raise ValueError(f"bad field mask {mask!r}")
    return paths


def _parse_list(text: str, prefix: Path) -> tuple[list[Path], str]:
    paths: list[Path] = []
    while True:
        found, text = _parse_item(text, prefix)
        paths += found
        if not text.startswith(","):
            return paths, text
        text = text[1:]


def _parse_item(text: str, prefix: Path) -> tuple[list[Path], str]:
    name_end = next((i for i, ch in enumerate(text) if ch in ".,/()"), len(text))
    name, text = text[:name_end], text[name_end:]
    if not name:
        raise ValueError("empty field name in mask")
    path = prefix + (name,)
    if text[:1] in (".", "/"):
        return _parse_item(text[1:], path)
    if text.startswith("("):
        paths, text = _parse_list(text[1:], path)
        if not text.startswith(")"):
            raise ValueError("unbalanced parentheses in mask")
        return paths, text[1:]
    return [path], text


def apply(target: dict[str, Any], source: Mapping[str, Any], paths: list[Path]) -> None:
    """Copy each masked field from `source` into `target`; a field absent in `source` is cleared."""
    for path in paths:
        if path == ("*",):
            target.clear()
            target.update(copy.deepcopy(dict(source)))
            continue
        value = _get(source, path)
        if value is _MISSING or value is None:
            _delete(target, path)
        else:
            _set(target, path, copy.deepcopy(value))


def touches(paths: list[Path], prefix: Path) -> list[Path]:
    """The sub-paths under `prefix` (a path equal to `prefix` gives [()], meaning all of it)."""
    out = []
    for path in paths:
        if path == ("*",) or path[: len(prefix)] == prefix:
            out.append(() if path == ("*",) else path[len(prefix) :])
        elif prefix[: len(path)] == path:
            out.append(())
    return out


def project(value: Any, paths: list[Path]) -> Any:
    """Keep only the masked fields of a response (lists are projected element-wise)."""
    if () in paths or not paths:
        return value
    if isinstance(value, list):
        return [project(item, paths) for item in value]
    if not isinstance(value, Mapping):
        return value
    out = {}
    for key, item in value.items():
        sub = [p[1:] for p in paths if p[0] == key]
        if sub:
            out[key] = project(item, sub)
    return out


def _get(source: Mapping[str, Any], path: Path) -> Any:
    node: Any = source
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return _MISSING
        node = node[key]
    return node


def _set(target: dict[str, Any], path: Path, value: Any) -> None:
    node = target
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _delete(target: dict[str, Any], path: Path) -> None:
    node: Any = target
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(path[-1], None)
