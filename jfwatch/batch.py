"""
Parse whole files for the ``parse`` and ``replay`` commands: large blocks through the
parsers' bulk paths, and a large Jellyfin log on two cores.

Two cores: most of a backfill's time is per-event Python work, one core at a time.  A
large file is cut at a *quiet point* (``jellyfin.quiet_cut``): a line start after more
lines without any needle than the parser ever looks back, where a parser holds nothing.
A helper process (``fork``) parses from the cut to the end with a parser resumed in the
state the first one learnt (sink style and quoting), while this process parses up to the
cut; the result is exactly that of one parser reading on.  If the helper fails for any
reason, this process parses the rest itself.
"""

from __future__ import annotations

import contextlib
import gc
import io
import operator
import os
import pickle
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import tzinfo
from typing import IO, BinaryIO

from jfwatch.events import Event
from jfwatch.parsers import AutoParser, create_parser, feed_block, feed_lines
from jfwatch.parsers._common import StreamContext, StreamParser
from jfwatch.parsers.jellyfin import JellyfinParser, quiet_cut
from jfwatch.sources.lines import BLOCK_BYTES, Block, LineStats, Readable, context_for, decode, iter_chunks

# Below this a second process costs more than it saves.
SPLIT_MIN_BYTES = 32 << 20
# Read to learn the stream's style before cutting, in steps: the first lines of most
# logs tell, and parsing all of it cost 25 ms before the helper could start.
_PROBE_BYTES, _PROBE_STEP = 1 << 20, 64 << 10
# Searched for a quiet point around the middle: a small window first (there usually is
# one), then a large one.
_WINDOWS = (512 << 10, 4 << 20)

# How the helper hands back each piece of its events: as JSON lines, or as the events.
Render = Callable[[list[Event]], bytes]
_KIND_OF = operator.attrgetter("kind")


def render_json(events: list[Event]) -> bytes:
    """One JSON line per event (``jfwatch parse``'s output)."""
    if not events:
        return b""
    return ("\n".join([e.json_line() for e in events]) + "\n").encode()


def render_events(events: list[Event]) -> bytes:
    # Rows of plain values: pickling the dataclasses themselves costs ten times as much.
    return pickle.dumps([e.to_row() for e in events], protocol=pickle.HIGHEST_PROTOCOL)


class Head:
    """A binary stream that ends at ``end`` (a line start), for the part before a cut."""

    def __init__(self, stream: BinaryIO, end: int) -> None:
        self._stream, self._left = stream, end - stream.tell()

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size > 0 else b""
        self._left -= len(data)
        return data

    def rewind(self, size: int) -> None:
        self._stream.seek(-size, io.SEEK_CUR)
        self._left += size


class Positional:
    """
    Reads a file descriptor from ``start`` (up to ``end``, if given) with pread: a
    forked helper shares its parent's file offset, so neither may move it, and
    reopening by name could open a file that was rotated in since.
    """

    def __init__(self, fd: int, start: int, end: int | None = None) -> None:
        self._fd, self._pos, self._end = fd, start, end

    def read(self, size: int = -1) -> bytes:
        end = os.fstat(self._fd).st_size if self._end is None else self._end
        size = max(0, end - self._pos) if size < 0 else min(size, max(0, end - self._pos))
        data = os.pread(self._fd, size, self._pos) if size else b""
        self._pos += len(data)
        return data

    def rewind(self, size: int) -> None:
        self._pos -= size


def iter_parse(stream: Readable, parser: StreamParser, stats: LineStats,
               block_bytes: int = BLOCK_BYTES) -> Iterator[list[Event]]:
    """Parse a stream to its end (without the final flush), one block's events at a
    time, and count its lines."""
    for chunk in iter_chunks(stream, block_bytes=block_bytes):
        if isinstance(chunk, Block):
            events, matched, lines = feed_block(parser, chunk.data, chunk.end)
        else:
            decoded = [None if raw is None else decode(raw) for raw in chunk]
            valid = [line for line in decoded if line is not None]
            stats.rejected += len(decoded) - len(valid)
            stats.read += len(decoded) - len(valid)
            events, matched = feed_lines(parser, valid)
            lines = len(valid)
        stats.read += lines
        stats.matched += matched
        stats.unmatched += lines - matched
        yield events


