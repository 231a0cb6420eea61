"""Load YAML keeping line numbers, so validation errors can name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _walk(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            out[(*path, key.value)] = key.start_mark.line + 1
            _walk(value, (*path, key.value), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), out)


def load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Return (data, {field path: line}); raise ValueError with file:line on bad YAML."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    # One pass: compose the node tree (for line numbers) and build the data from it,
    # with libyaml when PyYAML has it (every command loads a dozen rule files).
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    finally:
        loader.dispose()
    lines: dict[tuple[Any, ...], int] = {}
    if node is not None:
        _walk(node, (), lines)
    return data, lines


def describe(path: Path, lines: dict[tuple[Any, ...], int], exc: ValidationError) -> list[str]:
    """One message per pydantic error: ``file:line: field: what is wrong``."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = None
        for depth in range(len(loc), -1, -1):
            line = lines.get(loc[:depth])
            if line is not None:
                break
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{path}:{line or 1}: {field}: {msg}")
    return problems
