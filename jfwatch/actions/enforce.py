"""
Bans to the enforcers beyond the feed (a CrowdSec LAPI, nftables sets) through a journal
in the state: each ban and each unban is one row per enforcer, delivered in order by one
thread, retried with backoff while the enforcer is down, and marked accepted with what the
enforcer answered (``jfwatch bans list`` shows both).

Exactly once: a row is marked as tried before its request goes out, so after a crash in
between, the enforcer is first asked whether it has the ban already (CrowdSec: the alert's
ref; nftables: adding is idempotent).  Active bans that have no row for an enforcer (a
crash right after the detector recorded them, or an enforcer enabled later) get one at
start.  A ban's duration is what remains of it when it is delivered, so a ban delivered
late still ends when it was decided to.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from jfwatch import log
from jfwatch.addresses import address_or_network
from jfwatch.detect.decisions import Ban, Unban
from jfwatch.state import StateStore

BACKOFF_MAX = 300.0
BATCH = 50
# How often an enforcer that can say what it holds is read back (a restart of it, or
# a reboot, with no ban to deliver meanwhile).
RESTORE_EVERY = 300.0
IDLE_POLL = 2.0  # seconds between looks at the journal when nothing waits


class Enforcer(Protocol):
    name: str

    def setup(self) -> None:
        """Log in, create tables and sets: before the first delivery, retried."""

    def ban(self, ip: str, rule: str, until: datetime, ref: str, now: datetime
            ) -> tuple[str, str | None]:
        """Enforce; what the enforcer accepted, and its id for the ban (if it has one)."""

    def find(self, ip: str, ref: str) -> str | None:
        """The id of a ban delivered before a crash, or None."""

    def unban(self, ip: str, ids: list[str]) -> str:
        """Lift the bans jfwatch delivered (``ids``: what ``ban`` returned)."""


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    enforcer: str
    action: str
    ip: str
    rule: str
    until: datetime | None
    attempts: int


class EnforcementQueue:
    def __init__(self, store: StateStore, enforcers: list[Enforcer], server: str, *,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store, self.enforcers, self.server, self.clock = store, enforcers, server, clock
        self.log = log.get("jfwatch.enforce")
        self.problems: dict[str, str | None] = {e.name: None for e in enforcers}
        self.counts: dict[tuple[str, str], int] = {}  # (enforcer, outcome) -> n
        self._ready: set[str] = set()
        self._restored: dict[str, float] = {}  # when each was last read back (monotonic)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.enforcers]

    # -- the daemon's side ------------------------------------------------------------
    def request(self, decision: Ban | Unban) -> None:
        """Journal a ban, or an unban asked for by the admin (an expiry needs none: every
        enforcer was given the duration)."""
        if not self.enforcers:
            return
        names = self.names
        if isinstance(decision, Unban) and decision.reason == "expired":
            # Only those that hold a ban past its end (Fail2Ban, after a put-back).
            names = [e.name for e in self.enforcers if getattr(e, "wants_expiry", False)]
            if not names:
                return
        request_rows(self.store, names, decision)
        self._wake.set()

    def heal(self) -> int:
        """Rows for active bans an enforcer has none for; how many."""
        added = 0
        now = self.clock()
        for ban in self.store.bans():
            if ban.until <= now:
                continue
            for name in self.names:
                if self.store.db.execute(
                        "SELECT 1 FROM enforcements WHERE enforcer=? AND action='ban' AND ip=? "
                        "AND until=?", (name, ban.ip, ban.until.isoformat())).fetchone() is None:
                    request_rows(self.store, [name], Ban(ban.ip, ban.rule, ban.since,
                                                         ban.until, ban.level))
                    added += 1
        return added

    def restore(self, enforcer: Enforcer) -> int:
        """Put back every active ban the enforcer says it does not hold (nftables after a
        reboot): its accepted request is delivered again, for the time that is left.
        Enforcers that cannot say what they hold are left as they are."""
        held_now = getattr(enforcer, "held", None)
        self._restored[enforcer.name] = time.monotonic()
        if held_now is None:
            return 0
        try:
            held = held_now()
        except Exception as exc:  # noqa: BLE001 - reported; the next setup looks again
            self.log.warning("enforcer_not_read", enforcer=enforcer.name, problem=str(exc))
            return 0
        now, missing = self.clock(), []
        for ban in self.store.bans():
            if ban.until > now and address_or_network(ban.ip) not in held:
                missing.append(ban)
        for ban in missing:
            decision = Ban(ban.ip, ban.rule, ban.since, ban.until, ban.level)
            request_rows(self.store, [enforcer.name], decision)
            with self.store.transaction() as db:
                db.execute("UPDATE enforcements SET accepted=NULL, attempts=0, next_try=0 "
                           "WHERE enforcer=? AND action='ban' AND ip=? AND until=?",
                           (enforcer.name, ban.ip, ban.until.astimezone(UTC).isoformat()))
        if missing:
            self.log.warning("bans_restored", enforcer=enforcer.name, count=len(missing),
                             why="active bans it did not hold (a reboot, a flushed ruleset)")
        return len(missing)

    def pending(self, enforcer: str) -> int:
        return int(self.store.db.execute(
            "SELECT COUNT(*) FROM enforcements WHERE enforcer=? AND accepted IS NULL",
            (enforcer,)).fetchone()[0])

    def start(self) -> None:
        if not self.enforcers or self._thread is not None:
            return
        healed = self.heal()
        if healed:
            self.log.info("enforcer_requests_restored", count=healed)
        self._thread = threading.Thread(target=self._run, name="enforce", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    # -- the thread ------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            waits = [self.deliver(e) for e in self.enforcers]
            self._wake.wait(min(waits))

    def deliver(self, enforcer: Enforcer) -> float:
        """Deliver this enforcer's due rows in order; seconds until it should be asked
        again."""
        name = enforcer.name
        if name in self._ready and time.monotonic() - self._restored.get(name, 0.0) >= \
                RESTORE_EVERY:
            self.restore(enforcer)  # restarted meanwhile, with nothing to deliver?
        if name not in self._ready:
            try:
                enforcer.setup()
            except Exception as exc:  # noqa: BLE001 - any failure is retried and reported
                self._report(name, f"setup: {exc}")
                return 5.0
            self._ready.add(name)
            for problem in getattr(enforcer, "disagreements", []):
                self.log.warning("enforcer_settings_differ", enforcer=name, problem=problem,
                                 fix="set the same in the jail and in jfwatch's ban_feed "
                                     "(jail_bantime, jail_factor, jail_maxtime)")
            self.restore(enforcer)
        rows = [_row(r) for r in self.store.db.execute(
            "SELECT id, enforcer, action, ip, rule, until, attempts, next_try FROM enforcements "
            "WHERE enforcer=? AND accepted IS NULL ORDER BY id LIMIT ?", (name, BATCH))]
        for row, next_try in rows:
            if next_try > time.time():
                return next_try - time.time()  # in order: a later row waits for this one
            try:
                result, remote = self._deliver_one(enforcer, row)
            except Exception as exc:  # noqa: BLE001 - an enforcer's failure is retried
                # Down, or restarted: set up again and look for lost bans once it answers.
                self._ready.discard(name)
                delay = min(BACKOFF_MAX, 2.0 ** min(row.attempts, 16))
                with self.store.transaction() as db:
                    db.execute("UPDATE enforcements SET last_error=?, next_try=? WHERE id=?",
                               (str(exc)[:500], time.time() + delay, row.id))
                self._count(name, "failed")
                self._report(name, str(exc))
                return delay
            with self.store.transaction() as db:
                db.execute("UPDATE enforcements SET accepted=?, result=?, remote_id=?, "
                           "last_error=NULL WHERE id=?",
                           (self.clock().isoformat(), result, remote, row.id))
            self._count(name, "accepted")
            self._report(name, None)
        # Rows also come from another process (``jfwatch bans unban``): looked for often.
        return 0.0 if len(rows) == BATCH else IDLE_POLL

    def _deliver_one(self, enforcer: Enforcer, row: Row) -> tuple[str, str | None]:
        now = self.clock()
        ref = f"{self.server}/{row.id}"
        if row.action == "unban":
            ids = [r[0] for r in self.store.db.execute(
                "SELECT remote_id FROM enforcements WHERE enforcer=? AND action='ban' AND ip=? "
                "AND remote_id IS NOT NULL AND id < ?", (row.enforcer, row.ip, row.id))]
            return enforcer.unban(row.ip, ids), None
        assert row.until is not None
        if row.until <= now:
            return "ended before it could be delivered", None
        if row.attempts:  # tried before: it may have arrived before a crash
            found = enforcer.find(row.ip, ref)
            if found is not None:
                self._count(enforcer.name, "recovered")
                return "delivered before a restart", found
        with self.store.transaction() as db:
            db.execute("UPDATE enforcements SET attempts=attempts+1 WHERE id=?", (row.id,))
        return enforcer.ban(row.ip, row.rule, row.until, ref, now)

    def _count(self, enforcer: str, outcome: str) -> None:
        key = (enforcer, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1

    def _report(self, enforcer: str, problem: str | None) -> None:
        if problem == self.problems.get(enforcer):
            return
        self.problems[enforcer] = problem
        if problem is None:
            self.log.info("enforcer_available", enforcer=enforcer)
        else:
            self.log.error("enforcer_failed", enforcer=enforcer, problem=problem,
                           handling="bans wait in the state and are retried")


def request_rows(store: StateStore, enforcers: list[str], decision: Ban | Unban) -> None:
    """One row per enforcer (also from ``jfwatch bans unban``, a separate process)."""
    until = decision.until.astimezone(UTC).isoformat() if isinstance(decision, Ban) else None
    action = "ban" if isinstance(decision, Ban) else "unban"
    with store.transaction() as db:
        db.executemany(
            "INSERT OR IGNORE INTO enforcements (enforcer, action, ip, rule, until, requested) "
            "VALUES (?,?,?,?,?,?)",
            [(name, action, decision.ip, decision.rule, until, datetime.now(UTC).isoformat())
             for name in enforcers])


def _row(r: tuple[int, str, str, str, str, str | None, int, float]) -> tuple[Row, float]:
    until = datetime.fromisoformat(r[5]) if r[5] else None
    return Row(r[0], r[1], r[2], r[3], r[4], until, r[6]), float(r[7])
