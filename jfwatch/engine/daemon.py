"""
``jfwatch run``: the inputs feed the engine (parse, detect, act).

One worker (the main thread) owns reading, parsing and detection, so none of them needs
locks; watchdog threads only wake it, pollers only fetch; notifications and enforcement
go out from their own threads.  Each pass reads at most one bounded block from each
input (memory stays bounded on a backlog, and no busy file starves the others), and
commits each input's position after its lines went through the engine, with the length
of the event export, so a SIGKILL loses no line and repeats none.

This module is the loop, the commit coordinator, fault recovery and reload; the inputs
are ``sources.tailer`` (files) and ``sources.activity_input`` (the Activity Log).
"""

from __future__ import annotations

import contextlib
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
from jfwatch.actions.export import ExportFailed
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config, JellyfinApiConfig, SourceConfig
from jfwatch.detect.detector import Detector, settings_from_config
from jfwatch.detect.rules import Rule
from jfwatch.engine.engine import Engine, Stream
from jfwatch.engine.sink import DaemonSink
from jfwatch.enrich.geo import Geo, GeoError
from jfwatch.parsers import PARSERS, create_parser
from jfwatch.parsers.base import StreamContext, context_for
from jfwatch.reporting import Conditions
from jfwatch.sources.activity_input import ActivityInput, KeyUnusable
from jfwatch.sources.follow import Piece
from jfwatch.sources.inputs import Input
from jfwatch.sources.jellyfin_api import Batch
from jfwatch.sources.tailer import TailedFile, Tailer
from jfwatch.state import StateStore

COMMIT_EVERY = 30.0
# Events waiting in memory for their file's commit (the export is written at commits):
# past this, held events are released and the file committed, whatever it holds.
MAX_UNCOMMITTED_EVENTS = 10_000
# Longest sleep between reads when nothing woke the worker.  Under inotify an append
# wakes it at once; in poll mode (NFS/CIFS, where inotify sees nothing) this is the
# latency: a read of an unchanged file is one fstat and an empty read, cheap enough at 4 Hz.
IDLE_WAIT = 0.25
STATE_RETRY_SECONDS = 5.0


