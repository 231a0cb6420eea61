"""
The parser registry: one module per log format, listed explicitly.

Each format provides ``sniff(line)`` for ``--format auto``, ``create(ctx)`` returning a
stream parser, and ``PATTERNS``, the names that appear in event origins (the golden
tests check that every pattern has a sample).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from jfwatch.events import Event
from jfwatch.parsers import authelia, authentik, caddy, jellyfin, nginx, traefik
from jfwatch.parsers._common import BulkResult, StreamContext, StreamParser


@dataclass(frozen=True, slots=True)
class ParserSpec:
    name: str
    sniff: Callable[[str], bool]
    create: Callable[[StreamContext], StreamParser]
    patterns: tuple[str, ...]


def _spec(module: ModuleType) -> ParserSpec:
    return ParserSpec(module.NAME, module.sniff, module.create, tuple(module.PATTERNS))


# Order matters for auto-detection: Traefik CLF is nginx combined plus a tail.
PARSERS: dict[str, ParserSpec] = {
    spec.name: spec
    for spec in map(_spec, (jellyfin, authelia, authentik, caddy, traefik, nginx))
}
FORMATS = ("auto", *PARSERS)


class AutoParser:
    """Picks a format per line by sniffing, keeping one parser instance per format."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._parsers: dict[str, StreamParser] = {}
        self._current: ParserSpec | None = None

    def _pick(self, line: str) -> StreamParser | None:
        if self._current is not None and self._current.sniff(line):
            return self._parsers[self._current.name]
        for spec in PARSERS.values():
            if spec.sniff(line):
                self._current = spec
                if spec.name not in self._parsers:
                    self._parsers[spec.name] = spec.create(self.ctx)
                return self._parsers[spec.name]
        return None

    def feed(self, line: str) -> list[Event]:
        parser = self._pick(line)
        if parser is None:
            # Not a header of any format: a continuation line of the current stream.
            return self._parsers[self._current.name].feed(line) if self._current else []
        return parser.feed(line)

    def feed_block(self, block: bytes, end: int | None = None) -> BulkResult:
        """Bulk-parse when the block's first and last lines all belong to one bulk-capable format."""
        end = len(block) if end is None else end
        head = block[:min(end, 20_000)].decode(errors="ignore").split("\n")[:50]
        tail = block[max(0, end - 20_000):end].decode(errors="ignore").split("\n")[-50:]
        specs = {spec.name for line in head + tail for spec in PARSERS.values() if spec.sniff(line)}
        if len(specs) == 1:
            name = specs.pop()
            if name not in self._parsers:
                self._parsers[name] = PARSERS[name].create(self.ctx)
            bulk = getattr(self._parsers[name], "feed_block", None)
            if bulk is not None:
                self._current = PARSERS[name]
                result: BulkResult = bulk(block, end)
                return result
        return _line_by_line(self, block[:end].decode().split("\n"))

    def flush(self, *, force: bool) -> list[Event]:
        return [e for p in self._parsers.values() for e in p.flush(force=force)]

    def only(self) -> StreamParser | None:
        """The one format's parser this stream has needed so far, if exactly one."""
        return next(iter(self._parsers.values())) if len(self._parsers) == 1 else None

    def start_as(self, name: str) -> StreamParser:
        """Begin with ``name``'s parser (a stream resumed mid-file, known to be of that format)."""
        self._current = PARSERS[name]
        parser = self._parsers[name] = PARSERS[name].create(self.ctx)
        return parser

    @property
    def holding(self) -> bool:
        return any(p.holding for p in self._parsers.values())


def _line_by_line(parser: StreamParser, lines: list[str]) -> BulkResult:
    events: list[Event] = []
    matched = 0
    for line in lines:
        found = parser.feed(line.rstrip("\r"))
        matched += bool(found)
        events += found
    return BulkResult(events, matched, len(lines))


def feed_block(parser: StreamParser, block: bytes, end: int | None = None) -> BulkResult:
    """
    Parse a block of valid lines, ``block[:end]`` (``lines.Block``): at once when the
    parser has a bulk path (``feed_block``), which is what makes backfill and replay
    fast, else line by line.
    """
    bulk = getattr(parser, "feed_block", None)
    if bulk is not None:
        result: BulkResult = bulk(block, end)
        return result
    return _line_by_line(parser, block[:end].decode().split("\n"))


def feed_lines(parser: StreamParser, lines: list[str]) -> tuple[list[Event], int]:
    """Parse a run of decoded lines; return the events and how many lines yielded one."""
    if len(lines) > 1 and getattr(parser, "feed_block", None) is not None:
        result = feed_block(parser, "\n".join(lines).encode())
    else:
        result = _line_by_line(parser, lines)
    return result.events, result.matched


def create_parser(fmt: str, ctx: StreamContext) -> StreamParser:
    """A stream parser for a format name or ``auto``."""
    if fmt == "auto":
        return AutoParser(ctx)
    return PARSERS[fmt].create(ctx)


__all__ = ["FORMATS", "PARSERS", "AutoParser", "BulkResult", "ParserSpec", "StreamContext",
           "create_parser", "feed_block", "feed_lines"]
