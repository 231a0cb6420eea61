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
from jfwatch.formats import FORMATS, PARSER_NAMES
from jfwatch.parsers import authelia, authentik, caddy, jellyfin, jellyfin_activity, nginx, traefik
from jfwatch.parsers.base import StreamContext, StreamParser, feed_each_line
from jfwatch.parsers.wrappers import Joiner, unwrap


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
    for spec in map(_spec, (jellyfin, jellyfin_activity, authelia, authentik, caddy, traefik,
                            nginx))
}
if tuple(PARSERS) != PARSER_NAMES:  # the config validates against the names alone
    raise ImportError(f"parsers {tuple(PARSERS)} differ from jfwatch.formats {PARSER_NAMES}")


class AutoParser:
    """Picks a format per line by sniffing, keeping one parser instance per format."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self._parsers: dict[str, StreamParser] = {}
        self._current: ParserSpec | None = None

    @property
    def matched_lines(self) -> int:
        return sum(p.matched_lines for p in self._parsers.values())

    def _parser(self, spec: ParserSpec) -> StreamParser:
        self._current = spec
        if spec.name not in self._parsers:
            self._parsers[spec.name] = spec.create(self.ctx)
        return self._parsers[spec.name]

    def feed(self, line: str) -> list[Event]:
        if self._current is not None and self._current.sniff(line):
            return self._parsers[self._current.name].feed(line)
        spec = next((spec for spec in PARSERS.values() if spec.sniff(line)), None)
        if spec is None:
            # Not a header of any format: a continuation line of the current stream.
            return self._parsers[self._current.name].feed(line) if self._current else []
        return self._parser(spec).feed(line)

    def feed_block(self, block: bytes, end: int) -> list[Event]:
        """The block at once by one format's bulk path when its first and last lines are
        of that format (a log file holds one), else line by line."""
        first_end = block.find(b"\n", 0, end)
        first = block[:end if first_end == -1 else first_end].decode(errors="ignore")
        last = block[block.rfind(b"\n", 0, end) + 1:end].decode(errors="ignore")
        current = self._current
        if current is not None and current.sniff(first) and current.sniff(last):
            return self._parsers[current.name].feed_block(block, end)  # the stream goes on
        head = block[:min(end, 20_000)].decode(errors="ignore").split("\n")[:50]
        tail = block[max(0, end - 20_000):end].decode(errors="ignore").split("\n")[-50:]
        specs = {spec.name for line in head + tail for spec in PARSERS.values() if spec.sniff(line)}
        if len(specs) == 1:
            return self._parser(PARSERS[specs.pop()]).feed_block(block, end)
        return feed_each_line(self, block, end)

    def flush(self, *, force: bool) -> list[Event]:
        return [e for p in self._parsers.values() for e in p.flush(force=force)]

    @property
    def holding(self) -> bool:
        return any(p.holding for p in self._parsers.values())


class Unwrapping:
    """
    Takes collectors' wrappers off each line (``wrappers.unwrap``) before the format's
    parser sees it, joins lines a collector split, and lends the wrapper's time to the
    parser through ``ctx.outer_time``.  A stream's first line tells whether it is
    wrapped (a Docker json-file, a journald export) or bare (Jellyfin's own file): a
    bare stream goes to the parser's bulk path untouched, so the result never depends
    on where reads cut it.
    """

    def __init__(self, inner: StreamParser, ctx: StreamContext) -> None:
        self.inner, self.ctx = inner, ctx
        self._joiner = Joiner()
        self._wrapped: bool | None = None  # decided by the stream's first line

    @property
    def matched_lines(self) -> int:
        return self.inner.matched_lines

    @property
    def holding(self) -> bool:
        return self.inner.holding or self._joiner.waiting

    def _is_wrapped(self, first_line: str) -> bool:
        if self._wrapped is None:
            self._wrapped = unwrap(first_line, self.ctx.timezone) is not None
        return self._wrapped

    def feed(self, line: str) -> list[Event]:
        if not self._is_wrapped(line):
            return self.inner.feed(line)
        found = unwrap(line, self.ctx.timezone)
        if found is None:  # a continuation line the collector printed bare
            return self.inner.feed(line)
        whole = self._joiner.add(found)
        if whole is None:
            return []
        self.ctx.outer_time = found.time
        try:
            return self.inner.feed(whole)
        finally:
            self.ctx.outer_time = None

    def feed_block(self, block: bytes, end: int) -> list[Event]:
        first_end = block.find(b"\n", 0, end)
        if not self._is_wrapped(block[:end if first_end == -1 else first_end].decode()):
            return self.inner.feed_block(block, end)
        return feed_each_line(self, block, end)

    def flush(self, *, force: bool) -> list[Event]:
        # A split line whose last piece never came is a line too, at the end (else the
        # stream would hold forever and its file never commit).
        rest = self._joiner.take() if force else None
        return [*(self.inner.feed(rest) if rest is not None else []),
                *self.inner.flush(force=force)]


def create_parser(fmt: str, ctx: StreamContext) -> StreamParser:
    """A stream parser for a format name or ``auto``, wrappers taken off first."""
    inner: StreamParser = AutoParser(ctx) if fmt == "auto" else PARSERS[fmt].create(ctx)
    return Unwrapping(inner, ctx)


__all__ = ["FORMATS", "PARSERS", "AutoParser", "ParserSpec", "StreamContext", "Unwrapping",
           "create_parser"]
