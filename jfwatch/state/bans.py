"""Bans (active, with when they were recorded and published to the feed) and each
address's ban history (for escalation)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from jfwatch.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS bans (
    ip TEXT PRIMARY KEY, rule TEXT NOT NULL, since TEXT NOT NULL, until TEXT NOT NULL,
    level INTEGER NOT NULL, recorded TEXT, published TEXT);
CREATE INDEX IF NOT EXISTS bans_until ON bans (until);
CREATE TABLE IF NOT EXISTS ban_history (
    ip TEXT PRIMARY KEY, count INTEGER NOT NULL, last TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class BanRow:
    ip: str
    rule: str
    since: datetime
    until: datetime
    level: int



class Bans(Database):
    def active_ban(self, ip: str) -> BanRow | None:
        row = self.db.execute("SELECT ip, rule, since, until, level FROM bans WHERE ip=?",
                              (ip,)).fetchone()
        return None if row is None else _ban(row)

    def bans_active(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM bans").fetchone()[0])

    def bans(self) -> list[BanRow]:
        rows = self.db.execute("SELECT ip, rule, since, until, level FROM bans ORDER BY until")
        return [_ban(r) for r in rows]

    def record_ban(self, ip: str, rule: str, since: datetime, until: datetime, level: int) -> None:
        """A ban, not yet published to the feed (``mark_published`` says it is)."""
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO bans VALUES (?,?,?,?,?,?,NULL)",
                       (ip, rule, since.astimezone(UTC).isoformat(),
                        until.astimezone(UTC).isoformat(), level,
                        datetime.now(UTC).isoformat()))
            db.execute("INSERT INTO ban_history VALUES (?,1,?) ON CONFLICT(ip) DO UPDATE SET "
                       "count=count+1, last=excluded.last", (ip, since.astimezone(UTC).isoformat()))

    def unpublished_bans(self) -> list[tuple[BanRow, datetime]]:
        """Bans not yet written to the feed, with the wall time they were recorded."""
        rows = self.db.execute("SELECT ip, rule, since, until, level, recorded FROM bans "
                               "WHERE published IS NULL ORDER BY recorded").fetchall()
        return [(_ban(r[:5]), datetime.fromisoformat(r[5]) if r[5] else datetime.now(UTC))
                for r in rows]

    def mark_published(self, ip: str, until: datetime) -> None:
        with self.transaction() as db:
            db.execute("UPDATE bans SET published=? WHERE ip=? AND until=?",
                       (datetime.now(UTC).isoformat(), ip, until.astimezone(UTC).isoformat()))

    def remove_ban(self, ip: str) -> BanRow | None:
        row = self.active_ban(ip)
        if row is not None:
            with self.transaction() as db:
                db.execute("DELETE FROM bans WHERE ip=?", (ip,))
        return row

    def expired_bans(self, now: datetime) -> list[BanRow]:
        # ISO 8601 strings in one zone sort like times; compare exactly in Python anyway.
        rows = self.db.execute("SELECT ip, rule, since, until, level FROM bans ORDER BY until "
                               "LIMIT 10000")
        out = []
        for row in rows:
            ban = _ban(row)
            if ban.until > now:
                break
            out.append(ban)
        return out

    def next_expiry(self) -> datetime | None:
        row = self.db.execute("SELECT MIN(until) FROM bans").fetchone()
        return datetime.fromisoformat(row[0]) if row and row[0] else None

    def ban_count(self, ip: str, since: datetime | None = None) -> int:
        """How often the address was banned before (0 if its last ban was before
        ``since``: an enforcer that has forgotten it counts from zero again)."""
        row = self.db.execute("SELECT count, last FROM ban_history WHERE ip=?", (ip,)).fetchone()
        if not row or (since is not None and datetime.fromisoformat(row[1]) < since):
            return 0
        return int(row[0])



def _ban(row: tuple[str, str, str, str, int]) -> BanRow:
    return BanRow(row[0], row[1], datetime.fromisoformat(row[2]), datetime.fromisoformat(row[3]),
                  int(row[4]))
