"""Reader for golden sample logs: ``# expect: [...]`` above every sample line."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

PREFIX = "# expect:"


@dataclass
class Sample:
    lineno: int
    line: str
    expect: list[dict[str, Any]]


def read_samples(path: Path) -> list[Sample]:
    """Every non-comment line, paired with the expectation written just above it."""
    samples: list[Sample] = []
    pending: list[dict[str, Any]] | None = None
    for lineno, line in enumerate(path.read_text("utf-8").split("\n"), 1):
        if line.startswith(PREFIX):
            pending = json.loads(line.removeprefix(PREFIX))
            continue
        if line.startswith("#") or not line.strip():
            continue
        if pending is None:
            raise AssertionError(f"{path}:{lineno}: sample without '{PREFIX}' line above it")
        samples.append(Sample(lineno, line, pending))
        pending = None
    return samples


def attribute(parser: Any, samples: list[Sample]) -> list[list[dict[str, Any]]]:
    """
    Feed every sample to one stream parser and return the events of each line.

    An event returned while feeding its own line belongs to that line.  Held events
    (a success waiting for a TOTP rejection, an injection opener) come out later and
    are matched to their line through the excerpt, oldest unclaimed line first.
    """
    from datetime import UTC

    from jfwatch.parsers.wrappers import unwrap

    # local: keeps this module importable alone
    from jfwatch.redact import excerpt

    joined = ""

    def own_excerpt(line: str) -> str:
        """An event's excerpt is the line inside the collector's wrapper, if any, joined
        with the pieces of it the collector split off before (they yield nothing)."""
        nonlocal joined
        found = unwrap(line, UTC)
        inner = line if found is None else joined + found.line
        joined = inner if found is not None and found.partial else ""
        return excerpt(inner.rstrip())

    owners: dict[str, list[int]] = {}
    mine = [own_excerpt(sample.line) for sample in samples]
    for i, own in enumerate(mine):
        owners.setdefault(own, []).append(i)
    actual: list[list[dict[str, Any]]] = [[] for _ in samples]
    late: list[Any] = []
    for i, sample in enumerate(samples):
        own = mine[i]
        for event in parser.feed(sample.line):
            if event.excerpt == own:
                actual[i].append(orjson.loads(event.json_line()))
                owners[own].remove(i) if i in owners[own] and len(owners[own]) > 1 else None
            else:
                late.append(event)
    late += parser.flush(force=True)
    for event in late:
        candidates = owners.get(event.excerpt)
        if not candidates:
            raise AssertionError(f"event {event} has no source line")
        actual[candidates[0]].append(orjson.loads(event.json_line()))
    return actual
