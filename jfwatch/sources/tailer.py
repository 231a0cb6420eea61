"""
Every file of every file source, followed: found (scan, budgets of open files), resumed
at committed offsets by identity (also when a rotation renamed it while jfwatch was
stopped), read a bounded block per pass, let go of when gone or no longer listed.

It reads and says what it read; the daemon parses, and commits offsets when the lines'
events are final (``commit``): the tailer never decides that a line is done.  Streams
(the parser of each file) are made by the daemon (``Streams``), which the tailer asks
only whether one still holds lines back.
"""

from __future__ import annotations

import fnmatch
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from jfwatch import log
from jfwatch.config.model import SourceConfig
from jfwatch.reporting import Conditions
from jfwatch.sources.files import (
    Source,
    file_budget,
    find_by_identity,
    nearby_logs,
    sibling_paths,
)
from jfwatch.sources.follow import (
    DRAIN_GRACE,
    ELSEWHERE,
    Follower,
    Identity,
    Piece,
    identity_of,
    open_regular,
)
from jfwatch.sources.inputs import Health
from jfwatch.state import SavedOffset, StateStore

S = TypeVar("S")
RESCAN_SECONDS = 5.0  # safety net under inotify; new files are also found on every wake
# Rotated names that hold compressed data: never read as text.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


class Streams(Protocol[S]):
    def open(self, source: SourceConfig, path: str, name: str) -> S:
        """The stream (parser) for a file now at ``path``, followed as ``name``."""

    def holding(self, stream: S) -> bool:
        """Whether the stream's parser holds lines back (its file is not drained)."""


class Reporter(Health, Protocol):
    """Where the tailer's observations go (metrics)."""

    def files(self, source: str, following: int, skipped: int) -> None: ...
    def tail_lag(self, source: str, path: str, lag: int) -> None: ...
    def forget_file(self, source: str, path: str) -> None: ...


@dataclass
class TailedFile(Generic[S]):
    source: Source
    follower: Follower
    stream: S
    # Read but not committed: the offset after the last lines read, by file (the current
    # file, and a rotated-away one still drained), with the name it had.
    uncommitted: dict[tuple[int, int], SavedOffset] = field(default_factory=dict)
    name: str = ""  # the name the source followed it under (its offsets are kept with it)
    last_progress: float = field(default_factory=time.monotonic)  # read, or nothing to read
    last_commit: float = field(default_factory=time.monotonic)
    # Wall-clock time of the last pass that found nothing left to read (None: it had
    # unread bytes): lines read by the next pass were written after it.
    caught_up_at: float | None = None

    @property
    def label(self) -> str:
        return self.source.config.label

    def read_up_to(self, ident: Identity, end: int) -> None:
        """Lines up to ``end`` of file ``ident`` were handed over."""
        self.uncommitted[ident.dev, ident.ino] = SavedOffset(ident.dev, ident.ino,
                                                             ident.fingerprint, end, self.name)

    def starts_here(self) -> bool:
        """Mark the current offset to be committed (a file seen for the first time):
        whether the file is open."""
        ident = self.follower.identity
        if ident is None:
            return False
        self.read_up_to(ident, self.follower.offset)
        return True

    def take_uncommitted(self) -> list[SavedOffset]:
        taken = list(self.uncommitted.values())
        self.uncommitted.clear()
        self.last_commit = time.monotonic()
        return taken


# process(file, pieces, written_after): hand a file's new pieces over (and commit what is
# final); ``written_after``: wall-clock time the lines were written after, when they were
# read live (the file had nothing left to read then and has nothing now), else None.
Process = Callable[[TailedFile[S], list[Piece], float | None], None]


