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

import contextlib
import os
import pickle
import signal
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from datetime import tzinfo
from typing import BinaryIO

from jfwatch.batch import (
    Cut,
    Head,
    count_kinds,
    iter_parse,
    parse_stream,
    plan_cut,
    read_pieces,
    resumed_parser,
    rows_to_events,
)
from jfwatch.events import Event, EventRow
from jfwatch.lines import LineStats, context_for
from jfwatch.parsers import create_parser

# Below this much input, forking costs more than it saves.
PIPE_MIN_BYTES = 4 << 20
# How much of a large last file this process parses itself: about what makes its own
# share (that part plus detecting everything) take as long as the helper's parsing.
OWN_SHARE = 0.3
_OFFSET = struct.Struct("<q")  # the spool's end after each piece; -1: the helper is done


class StartOver:
    """Marker in the stream: forget every piece so far, the stream begins again."""

    def __repr__(self) -> str:
        return "START_OVER"


START_OVER = StartOver()


def stream_events(files: Sequence[str], fmt: str, tz: tzinfo, stats: LineStats,
                  proxy_token_failures: bool = False
                  ) -> Iterator[list[Event] | StartOver]:
    """
    Every file's events in file order, in pieces, parsed by a helper process while the
    caller works on the pieces already here.  ``stats`` gets the counts once all is
    read.  Standard input, small inputs and machines with one core are parsed here
    (``read_pieces``), as is everything after a ``START_OVER``.
    """
    if not _worth_a_helper(files):
        yield from _here(files, fmt, tz, stats, proxy_token_failures)
        return
    for name in files:  # an unreadable file is the user's error, reported from here
        try:
            with open(name, "rb"):
                pass
        except OSError as exc:
            raise SystemExit(f"jfwatch: cannot read {name}: {exc.strerror}") from exc
    last_ctx = context_for(files[-1], tz, proxy_token_failures=proxy_token_failures)
    with open(files[-1], "rb") as fh:
        cut = plan_cut(fh, fmt, last_ctx, 1 - OWN_SHARE)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - closed in the finally below
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _helper(write_end, spool, files, fmt, tz, proxy_token_failures, cut)  # never returns
    os.close(write_end)
    done = False
    try:
        own_stats = LineStats()
        own: list[Event] = []
        if cut is not None:  # the last part of the last file, parsed here meanwhile
            parser = resumed_parser(fmt, last_ctx, cut)
            with open(files[-1], "rb") as fh:
                fh.seek(cut.offset)
                own = parse_stream(fh, parser, own_stats) + parser.flush(force=True)
            count_kinds(own, own_stats)
        helper_stats: LineStats | None = None
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            for payload in _spooled(pipe, spool):
                if isinstance(payload, LineStats):
                    helper_stats = payload
                    break
                yield list(map(Event.from_row, payload))
        done = helper_stats is not None
    finally:
        if not done:
            _stop(pid)
        _, status = os.waitpid(pid, 0)
        spool.close()
    if helper_stats is not None and status == 0:
        stats.add(helper_stats)
        stats.add(own_stats)
        if own:
            yield own
        return
    yield START_OVER
    yield from _here(files, fmt, tz, stats, proxy_token_failures)


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


def _stop(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)  # no one will read what it parses


def _helper(notify: int, spool: BinaryIO, files: Sequence[str], fmt: str, tz: tzinfo,
            proxy_token_failures: bool, cut: Cut | None) -> None:
    """The helper: parse the files (the last one up to ``cut``), spool each block's
    events, announce each, then the counts."""
    status = 1
    try:
        stats = LineStats()
        for i, name in enumerate(files):
            ctx = context_for(name, tz, proxy_token_failures=proxy_token_failures)
            parser = create_parser(fmt, ctx)
            with open(name, "rb") as fh:
                own = cut is not None and i == len(files) - 1
                source = Head(fh, cut.offset) if own and cut is not None else fh
                for events in iter_parse(source, parser, stats):
                    count_kinds(events, stats)
                    _send(notify, spool, "events", [e.to_row() for e in events])
                final = parser.flush(force=True)
                count_kinds(final, stats)
                _send(notify, spool, "events", [e.to_row() for e in final])
        _send(notify, spool, "stats", stats)
        status = 0
    finally:
        os._exit(status)


def _send(notify: int, spool: BinaryIO, what: str, payload: object) -> None:
    # Plain rows: pickling the dataclasses themselves costs ten times as much.
    spool.write(pickle.dumps((what, payload), protocol=pickle.HIGHEST_PROTOCOL))
    spool.flush()
    os.write(notify, _OFFSET.pack(spool.tell()))
