"""
The schema, one part per owner (each with its queries), and every migration of a state
written by an older jfwatch: in one place, applied when the state is opened.
"""

from __future__ import annotations

import sqlite3

from jfwatch.state import bans, enforcement, history, offsets, outbox

SCHEMA = "\n".join(part.SCHEMA for part in (offsets, bans, history, outbox, enforcement))


def migrate(db: sqlite3.Connection) -> None:
    db.executescript(SCHEMA)
    columns = {row[1] for row in db.execute("PRAGMA table_info(bans)")}
    if "published" not in columns:  # state from before the feed journal: all published
        db.executescript("ALTER TABLE bans ADD COLUMN recorded TEXT; ALTER TABLE bans ADD "
                         "COLUMN published TEXT; UPDATE bans SET published=datetime('now');")
    if db.execute("SELECT 1 FROM sqlite_master WHERE name='offsets'").fetchone():
        # State from before offsets were kept by file identity: carry them over.
        db.executescript("INSERT OR IGNORE INTO file_offsets SELECT dev, ino, fingerprint, "
                         "offset, path, updated FROM offsets; DROP TABLE offsets;")
    db.commit()