def quiet_collector() -> None:
    """
    Collector settings for ``parse`` and ``replay``: what is loaded so far (modules,
    config, rules) lives to the end, so it is frozen out of collection, which also
    keeps a forked helper from copying those pages; the events and detector groups that
    follow are acyclic, and freed by their reference counts, so collections are made
    rare.  (Measured: about 5% off replay's time; 3% fewer instructions for ``parse``,
    whose young collections ran every few hundred events.)
    """
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def pieces_to_end(stream: Readable, parser: StreamParser, stats: LineStats
                  ) -> Iterator[list[Event]]:
    """
    Parse a stream to its end one block's events at a time, then flush what the parser
    holds; count lines and events.  A caller that writes each piece as it comes keeps
    no event longer than its block (measured: 4-8% less CPU for ``parse`` than writing
    them all at the end, with far less memory in use).
    """
    for events in iter_parse(stream, parser, stats):
        count_kinds(events, stats)
        yield events
    final = parser.flush(force=True)
    count_kinds(final, stats)
    yield final


def parse_to_end(stream: Readable, parser: StreamParser, stats: LineStats) -> list[Event]:
    """Parse a stream to its end, flush what the parser holds, count lines and events."""
    out: list[Event] = []
    for events in pieces_to_end(stream, parser, stats):
        out += events
    return out


def count_kinds(events: list[Event], stats: LineStats) -> None:
    counts = stats.events
    for kind, n in Counter(map(_KIND_OF, events)).items():  # counted in C
        counts[kind] = counts.get(kind, 0) + n


def _jellyfin(parser: StreamParser) -> JellyfinParser | None:
    sole = parser.only() if isinstance(parser, AutoParser) else parser
    return sole if isinstance(sole, JellyfinParser) else None


@dataclass(frozen=True, slots=True)
class Cut:
    """Where a file can be parsed in two parts (a line start at a quiet point), and how
    a parser resumes there."""

    offset: int
    learnt: tuple[str, bool]
    last_hit_line: str | None


