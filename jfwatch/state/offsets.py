"""How far each input was read: files by identity, API sources by cursor, and the length of
the files jfwatch writes with them (the event export), committed together."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from jfwatch.state.database import Database

SCHEMA = """
CREATE TABLE IF NOT EXISTS file_offsets (
    dev INTEGER, ino INTEGER, fingerprint BLOB NOT NULL, offset INTEGER NOT NULL,
    path TEXT NOT NULL, updated TEXT, PRIMARY KEY (dev, ino));
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS api_cursors (
    source TEXT PRIMARY KEY, last_id INTEGER NOT NULL, last_date TEXT, updated TEXT);
"""


@dataclass(frozen=True, slots=True)
class SavedOffset:
    """How far one file was read (``path``: its name when it was read)."""

    dev: int
    ino: int
    fingerprint: bytes
    offset: int
    path: str



class Offsets(Database):
    # Kept by file identity (device, inode, first bytes), not by name: a file renamed by
    # a rotation keeps its offset, and a new file under the old name starts afresh.
    def offsets(self) -> list[SavedOffset]:
        rows = self.db.execute("SELECT dev, ino, fingerprint, offset, path FROM file_offsets")
        return [SavedOffset(int(r[0]), int(r[1]), bytes(r[2]), int(r[3]), r[4]) for r in rows]

    def last_commit_time(self) -> float | None:
        """When an offset was last committed (epoch seconds): how long jfwatch was away."""
        row = self.db.execute("SELECT MAX(updated) FROM file_offsets").fetchone()
        if not row or not row[0]:
            return None
        return datetime.fromisoformat(f"{row[0]}+00:00").timestamp()

    def offset_of(self, dev: int, ino: int, fingerprint: bytes) -> int | None:
        """How far the file was read, if it was (a shorter fingerprint, taken while the
        file was shorter, is a prefix of the longer one)."""
        row = self.db.execute("SELECT fingerprint, offset FROM file_offsets WHERE dev=? AND "
                              "ino=?", (dev, ino)).fetchone()
        if row is None:
            return None
        short, long_ = sorted((bytes(row[0]), fingerprint), key=len)
        return int(row[1]) if long_.startswith(short) else None

    def save_offsets(self, read: list[SavedOffset], sinks: dict[str, int],
                     cursors: dict[str, tuple[int, str | None]] | None = None) -> None:
        """Commit read positions (of files, of API sources) together with the sizes of the
        files they produced."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO file_offsets VALUES (?,?,?,?,?,"
                           "datetime('now'))",
                           [(r.dev, r.ino, r.fingerprint, r.offset, r.path) for r in read])
            db.executemany("INSERT OR REPLACE INTO api_cursors VALUES (?,?,?,datetime('now'))",
                           [(name, *c) for name, c in (cursors or {}).items()])
            db.executemany("INSERT OR REPLACE INTO sinks VALUES (?,?)", sinks.items())

    def cursor(self, source: str) -> tuple[int, str | None] | None:
        """An API source's last committed entry: its id and date."""
        row = self.db.execute("SELECT last_id, last_date FROM api_cursors WHERE source=?",
                              (source,)).fetchone()
        return None if row is None else (int(row[0]), row[1])

    def forget_offset(self, dev: int, ino: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM file_offsets WHERE dev=? AND ino=?", (dev, ino))

    def sink_size(self, name: str) -> int | None:
        row = self.db.execute("SELECT size FROM sinks WHERE name=?", (name,)).fetchone()
        return None if row is None else int(row[0])
