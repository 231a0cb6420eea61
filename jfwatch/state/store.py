"""The embedded SQLite state, one class over the tables of each owner."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jfwatch.state.bans import Bans
from jfwatch.state.enforcement import Enforcements
from jfwatch.state.history import History
from jfwatch.state.offsets import Offsets
from jfwatch.state.outbox import Outbox


class StateStore(Offsets, Bans, History, Outbox, Enforcements):
    """Read offsets, bans and their history, first-seen values, the alert outbox and the
    enforcers' requests; ``":memory:"`` for a throw-away store."""

    def prune(self, now: datetime, *, outbox_days: int = 14, history_days: int = 180) -> int:
        """
        Drop what no longer matters, so the state file does not grow forever: delivered or
        abandoned alerts, enforcer requests accepted for bans long over, and
        repeat-offender history nobody would escalate on any more.
        """
        outbox_cut = (now - timedelta(days=outbox_days)).isoformat()
        history_cut = (now - timedelta(days=history_days)).astimezone(UTC).isoformat()
        with self.transaction() as db:
            gone = db.execute("DELETE FROM outbox WHERE (delivered IS NOT NULL OR failed IS NOT "
                              "NULL) AND created < ?", (outbox_cut,)).rowcount
            db.execute("DELETE FROM deliveries WHERE outbox_id NOT IN (SELECT id FROM outbox)")
            gone += db.execute("DELETE FROM enforcements WHERE accepted IS NOT NULL AND "
                               "accepted < ? AND (until IS NULL OR until < ?)",
                               (outbox_cut, outbox_cut)).rowcount
            gone += db.execute("DELETE FROM known_addresses WHERE last < ?",
                               (history_cut,)).rowcount
            gone += db.execute("DELETE FROM ban_history WHERE last < ? AND ip NOT IN "
                               "(SELECT ip FROM bans)", (history_cut,)).rowcount
        return int(gone)
