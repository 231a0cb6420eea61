"""Turn raw bytes into text lines, rejecting what no log writer produces."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, tzinfo
from pathlib import Path
from typing import BinaryIO

from jfwatch.parsers._common import StreamContext

DEFAULT_MAX_LINE = 64 * 1024
_DATED_NAME = re.compile(r"(\d{4})(\d{2})(\d{2})")


@dataclass(slots=True)
class LineStats:
    """Counts shown by ``jfwatch parse`` / ``replay`` and exported as metrics."""

    read: int = 0
    matched: int = 0
    unmatched: int = 0
    rejected: int = 0
    events: dict[str, int] = field(default_factory=dict)


def decode(raw: bytes, max_line: int = DEFAULT_MAX_LINE) -> str | None:
    """
    Decode one line (without its newline) or return None to reject it.

    Invalid UTF-8, NUL bytes and lines over ``max_line`` bytes are rejected: a log
    writer does not produce them, so they are noise or an attack, never an event.
    """
    if len(raw) > max_line or b"\x00" in raw:
        return None
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        return None


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
                         proxy_token_failures=proxy_token_failures,
                         quoting=quoting)


@dataclass(slots=True)
class Block:
    """Complete, valid lines joined by newlines (no trailing newline), and their count."""

    text: str
    lines: int


BLOCK_BYTES = 4 << 20


def iter_chunks(stream: BinaryIO, max_line: int = DEFAULT_MAX_LINE,
                block_bytes: int = BLOCK_BYTES) -> Iterator[Block | list[bytes | None]]:
    """
    Read a stream in large blocks for bulk parsing.

    A block that is valid UTF-8 with no NUL and no over-long line is yielded as one
    Block; any other block is yielded as its raw lines (None for an over-long one), so
    that bad lines are rejected one by one exactly as the line reader does.
    """
    carry = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        data = carry + data
        cut = data.rfind(b"\n")
        if cut == -1:
            if len(data) > max_line * 4:
                carry = b""
                yield [None]
                # Skip the rest of this monster line.
                while (more := stream.read(block_bytes)) and b"\n" not in more:
                    pass
                if more:
                    carry = more[more.index(b"\n") + 1:]
                continue
            carry = data
            continue
        body, carry = data[:cut], data[cut + 1:]
        yield from _block_or_lines(body, max_line)
    if carry.endswith(b"\n"):
        carry = carry[:-1]  # complete lines left over after skipping a monster line
        yield from _block_or_lines(carry, max_line)
    elif carry:
        yield from _block_or_lines(carry, max_line)


def _block_or_lines(body: bytes, max_line: int) -> Iterator[Block | list[bytes | None]]:
    # A block shorter than the cap cannot hold an over-long line; otherwise measure
    # the lines (split is C-speed; a regex for "max_line non-newlines" backtracks).
    fits = len(body) <= max_line or max(map(len, body.split(b"\n"))) <= max_line
    if fits and b"\x00" not in body:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            yield Block(text, text.count("\n") + 1)
            return
    yield [raw if len(raw) <= max_line else None for raw in body.split(b"\n")]
