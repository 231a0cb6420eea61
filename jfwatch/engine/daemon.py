"""
``jfwatch run``: followed files feed the engine (parse, detect, act).

One worker (the main thread) owns tailing, parsing and detection, so none of them needs
locks; watchdog threads only wake it; notifications go out from their own thread.  Each
pass reads at most one bounded block from each followed file (memory stays bounded on
a backlog, and no busy file starves the others), and commits each file's offset after
its lines went through the engine, with the length of the event export, so a SIGKILL
loses no line and repeats none.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

from jfwatch import log
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config, JellyfinApiConfig, SourceConfig
from jfwatch.detect.detector import Detector, settings_from_config
from jfwatch.detect.rules import Rule
from jfwatch.detect.state import SavedOffset, StateStore
from jfwatch.engine.actions import Actions, ExportFailed
from jfwatch.engine.engine import Engine, Stream
from jfwatch.enrich.geo import Geo, GeoError
from jfwatch.parsers import PARSERS, create_parser
from jfwatch.parsers.base import StreamContext, context_for
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
from jfwatch.sources.jellyfin_api import (
    ActivityClient,
    ActivityPoller,
    ApiError,
    Cursor,
    read_api_key,
)

RESCAN_SECONDS = 5.0  # safety net under inotify; new files are also found on every wake
COMMIT_EVERY = 30.0
# Events waiting in memory for their file's commit (the export is written at commits):
# past this, held events are released and the file committed, whatever it holds.
MAX_UNCOMMITTED_EVENTS = 10_000
# Longest sleep between reads when nothing woke the worker.  Under inotify an append
# wakes it at once; in poll mode (NFS/CIFS, where inotify sees nothing) this is the
# latency: a read of an unchanged file is one fstat and an empty read, cheap enough at 4 Hz.
IDLE_WAIT = 0.25
STATE_RETRY_SECONDS = 5.0
# Rotated names that hold compressed data: never read as text.
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip", ".lz4")


@dataclass
class _Tracked:
    source: Source
    follower: Follower
    stream: Stream
    # Read but not committed: the offset after the last lines read, by file (the current
    # file, and a rotated-away one still drained), with the name it had.
    uncommitted: dict[tuple[int, int], SavedOffset] = field(default_factory=dict)
    name: str = ""  # the name the source followed it under (its offsets are kept with it)
    last_progress: float = field(default_factory=time.monotonic)  # read, or nothing to read
    last_commit: float = field(default_factory=time.monotonic)
    problem: str | None = None  # the follower's, as last reported
    # Wall-clock time of the last pass that found nothing left to read (None: it had
    # unread bytes): lines read by the next pass were written after it.
    caught_up_at: float | None = None


@dataclass
class _Polled:
    """An API source: its poller thread, its stream, and its last committed cursor."""

    config: JellyfinApiConfig
    poller: ActivityPoller
    stream: Stream
    cursor: Cursor | None
    problem: str | None = None  # as last reported


@dataclass
class Daemon:
    config: Config
    rules: list[Rule]
    config_path: Path | None = None
    reload: Callable[[], tuple[Config, list[Rule]]] | None = None  # re-reads config and rules
    stop_event: threading.Event = field(default_factory=threading.Event)
    wake: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.log = log.get("jfwatch.daemon")
        self.store = StateStore(self.config.state_dir / "state.db")
        self.actions = Actions(self.config, self.store)
        self.detector = Detector(self.rules, settings_from_config(self.config), self.store)
        try:
            geo = Geo(self.config.geo.mmdb) if self.config.geo.enabled else None
        except GeoError as exc:  # checked at config load; gone or damaged since
            raise ConfigError([f"geo.mmdb: {exc}"]) from None
        self.engine = Engine(self.actions, self.detector, geo=geo)
        travel = [r.name for r in self.rules if r.type == "impossible_travel"]
        if travel and not (geo and geo.has_locations):
            self.log.warning("rule_without_data", rules=travel,
                             problem="impossible travel needs coordinates",
                             fix="set geo.mmdb to a City database (GeoLite2-City, DB-IP City Lite)")
        self.actions.metrics.prepare(
            [(s.label, s.format) for s in self.config.sources] +
            [(api.name, "jellyfin_api") for api in self.config.jellyfin_api],
            [(r.name, r.severity, r.actions.ban is not None) for r in self.rules],
            list(self.actions.outbox.counts))
        self.sources = [Source(s, self.wake) for s in self.config.sources]
        self.polled = [self._poller(api) for api in self.config.jellyfin_api]
        self.tracked: dict[str, _Tracked] = {}
        self._hup = False
        self._problems: dict[str, str | None] = {}
        self._skipped_reported: dict[str, int] = {}
        self._irregular_reported: set[str] = set()
        self._empty_reported: dict[str, list[str] | None] = {}
        self._commit_problem: tuple[str, str] | None = None  # part, problem
        self._status_at = 0.0
        self._needs_restore = False  # the export must be cut back before the next read

    # -- lifecycle ----------------------------------------------------------------
    def install_signals(self) -> None:
        def stop(signum: int, _: FrameType | None) -> None:
            self.log.info("stopping", signal=signal.Signals(signum).name)
            self.stop_event.set()
            self.wake.set()

        def hup(_: int, __: FrameType | None) -> None:
            self._hup = True
            self.wake.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def run(self) -> int:
        for polled in self.polled:
            polled.poller.start()
        try:
            self.actions.start()
            self._resume()
            self._scan()
        except (sqlite3.Error, ExportFailed) as exc:  # a full disk at start: wait, retry
            self._commit_fault(exc)
        for src in self.sources:
            self.log.info("watching", path=src.config.path, format=src.config.format,
                          mode=src.config.watch_mode, start=src.config.start)
        # Every file present now is followed from here on: lines appended after this
        # message are never skipped by `start: end`.
        self.log.info("ready", files=len(self.tracked))
        last_scan = time.monotonic()
        while not self.stop_event.is_set():
            self.wake.clear()
            if self._hup:
                self._hup = False
                self._reload()
            try:
                listing_changed = any(src.rescan.is_set() for src in self.sources)
                if listing_changed or time.monotonic() - last_scan >= RESCAN_SECONDS:
                    for src in self.sources:
                        src.rescan.clear()
                    last_scan = time.monotonic()
                    self._scan()  # a new file's first commit can fail too
                busy = self._pass()
            except (sqlite3.Error, ExportFailed) as exc:
                self._commit_fault(exc)
                busy = False
            if not busy:
                self.wake.wait(IDLE_WAIT)
        try:
            self._shutdown()
        except (sqlite3.Error, ExportFailed) as exc:  # not committed: read again next start
            self.log.error("commit_failed_at_stop", problem=str(exc))
        return 0

    def _pass(self) -> bool:
        """Read a block of every file, expire bans, housekeeping; whether lines were read."""
        if self._needs_restore:
            self.actions.restore_export()
            self._needs_restore = False
        busy = self._read_all()
        busy = self._take_polled() or busy
        self.actions.act(self.detector.expire(datetime.now(UTC)))
        self.actions.idle(self.detector)
        if time.monotonic() - self._status_at >= 1.0:
            self._status_at = time.monotonic()
            self.actions.metrics.status = self._status()
        if self._commit_problem is not None:
            self.actions.metrics.fault(self._commit_problem[0], None)
            self._commit_problem = None
            self.log.info("commits_work_again")
        return busy

    def _status(self) -> dict[str, object]:
        """What ``jfwatch status`` shows: sources, files and how far behind, bans, alerts
        waiting, faults."""
        healthy, health = self.actions.metrics.healthy()
        return {
            "running": True, "pid": os.getpid(), "healthy": healthy, "health": health.strip(),
            "sources": [{"path": src.config.path, "format": src.config.format,
                         "readable": src.problem is None, "problem": src.problem,
                         "files": sorted(p for p, t in self.tracked.items() if t.source is src),
                         "skipped": len(src.skipped)} for src in self.sources],
            "activity_logs": [{"name": p.config.name, "url": p.config.url,
                               "readable": p.problem is None, "problem": p.problem,
                               "last_id": p.cursor.last_id if p.cursor else None}
                              for p in self.polled],
            "files": [{"path": path, "offset": t.follower.offset,
                       "lag_bytes": t.follower.backlog()[0]}
                      for path, t in sorted(self.tracked.items())],
            "bans_active": self.store.bans_active(),
            "outbox_waiting": self.actions.outbox.depth(),
            "failing_targets": self.actions.outbox.failing_targets(),
            "tracked_groups": self.detector.tracked_groups,
        }

    def _commit_fault(self, exc: sqlite3.Error | ExportFailed) -> None:
        """
        The state or the event export could not be written (a full disk, a read-only or
        damaged file).  Go back to the last commit, as a restart would: files are
        reopened at their committed offsets, uncommitted events are dropped from memory
        (never written to the export), the detector restarts from the state; then wait
        and try again.
        """
        what = "state" if isinstance(exc, sqlite3.Error) else "event_export"
        if (what, str(exc)) != self._commit_problem:
            if self._commit_problem is not None:
                self.actions.metrics.fault(self._commit_problem[0], None)
            self._commit_problem = (what, str(exc))
            self.actions.metrics.fault(what, str(exc))
            self.log.error(f"{what}_write_failed", problem=str(exc),
                           handling="reading pauses and resumes from the last commit",
                           retry=f"every {STATE_RETRY_SECONDS:.0f} s")
        for tracked in self.tracked.values():
            tracked.follower.close()
            self.actions.drop_unwritten(tracked.stream)
        self.tracked.clear()
        for polled in self.polled:
            polled.poller.rewind(polled.cursor)
            self.actions.drop_unwritten(polled.stream)
        with contextlib.suppress(sqlite3.Error):
            self.store.db.rollback()
        # Export lines written for a commit that then failed are cut off again before
        # anything is read (retried on each pass until it works).
        self._needs_restore = True
        self.detector = self.engine.detector = Detector(
            self.rules, settings_from_config(self.config), self.store)
        self.stop_event.wait(STATE_RETRY_SECONDS)
        try:
            self._resume()
            self._scan()
        except (sqlite3.Error, ExportFailed) as again:  # the next pass finds it again
            self.log.debug("commit_still_failing", problem=str(again))

    def _shutdown(self) -> None:
        # What was written before the stop is read (bounded: a pass per block), and
        # what the parsers hold is released and committed.
        for _ in range(64):
            if not self._read_all():
                break
        for tracked in self.tracked.values():
            self._process(tracked, [], final=True)
        for src in self.sources:
            src.stop()
        for polled in self.polled:
            polled.poller.stop()
        for polled in self.polled:
            polled.poller.join(timeout=polled.config.timeout.total_seconds() + 1)
        self.actions.stop()
        self.log.info("stopped")

    def _reload(self) -> None:
        if self.reload is None:
            return
        try:
            config, rules = self.reload()
            detector = Detector(rules, settings_from_config(config), self.store)
            self.actions.reload(config)
            self.detector = self.engine.detector = detector
        except ConfigError as exc:
            self.log.error("reload_failed_keeping_old_config", problems=exc.problems)
            return
        except Exception as exc:  # noqa: BLE001 - a reload must never end the daemon
            self.log.error("reload_failed_keeping_old_config", problems=[repr(exc)])
            return
        self.rules = rules
        self.log.info("reloaded", rules=len(rules))
        # Rules, allow-list, proxies and detector limits apply at once; these hold open
        # files, threads or sockets and change only with a restart.
        pending = [name for name in ("sources", "jellyfin_api", "state_dir", "ban_feed",
                                     "crowdsec", "nftables", "notify", "metrics", "events_file",
                                     "geo")
                   if getattr(config, name) != getattr(self.config, name)]
        if pending:
            self.log.warning("restart_needed", changed=pending)

    # -- the Activity Log ---------------------------------------------------------------
    def _poller(self, api: JellyfinApiConfig) -> _Polled:
        for warning in api.transport_warnings():
            self.log.warning("api_key_exposed", source=api.name, problem=warning)
        try:
            key = read_api_key(str(api.api_key_file) if api.api_key_file else None,
                               api.api_key_env)
        except ApiError as exc:
            raise ConfigError([f"jellyfin_api {api.name}: {exc}"]) from None
        saved = self.store.cursor(api.name)
        cursor = None if saved is None else Cursor(*saved)
        client = ActivityClient(api.url, key, timeout=api.timeout.total_seconds(),
                                verify=api.verify_tls)
        poller = ActivityPoller(client, cursor, name=api.name,
                                interval=api.poll_interval.total_seconds(),
                                page_size=api.page_size, start=api.start, wake=self.wake)
        ctx = StreamContext(activity_templates={str(k): v for k, v in api.name_templates.items()})
        # Records, not lines: no wrapper to take off, nothing to decode again.
        stream = Stream(api.name, PARSERS["jellyfin_activity"].create(ctx), self.config.max_line,
                        key=f"api:{api.name}", fmt="jellyfin_api")
        return _Polled(api, poller, stream, cursor)

    def _take_polled(self) -> bool:
        """Each API source's batch, if one waits: through the engine, then committed with
        its cursor.  A batch that does not start at the committed cursor was built before
        a rewind: dropped, and the poller starts again from the cursor."""
        busy = False
        for polled in self.polled:
            self._report_api(polled)
            batch = polled.poller.take()
            if batch is None:
                continue
            if batch.after != polled.cursor:
                polled.poller.rewind(polled.cursor)
                continue
            busy = True
            self.engine.feed_records(polled.stream, batch.records)
            self.engine.flush(polled.stream, force=True)
            sizes = self.actions.write_export(polled.stream)
            cursor = batch.cursor
            self.store.save_offsets([], sizes, {polled.config.name: (cursor.last_id,
                                                                     cursor.last_date)})
            polled.cursor = batch.cursor
        return busy

    def _report_api(self, polled: _Polled) -> None:
        problem = polled.poller.health()
        if problem != polled.problem:
            polled.problem = problem
            if problem:
                self.log.warning("source_unavailable", source=polled.config.name,
                                 url=polled.config.url, problem=problem, retry="with backoff")
            else:
                self.log.info("source_available", source=polled.config.name)
        self.actions.source_health(polled.config.name, problem is None)

    # -- files ----------------------------------------------------------------------
    def _resume(self) -> None:
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
                elif found not in self.tracked:
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
            if name is None or path in self.tracked or base.endswith(_COMPRESSED) or \
                    fnmatch.fnmatchcase(path, src.config.path):  # the scan's own files
                continue
            try:
                with open_regular(path) as fh:
                    ident, modified = identity_of(fh), os.fstat(fh.fileno()).st_mtime
            except OSError:
                continue
            if modified <= since or self.store.offset_of(ident.dev, ident.ino,
                                                         ident.fingerprint) is not None or \
                    any(t.follower.owns(ident) for t in self.tracked.values()):
                continue
            copied = next((row.offset for row in mine if row.fingerprint and
                           ident.fingerprint.startswith(row.fingerprint)), 0)
            self.log.info("reading_file_rotated_while_stopped", path=path, offset=copied)
            self._track(src, path, copied, name=name)
            self._commit(self.tracked[path], initial=True)  # known from now on, by identity

    def _scan(self) -> None:
        budget = max(1, file_budget(self.config.max_open_files) // max(1, len(self.sources)))
        stale_after = self.config.metrics.stale_after.total_seconds()
        for src in self.sources:
            src.watch()
            paths = src.scan(budget)
            self._report_skipped(src, budget)
            self._let_go_of_unlisted(src, paths)
            if src.problem != self._problems.get(src.config.path):
                self._problems[src.config.path] = src.problem
                if src.problem:
                    self.log.warning("source_unavailable", path=src.config.path,
                                     problem=src.problem, retry="automatic")
                else:
                    self.log.info("source_available", path=src.config.path)
            covered = self._report_empty(src, paths)
            # A stall: bytes wait in one of its files and none was read for stale_after.
            stalled = any(t.source is src and time.monotonic() - t.last_progress > stale_after
                          for t in self.tracked.values())
            # A file it follows that cannot be opened now (out of descriptors, a FIFO in
            # its place) is a file not read.
            unread = any(t.source is src and t.follower.problem for t in self.tracked.values())
            self.actions.source_health(src.config.label, src.problem is None and covered and
                                       not stalled and not unread)
            for path in paths:
                if path in self.tracked:
                    continue
                offset = self._known_offset(path)
                if offset == ELSEWHERE:
                    continue  # a rotated name of a file still being drained
                if offset is None:
                    # Files present the first time we ever look honour `start`; any file
                    # that appears later (tomorrow's log) is read from its beginning.
                    start_at_end = not src.started and src.config.start == "end"
                    offset = os.path.getsize(path) if start_at_end else 0
                    self._track(src, path, offset)
                    self._commit(self.tracked[path], initial=True)  # a restart starts here
                else:
                    self._track(src, path, offset)
            src.started = True
            self.actions.metrics.files.labels(src.config.label).set(
                sum(1 for t in self.tracked.values() if t.source is src))

    def _report_skipped(self, src: Source, budget: int) -> None:
        """Say (once) which matching files are not followed: FIFOs, sockets and devices,
        and files beyond the budget of open files."""
        for path in src.irregular:
            if path not in self._irregular_reported:
                self._irregular_reported.add(path)
                self.log.warning("file_not_followed", path=path,
                                 problem="not a regular file (a FIFO, socket or device)")
        skipped = len(src.skipped)
        self.actions.files_skipped(src.config.label, skipped)
        if skipped != self._skipped_reported.get(src.config.path, 0):
            self._skipped_reported[src.config.path] = skipped
            if skipped:
                self.log.warning("too_many_files", path=src.config.path, following=budget,
                                 skipped=skipped, oldest_skipped=src.skipped[0],
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
                                       for t in self.tracked.values())
        if found == self._empty_reported.get(src.config.path):
            return covered
        self._empty_reported[src.config.path] = found
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
        for path, tracked in list(self.tracked.items()):
            # A file that is gone is _read_all's to let go.
            if tracked.source is src and path not in keep and os.path.exists(path) and \
                    self._drained(tracked):
                tracked.follower.close()
                del self.tracked[path]
                self.actions.forget_file(tracked.source.config.label, path)

    @staticmethod
    def _drained(tracked: _Tracked) -> bool:
        """Nothing held, nothing uncommitted, and quiet past the drain grace."""
        return not tracked.stream.parser.holding and not tracked.uncommitted and \
            tracked.follower.idle_seconds() > DRAIN_GRACE

    def _known_offset(self, path: str) -> int | None:
        """-1 if another follower is draining this file, its read offset if it was read
        under another name before, None for a file never seen."""
        try:
            with open_regular(path) as fh:
                ident = identity_of(fh)
        except OSError:
            return -1
        return self._offset_of(ident)

    def _offset_of(self, ident: Identity, asking: Follower | None = None) -> int | None:
        """Where a file stands, by identity: ELSEWHERE while another follower reads it,
        its committed offset under any name, None if it was never read."""
        if any(t.follower is not asking and t.follower.owns(ident)
               for t in self.tracked.values()):
            return ELSEWHERE
        return self.store.offset_of(ident.dev, ident.ino, ident.fingerprint)

    def _track(self, src: Source, path: str, offset: int, name: str | None = None) -> None:
        """Follow ``path`` from ``offset``; ``name``: what it was followed as before it was
        renamed (a rotation while the daemon was stopped)."""
        cfg: SourceConfig = src.config
        tz = ZoneInfo(cfg.timezone or self.config.timezone)
        parser = create_parser(cfg.format, context_for(  # the name's date, for console lines
            name or path, tz, quoting=cfg.quoting, proxy_token_failures=cfg.proxy_token_failures))
        follower = Follower(path, offset, self.config.max_line,
                            resume=lambda ident: self._offset_of(ident, follower))
        self.tracked[path] = _Tracked(src, follower,
                                      Stream(cfg.label, parser, self.config.max_line, key=path,
                                             fmt=cfg.format),
                                      name=name or path)
        self.log.info("following", path=path, offset=follower.offset)

    def _read_all(self) -> bool:
        busy = False
        for path, tracked in list(self.tracked.items()):
            pieces = tracked.follower.read()
            if tracked.follower.problem != tracked.problem:
                tracked.problem = tracked.follower.problem
                if tracked.problem:
                    self.log.warning("file_not_followed", path=path, problem=tracked.problem)
            busy = busy or bool(pieces)
            self._process(tracked, pieces, final=False)
            lag, unread = tracked.follower.backlog()
            if pieces or not unread:
                tracked.last_progress = time.monotonic()
            self._check_clock(tracked, path, live=bool(pieces) and not unread)
            tracked.caught_up_at = None if unread else time.time()
            self.actions.tail_lag(tracked.source.config.label, path, lag)
            if not os.path.exists(path) and not pieces and self._drained(tracked):
                # Deleted, drained and quiet: a recreated file is picked up by the next scan.
                tracked.follower.close()
                del self.tracked[path]
                self.actions.forget_file(tracked.source.config.label, path)
        return busy

    def _check_clock(self, tracked: _Tracked, path: str, *, live: bool) -> None:
        """
        Lines read live (the file had nothing left to read at ``caught_up_at``, and has
        nothing now) were written since then, whatever they say: dated more than
        future_tolerance before it, the stream's clock lags (a wrong timezone, a writer's
        clock behind).  Reported like future-dated lines; decisions are taken at the wall
        clock either way.
        """
        newest = self.actions.newest_event.pop(tracked.stream.key, None)
        if not live or newest is None or tracked.caught_up_at is None:
            return
        behind = tracked.caught_up_at - newest.timestamp()
        tolerance = self.config.future_tolerance.total_seconds()
        self.actions.clock_lag(tracked.source.config.label, path,
                               behind if behind > max(tolerance, 60.0) else 0.0)

    def _process(self, tracked: _Tracked, pieces: list[Piece], *, final: bool) -> None:
        for data, ident, end in pieces:
            self.engine.feed(tracked.stream, data)
            tracked.uncommitted[ident.dev, ident.ino] = SavedOffset(
                ident.dev, ident.ino, ident.fingerprint, end, tracked.name)
        # A busy log may always have a success held for a TOTP verdict; rather than never
        # committing, release held events after COMMIT_EVERY seconds and commit.
        overdue = time.monotonic() - tracked.last_commit > COMMIT_EVERY or \
            self.actions.unwritten(tracked.stream) > MAX_UNCOMMITTED_EVENTS
        self.engine.flush(tracked.stream, force=final or overdue)
        if tracked.uncommitted and not tracked.stream.parser.holding:
            self._commit(tracked)

    def _commit(self, tracked: _Tracked, *, initial: bool = False) -> None:
        """
        Make what was read from this file final: its events go to the export, then the
        offsets and the export's size are committed in one transaction.  Another file's
        events wait in memory for its own commit, so after a SIGKILL the export, cut
        back to the committed size, holds each committed line's events exactly once.
        """
        if initial:
            ident = tracked.follower.identity
            if ident is None:
                return
            tracked.uncommitted[ident.dev, ident.ino] = SavedOffset(
                ident.dev, ident.ino, ident.fingerprint, tracked.follower.offset, tracked.name)
        sizes = self.actions.write_export(tracked.stream)
        self.store.save_offsets(list(tracked.uncommitted.values()), sizes)
        tracked.uncommitted.clear()
        tracked.last_commit = time.monotonic()
