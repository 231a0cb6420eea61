"""What rules remember between events: first-seen values, and the addresses a user logged
in from (known, the household's)."""

from __future__ import annotations

from datetime import UTC, datetime

from jfwatch.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS first_seen (
    rule TEXT, key TEXT, value TEXT, time TEXT, PRIMARY KEY (rule, key, value));
CREATE TABLE IF NOT EXISTS known_addresses (
    ip TEXT PRIMARY KEY, user TEXT NOT NULL, last TEXT NOT NULL);
"""


class History(Database):
    def has_values(self, rule: str, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM first_seen WHERE rule=? AND key=? LIMIT 1",
                               (rule, key)).fetchone() is not None

    def mark_known(self, ips: tuple[str, ...], user: str, when: datetime) -> None:
        """A successful login from these (an address, and its IPv6 network)."""
        stamp = when.astimezone(UTC).isoformat()
        with self.transaction() as db:
            db.executemany("INSERT INTO known_addresses VALUES (?,?,?) ON CONFLICT(ip) DO "
                           "UPDATE SET user=excluded.user, last=excluded.last WHERE "
                           "excluded.last > last", [(ip, user, stamp) for ip in ips])

    def any_known(self) -> bool:
        return self.db.execute("SELECT 1 FROM known_addresses LIMIT 1").fetchone() is not None

    def known(self, ip: str, since: datetime) -> tuple[str, datetime] | None:
        """Who last logged in successfully from this address or network, and when, if
        that was at ``since`` or later."""
        row = self.db.execute("SELECT user, last FROM known_addresses WHERE ip=? AND last >= ?",
                              (ip, since.astimezone(UTC).isoformat())).fetchone()
        return None if row is None else (row[0], datetime.fromisoformat(row[1]))

    def remember(self, rule: str, key: str, value: str, when: datetime) -> bool:
        """Store a value; return True if it was new."""
        with self.transaction() as db:
            cur = db.execute("INSERT OR IGNORE INTO first_seen VALUES (?,?,?,?)",
                             (rule, key, value, when.isoformat()))
            return cur.rowcount == 1
