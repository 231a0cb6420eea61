"""Requests to the enforcers beyond the feed (CrowdSec, nftables): asked, accepted, answered."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from typing import NamedTuple

from jfwatch.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS enforcements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, enforcer TEXT NOT NULL, action TEXT NOT NULL,
    ip TEXT NOT NULL, rule TEXT NOT NULL, until TEXT, requested TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, accepted TEXT,
    result TEXT, remote_id TEXT, last_error TEXT, UNIQUE (enforcer, action, ip, until));
CREATE INDEX IF NOT EXISTS enforcements_due ON enforcements (enforcer, accepted, id);
"""


class Enforcement(NamedTuple):
    """One enforcer's request for one ban: when it was asked and what it answered."""

    enforcer: str
    requested: str
    accepted: str | None
    result: str | None
    attempts: int
    last_error: str | None



class Enforcements(Database):
    def enforcements(self, ip: str, until: datetime) -> list[Enforcement]:
        """What each enforcer beyond the feed was asked and answered for this ban."""
        try:
            rows = self.db.execute(
                "SELECT enforcer, requested, accepted, result, attempts, last_error FROM "
                "enforcements WHERE action='ban' AND ip=? AND until=? ORDER BY enforcer",
                (ip, until.astimezone(UTC).isoformat())).fetchall()
        except sqlite3.OperationalError:  # a state from before enforcers (read-only)
            return []
        return [Enforcement(*r) for r in rows]
