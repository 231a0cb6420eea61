"""
Parse files in a helper process and pipe the events back as they come.

``jfwatch replay`` spends most of its time in the detector, which is single-threaded
by design (bans couple the rules).  Parsing is the other half of the work and needs
nothing the detector has, so a forked helper parses every file, one block at a time,
and pipes each block's events over while this process detects on the ones before:
the two halves run on two cores at once.

The pieces arrive in file order, exactly as one parser in this process would give
them.  If the helper fails for any reason (killed, out of memory, a pipe error), the
stream says ``START_OVER`` and this process parses everything again itself; what the
caller did with the earlier pieces is void.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Iterator, Sequence
from datetime import tzinfo
from typing import BinaryIO

from jfwatch.batch import count_kinds, iter_parse, read_pieces
from jfwatch.events import Event
from jfwatch.lines import LineStats, context_for
from jfwatch.parsers import create_parser

# Below this much input, forking costs more than it saves.
PIPE_MIN_BYTES = 4 << 20


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
    caller works on the pieces already here.  ``stats`` gets the helper's counts when it
    has finished.  Standard input, small inputs and machines with one core are parsed
    here (``read_pieces``), as is everything after a ``START_OVER``.
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
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _helper(write_end, files, fmt, tz, proxy_token_failures)  # never returns
    os.close(write_end)
    finished = False
    try:
        with os.fdopen(read_end, "rb", buffering=1 << 20) as pipe:
            while True:
                try:
                    what, payload = pickle.load(pipe)  # noqa: S301 - our own child's output
                except (EOFError, OSError, pickle.UnpicklingError, ValueError, TypeError):
                    break
                if what == "stats":
                    finished = True
                    break
                yield list(map(Event.from_row, payload))
    finally:
        _, status = os.waitpid(pid, 0)
    if finished and status == 0:
        stats.add(payload)
        return
    yield START_OVER
    yield from _here(files, fmt, tz, stats, proxy_token_failures)


def _worth_a_helper(files: Sequence[str]) -> bool:
    if not hasattr(os, "fork") or (os.cpu_count() or 1) < 2:
        return False
    if any(name == "-" or not os.path.isfile(name) for name in files):
        return False  # standard input cannot be read a second time after a failure
    return sum(os.path.getsize(name) for name in files) >= PIPE_MIN_BYTES


def _here(files: Sequence[str], fmt: str, tz: tzinfo, stats: LineStats,
          proxy_token_failures: bool) -> Iterator[list[Event]]:
    from jfwatch.batch import rows_to_events

    for piece in read_pieces(files, fmt, tz, stats, proxy_token_failures=proxy_token_failures):
        yield rows_to_events(piece) if isinstance(piece, bytes) else piece


def _helper(write_end: int, files: Sequence[str], fmt: str, tz: tzinfo,
            proxy_token_failures: bool) -> None:
    """The helper: parse every file, pipe each block's events, then the counts."""
    status = 1
    try:
        with os.fdopen(write_end, "wb", buffering=1 << 20) as pipe:
            stats = LineStats()
            for name in files:
                ctx = context_for(name, tz, proxy_token_failures=proxy_token_failures)
                parser = create_parser(fmt, ctx)
                with open(name, "rb") as fh:
                    for events in iter_parse(fh, parser, stats):
                        count_kinds(events, stats)
                        _send(pipe, "events", [e.to_row() for e in events])
                    final = parser.flush(force=True)
                    count_kinds(final, stats)
                    _send(pipe, "events", [e.to_row() for e in final])
            _send(pipe, "stats", stats)
        status = 0
    finally:
        os._exit(status)


def _send(pipe: BinaryIO, what: str, payload: object) -> None:
    # Plain rows: pickling the dataclasses themselves costs ten times as much.
    pickle.dump((what, payload), pipe, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.flush()  # the caller is waiting for this piece
