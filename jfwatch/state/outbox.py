"""The alert outbox: alerts waiting for delivery, and each target's delivery of each."""

from __future__ import annotations

from jfwatch.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created TEXT NOT NULL, dedup TEXT UNIQUE,
    rule TEXT NOT NULL DEFAULT '',
    severity TEXT NOT NULL, tags TEXT NOT NULL, title TEXT NOT NULL, body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0,
    delivered TEXT, failed TEXT, last_error TEXT);
CREATE INDEX IF NOT EXISTS outbox_rule ON outbox (rule, created);
CREATE TABLE IF NOT EXISTS deliveries (
    outbox_id INTEGER NOT NULL, target TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_try REAL NOT NULL DEFAULT 0, done TEXT, outcome TEXT, last_error TEXT,
    PRIMARY KEY (outbox_id, target));
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered, failed, next_try);
"""


class Outbox(Database):
    def outbox_waiting(self) -> int:
        """Alerts not yet delivered nor given up."""
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL AND "
                                   "failed IS NULL").fetchone()[0])
