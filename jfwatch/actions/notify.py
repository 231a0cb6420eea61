"""
Alerts to people through Apprise, via an outbox in the SQLite state: sending never
blocks detection, a failed send is retried with backoff (also across restarts), an
alert is delivered once, floods fold into a digest, quiet hours hold non-critical ones.
Apprise URLs carry secrets: they are never logged or shown.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import apprise

from jfwatch import log
from jfwatch.config.errors import ConfigError
from jfwatch.config.model import NotifyConfig
from jfwatch.config.yaml_lines import guard_yaml
from jfwatch.detect.decisions import Alert
from jfwatch.redact import redact, strip_control
from jfwatch.state import StateStore

_DIGEST_MAX_CHARS = 3000  # a digest lists the first alerts, then just counts
_TYPES = {"critical": "failure", "high": "failure", "medium": "warning", "low": "warning",
          "info": "info"}


def render(alert: Alert, server: str, tz: tzinfo = UTC, enforcers: Sequence[str] = ()
           ) -> tuple[str, str]:
    """Title short enough for a lock screen, and a body a person can act on, its times in
    the configured zone."""
    who = alert.ip or (f"user {alert.user}" if alert.user else "unknown source")
    if alert.ip and alert.country:
        who += f" ({alert.country})"
    title = f"[{server}] {alert.rule}: {who}"[:80]
    lines = [alert.description, ""]
    if alert.ip:
        lines.append(f"Address: {alert.ip}{_place(alert)}")
    if alert.detail:
        lines.append(alert.detail)
    if alert.user:
        lines.append(f"User: {alert.user}")
    if alert.users:
        lines.append(f"Usernames tried: {', '.join(alert.users)}")
    first, last = alert.first_time.astimezone(tz), alert.last_time.astimezone(tz)
    lines.append(f"Count: {alert.count} within {int(alert.window_seconds // 60)} min "
                 f"({first:%H:%M:%S}-{last:%H:%M:%S} {last:%Z})")
    if alert.ban_until:
        until = alert.ban_until.astimezone(tz)
        network = f" (the whole network {alert.ban_target})" \
            if alert.ban_target and "/" in alert.ban_target else ""
        lines.append(f"Banned{network} until {until:%Y-%m-%d %H:%M} {until:%Z}" +
                     (f", requested from {', '.join(enforcers)}" if enforcers else ""))
    elif alert.not_banned_reason:
        lines.append(f"Not banned: {alert.not_banned_reason}")
    lines.append(f"Rule: {alert.rule} (severity {alert.severity}) on {server}")
    return title, redact("\n".join(lines))


def _place(alert: Alert) -> str:
    """`` (Berlin, DE, AS3320)``: where the address is, as far as the data says."""
    parts = [p for p in (alert.city, alert.country) if p]
    if alert.asn is not None:
        parts.append(f"AS{alert.asn}")
    return f" ({', '.join(parts)})" if parts else ""


class Outbox:
    """Queue alerts in SQLite and deliver them from a background thread."""

    def __init__(self, store: StateStore, cfg: NotifyConfig, server: str,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 tz: tzinfo = UTC, enforcers: Sequence[str] = ()) -> None:
        """``tz``: the configured timezone, for quiet hours and the times in messages;
        ``enforcers``: who a ban is requested from (named in ban alerts)."""
        self.store, self.cfg, self.server, self.clock, self.tz = store, cfg, server, clock, tz
        self.enforcers = tuple(enforcers)
        self.log = log.get("jfwatch.notify")
        self.apprise = apprise.Apprise()
        for url in cfg.urls:
            self.apprise.add(url.get_secret_value())
        if cfg.config_file is not None:
            try:  # changed since the config was checked?
                guard_yaml(cfg.config_file)
            except ValueError as exc:
                raise ConfigError([f"notify.config_file: {exc}"]) from None
            conf = apprise.AppriseConfig()
            conf.add(str(cfg.config_file))
            self.apprise.add(conf)
        self.targets = [_Target.of(i, server) for i, server in enumerate(self.apprise)]
        self.counts: dict[str, int] = {"sent": 0, "failed": 0, "retried": 0, "digest": 0,
                                       "quiet": 0, "dropped": 0}
        self._held_quiet: set[int] = set()  # counted once, however long quiet hours last
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return len(self.apprise) > 0

    # -- producer side (pipeline thread) -------------------------------------------
    def enqueue(self, alert: Alert) -> None:
        if not self.enabled:
            return
        tags = ",".join([*alert.tags, alert.severity])
        dedup = f"{alert.rule}|{sorted(alert.key.items())}|{alert.time.isoformat()}"
        # Caps, digests and quiet hours run on the wall clock: an alert's own time is
        # event time, and a line dated in the past must not open an hour of its own.
        created = self.clock()
        hour = created.replace(minute=0, second=0, microsecond=0)
        with self.store.transaction() as db:

            def insert(dedup: str, title: str, body: str, not_before: float = 0.0) -> None:
                db.execute("INSERT OR IGNORE INTO outbox (created, dedup, rule, severity, tags, "
                           "title, body, next_try) VALUES (?,?,?,?,?,?,?,?)",
                           (created.isoformat(), dedup, alert.rule, alert.severity, tags,
                            title, body, not_before))

            recent = db.execute(
                "SELECT COUNT(*) FROM outbox WHERE rule=? AND created >= ? AND dedup NOT LIKE "
                "'digest|%'", (alert.rule, hour.isoformat())).fetchone()[0]
            if recent >= self.cfg.max_per_rule_per_hour:
                # Fold the flood: one digest per rule and hour, appended to all hour long
                # and sent when the hour is over (critical ones too: 10,000 pushes in a
                # minute help nobody).  Pushes per hour are thus bounded by rules x
                # (max_per_rule_per_hour + 1).  Alerts of an hour whose digest is gone
                # already (a backfill of old logs) are counted, not sent.
                digest = f"digest|{alert.rule}|{hour.isoformat()}"
                line = f"{alert.time:%H:%M:%S} {alert.ip or alert.user or '-'} x{alert.count}"
                cur = db.execute(
                    "UPDATE outbox SET body = CASE WHEN length(body) < ? THEN body || ? "
                    "ELSE body END WHERE dedup=? AND delivered IS NULL",
                    (_DIGEST_MAX_CHARS, "\n" + line, digest))
                if cur.rowcount == 0:
                    insert(digest, f"[{self.server}] {alert.rule}: more alerts (digest)",
                           f"Further alerts of {alert.rule} this hour:\n{line}",
                           not_before=(hour + timedelta(hours=1)).timestamp())
                self.counts["digest"] += 1
                return
            # Rendered only for alerts that are sent on their own, not for folded ones.
            insert(dedup, *render(alert, self.server, self.tz, self.enforcers))
        self._wake.set()

    def failing_targets(self) -> list[dict[str, object]]:
        """Targets with alerts waiting after a failure, and the last reason (no secrets)."""
        rows = self.store.db.execute(
            "SELECT target, COUNT(*), MAX(last_error) FROM deliveries WHERE done IS NULL "
            "AND last_error IS NOT NULL GROUP BY target").fetchall()
        names = {target.id: target.name for target in self.targets}
        return [{"target": names.get(tid, tid), "waiting": n, "last_error": why}
                for tid, n, why in rows]

    def depth(self) -> int:
        return self.store.outbox_waiting()

    # -- consumer side (own thread) ------------------------------------------------
    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="jfwatch-notify", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
            self._thread = None
        self.store.close()

    def _loop(self) -> None:
        last_prune, problem = 0.0, None
        while not self._stop.is_set():
            try:
                self.deliver_due()
                if time.monotonic() - last_prune > 3600:
                    last_prune = time.monotonic()
                    self.store.prune(self.clock())
                problem = None
            except Exception as exc:  # noqa: BLE001 - the sender must outlive any fault
                if repr(exc) != problem:  # once per fault, not once a second
                    self.log.error("notify_loop_error", problem=repr(exc), retry="every second")
                problem = repr(exc)
            self._wake.wait(1.0)
            self._wake.clear()

    def _quiet(self, now: datetime) -> bool:
        if not self.cfg.quiet_hours:
            return False
        start, end = self.cfg.quiet_hours.split("-")
        t = now.astimezone(self.tz).strftime("%H:%M")  # the household's clock, DST included
        return (start <= t < end) if start <= end else (t >= start or t < end)

    def deliver_due(self) -> int:
        """
        Send what is due now, to each target on its own: a target that fails is retried
        alone, with backoff, and never holds back the others; a target that took an alert
        is never sent it again.  Returns how many (alert, target) deliveries were made.
        """
        now = self.clock()
        due = "FROM outbox WHERE delivered IS NULL AND failed IS NULL AND next_try <= ?"
        quiet = self._quiet(now)
        if quiet:  # held, counted once each; the critical ones go out (however many wait)
            for (row_id,) in self.store.db.execute(
                    f"SELECT id {due} AND severity != 'critical' LIMIT 10000",
                    (now.timestamp(),)):
                if row_id not in self._held_quiet:
                    self._held_quiet.add(row_id)
                    self.counts["quiet"] += 1
        critical_only = " AND severity = 'critical'" if quiet else ""
        rows = self.store.db.execute(
            f"SELECT id, created, severity, tags, title, body {due}{critical_only} "
            "ORDER BY id LIMIT 50",
            (now.timestamp(),)).fetchall()
        sent = 0
        for row_id, created, severity, tags, title, body in rows:
            # A stable reference: the same in a copy sent again after a crash or a
            # timeout (delivery is at least once), for a reader or a service to match.
            message = self._with_rdns(body) + f"\nRef: {self.server}/{row_id}"
            for target in self.targets:
                sent += self._deliver(target, row_id, datetime.fromisoformat(created), now,
                                      title, message, severity, tags.split(","))
            self._settle(row_id, now)
        return sent

    def _deliver(self, target: _Target, row_id: int, created: datetime, now: datetime,
                 title: str, body: str, severity: str, tags: list[str]) -> int:
        """One alert to one target, if it is due there; 1 if it was delivered now."""
        db = self.store.db
        row = db.execute("SELECT attempts, next_try, done FROM deliveries WHERE outbox_id=? AND "
                         "target=?", (row_id, target.id)).fetchone()
        attempts, next_try, done = row if row else (0, 0.0, None)
        if done is not None or next_try > now.timestamp():
            return 0
        kwargs: dict[str, Any] = {"body": body, "title": title,
                                  "notify_type": _TYPES.get(severity, "info")}
        if self.cfg.config_file is not None:
            kwargs["tag"] = [*tags, "always"]
        with _ApprisesWords() as words:
            outcome = _outcome(target.for_severity(severity).notify(**kwargs))
        with self.store.transaction() as tx:
            if outcome in ("sent", "not for it"):
                tx.execute("INSERT OR REPLACE INTO deliveries (outbox_id, target, attempts, "
                           "next_try, done, outcome) VALUES (?,?,?,?,?,?)",
                           (row_id, target.id, attempts + 1, 0, now.isoformat(), outcome))
                if outcome == "sent":
                    self.counts["sent"] += 1
                return 1 if outcome == "sent" else 0
            reason = _without_secrets(words.last or "no reason given", target.url)
            if now - created > self.cfg.give_up_after and attempts >= 3:
                tx.execute("INSERT OR REPLACE INTO deliveries (outbox_id, target, attempts, "
                           "next_try, done, outcome, last_error) VALUES (?,?,?,?,?,?,?)",
                           (row_id, target.id, attempts + 1, 0, now.isoformat(), "gave up",
                            reason))
                self.counts["dropped"] += 1
                self.log.error("notification_given_up", id=row_id, target=target.name,
                               attempts=attempts + 1, reason=reason)
                return 0
            delay = min(self.cfg.retry_max.total_seconds(), 2.0 ** min(attempts, 20))
            tx.execute("INSERT OR REPLACE INTO deliveries (outbox_id, target, attempts, "
                       "next_try, last_error) VALUES (?,?,?,?,?)",
                       (row_id, target.id, attempts + 1, now.timestamp() + delay, reason))
        self.counts["failed"] += 1
        self.counts["retried"] += 1
        self.log.warning("notification_failed", id=row_id, target=target.name, retry_in=delay,
                         reason=reason)
        return 0

    def _settle(self, row_id: int, now: datetime) -> None:
        """The alert is done when every target is done with it (delivered, not for that
        target, or given up); until then it is due again when its next target is."""
        ids = [target.id for target in self.targets]
        marks = ",".join("?" * len(ids))
        rows = self.store.db.execute(
            f"SELECT done, outcome, next_try FROM deliveries WHERE outbox_id=? AND target IN "  # noqa: S608 - placeholders only
            f"({marks})", (row_id, *ids)).fetchall()
        with self.store.transaction() as tx:
            if len(rows) == len(ids) and all(done is not None for done, _, _ in rows):
                column = "delivered" if any(o == "sent" for _, o, _ in rows) or \
                    all(o == "not for it" for _, o, _ in rows) else "failed"
                tx.execute(f"UPDATE outbox SET {column}=? WHERE id=?", (now.isoformat(), row_id))  # noqa: S608 - a fixed column name
            else:
                due = min((n for done, _, n in rows if done is None), default=0.0)
                tx.execute("UPDATE outbox SET next_try=? WHERE id=?", (due, row_id))

    def _with_rdns(self, body: str) -> str:
        """Add the attacker's reverse DNS name, looked up here (sender thread) if enabled."""
        if not self.cfg.rdns:
            return body
        m = re.search(r"^Address: (\S+)$", body, re.MULTILINE)
        if m is None:
            return body
        try:
            name = socket.gethostbyaddr(m[1])[0]
        except (OSError, UnicodeError):
            return body
        return body.replace(m[0], f"{m[0]} ({strip_control(name)[:120]})", 1)

    def test(self) -> list[tuple[str, bool, str | None]]:
        """Send a test message to each target separately (``jfwatch notify-test``): its
        name, whether it was delivered, and why not (Apprise's own words, without the
        target's secrets)."""
        results = []
        for target in self.targets:
            with _ApprisesWords() as words:
                ok = bool(target.sender.notify(body="jfwatch test notification: delivery works.",
                                               title=f"[{self.server}] jfwatch test"))
            reason = None if ok else _without_secrets(words.last or "no reason given", target.url)
            results.append((target.name, ok, reason))
        return results


