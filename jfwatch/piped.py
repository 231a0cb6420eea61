"""
Parse files in a helper process and hand the events back as they come.

``jfwatch replay`` spends most of its time in the detector, which is single-threaded
by design (bans couple the rules).  Parsing is the other half of the work and needs
nothing the detector has, so a forked helper parses the files, one block at a time,
while this process detects on the events of the blocks before: the two halves run on
two cores at once.  The helper spools each block's events to a temporary file and
announces it through a pipe, so it never waits for this process.  To balance the
two, this process parses the last part of a large Jellyfin log itself (from a quiet
point, ``batch.plan_cut``) before it turns to the helper's events.

The pieces arrive in file order, exactly as one parser in this process would give
them.  If the helper fails for any reason (killed, out of memory, a full disk), the
stream says ``START_OVER`` and this process parses everything again itself; what the
caller did with the earlier pieces is void.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import tzinfo
from typing import BinaryIO

from jfwatch.batch import (
    Cut,
    Positional,
    parse_to_end,
    pieces_to_end,
    plan_cut,
    read_pieces,
    reap,
    resumed_parser,
    rows_to_events,
)
from jfwatch.events import Event, EventRow
from jfwatch.parsers import create_parser
from jfwatch.parsers._common import StreamContext
from jfwatch.sources.lines import LineStats, context_for

# Below this much input, forking costs more than it saves.
PIPE_MIN_BYTES = 4 << 20
# How much of a large last file this process parses itself: about what makes its own
# share (that part plus detecting everything) take as long as the helper's parsing.
OWN_SHARE = 0.15
_OFFSET = struct.Struct("<q")  # announced through the pipe: the spool's end after a piece


class StartOver:
    """Marker in the stream: forget every piece so far, the stream begins again."""

    def __repr__(self) -> str:
        return "START_OVER"


START_OVER = StartOver()


class Backfill:
    """
    Files being parsed for a replay: ``start`` forks the helper at once (``replay``
    starts it before its own heavy imports), ``pieces`` hands the events over.
    """

    def __init__(self, files: Sequence[str], fmt: str, tz: tzinfo,
                 proxy_token_failures: bool) -> None:
        self.files, self.fmt, self.tz = list(files), fmt, tz
        self.proxy_token_failures = proxy_token_failures
        self._pid: int | None = None
        self._notes = -1  # the pipe's read end
        self._spool: BinaryIO | None = None
        self._cut: Cut | None = None
        # Opened once, here: the helper and this process read these descriptors, so a
        # file rotated (renamed, recreated) meanwhile cannot mix two files' lines.
        self._handles: list[BinaryIO] = []

    @classmethod
    def start(cls, files: Sequence[str], fmt: str, tz: tzinfo,
              proxy_token_failures: bool = False) -> Backfill:
        """Fork the helper, unless the input is small, standard input or unreadable
        (then ``pieces`` parses here, and reports an unreadable file)."""
        self = cls(files, fmt, tz, proxy_token_failures)
        if not _worth_a_helper(self.files):
            return self
        try:
            for name in self.files:
                self._handles.append(open(name, "rb"))  # noqa: SIM115 - closed by _finish
            last = self._handles[-1]
            self._cut = plan_cut(last, fmt, self._context(self.files[-1]), 1 - OWN_SHARE)
            last.seek(0)
        except OSError:
            self._finish(stop=False)
            return self
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed by _finish
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            self._helper(write_end)  # never returns
        os.close(write_end)
        self._pid, self._notes = pid, read_end
        return self

    def _context(self, name: str) -> StreamContext:
        return context_for(name, self.tz, proxy_token_failures=self.proxy_token_failures)

    def cancel(self) -> None:
        """Stop the helper and forget what it parsed (the caller will not read it)."""
        self._finish(stop=True)

    def pieces(self, stats: LineStats) -> Iterator[list[Event] | StartOver]:
        """
        Every file's events in file order, in pieces; ``stats`` gets the counts once
        all is read.  After a ``START_OVER`` everything is parsed here.
        """
        if self._pid is None or self._spool is None:
            yield from _here(self.files, self.fmt, self.tz, stats, self.proxy_token_failures)
            return
        helper_stats: LineStats | None = None
        try:
            own_stats = LineStats()
            own: list[Event] = []
            if self._cut is not None:  # the last part of the last file, parsed here meanwhile
                parser = resumed_parser(self.fmt, self._context(self.files[-1]), self._cut)
                own = parse_to_end(Positional(self._handles[-1].fileno(), self._cut.offset),
                                   parser, own_stats)
            with os.fdopen(self._notes, "rb", buffering=0) as notes:
                self._notes = -1
                for payload in _spooled(notes, self._spool):
                    if isinstance(payload, LineStats):
                        helper_stats = payload
                        break
                    yield list(map(Event.from_row, payload))
        finally:
            status = self._finish(stop=helper_stats is None)
        if helper_stats is not None and status == 0:
            stats.add(helper_stats)
            stats.add(own_stats)
            if own:
                yield own
            return
        yield START_OVER
        yield from _here(self.files, self.fmt, self.tz, stats, self.proxy_token_failures)

    def _finish(self, stop: bool) -> int:
        """Reap the helper (killing it first if ``stop``); its exit status."""
        status = 0
        if self._pid is not None:
            status = reap(self._pid, kill=stop)
            self._pid = None
        if self._notes >= 0:
            os.close(self._notes)
            self._notes = -1
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        for handle in self._handles:
            handle.close()
        self._handles = []
        return status

    def _helper(self, notify: int) -> None:
        """The helper: parse the files (the last one up to the cut), spool each block's
        events, announce each, then the counts."""
        assert self._spool is not None
        spool, cut, status = self._spool, self._cut, 1
        try:
            stats = LineStats()
            for i, (name, handle) in enumerate(zip(self.files, self._handles, strict=True)):
                parser = create_parser(self.fmt, self._context(name))
                end = cut.offset if cut is not None and i == len(self.files) - 1 else None
                for events in pieces_to_end(Positional(handle.fileno(), 0, end), parser, stats):
                    _send(notify, spool, "events", [e.to_row() for e in events])
            _send(notify, spool, "stats", stats)
            status = 0
        finally:
            os._exit(status)


def _worth_a_helper(files: Sequence[str]) -> bool:
    if not files or not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        return False
    if any(name == "-" or not os.path.isfile(name) for name in files):
        return False  # standard input cannot be read a second time after a failure
    return sum(os.path.getsize(name) for name in files) >= PIPE_MIN_BYTES


def _here(files: Sequence[str], fmt: str, tz: tzinfo, stats: LineStats,
          proxy_token_failures: bool) -> Iterator[list[Event]]:
    for piece in read_pieces(files, fmt, tz, stats, proxy_token_failures=proxy_token_failures):
        yield rows_to_events(piece) if isinstance(piece, bytes) else piece


def _spooled(pipe: BinaryIO, spool: BinaryIO) -> Iterator[list[EventRow] | LineStats]:
    """What the helper spooled, piece by piece as it announces them; ends early (without
    the counts) if the helper dies or announces nonsense."""
    fd, pos = spool.fileno(), 0
    while True:
        note = _read_exactly(pipe, _OFFSET.size)
        if note is None:
            return
        (end,) = _OFFSET.unpack(note)
        if end < pos:
            return
        data = os.pread(fd, end - pos, pos)
        if len(data) != end - pos:
            return
        pos = end
        try:
            what, payload = pickle.loads(data)  # noqa: S301 - our own child's output
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError):
            return
        if what == "stats" and isinstance(payload, LineStats):
            yield payload
            return
        yield payload


def _read_exactly(pipe: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        more = pipe.read(size - len(data))
        if not more:
            return None
        data += more
    return data


def _send(notify: int, spool: BinaryIO, what: str, payload: object) -> None:
    # Plain rows: pickling the dataclasses themselves costs ten times as much.
    spool.write(pickle.dumps((what, payload), protocol=pickle.HIGHEST_PROTOCOL))
    spool.flush()
    os.write(notify, _OFFSET.pack(spool.tell()))
