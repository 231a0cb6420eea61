"""
The daemon's sink (``engine.Sink``): each output of the engine to the part whose job it
is.  Decisions go to the outbox (alerts), the enforcers and the ban feed (bans);
events to the metrics and the event export; health to ``/health`` and ``status``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from jfwatch import log
from jfwatch.actions.banfeed import BanFeed
from jfwatch.actions.crowdsec import (
    CrowdsecEnforcer,
    LapiClient,
    LapiError,
    read_credentials,
)
from jfwatch.actions.enforce import EnforcementQueue, Enforcer
from jfwatch.actions.export import EventExport
from jfwatch.actions.fail2ban import Fail2banClient, Fail2banEnforcer
from jfwatch.actions.metrics import Metrics
from jfwatch.actions.nftables import Nftables
from jfwatch.actions.notify import Outbox
from jfwatch.actions.publish import BanPublisher
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert, Ban, Decision
from jfwatch.detect.detector import Detector
from jfwatch.engine.engine import Stream
from jfwatch.enrich.shared_bans import SharedBans
from jfwatch.events import Event
from jfwatch.keys import KeyUnreadable, read_key
from jfwatch.reporting import Totals
from jfwatch.sources.lines import LineStats
from jfwatch.state import StateStore


def build_enforcers(config: Config) -> list[Enforcer]:
    """The enforcers beyond the feed that the config enables (ConfigError if their
    credentials cannot be read: found at start, and by check-config)."""
    enforcers: list[Enforcer] = []
    feed = config.ban_feed
    if feed.enabled and feed.enforcer == "fail2ban" and feed.confirm:
        enforcers.append(Fail2banEnforcer(
            Fail2banClient(feed.jail, feed.fail2ban_socket, command=feed.fail2ban_client),
            {"bantime": feed.jail_bantime.total_seconds(), "factor": feed.jail_factor,
             "maxtime": feed.jail_maxtime.total_seconds()}))
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
    except LapiError as exc:
        raise ConfigError([f"crowdsec: {exc}"]) from None
    return LapiClient(url, login, password, timeout=cs.timeout.total_seconds(),
                      origin=cs.origin)


def bouncer(config: Config) -> tuple[str, str] | None:
    """The LAPI's url and the bouncer key, if one is configured (ConfigError if they
    cannot be read: found at start, and by check-config)."""
    cs = config.crowdsec
    if not cs.enabled or cs.bouncer_key_file is None:
        return None
    try:
        return (read_credentials(cs.credentials_file)[0],
                read_key("bouncer key", str(cs.bouncer_key_file)))
    except (LapiError, KeyUnreadable) as exc:
        raise ConfigError([f"crowdsec: {exc}"]) from None


def shared_bans(config: Config) -> SharedBans | None:
    """The LAPI's decisions as a bouncer reads them, if a bouncer key is configured."""
    found = bouncer(config)
    return None if found is None else \
        SharedBans(*found, timeout=config.crowdsec.timeout.total_seconds())