# Severity as the service's own priority (an Apprise URL parameter), for the push services
# that have one: critical wakes the phone (past its do-not-disturb where the service can),
# high stands out, the rest keep the service's default.  A URL that sets a priority keeps it.
_NTFY = {"critical": "max", "high": "high"}
_PRIORITY: dict[str, dict[str, str]] = {
    "ntfy": _NTFY, "ntfys": _NTFY,
    "pover": {"critical": "high"},  # Pushover's emergency would need acknowledging
    "gotify": {"critical": "10", "high": "8"}, "gotifys": {"critical": "10", "high": "8"},
    "prowl": {"critical": "emergency", "high": "high"},
}


@dataclass(frozen=True)
class _Target:
    """One notification target, known by a hash of its URL (stable across restarts and
    reorderings, and no secret in the state), named by position and service."""

    id: str
    name: str
    url: str
    sender: apprise.Apprise
    by_severity: dict[str, apprise.Apprise]

    @classmethod
    def of(cls, index: int, server: Any) -> _Target:
        url: str = server.url(privacy=False)
        one = apprise.Apprise()
        one.add(server)
        scheme = url.split("://", 1)[0].lower()
        by_severity = {}
        default = getattr(server, "template_args", {}).get("priority", {}).get("default")
        if str(getattr(server, "priority", default)) == str(default):  # the URL sets none
            for severity, priority in _PRIORITY.get(scheme, {}).items():
                variant = apprise.Apprise()
                variant.add(_with_priority(url, priority), tag=server.tags)
                by_severity[severity] = variant
        return cls(hashlib.sha256(url.encode()).hexdigest()[:16],
                   f"target {index + 1} ({server.service_name})", url, one, by_severity)

    def for_severity(self, severity: str) -> apprise.Apprise:
        return self.by_severity.get(severity, self.sender)


