"""Turn raw bytes into text lines, rejecting what no log writer produces."""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, tzinfo
from pathlib import Path
from typing import Protocol

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
    future: int = 0  # events dated ahead of the clock (replay: of the newest input)

    def add(self, other: LineStats) -> None:
        """Count in what another reader (a helper process) counted."""
        self.read += other.read
        self.matched += other.matched
        self.unmatched += other.unmatched
        self.rejected += other.rejected
        for kind, n in other.events.items():
            self.events[kind] = self.events.get(kind, 0) + n


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


class Readable(Protocol):
    """What iter_chunks reads from: a binary file, or part of one."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class Block:
    """
    Complete lines joined by newlines (no trailing newline), all valid: UTF-8, no NUL,
    none over the cap: ``data[:end]``.  Kept as the bytes that were read, not a copy
    (what follows ``end`` is the next block's, left there), so that a bulk parser can
    search it in place without decoding the lines it skips.
    """

    data: bytes
    end: int

    def lines(self) -> list[str]:
        return self.data[:self.end].decode().split("\n")


BLOCK_BYTES = 4 << 20


def _rewinder(stream: Readable) -> Callable[[int], object] | None:
    """How to step a stream back by n bytes, if it can be: a block is then cut at its
    last newline by re-reading the partial line, instead of copying the block."""
    rewind: Callable[[int], object] | None = getattr(stream, "rewind", None)
    if rewind is None and isinstance(stream, io.IOBase) and stream.seekable():
        return lambda n: stream.seek(-n, io.SEEK_CUR)
    return rewind


def iter_chunks(stream: Readable, max_line: int = DEFAULT_MAX_LINE,
                block_bytes: int = BLOCK_BYTES) -> Iterator[Block | list[bytes | None]]:
    """
    Read a stream in large blocks for bulk parsing.

    A block that is valid UTF-8 with no NUL and no over-long line is yielded as one
    Block; any other block is yielded as its raw lines (None for an over-long one), so
    that bad lines are rejected one by one exactly as the line reader does.
    """
    # Copying 4 MiB blocks (carry + data, data[:cut]) cost more than reading them: each
    # copy is fresh memory, page-faulted in.  A seekable stream re-reads its partial
    # last line instead.
    rewind = _rewinder(stream)
    carry = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            break
        data = carry + data if carry else data
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
        if rewind is None:
            carry = data[cut + 1:]
        else:  # a carry is always the bytes just before this read: step back over both
            carry = b""
            if cut + 1 < len(data):
                rewind(len(data) - cut - 1)
        yield from _block_or_lines(data, cut, max_line)
    if carry.endswith(b"\n"):
        # complete lines left over after skipping a monster line (maybe one empty line)
        yield from _block_or_lines(carry, len(carry) - 1, max_line)
    elif carry:
        yield from _block_or_lines(carry, len(carry), max_line)


def _may_hold_long_line(body: bytes, end: int, max_line: int) -> bool:
    """
    Whether some line of ``body[:end]`` may be longer than ``max_line`` bytes.

    A line that long covers a whole aligned window of ``max_line // 2`` bytes, so a
    block in which every such window holds a newline has no over-long line.  This
    probes a few hundred windows instead of splitting millions of lines.
    """
    step = max(1, max_line // 2)
    find = body.find
    return any(find(b"\n", at, at + step) == -1 for at in range(0, end - step + 1, step))


def _block_or_lines(data: bytes, end: int, max_line: int) -> Iterator[Block | list[bytes | None]]:
    """``data[:end]`` as one Block if every line in it is valid, else as its lines."""
    too_long = end > max_line and _may_hold_long_line(data, end, max_line) and \
        max(map(len, data[:end].split(b"\n"))) > max_line
    if not too_long and data.find(b"\x00", 0, end) == -1:
        # All ASCII is valid UTF-8; otherwise decode (without a copy) to check.
        if data.isascii():
            yield Block(data, end)
            return
        try:
            str(memoryview(data)[:end], "utf-8")
        except UnicodeDecodeError:
            pass
        else:
            yield Block(data, end)
            return
    yield [raw if len(raw) <= max_line else None for raw in data[:end].split(b"\n")]
