"""
The daemon's sink: decisions go to the actions (ban feed, notification outbox,
metrics), events to the metrics and the optional event export.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from jfwatch import log
from jfwatch.actions.banfeed import BanFeed, feed_address, open_for_append
from jfwatch.actions.crowdsec import (
    CrowdsecEnforcer,
    LapiClient,
    LapiError,
    SharedDecisions,
    read_credentials,
)
from jfwatch.actions.enforce import EnforcementQueue, Enforcer
from jfwatch.actions.metrics import Metrics
from jfwatch.actions.nftables import Nftables
from jfwatch.actions.notify import Outbox
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert, Ban, Decision, Unban
from jfwatch.detect.detector import Detector
from jfwatch.detect.state import StateStore
from jfwatch.engine.engine import Stream
from jfwatch.events import Event, EventKind
from jfwatch.keys import KeyUnreadable, read_key
from jfwatch.sources.lines import LineStats

FEED_RETRY_SECONDS = 5.0
EXPORT_MODE = 0o640  # events hold usernames and addresses: not for every local user


class ExportFailed(OSError):
    """The event export could not be written (the commit that needed it is not made)."""


def build_enforcers(config: Config) -> list[Enforcer]:
    """The enforcers beyond the feed that the config enables (ConfigError if their
    credentials cannot be read: found at start, and by check-config)."""
    enforcers: list[Enforcer] = []
    if config.crowdsec.enabled:
        enforcers.append(CrowdsecEnforcer(lapi_client(config)))
    if config.nftables.enabled:
        enforcers.append(Nftables(config.nftables.table, config.nftables.family,
                                  config.nftables.nft))
    return enforcers


def lapi_client(config: Config) -> LapiClient:
    cs = config.crowdsec
    try:
        url, login, password = read_credentials(cs.credentials_file)
        bouncer_key = None if cs.bouncer_key_file is None else \
            read_key("bouncer key", str(cs.bouncer_key_file))
    except (LapiError, KeyUnreadable) as exc:
        raise ConfigError([f"crowdsec: {exc}"]) from None
    return LapiClient(url, login, password, timeout=cs.timeout.total_seconds(),
                      bouncer_key=bouncer_key)


# Not a rule file: raised by the daemon itself from the LAPI's decisions.
BANNED_LOGIN_RULE = "crowdsec-banned-login"


class Actions:
    """The engine's sink in the daemon (``engine.Sink``)."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.config, self.store = config, store
        self.log = log.get("jfwatch.actions")
        self.metrics = Metrics()
        self.metrics.stale_after = config.metrics.stale_after.total_seconds()
        self.feed = BanFeed(config.ban_feed.path, config.ban_feed.list_path) \
            if config.ban_feed.enabled else None
        self.outbox = Outbox(store, config.notify, config.server_name,
                             tz=ZoneInfo(config.timezone), enforcers=config.enforcers)
        self.enforcement = EnforcementQueue(store, build_enforcers(config), config.server_name)
        self.shared = SharedDecisions(lapi_client(config)) \
            if config.crowdsec.enabled and config.crowdsec.bouncer_key_file else None
        self.metrics_port: int | None = None
        self._events_path = config.events_file
        self._unwritten: dict[str, list[bytes]] = {}  # export lines by stream, until committed
        self.newest_event: dict[str, datetime] = {}
        self._detector_seen: Detector | None = None  # whose counts the seen ones below are
        self._evictions_seen = 0
        self._future_seen = 0
        self._duplicates_seen = 0
        self._attempts_seen: dict[str, int] = {}
        # Bans that were over before they could be written (backfill of old logs): their
        # BAN and UNBAN lines would only be noise for Fail2Ban.
        self._skipped_bans: set[str] = set()
        self._bans_dirty = False
        self.feed_path = config.ban_feed.path
        self._feed_problem: str | None = None  # why the feed cannot be written now
        self._feed_tried = 0.0
        self._unchecked_since_start = True
        self._list_problem: str | None = None
        self._lagging: dict[str, bool] = {}  # by file: its clock lag was reported

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.config.metrics.listen,
                                                   self.config.metrics.port)
            self.log.info("metrics_listening", address=self.config.metrics.listen,
                          port=self.metrics_port)
        self.outbox.start()
        self.enforcement.start()
        if self.feed is not None and self.feed.problem is not None:
            self._feed_fault(self.feed.problem)
        self._refresh_bans()
        self.restore_export()  # last: metrics and alerts run even if it fails

    def stop(self) -> None:
        self.enforcement.stop()
        self.outbox.stop()
        self.metrics.stop()

    def reload(self, config: Config) -> None:
        self.config = config

    def restore_export(self) -> None:
        """Cut the event export back to what the committed offsets account for (a first
        start records the size it found): at start, and after a commit that failed."""
        if self._events_path is None:
            return
        fd = self._open_export()
        try:
            size = os.fstat(fd).st_size
            committed = self.store.sink_size("events")
            if committed is None:
                self.store.save_offsets([], {"events": size})
            elif size > committed:
                try:
                    os.ftruncate(fd, committed)
                except OSError as exc:
                    raise ExportFailed(f"{self._events_path}: {exc.strerror or exc}") from exc
        finally:
            os.close(fd)

    def _open_export(self) -> int:
        """The export opened like the ban feed: never through a symlink, never anything
        but a regular file, never blocking (a FIFO in its place must not stop reading)."""
        assert self._events_path is not None
        try:
            return open_for_append(self._events_path, EXPORT_MODE)
        except OSError as exc:
            raise ExportFailed(f"{self._events_path}: {exc.strerror or exc}") from exc

    def unwritten(self, stream: Stream) -> int:
        """Events of this stream waiting for its commit."""
        return len(self._unwritten.get(stream.key, ()))

    def drop_unwritten(self, stream: Stream) -> None:
        """Forget the stream's waiting events (its lines will be read again)."""
        self._unwritten.pop(stream.key, None)

    def write_export(self, stream: Stream) -> dict[str, int]:
        """Append the stream's waiting events to the export (fsynced); the sizes to commit
        with its offsets."""
        if self._events_path is None:
            return {}
        data = b"".join(self._unwritten.get(stream.key, []))
        fd = self._open_export()
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if data:
                    os.fsync(fd)
            except OSError as exc:
                with contextlib.suppress(OSError):  # no half-written event is left behind
                    os.ftruncate(fd, size)
                raise ExportFailed(f"{self._events_path}: {exc.strerror or exc}") from exc
            self._unwritten.pop(stream.key, None)
            return {"events": size + len(data)}
        finally:
            os.close(fd)

    # -- data --------------------------------------------------------------------
    def lines(self, stream: Stream, counts: LineStats) -> None:
        for outcome in ("matched", "unmatched", "rejected"):
            n = getattr(counts, outcome)
            if n:
                self.metrics.lines.labels(stream.source, outcome).inc(n)

    def source_health(self, source: str, readable: bool) -> None:
        self.metrics.source_health(source, readable)

    def tail_lag(self, source: str, path: str, lag: int) -> None:
        self.metrics.lag.labels(source, path).set(lag)

    def files_skipped(self, source: str, count: int) -> None:
        self.metrics.files_skipped.labels(source).set(count)

    def clock_lag(self, source: str, path: str, lag: float) -> None:
        """A followed file's newest lines are dated ``lag`` seconds before they were
        written (0: they agree): reported once when it starts and when it ends."""
        self.metrics.clock_lag.labels(source).set(lag)
        was = self._lagging.get(path, False)
        if (lag > 0) == was:
            return
        self._lagging[path] = lag > 0
        if lag > 0:
            self.log.warning("clock_lags", source=source, path=path, lag_seconds=round(lag),
                             handling="bans, cooldowns and alerts run on the wall clock",
                             fix="check the source's timezone: setting (or the writer's clock)")
        else:
            self.log.info("clock_agrees_again", source=source, path=path)

    def forget_file(self, source: str, path: str) -> None:
        """A file that is gone keeps no series (daily log names would pile up)."""
        self.newest_event.pop(path, None)
        self._lagging.pop(path, None)
        with contextlib.suppress(KeyError):
            self.metrics.lag.remove(source, path)

    def events(self, stream: Stream, events: list[Event]) -> None:
        # Counted per label set, then added: one counter update per kind, not per event.
        for kind, n in Counter(str(e.kind) for e in events).items():
            self.metrics.events.labels(stream.source, stream.format, kind).inc(n)
        newest = max(e.time for e in events)
        self.metrics.last_event.labels(stream.source).set(newest.timestamp())
        # The newest event time per stream since the daemon last took it (clock_lag).
        self.newest_event[stream.key] = max(newest, self.newest_event.get(stream.key, newest))
        if self._events_path is not None:  # written with the stream's next commit
            self._unwritten.setdefault(stream.key, []).extend(
                e.json_line() + b"\n" for e in events)
        if self.shared is not None:
            self.act([alert for e in events if (alert := self._banned_login(e)) is not None])

    def _banned_login(self, event: Event) -> Alert | None:
        """A successful login from an address the shared LAPI bans (another host's
        decision, a blocklist): the password may be in an attacker's hands."""
        if event.kind not in (EventKind.AUTH_SUCCESS, EventKind.MFA_SUCCESS) or \
                event.ip is None or self.shared is None:
            return None
        bans = self.shared.bans_on(str(event.ip))
        if not bans:
            return None
        why = "; ".join(f"{d.get('scenario')} ({d.get('origin')}, {d.get('duration')} left)"
                        for d in bans[:3])
        return Alert(rule=BANNED_LOGIN_RULE, severity="critical", time=event.time,
                     description="Successful login from an address CrowdSec bans",
                     key={"ip": str(event.ip)}, ip=str(event.ip), user=event.user, count=1,
                     window_seconds=0.0, first_time=event.time, last_time=event.time,
                     country=event.country, asn=event.asn, city=event.city,
                     detail=f"CrowdSec decisions: {why}", samples=(event.excerpt,))

    def idle(self, detector: Detector) -> None:
        """Housekeeping after each pass: the banned list, gauges, a failed feed retried."""
        self._detector_gauges(detector)
        if self._unchecked_since_start:
            # Bans recorded before a crash and perhaps never written: the first pass
            # writes them (again on a later pass if the state could not be read now).
            self._publish_pending(after_crash=True)
            self._unchecked_since_start = False
        elif self._feed_problem is not None and \
                time.monotonic() - self._feed_tried >= FEED_RETRY_SECONDS:
            self._publish_pending(after_crash=False)
        if self._bans_dirty:
            # The list file is rewritten whole: once per idle pass, not once per ban.
            self._bans_dirty = False
            self._refresh_bans()
        self.metrics.outbox_depth.set(self.outbox.depth())
        self.metrics.sync_notify(self.outbox.counts)
        self.metrics.sync_enforcers(self.enforcement)

    def act(self, decisions: Sequence[Decision]) -> None:
        changed = False
        for d in decisions:
            if isinstance(d, Alert):
                self.metrics.alerts.labels(d.rule, d.severity).inc()
                self.log.warning("alert", rule=d.rule, severity=d.severity, ip=d.ip,
                                 country=d.country, user=d.user, count=d.count, detail=d.detail,
                                 ban_until=d.ban_until.isoformat() if d.ban_until else None,
                                 banned=d.ban_target)
                self.outbox.enqueue(d)
            elif isinstance(d, Ban | Unban):
                changed = True
                self.enforcement.request(d)
                if isinstance(d, Ban):
                    self.metrics.bans.labels(d.rule).inc()
                    self.log.warning("ban", ip=d.ip, rule=d.rule, until=d.until.isoformat())
                else:
                    self.metrics.unbans.inc()
                    self.log.info("unban", ip=d.ip, rule=d.rule)
                if self.feed is not None:
                    self._write_feed(d)
        if changed:
            self._bans_dirty = True

    def _write_feed(self, d: Ban | Unban) -> None:
        assert self.feed is not None
        now = datetime.now(UTC)
        if isinstance(d, Ban) and d.until <= now:
            self._skipped_bans.add(d.ip)
            self.store.mark_published(d.ip, d.until)  # over already: nothing to enforce
            return
        if isinstance(d, Unban) and d.ip in self._skipped_bans:
            self._skipped_bans.discard(d.ip)
            return
        self._skipped_bans.discard(d.ip)
        try:
            self.feed.write(d, now)
        except OSError as exc:
            # Reported, never fatal: the ban stays in the state, unpublished, and is
            # written when the feed can be written again (_publish_pending).
            self._feed_fault(str(exc))
            return
        if isinstance(d, Ban):
            self.store.mark_published(d.ip, d.until)
        self._feed_fault(None)

    def _publish_pending(self, *, after_crash: bool) -> None:
        """
        Write the bans recorded but not yet in the feed: after a failed write, or after a
        crash between recording a ban and writing it (then a line already written for
        it is found in the feed, and not written twice).
        """
        if self.feed is None:
            return
        pending = self.store.unpublished_bans()
        written = self.feed.last_bans() if after_crash and pending else {}
        for ban, recorded in pending:
            stamp = written.get((feed_address(ban.ip), ban.rule))
            if stamp is not None and stamp >= recorded.replace(microsecond=0):
                self.store.mark_published(ban.ip, ban.until)
                continue
            self._write_feed(Ban(ban.ip, ban.rule, ban.since, ban.until, ban.level))
            if self._feed_problem is not None:
                return

    def _feed_fault(self, problem: str | None) -> None:
        if problem != self._feed_problem:
            if problem is None:
                self.log.info("ban_feed_writable_again", path=str(self.feed_path))
            else:
                self.log.error("ban_feed_write_failed", path=str(self.feed_path),
                               problem=problem, retry=f"every {FEED_RETRY_SECONDS:.0f} s",
                               bans="kept in the state and written when the feed can be")
            self._feed_problem = problem
            self.metrics.fault("ban_feed", problem)
        self._feed_tried = time.monotonic()

    def _refresh_bans(self) -> None:
        bans = self.store.bans()
        self.metrics.bans_active.set(len(bans))
        if self.feed is not None:
            try:
                self.feed.write_list([b.ip for b in bans])
            except OSError as exc:
                self._bans_dirty = True  # rewritten on a later pass
                if str(exc) != self._list_problem:
                    self.log.error("banned_list_write_failed", path=str(self.feed.list_path),
                                   problem=str(exc), retry="on every pass")
                self._list_problem = str(exc)
            else:
                self._list_problem = None

    def _detector_gauges(self, detector: Detector) -> None:
        if detector is not self._detector_seen:  # a reload or a commit fault made a new one
            self._detector_seen = detector
            self._evictions_seen = self._future_seen = self._duplicates_seen = 0
            self._attempts_seen = {}
        self.metrics.groups.set(detector.tracked_groups)
        delta = detector.evictions - self._evictions_seen
        if delta > 0:
            self.metrics.evictions.inc(delta)
            self._evictions_seen = detector.evictions
        for kind, total in list(detector.attempts.items()):
            delta = total - self._attempts_seen.get(kind, 0)
            if delta > 0:
                self.metrics.attempts.labels(kind).inc(delta)
                self._attempts_seen[kind] = total
        duplicates = detector.duplicates - self._duplicates_seen
        if duplicates > 0:
            self.metrics.duplicates.inc(duplicates)
            self._duplicates_seen = detector.duplicates
        future = detector.future_events - self._future_seen
        if future > 0:
            self.metrics.future_events.inc(future)
            self._future_seen = detector.future_events
            self.log.warning("future_dated_events", count=future,
                             tolerance=self.config.future_tolerance.total_seconds(),
                             handling="taken at the current time; bans expire on the wall clock")