class DaemonSink:
    def __init__(self, config: Config, store: StateStore) -> None:
        self.config, self.store = config, store
        self.log = log.get("jfwatch.actions")
        self.metrics = Metrics()
        self.metrics.stale_after = config.metrics.stale_after.total_seconds()
        self.export = EventExport(config.events_file, store)
        self.publisher = BanPublisher(BanFeed(config.ban_feed.path, config.ban_feed.list_path),
                                      store, self.metrics.fault) \
            if config.ban_feed.enabled else None
        self.outbox = Outbox(store, config.notify, config.server_name,
                             tz=ZoneInfo(config.timezone), enforcers=config.enforcers)
        self.enforcement = EnforcementQueue(store, build_enforcers(config), config.server_name)
        self.shared = shared_bans(config)  # an enrichment: its own thread reads the LAPI
        self._fail2ban = next((e for e in self.enforcement.enforcers
                               if isinstance(e, Fail2banEnforcer)), None)
        self._jail_applied: tuple[object, object] | None = None  # (jail_says, detector)
        self.metrics_port: int | None = None
        self.newest_event: dict[str, datetime] = {}
        self._bans_changed = True
        self._detector_totals: Totals[str] = Totals()

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        if self.config.metrics.enabled:
            self.metrics_port = self.metrics.serve(self.config.metrics.listen,
                                                   self.config.metrics.port)
            self.log.info("metrics_listening", address=self.config.metrics.listen,
                          port=self.metrics_port)
        self.outbox.start()
        self.enforcement.start()
        if self.shared is not None:
            self.shared.start()
        self.export.restore()  # last: metrics and alerts run even if it fails

    def stop(self) -> None:
        if self.shared is not None:
            self.shared.stop()
        self.enforcement.stop()
        self.outbox.stop()
        self.metrics.stop()

    def reload(self, config: Config) -> None:
        self.config = config

    # -- the engine's output -------------------------------------------------------
    def lines(self, stream: Stream, counts: LineStats) -> None:
        for outcome in ("matched", "unmatched", "rejected"):
            n = getattr(counts, outcome)
            if n:
                self.metrics.lines.labels(stream.source, outcome).inc(n)

    def events(self, stream: Stream, events: list[Event]) -> None:
        # Counted per label set, then added: one counter update per kind, not per event.
        for kind, n in Counter(str(e.kind) for e in events).items():
            self.metrics.events.labels(stream.source, stream.format, kind).inc(n)
        newest = max(e.time for e in events)
        self.metrics.last_event.labels(stream.source).set(newest.timestamp())
        # The newest event time per stream since the daemon last took it (clock checks).
        self.newest_event[stream.key] = max(newest, self.newest_event.get(stream.key, newest))
        self.export.add(stream.key, events)  # written with the stream's next commit

    def act(self, decisions: Sequence[Decision]) -> None:
        for d in decisions:
            if isinstance(d, Alert):
                self.metrics.alerts.labels(d.rule, d.severity).inc()
                self.log.warning("alert", rule=d.rule, severity=d.severity, ip=d.ip,
                                 country=d.country, user=d.user, count=d.count, detail=d.detail,
                                 ban_until=d.ban_until.isoformat() if d.ban_until else None,
                                 banned=d.ban_target)
                self.outbox.enqueue(d)
                continue
            self._bans_changed = True
            self.enforcement.request(d)
            if isinstance(d, Ban):
                self.metrics.bans.labels(d.rule).inc()
                self.log.warning("ban", ip=d.ip, rule=d.rule, until=d.until.isoformat())
            else:
                self.metrics.unbans.inc()
                self.log.info("unban", ip=d.ip, rule=d.rule)
            if self.publisher is not None:
                self.publisher.publish(d)

    # -- housekeeping -----------------------------------------------------------------
    def idle(self, detector: Detector) -> None:
        """After each pass: the feed's retries and banned list, gauges and counters."""
        if self.publisher is not None:
            self.publisher.idle()
        if self._bans_changed:
            self._bans_changed = False
            self.metrics.bans_active.set(self.store.bans_active())
        self._detector_gauges(detector)
        self._durations_from_the_jail(detector)
        if self.shared is not None:  # a LAPI whose decisions cannot be read: logins unchecked
            self.metrics.fault("crowdsec_decisions", self.shared.problem)
        self.metrics.outbox_depth.set(self.outbox.depth())
        self.metrics.sync_notify(self.outbox.counts)
        self.metrics.sync_enforcers(self.enforcement)

    def _durations_from_the_jail(self, detector: Detector) -> None:
        """Where Fail2Ban is read back, bans are stated as its jail says (a bantime changed
        in jail.local), not as jfwatch's config assumed."""
        said = None if self._fail2ban is None else self._fail2ban.jail_says
        policy = detector.settings.fail2ban
        # Replaced whole when the jail is read again, and a new detector (reload, commit
        # fault) starts from the config: only then is there anything to do.
        if said is None or policy is None or (said, detector) == self._jail_applied:
            return
        self._jail_applied = (said, detector)
        jail = replace(policy, bantime=timedelta(seconds=said.get("bantime",
                                                                   policy.bantime.total_seconds())),
                       factor=said.get("factor", policy.factor),
                       maxtime=timedelta(seconds=said["maxtime"]) if said.get("maxtime", 0) > 0
                       else policy.maxtime)
        if jail != policy:
            detector.settings = replace(detector.settings, fail2ban=jail)
            self.log.info("ban_durations_from_the_jail", bantime=jail.bantime.total_seconds(),
                          factor=jail.factor, maxtime=jail.maxtime.total_seconds())

    def _detector_gauges(self, detector: Detector) -> None:
        totals = self._detector_totals
        totals.owned_by(detector)  # a reload or a commit fault made a new one: from zero
        self.metrics.groups.set(detector.tracked_groups)
        self.metrics.evictions.inc(totals.take("evictions", detector.evictions))
        self.metrics.duplicates.inc(totals.take("duplicates", detector.duplicates))
        for kind, total in list(detector.attempts.items()):
            self.metrics.attempts.labels(kind).inc(totals.take(f"attempts:{kind}", total))
        future = totals.take("future", detector.future_events)
        if future:
            self.metrics.future_events.inc(future)
            self.log.warning("future_dated_events", count=future,
                             tolerance=self.config.future_tolerance.total_seconds(),
                             handling="taken at the current time; bans expire on the wall clock")
