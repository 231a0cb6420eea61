"""
Bans into the Fail2Ban feed and the banned list.  A ban is recorded in the state first
and marked published once its line is written; while any recorded ban is unpublished
(a full disk, a directory in the feed's place, a crash between the two), the feed is
at fault and the unpublished ones are written again, every ``RETRY_SECONDS`` and as soon
as any write works again, oldest first, never twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from jfwatch import log
from jfwatch.actions.banfeed import BanFeed, feed_address
from jfwatch.detect.decisions import Ban, Unban
from jfwatch.reporting import Conditions
from jfwatch.state import StateStore

RETRY_SECONDS = 5.0


class BanPublisher:
    def __init__(self, feed: BanFeed, store: StateStore,
                 fault: Callable[[str, str | None], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """``fault(part, problem)``: the health report (None: fine again)."""
        self.feed, self.store, self.clock = feed, store, clock
        self.log = log.get("jfwatch.publish")
        self._fault = fault
        self._conditions: Conditions[str, str] = Conditions(self._report)
        # Bans that were over before they could be written (a backfill of old logs):
        # their BAN and UNBAN lines would only be noise for Fail2Ban.
        self._skipped: set[str] = set()
        self._unpublished = True  # not known yet: bans recorded before a crash are looked for
        self._after_crash = True
        self._tried = float("-inf")
        self._list_dirty = True
        if feed.problem is not None:
            self._conditions.report("ban_feed", feed.problem)

    @property
    def problem(self) -> str | None:
        return self._conditions.get("ban_feed")

    def publish(self, decision: Ban | Unban) -> None:
        """Write one decision (reported and retried if it cannot be written)."""
        self._list_dirty = True
        if self._write(decision) and self._unpublished and not self._after_crash:
            self._publish_pending()  # the feed works again: what failed before goes now

    def idle(self) -> None:
        """After each pass: unpublished bans retried when due, the list rewritten if the
        bans changed (once per pass, not once per ban)."""
        if self._unpublished and (self._after_crash or
                                  self.clock() - self._tried >= RETRY_SECONDS):
            self._publish_pending()
        if self._list_dirty:
            self._write_list()

    def _write(self, d: Ban | Unban) -> bool:
        """Whether the decision is in the feed (or has no need to be)."""
        now = datetime.now(UTC)
        if isinstance(d, Ban) and d.until <= now:
            self._skipped.add(d.ip)
            self.store.mark_published(d.ip, d.until)  # over already: nothing to enforce
            return True
        if isinstance(d, Unban) and d.ip in self._skipped:
            self._skipped.discard(d.ip)
            return True
        self._skipped.discard(d.ip)
        try:
            self.feed.write(d, now)
        except OSError as exc:
            # Never fatal: the ban stays in the state, unpublished, and is written when
            # the feed can be written again.
            self._unpublished = True
            self._tried = self.clock()
            self._conditions.report("ban_feed", str(exc))
            return False
        if isinstance(d, Ban):
            self.store.mark_published(d.ip, d.until)
        return True

    def _publish_pending(self) -> None:
        """
        Write the bans recorded but not yet in the feed: after a failed write, or after a
        crash between recording a ban and writing it (then a line already written for it
        is found in the feed, and not written twice).
        """
        self._tried = self.clock()
        pending = self.store.unpublished_bans()
        written = self.feed.last_bans() if self._after_crash and pending else {}
        self._after_crash = False
        for ban, _recorded in pending:
            # A line for this ban is stamped with its own time or later (``format_line``);
            # an earlier ban's line, earlier.
            stamp = written.get((feed_address(ban.ip), ban.rule))
            if stamp is not None and stamp >= ban.since.replace(microsecond=0):
                self.store.mark_published(ban.ip, ban.until)
                continue
            if not self._write(Ban(ban.ip, ban.rule, ban.since, ban.until, ban.level)):
                return
        self._unpublished = False
        self._conditions.report("ban_feed", None)

    def _write_list(self) -> None:
        if self.feed.list_path is None:
            self._list_dirty = False
            return
        try:
            self.feed.write_list([b.ip for b in self.store.bans()])
        except OSError as exc:
            self._conditions.report("banned_list", str(exc))  # rewritten on a later pass
            return
        self._list_dirty = False
        self._conditions.report("banned_list", None)

    def _report(self, part: str, was: str | None, problem: str | None) -> None:
        path = str(self.feed.path if part == "ban_feed" else self.feed.list_path)
        if problem is None:
            self.log.info(f"{part}_writable_again", path=path)
        elif part == "ban_feed":
            self.log.error("ban_feed_write_failed", path=path, problem=problem,
                           retry=f"every {RETRY_SECONDS:.0f} s",
                           bans="kept in the state and written when the feed can be")
        else:
            self.log.error("banned_list_write_failed", path=path, problem=problem,
                           retry="on every pass")
        self._fault(part, problem)
