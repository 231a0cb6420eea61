"""Helpers shared by the parsers: addresses, timestamps and the stream interface."""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, tzinfo
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import orjson

from jfwatch.addresses import canonical, memo_address
from jfwatch.events import Event, IPAddress

_IP_CHARS = re.compile(r"^[0-9A-Fa-f:.]{2,45}$")


@functools.lru_cache(maxsize=65536)
def parse_ip(text: str | None) -> IPAddress | None:
    """
    Parse an address taken from an application-written position, or return None.

    IPv4-mapped IPv6 is turned into IPv4 (as Jellyfin itself does), so one client
    is one group whatever the socket family.  Anything that is not an address
    (a hostname, a redacted ``MYIP.MYIP``, an injected string) yields None.
    """
    if not text or not _IP_CHARS.match(text):
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return memo_address(canonical(addr))


def parse_host_port(text: str | None) -> IPAddress | None:
    """Parse ``1.2.3.4:5``, ``[2001:db8::1]:5`` or a bare address."""
    if not text:
        return None
    if text.startswith("["):
        host, _, _ = text[1:].partition("]")
        return parse_ip(host)
    if text.count(":") == 1:
        return parse_ip(text.partition(":")[0])
    return parse_ip(text)


def from_epoch(seconds: float) -> datetime:
    """Epoch seconds (Caddy's ``ts``) as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, tz=UTC)


@dataclass(slots=True)
class StreamContext:
    """
    What a parser may know about the stream it reads.

    ``timezone`` completes timestamps that carry none (Jellyfin's console sink,
    authentik); ``file_date`` is the date in a ``log_YYYYMMDD.log`` name, used when
    a line has a time but no date.
    """

    timezone: tzinfo = UTC
    file_date: date | None = None
    proxy_token_failures: bool = False
    quoting: str = "auto"  # Jellyfin only: auto | quoted (file sink) | raw (console sink)
    # Jellyfin Activity Log only: Name templates by entry type, in the server's language.
    activity_templates: dict[str, str] = field(default_factory=dict)
    # The time of the collector's wrapper around the line being parsed (set per line by
    # parsers.Unwrapping), for lines that carry only a clock.
    outer_time: datetime | None = None


@runtime_checkable
class RecordParser(Protocol):
    """A parser that also takes records (decoded JSON objects) from an API source."""

    @property
    def matched_lines(self) -> int:
        """Records (and lines) so far that yielded an event."""

    def feed_record(self, entry: dict[str, Any], text: str | None = None) -> list[Event]:
        """The events of one record (``text``: the line it was read from, if any)."""


class StreamParser(Protocol):
    """
    A parser instance for one stream (one file or stdin); it may keep state.

    ``matched_lines`` counts the lines that yielded an event, or an event held back for
    a later line: counted when the line is parsed, so the count does not depend on how
    the stream was cut into reads.
    """

    @property
    def matched_lines(self) -> int:
        """Lines so far that yielded an event (see above)."""

    def feed(self, line: str) -> list[Event]:
        """Parse one physical line (without its newline) and return 0..n events."""

    def feed_block(self, block: bytes, end: int) -> list[Event]:
        """Parse ``block[:end]``, complete valid lines joined by newlines."""

    def flush(self, *, force: bool) -> list[Event]:
        """Release held events; ``force`` releases all (end of input)."""

    @property
    def holding(self) -> bool:
        """True while events are held back waiting for a following line."""


def json_object(line: str) -> dict[str, Any] | None:
    """The JSON object on a line, or None for anything else (arrays, garbage, truncation)."""
    try:
        doc = orjson.loads(line)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def feed_each_line(parser: StreamParser, block: bytes, end: int) -> list[Event]:
    """``block[:end]`` fed line by line: a parser's bulk path where it has no faster one."""
    return [e for line in block[:end].decode().split("\n") for e in parser.feed(line.rstrip("\r"))]


class StatelessParser:
    """Base for parsers whose result depends on one line only."""

    def __init__(self, ctx: StreamContext) -> None:
        self.ctx = ctx
        self.matched_lines = 0

    def feed(self, line: str) -> list[Event]:
        event = self.parse(line)
        if event is None:
            return []
        self.matched_lines += 1
        return [event]

    def feed_block(self, block: bytes, end: int) -> list[Event]:
        return feed_each_line(self, block, end)

    def parse(self, line: str) -> Event | None:  # pragma: no cover - overridden
        raise NotImplementedError

    def flush(self, *, force: bool) -> list[Event]:
        return []

    @property
    def holding(self) -> bool:
        return False


_DATED_NAME = re.compile(r"(\d{4})(\d{2})(\d{2})")


def date_from_name(path: str | Path) -> date | None:
    """The day in Jellyfin's ``log_YYYYMMDD.log`` names (for console-format lines)."""
    m = _DATED_NAME.search(Path(path).name)
    if m is None:
        return None
    try:
        return date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def context_for(path: str | Path | None, tz: tzinfo, *, quoting: str = "auto",
                proxy_token_failures: bool = False) -> StreamContext:
    """The parser context for a file (or stdin when ``path`` is None)."""
    return StreamContext(timezone=tz, file_date=date_from_name(path) if path else None,
                         proxy_token_failures=proxy_token_failures, quoting=quoting)