def plan_cut(fh: BinaryIO, fmt: str, ctx: StreamContext, share: float) -> Cut | None:
    """
    A quiet point about ``share`` of the way into a large file-sink Jellyfin log, or
    None when the file is small, another format, or has no quiet stretch there.
    """
    size = os.fstat(fh.fileno()).st_size
    if size < SPLIT_MIN_BYTES or not os.path.isfile(fh.name):
        return None
    probe = create_parser(fmt, ctx)
    head = fh.read(_PROBE_BYTES)
    fh.seek(0)
    learnt = None
    for _ in iter_parse(io.BytesIO(head[:head.rfind(b"\n") + 1]), probe, LineStats(), _PROBE_STEP):
        learnt_by = _jellyfin(probe)
        learnt = learnt_by.learnt() if learnt_by is not None else None
        if learnt is not None:
            break
    if learnt is None:
        return None
    target = int(size * share)
    for window_bytes in _WINDOWS:
        low = max(len(head), target - window_bytes // 2)
        fh.seek(low)
        window = fh.read(window_bytes)
        fh.seek(0)
        found = quiet_cut(window, max(0, target - low))
        if found is not None:
            return Cut(low + found[0], learnt, found[1])
    return None


def resumed_parser(fmt: str, ctx: StreamContext, cut: Cut) -> StreamParser:
    """A parser that reads on from ``cut`` exactly as one that read up to it would."""
    parser = create_parser(fmt, ctx)
    resumed = parser.start_as("jellyfin") if isinstance(parser, AutoParser) else parser
    assert isinstance(resumed, JellyfinParser)
    resumed.resume(cut.learnt, cut.last_hit_line)
    return parser


@dataclass(slots=True)
class _Helper:
    pid: int
    cut: int
    result: IO[bytes]


def _start_helper(fh: BinaryIO, fmt: str, ctx: StreamContext, render: Render,
                  share: float) -> _Helper | None:
    """Fork a helper for the part of a large Jellyfin file after a cut, or return None."""
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        return None
    cut = plan_cut(fh, fmt, ctx, share)
    if cut is None:
        return None
    result = tempfile.TemporaryFile()  # noqa: SIM115 - _finish_helper closes it
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return _Helper(pid, cut.offset, result)
    status = 1
    try:  # the helper: parse from the cut, hand the result over, never return
        parser = resumed_parser(fmt, ctx, cut)
        stats = LineStats()
        rendered = [render(events) for events in
                    pieces_to_end(Positional(fh.fileno(), cut.offset), parser, stats)]
        pickle.dump((stats, rendered), result, protocol=pickle.HIGHEST_PROTOCOL)
        result.flush()
        status = 0
    finally:
        os._exit(status)


def reap(pid: int, kill: bool) -> int:
    """Wait for a helper process to end, killing it first if ``kill`` (no one will read
    what it parses); its exit status."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def _finish_helper(helper: _Helper, stats: LineStats, stop: bool = False) -> list[bytes] | None:
    """
    The helper's rendered pieces, its counts added to ``stats``; None if it failed.
    ``stop``: no one will read them (``jfwatch parse | head`` ended early), so kill it
    rather than wait for it to parse the rest of the file.
    """
    status = reap(helper.pid, kill=stop)
    try:
        if status != 0:
            return None
        helper.result.seek(0)
        helper_stats, rendered = pickle.load(helper.result)  # noqa: S301 - our own child's output
    except (OSError, EOFError, pickle.UnpicklingError):
        return None
    finally:
        helper.result.close()
    stats.add(helper_stats)
    return [bytes(piece) for piece in rendered]


Piece = list[Event] | bytes  # a block's events parsed here, or a piece the helper rendered


def read_pieces(files: Sequence[str], fmt: str, tz: tzinfo, stats: LineStats,
                render: Render = render_events, proxy_token_failures: bool = False,
                share: float = 0.5) -> Iterator[Piece]:
    """
    Parse every file (``-`` is stdin) in file order, piece by piece: a caller that uses
    each piece as it comes works on the first part of a split file while the helper
    still parses the rest.  ``share``: about how much of a split file this process
    parses itself (less when it has more to do with its piece than the helper has).
    """
    for name in files:
        ctx = context_for(None if name == "-" else name, tz,
                          proxy_token_failures=proxy_token_failures)
        parser = create_parser(fmt, ctx)
        if name == "-":
            yield from pieces_to_end(sys.stdin.buffer, parser, stats)
            continue
        try:
            fh = open(name, "rb")  # noqa: SIM115 - closed below; a generator cannot hold it in a with
        except OSError as exc:
            raise SystemExit(f"jfwatch: cannot read {name}: {exc.strerror}") from exc
        try:
            yield from _read_file(fh, fmt, ctx, parser, stats, render, share)
        finally:
            fh.close()


def _read_file(fh: BinaryIO, fmt: str, ctx: StreamContext, parser: StreamParser,
               stats: LineStats, render: Render, share: float) -> Iterator[Piece]:
    helper = _start_helper(fh, fmt, ctx, render, share)
    if helper is None:
        yield from pieces_to_end(fh, parser, stats)
        return
    try:
        yield from pieces_to_end(Head(fh, helper.cut), parser, stats)
    except BaseException:
        _finish_helper(helper, LineStats(), stop=True)  # do not leave it behind
        raise
    tail = _finish_helper(helper, stats)
    if tail is not None:
        yield from tail
        return
    fh.seek(helper.cut)  # the helper failed: read on here, as if it had never been
    yield from pieces_to_end(fh, parser, stats)


def rows_to_events(payload: bytes) -> list[Event]:
    """The events a helper rendered with ``render_events``."""
    return list(map(Event.from_row, pickle.loads(payload)))  # noqa: S301 - our own helper's


def read_events(files: Sequence[str], fmt: str, tz: tzinfo, stats: LineStats,
                proxy_token_failures: bool = False) -> list[Event]:
    """Parse every file and return its events in file order."""
    events: list[Event] = []
    for piece in read_pieces(files, fmt, tz, stats, render_events, proxy_token_failures):
        events += rows_to_events(piece) if isinstance(piece, bytes) else piece
    return events