class _FileStreams:
    """The tailer's streams: one parser per file, with the date in its name."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def open(self, source: SourceConfig, path: str, name: str) -> Stream:
        tz = ZoneInfo(source.timezone or self.config.timezone)
        parser = create_parser(source.format, context_for(  # the name's date, for console lines
            name, tz, quoting=source.quoting, proxy_token_failures=source.proxy_token_failures))
        return Stream(source.label, parser, self.config.max_line, key=path, fmt=source.format)

    def holding(self, stream: Stream) -> bool:
        return stream.parser.holding


class _TailReport:
    """The tailer's observations, as metrics."""

    def __init__(self, sink: DaemonSink) -> None:
        self.metrics = sink.metrics

    def source_health(self, source: str, readable: bool) -> None:
        self.metrics.source_health(source, readable)

    def files(self, source: str, following: int, skipped: int) -> None:
        self.metrics.files.labels(source).set(following)
        self.metrics.files_skipped.labels(source).set(skipped)

    def tail_lag(self, source: str, path: str, lag: int) -> None:
        self.metrics.lag.labels(source, path).set(lag)

    def forget_file(self, source: str, path: str) -> None:
        """A file that is gone keeps no series (daily log names would pile up)."""
        with contextlib.suppress(KeyError):
            self.metrics.lag.remove(source, path)


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
        self.sink = DaemonSink(self.config, self.store)
        self.detector = Detector(self.rules, settings_from_config(self.config), self.store)
        try:
            geo = Geo(self.config.geo.mmdb) if self.config.geo.enabled else None
        except GeoError as exc:  # checked at config load; gone or damaged since
            raise ConfigError([f"geo.mmdb: {exc}"]) from None
        self.engine = Engine(self.sink, self.detector, enrichers=[geo, self.sink.shared])
        travel = [r.name for r in self.rules if r.type == "impossible_travel"]
        if travel and not (geo and geo.has_locations):
            self.log.warning("rule_without_data", rules=travel,
                             problem="impossible travel needs coordinates",
                             fix="set geo.mmdb to a City database (GeoLite2-City, DB-IP City Lite)")
        self.sink.metrics.prepare(
            [(s.label, s.format) for s in self.config.sources] +
            [(api.name, "jellyfin_api") for api in self.config.jellyfin_api],
            [(r.name, r.severity, r.actions.ban is not None) for r in self.rules],
            list(self.sink.outbox.counts))
        self.tailer: Tailer[Stream] = Tailer(
            list(self.config.sources), self.store, _FileStreams(self.config),
            _TailReport(self.sink), self.wake, process=self._process, commit=self._commit,
            max_line=self.config.max_line, max_open_files=self.config.max_open_files,
            stale_after=self.config.metrics.stale_after.total_seconds())
        try:
            self.activity = [ActivityInput.open(api, self.store, self._activity_stream(api),
                                                self.wake, self._process_activity,
                                                self.sink.metrics)
                             for api in self.config.jellyfin_api]
        except KeyUnusable as exc:
            raise ConfigError([str(exc)]) from None
        self.inputs: list[Input] = [self.tailer, *self.activity]
        self._hup = False
        # The part that could not be written (state, event_export) and why.
        self._commit_problems: Conditions[str, tuple[str, str]] = Conditions(self._commit_problem)
        self._lagging: Conditions[str, tuple[str, float]] = Conditions(self._clock_report)
        self._status_at = 0.0
        self._needs_restore = False  # the export must be cut back before the next read

    def _activity_stream(self, api: JellyfinApiConfig) -> Stream:
        ctx = StreamContext(activity_templates={str(k): v for k, v in api.name_templates.items()})
        # Records, not lines: no wrapper to take off, nothing to decode again.
        return Stream(api.name, PARSERS["jellyfin_activity"].create(ctx), self.config.max_line,
                      key=f"api:{api.name}", fmt="jellyfin_api")

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
        for activity in self.activity:
            activity.start()
        try:
            self.sink.start()
            self.tailer.start()
        except (sqlite3.Error, ExportFailed) as exc:  # a full disk at start: wait, retry
            self._commit_fault(exc)
            # Files present now are followed from "ready" on, as far as this gets (the
            # first pass resumes again if it fails).
            with contextlib.suppress(sqlite3.Error, ExportFailed):
                self.tailer.start()
        for src in self.tailer.sources:
            self.log.info("watching", path=src.config.path, format=src.config.format,
                          mode=src.config.watch_mode, start=src.config.start)
        # Every file present now is followed from here on: lines appended after this
        # message are never skipped by `start: end`.
        self.log.info("ready", files=len(self.tailer.files))
        while not self.stop_event.is_set():
            self.wake.clear()
            if self._hup:
                self._hup = False
                self._reload()
            try:
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
        """Read a block of every input, expire bans, housekeeping; whether lines were read."""
        if self._needs_restore:
            self.sink.export.restore()
            self._needs_restore = False
        busy = False
        for source in self.inputs:
            busy = source.read() or busy
        self.sink.act(self.detector.expire(datetime.now(UTC)))
        self.sink.idle(self.detector)
        if time.monotonic() - self._status_at >= 1.0:
            self._status_at = time.monotonic()
            self.sink.metrics.status = self._status()
        self._commit_problems.report("commit", None)  # a pass that got here committed
        return busy

    def _status(self) -> dict[str, object]:
        """What ``jfwatch status`` shows: sources, files and how far behind, bans, alerts
        waiting, faults."""
        healthy, health = self.sink.metrics.healthy()
        return {
            "running": True, "pid": os.getpid(), "healthy": healthy, "health": health.strip(),
            **self.tailer.status(),
            "activity_logs": [activity.status() for activity in self.activity],
            "bans_active": self.store.bans_active(),
            "outbox_waiting": self.sink.outbox.depth(),
            "failing_targets": self.sink.outbox.failing_targets(),
            "tracked_groups": self.detector.tracked_groups,
        }

    def _shutdown(self) -> None:
        # What was written before the stop is read (bounded: a pass per block), and
        # what the parsers hold is released and committed.
        for _ in range(64):
            if not self.tailer.read_all(self._process):
                break
        for tailed in self.tailer.files.values():
            self._process(tailed, [], None, final=True)
        for source in self.inputs:
            source.close()
        self.sink.stop()
        self.log.info("stopped")

    def _reload(self) -> None:
        if self.reload is None:
            return
        try:
            config, rules = self.reload()
            detector = Detector(rules, settings_from_config(config), self.store)
            self.sink.reload(config)
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

    # -- commits --------------------------------------------------------------------
    def _process(self, tailed: TailedFile[Stream], pieces: list[Piece],
                 written_after: float | None, *, final: bool = False) -> None:
        """A file's new lines through the engine; committed once no line is held back."""
        for data, ident, end in pieces:
            self.engine.feed(tailed.stream, data)
            tailed.read_up_to(ident, end)
        # A busy log may always have a success held for a TOTP verdict; rather than never
        # committing, release held events after COMMIT_EVERY seconds and commit.
        overdue = time.monotonic() - tailed.last_commit > COMMIT_EVERY or \
            self.sink.export.waiting(tailed.stream.key) > MAX_UNCOMMITTED_EVENTS
        self.engine.flush(tailed.stream, force=final or overdue)
        if tailed.uncommitted and not tailed.stream.parser.holding:
            self._commit(tailed)
        newest = self.sink.newest_event.pop(tailed.stream.key, None)
        if written_after is not None and newest is not None:
            self._check_clock(tailed, newest, written_after)

    def _commit(self, tailed: TailedFile[Stream]) -> None:
        """
        Make what was read from this file final: its events go to the export, then the
        offsets and the export's size are committed in one transaction.  Another file's
        events wait in memory for its own commit, so after a SIGKILL the export, cut
        back to the committed size, holds each committed line's events exactly once.
        """
        sizes = self.sink.export.write(tailed.stream.key)
        self.store.save_offsets(tailed.take_uncommitted(), sizes)

    def _process_activity(self, activity: ActivityInput[Stream], batch: Batch) -> None:
        """An Activity Log's batch through the engine, committed with its cursor."""
        self.engine.feed_records(activity.stream, batch.records)
        self.engine.flush(activity.stream, force=True)
        sizes = self.sink.export.write(activity.stream.key)
        cursor = batch.cursor
        self.store.save_offsets([], sizes, {activity.name: (cursor.last_id, cursor.last_date)})

    def _commit_fault(self, exc: sqlite3.Error | ExportFailed) -> None:
        """
        The state or the event export could not be written (a full disk, a read-only or
        damaged file).  Go back to the last commit, as a restart would: files are
        reopened at their committed offsets, uncommitted events are dropped from memory
        (never written to the export), the detector restarts from the state; then wait
        and try again.
        """
        what = "state" if isinstance(exc, sqlite3.Error) else "event_export"
        self._commit_problems.report("commit", (what, str(exc)))
        self.sink.export.drop_all()
        for source in self.inputs:
            source.rewind()
        with contextlib.suppress(sqlite3.Error):
            self.store.db.rollback()
        # Export lines written for a commit that then failed are cut off again before
        # anything is read (retried on each pass until it works).
        self._needs_restore = True
        self.detector = self.engine.detector = Detector(
            self.rules, settings_from_config(self.config), self.store)
        self.stop_event.wait(STATE_RETRY_SECONDS)  # the next pass resumes, or fails again

    def _commit_problem(self, _: str, was: tuple[str, str] | None,
                        problem: tuple[str, str] | None) -> None:
        if was is not None:
            self.sink.metrics.fault(was[0], None)
        if problem is None:
            self.log.info("commits_work_again")
            return
        what, text = problem
        self.sink.metrics.fault(what, text)
        self.log.error(f"{what}_write_failed", problem=text,
                       handling="reading pauses and resumes from the last commit",
                       retry=f"every {STATE_RETRY_SECONDS:.0f} s")

    # -- clocks ---------------------------------------------------------------------------
    def _check_clock(self, tailed: TailedFile[Stream], newest: datetime,
                     written_after: float) -> None:
        """
        Lines read live were written after ``written_after``, whatever they say: dated
        more than future_tolerance before it, the stream's clock lags (a wrong timezone,
        a writer's clock behind).  Reported like future-dated lines; decisions are taken
        at the wall clock either way.
        """
        behind = written_after - newest.timestamp()
        tolerance = self.config.future_tolerance.total_seconds()
        lag = behind if behind > max(tolerance, 60.0) else 0.0
        self.sink.metrics.clock_lag.labels(tailed.label).set(lag)
        self._lagging.report(tailed.stream.key, (tailed.label, lag) if lag > 0 else None)

    def _clock_report(self, path: str, was: tuple[str, float] | None,
                      now: tuple[str, float] | None) -> None:
        if now is not None and was is None:
            self.log.warning("clock_lags", source=now[0], path=path, lag_seconds=round(now[1]),
                             handling="bans, cooldowns and alerts run on the wall clock",
                             fix="check the source's timezone: setting (or the writer's clock)")
        elif now is None and was is not None:
            self.log.info("clock_agrees_again", source=was[0], path=path)
