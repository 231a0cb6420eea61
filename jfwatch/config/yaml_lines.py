"""Load YAML keeping line numbers, so validation errors can name file, line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# Config and rule files are a few KiB; a larger one is a mistake or an attack.
MAX_BYTES = 1024 * 1024


class _AliasError(ValueError):
    def __init__(self, line: int) -> None:
        super().__init__(line)
        self.line = line


def _walk(node: yaml.Node, path: tuple[Any, ...], out: dict[tuple[Any, ...], int],
          seen: set[int], where: int = 1) -> None:
    """
    Record each field's line.  A node reached twice is an alias (``*name``, ``<<:``):
    refused, since a few nested aliases ("billion laughs") expand to gigabytes in
    any walk over the data, and no jfwatch setting needs one.
    """
    if id(node) in seen:
        raise _AliasError(where)  # an alias's node is the anchor's: name where it is used
    seen.add(id(node))
    line = out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            key_line = out[(*path, key.value)] = key.start_mark.line + 1
            _walk(key, (*path, key.value, "<key>"), out, seen, key_line)
            _walk(value, (*path, key.value), out, seen, key_line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), out, seen, line)


class YamlRefused(ValueError):
    """Too large, or holding aliases: refused before anything parses the data further."""


def _read_bounded(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read: {exc}") from exc
    if len(raw) > MAX_BYTES:
        raise YamlRefused(f"{path}:1: file is larger than {MAX_BYTES // 1024} KiB")
    return text


def guard_yaml(path: Path) -> None:
    """
    The guards of ``load_yaml`` (size, no aliases) for a file another library parses
    (Apprise's config file, whose YAML Apprise loads and walks itself: a 353-byte alias
    bomb costs it gigabytes).  Only composes the node tree, which shares an alias's
    nodes and so stays small.  A file that is not YAML at all (Apprise's text format)
    passes: nothing can expand in it.  YamlRefused, or ValueError if it cannot be read.
    """
    text = _read_bounded(path)
    loader = _LOADER(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk(node, (), {}, set())
    except _AliasError as exc:
        raise YamlRefused(f"{path}:{exc.line}: YAML aliases and merge keys (*name, <<) are "
                          "not allowed: write the value out") from None
    except yaml.YAMLError:
        return
    finally:
        loader.dispose()


def load_yaml(path: Path) -> tuple[Any, dict[tuple[Any, ...], int]]:
    """Return (data, {field path: line}); raise ValueError with file:line on bad YAML."""
    text = _read_bounded(path)
    # Compose the node tree (for line numbers and the alias check), then build the data
    # from it, with libyaml when PyYAML has it (every command loads a dozen rule files).
    loader = _LOADER(text)
    lines: dict[tuple[Any, ...], int] = {}
    try:
        node = loader.get_single_node()
        if node is not None:
            _walk(node, (), lines, set())
        data = None if node is None else loader.construct_document(node)
    except _AliasError as exc:
        raise YamlRefused(f"{path}:{exc.line}: YAML aliases and merge keys (*name, <<) are not "
                         "allowed: write the value out") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ValueError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from exc
    finally:
        loader.dispose()
    return data, lines


def describe(path: Path, lines: dict[tuple[Any, ...], int], exc: ValidationError) -> list[str]:
    """One message per pydantic error: ``file:line: field: what is wrong``."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = locate(lines, loc)
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        problems.append(f"{path}:{line}: {field}: {msg}")
    return problems


def locate(lines: dict[tuple[Any, ...], int], loc: tuple[Any, ...]) -> int:
    """The line of ``loc`` (a key path), or of its nearest written parent (1: none)."""
    for depth in range(len(loc), -1, -1):
        line = lines.get(loc[:depth])
        if line is not None:
            return line
    return 1
