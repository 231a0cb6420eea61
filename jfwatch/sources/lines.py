"""
Bytes to lines: bounded blocks of complete lines from any stream (a followed file, a
one-shot file, stdin), and the rule that rejects what no log writer produces.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

DEFAULT_MAX_LINE = 64 * 1024
# Read at most this much of one stream at a time: what bounds the memory of a backlog
# (a first start on old logs, a flood) and keeps one busy file from starving the others.
BLOCK_BYTES = 1 << 20


@dataclass(slots=True)
class LineStats:
    """Line and event counts: ``jfwatch parse``/``replay`` summaries, the daemon's metrics."""

    read: int = 0
    matched: int = 0  # lines that yielded an event (counted when parsed, held or not)
    unmatched: int = 0
    rejected: int = 0
    events: dict[str, int] = field(default_factory=dict)

    def add(self, other: LineStats) -> None:
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


@dataclass(slots=True)
class Block:
    """``data[:end]``: complete lines joined by newlines, every one valid (UTF-8, no NUL,
    none over the cap), for a parser's bulk path to search in place."""

    data: bytes
    end: int


def split_valid(data: bytes, max_line: int) -> Block | list[bytes | None]:
    """
    Complete lines (each ending in a newline) as one Block when all are valid; else as
    their raw lines, None for an over-long one, so that the bad ones are rejected one by
    one with ``decode``.
    """
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    too_long = end > max_line and _may_hold_long_line(data, end, max_line) and \
        max(map(len, data[:end].split(b"\n"))) > max_line
    if not too_long and data.find(b"\x00", 0, end) == -1:
        if data.isascii():  # all ASCII is valid UTF-8
            return Block(data, end)
        try:
            str(memoryview(data)[:end], "utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return Block(data, end)
    return [raw if len(raw) <= max_line else None for raw in data[:end].split(b"\n")]


def _may_hold_long_line(data: bytes, end: int, max_line: int) -> bool:
    """
    Whether some line of ``data[:end]`` may be longer than ``max_line`` bytes: such a
    line covers a whole aligned window of ``max_line // 2`` bytes, so a block in which
    every window holds a newline has none (a few hundred probes, not a million splits).
    """
    step = max(1, max_line // 2)
    find = data.find
    return any(find(b"\n", at, at + step) == -1 for at in range(0, end - step + 1, step))


class LineReader:
    """
    Complete lines from one binary stream, at most about ``BLOCK_BYTES`` per read, and
    the offset just after them (what may be committed).  An unfinished last line waits
    for its newline; one that outgrows ``max_line`` keeps only its first ``max_line + 1``
    bytes (enough for ``decode`` to reject it), so no line can fill the memory.
    """

    def __init__(self, fh: BinaryIO, offset: int, max_line: int = DEFAULT_MAX_LINE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.fh, self.offset, self.max_line, self.clock = fh, offset, max_line, clock
        self._partial = b""  # the unfinished line's bytes (cut at max_line + 1)
        self._partial_raw = 0  # how many bytes of the stream it stands for
        self.partial_since: float | None = None  # clock time it was first seen
        self.last_growth = clock()

    @property
    def position(self) -> int:
        """Where the next read starts: after the unfinished line's bytes."""
        return self.offset + self._partial_raw

    def read(self, budget: int = BLOCK_BYTES) -> bytes:
        """The next complete lines, each with its newline; b"" when none is complete."""
        read1 = getattr(self.fh, "read1", self.fh.read)
        data = read1(budget)
        if not data:
            return b""
        self.last_growth = self.clock()
        last = data.rfind(b"\n")
        if last == -1:
            self._hold(data)
            return b""
        lines = self._partial + data[:last + 1] if self._partial else data[:last + 1]
        if self._partial_raw > len(self._partial):  # an over-long line: its middle is gone
            first = data.find(b"\n")
            lines = self._partial + data[first:last + 1]
        self.offset += self._partial_raw + last + 1
        self._partial, self._partial_raw, self.partial_since = b"", 0, None
        if last + 1 < len(data):
            self._hold(data[last + 1:])
        return lines

    def _hold(self, data: bytes) -> None:
        room = self.max_line + 1 - len(self._partial)
        self._partial += data[:room] if room > 0 else b""
        self._partial_raw += len(data)
        if self.partial_since is None:
            self.partial_since = self.clock()

    def take_partial(self) -> bytes:
        """The unfinished line as a line of its own (end of input, or waited too long)."""
        if not self._partial_raw:
            return b""
        line = self._partial + b"\n"
        self.offset += self._partial_raw
        self._partial, self._partial_raw, self.partial_since = b"", 0, None
        return line

    def restart(self, offset: int = 0) -> None:
        """Read again from ``offset`` (a file truncated or rewritten in place)."""
        self.fh.seek(offset)
        self.offset = offset
        self._partial, self._partial_raw, self.partial_since = b"", 0, None