def _with_priority(url: str, priority: str) -> str:
    if re.search(r"[?&]priority=", url):
        return re.sub(r"([?&])priority=[^&]*", rf"\g<1>priority={priority}", url, count=1)
    return f"{url}{'&' if '?' in url else '?'}priority={priority}"


def _outcome(result: object) -> str:
    """sent, not for it (its tags do not match the alert's) or failed, from what Apprise
    returned (an AppriseResult from 2.x, a bool or None from 1.x)."""
    status = getattr(result, "status", None)
    if status is not None:
        name = getattr(status, "name", str(status))
        return "sent" if name == "SUCCESS" else "not for it" if name == "NOMATCH" else "failed"
    return "not for it" if result is None else "sent" if result else "failed"


class _ApprisesWords(logging.Handler):
    """Collects what Apprise logs while it sends (warnings and errors)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()

    def __enter__(self) -> _ApprisesWords:
        logging.getLogger("apprise").addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        logging.getLogger("apprise").removeHandler(self)


def _without_secrets(text: str, url: str) -> str:
    """Apprise's words with every piece of the target's URL that could be a secret (a
    token, a password, a topic) replaced, then redacted and cut short."""
    for piece in sorted(set(re.split(r"[/:@?&=#]+", url.split("://", 1)[-1])), key=len,
                        reverse=True):
        if len(piece) >= 4:
            text = text.replace(piece, "…")
    return strip_control(redact(text))[:300]