class Tailer(Generic[S]):
    """The file sources as one input (``inputs.Input``)."""

    def __init__(self, sources: list[SourceConfig], store: StateStore, streams: Streams[S],
                 reporter: Reporter, wake: threading.Event, *, process: Process[S],
                 commit: Callable[[TailedFile[S]], None], max_line: int, max_open_files: int,
                 stale_after: float) -> None:
        self.sources = [Source(s, wake) for s in sources]
        self.store, self.streams, self.reporter = store, streams, reporter
        self.process, self.commit, self.max_line = process, commit, max_line
        self.max_open_files, self.stale_after = max_open_files, stale_after
        self.files: dict[str, TailedFile[S]] = {}
        self.log = log.get("jfwatch.tailer")
        self._source_problems: Conditions[str, str] = Conditions(self._source_problem)
        self._file_problems: Conditions[str, str] = Conditions(self._file_problem)
        self._too_many: Conditions[str, int] = Conditions(lambda *_: None)
        self._irregular: set[str] = set()
        self._empty: dict[str, list[str] | None] = {}
        self._rewound = False
        self._last_scan = float("-inf")

    # -- lifecycle ----------------------------------------------------------------
    def start(self) -> None:
        """Resume every file at its committed offset, then find the new ones."""
        self._rewound = True
        self._last_scan = time.monotonic()
        self.resume()
        self.scan()
        self._rewound = False

    def rewind(self) -> None:
        """Forget everything read since the last commit: files are reopened at their
        committed offsets by the next read."""
        for tailed in self.files.values():
            tailed.follower.close()
        self.files.clear()
        self._rewound = True

    def read(self) -> bool:
        """One bounded block of every file to ``process`` (resumed first after a rewind,
        rescanned when watchdog saw a file come or go, and every RESCAN_SECONDS)."""
        if self._rewound:
            self.start()
        elif self.rescan_wanted() or time.monotonic() - self._last_scan >= RESCAN_SECONDS:
            self._last_scan = time.monotonic()
            self.scan()  # a new file's first commit can fail too
        return self.read_all(self.process)

    def close(self) -> None:
        for src in self.sources:
            src.stop()

    def rescan_wanted(self) -> bool:
        """A file appeared, moved or went (watchdog); clears the request."""
        wanted = any(src.rescan.is_set() for src in self.sources)
        for src in self.sources:
            src.rescan.clear()
        return wanted

    # -- resuming -----------------------------------------------------------------
    def resume(self) -> None:
        """Reopen files at their committed offsets, found by identity: a file renamed by a
        rotation while the daemon was stopped is drained under its new name."""
        saved = self.store.offsets()
        for src in self.sources:
            src.watch()
            # A row keeps the name the file was followed under, even after a rotation
            # renamed it: the source whose pattern matches it parses it again.
            mine = [s for s in saved if fnmatch.fnmatchcase(s.path, src.config.path)]
            src.started = bool(mine)
            siblings = sibling_paths(src)
            for row in mine:
                found = find_by_identity(siblings, Identity(row.dev, row.ino, row.fingerprint))
                if found is None:
                    self.store.forget_offset(row.dev, row.ino)  # gone: nothing left to read
                elif found not in self.files:
                    self._track(src, found, row.offset, name=row.path)
            self._drain_rotated_while_stopped(src, mine, siblings)

    def _drain_rotated_while_stopped(self, src: Source, mine: list[SavedOffset],
                                     siblings: list[str]) -> None:
        """
        Files written while jfwatch was stopped under a name it follows, and renamed away
        before it came back (``app.log`` -> ``app.log.3``, or ``-20261130``): never seen,
        so unknown by identity, and modified since the last commit.  Each is read from its
        start, or from the saved offset when it is a copy of a file read before
        (copytruncate: its first bytes are that file's).
        """
        since = self.store.last_commit_time()
        if since is None:
            return
        names = {os.path.basename(row.path): row.path for row in mine}
        for path in siblings:
            base = os.path.basename(path)
            name = next((full for short, full in names.items()
                         if base.startswith((short + ".", short + "-"))), None)
            if name is None or path in self.files or base.endswith(_COMPRESSED) or \
                    fnmatch.fnmatchcase(path, src.config.path):  # the scan's own files
                continue
            try:
                with open_regular(path) as fh:
                    ident, modified = identity_of(fh), os.fstat(fh.fileno()).st_mtime
            except OSError:
                continue
            if modified <= since or self.store.offset_of(ident.dev, ident.ino,
                                                         ident.fingerprint) is not None or \
                    any(t.follower.owns(ident) for t in self.files.values()):
                continue
            copied = next((row.offset for row in mine if row.fingerprint and
                           ident.fingerprint.startswith(row.fingerprint)), 0)
            self.log.info("reading_file_rotated_while_stopped", path=path, offset=copied)
            tailed = self._track(src, path, copied, name=name)
            if tailed.starts_here():
                self.commit(tailed)  # known from now on, by identity

    # -- scanning -----------------------------------------------------------------
    def scan(self) -> None:
        budget = max(1, file_budget(self.max_open_files) // max(1, len(self.sources)))
        for src in self.sources:
            src.watch()
            paths = src.scan(budget)
            self._report_skipped(src, budget)
            self._let_go_of_unlisted(src, paths)
            self._source_problems.report(src.config.path, src.problem)
            covered = self._report_empty(src, paths)
            # A stall: bytes wait in one of its files and none was read for stale_after.
            stalled = any(t.source is src and time.monotonic() - t.last_progress >
                          self.stale_after for t in self.files.values())
            # A file it follows that cannot be opened now (out of descriptors, a FIFO in
            # its place) is a file not read.
            unread = any(t.source is src and t.follower.problem for t in self.files.values())
            self.reporter.source_health(src.config.label, src.problem is None and covered and
                                        not stalled and not unread)
            for path in paths:
                if path in self.files:
                    continue
                offset = self._known_offset(path)
                if offset == ELSEWHERE:
                    continue  # a rotated name of a file still being drained
                if offset is None:
                    # Files present the first time we ever look honour `start`; any file
                    # that appears later (tomorrow's log) is read from its beginning.
                    start_at_end = not src.started and src.config.start == "end"
                    tailed = self._track(src, path, os.path.getsize(path) if start_at_end else 0)
                    if tailed.starts_here():
                        self.commit(tailed)  # a restart starts here
                else:
                    self._track(src, path, offset)
            src.started = True
            self.reporter.files(src.config.label,
                                sum(1 for t in self.files.values() if t.source is src),
                                len(src.skipped))

    def _report_skipped(self, src: Source, budget: int) -> None:
        """Say (once) which matching files are not followed: FIFOs, sockets and devices,
        and files beyond the budget of open files."""
        for path in src.irregular:
            if path not in self._irregular:
                self._irregular.add(path)
                self.log.warning("file_not_followed", path=path,
                                 problem="not a regular file (a FIFO, socket or device)")
        if self._too_many.report(src.config.path, len(src.skipped) or None) and src.skipped:
            self.log.warning("too_many_files", path=src.config.path, following=budget,
                             skipped=len(src.skipped), oldest_skipped=src.skipped[0],
                             fix="narrow the glob, or raise max_open_files (and the "
                                 "descriptor limit, LimitNOFILE, with it)")

    def _report_empty(self, src: Source, paths: list[str]) -> bool:
        """Say (once) that a readable source matches no file, and which log-like files its
        directory holds: a wrong name watches nothing and would say nothing.  A warning
        unless another source in that directory follows files (the default follows both
        of Jellyfin's names, one of which is always empty).  Whether the source is fine:
        it has files, or another source in its directory has."""
        found = nearby_logs(src.config.path) if not paths and src.problem is None else None
        covered = found is None or any(t.source is not src and t.source.directory == src.directory
                                       for t in self.files.values())
        if found == self._empty.get(src.config.path):
            return covered
        self._empty[src.config.path] = found
        if found is None:
            return covered
        report = self.log.info if covered else self.log.warning
        report("no_file_matches", path=src.config.path, found=found,
               fix="correct the path in the config" if found and not covered else None)
        return covered

    def _let_go_of_unlisted(self, src: Source, listed: list[str]) -> None:
        """Stop following files the source no longer lists (now beyond the budget, or a
        rotated name resumed after a restart) once they are drained and quiet; their
        offsets are kept (by identity), should they be followed again."""
        keep = set(listed)
        for path, tailed in list(self.files.items()):
            # A file that is gone is read_all's to let go.
            if tailed.source is src and path not in keep and os.path.exists(path) and \
                    self._drained(tailed):
                self._let_go(path)

    # -- reading ------------------------------------------------------------------
    def read_all(self, process: Process[S]) -> bool:
        """One bounded block of every file to ``process``; whether anything was read."""
        busy = False
        for path, tailed in list(self.files.items()):
            pieces = tailed.follower.read()
            self._file_problems.report(path, tailed.follower.problem)
            busy = busy or bool(pieces)
            lag, unread = tailed.follower.backlog()
            live = bool(pieces) and not unread
            process(tailed, pieces, tailed.caught_up_at if live else None)
            if pieces or not unread:
                tailed.last_progress = time.monotonic()
            tailed.caught_up_at = None if unread else time.time()
            self.reporter.tail_lag(tailed.label, path, lag)
            if not os.path.exists(path) and not pieces and self._drained(tailed):
                # Deleted, drained and quiet: a recreated file is picked up by the next scan.
                self._let_go(path)
        return busy

    def status(self) -> dict[str, object]:
        return {
            "sources": [{"path": src.config.path, "format": src.config.format,
                         "readable": src.problem is None, "problem": src.problem,
                         "files": sorted(p for p, t in self.files.items() if t.source is src),
                         "skipped": len(src.skipped)} for src in self.sources],
            "files": [{"path": path, "offset": t.follower.offset,
                       "lag_bytes": t.follower.backlog()[0]}
                      for path, t in sorted(self.files.items())],
        }

    # -- files ----------------------------------------------------------------------
    def _drained(self, tailed: TailedFile[S]) -> bool:
        """Nothing held, nothing uncommitted, and quiet past the drain grace."""
        return not self.streams.holding(tailed.stream) and not tailed.uncommitted and \
            tailed.follower.idle_seconds() > DRAIN_GRACE

    def _let_go(self, path: str) -> None:
        tailed = self.files.pop(path)
        tailed.follower.close()
        self._file_problems.forget(path)
        self.reporter.forget_file(tailed.label, path)

    def _known_offset(self, path: str) -> int | None:
        """ELSEWHERE if another follower is draining this file (or it cannot be opened
        now), its read offset if it was read under another name before, None for a file
        never seen."""
        try:
            with open_regular(path) as fh:
                ident = identity_of(fh)
        except OSError:
            return ELSEWHERE
        return self._offset_of(ident)

    def _offset_of(self, ident: Identity, asking: Follower | None = None) -> int | None:
        """Where a file stands, by identity: ELSEWHERE while another follower reads it,
        its committed offset under any name, None if it was never read."""
        if any(t.follower is not asking and t.follower.owns(ident) for t in self.files.values()):
            return ELSEWHERE
        return self.store.offset_of(ident.dev, ident.ino, ident.fingerprint)

    def _track(self, src: Source, path: str, offset: int, name: str | None = None
               ) -> TailedFile[S]:
        """Follow ``path`` from ``offset``; ``name``: what it was followed as before it was
        renamed (a rotation while the daemon was stopped)."""
        follower = Follower(path, offset, self.max_line,
                            resume=lambda ident: self._offset_of(ident, follower))
        tailed = TailedFile(src, follower, self.streams.open(src.config, path, name or path),
                            name=name or path)
        self.files[path] = tailed
        self.log.info("following", path=path, offset=follower.offset)
        return tailed

    # -- reports ------------------------------------------------------------------------
    def _source_problem(self, path: str, _: str | None, problem: str | None) -> None:
        if problem:
            self.log.warning("source_unavailable", path=path, problem=problem, retry="automatic")
        else:
            self.log.info("source_available", path=path)

    def _file_problem(self, path: str, _: str | None, problem: str | None) -> None:
        if problem:
            self.log.warning("file_not_followed", path=path, problem=problem)
