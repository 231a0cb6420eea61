"""
The embedded SQLite state: read offsets, bans and their history, first-seen values and
the alert outbox.  One connection per thread; WAL so the outbox worker and the pipeline
do not block each other.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

_SCHEMA = """
CREATE TABLE IF NOT EXISTS file_offsets (
    dev INTEGER, ino INTEGER, fingerprint BLOB NOT NULL, offset INTEGER NOT NULL,
    path TEXT NOT NULL, updated TEXT, PRIMARY KEY (dev, ino));
CREATE TABLE IF NOT EXISTS sinks (name TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS bans (
    ip TEXT PRIMARY KEY, rule TEXT NOT NULL, since TEXT NOT NULL, until TEXT NOT NULL,
    level INTEGER NOT NULL, recorded TEXT, published TEXT);
CREATE INDEX IF NOT EXISTS bans_until ON bans (until);
CREATE TABLE IF NOT EXISTS ban_history (
    ip TEXT PRIMARY KEY, count INTEGER NOT NULL, last TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS first_seen (
    rule TEXT, key TEXT, value TEXT, time TEXT, PRIMARY KEY (rule, key, value));
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
CREATE TABLE IF NOT EXISTS enforcements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, enforcer TEXT NOT NULL, action TEXT NOT NULL,
    ip TEXT NOT NULL, rule TEXT NOT NULL, until TEXT, requested TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, accepted TEXT,
    result TEXT, remote_id TEXT, last_error TEXT, UNIQUE (enforcer, action, ip, until));
CREATE INDEX IF NOT EXISTS enforcements_due ON enforcements (enforcer, accepted, id);
CREATE TABLE IF NOT EXISTS known_addresses (
    ip TEXT PRIMARY KEY, user TEXT NOT NULL, last TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS api_cursors (
    source TEXT PRIMARY KEY, last_id INTEGER NOT NULL, last_date TEXT, updated TEXT);
"""


class StateUnusable(Exception):
    """The state file cannot be opened, read or written (damaged, read-only, missing rights)."""


@dataclass(frozen=True, slots=True)
class SavedOffset:
    """How far one file was read (``path``: its name when it was read)."""

    dev: int
    ino: int
    fingerprint: bytes
    offset: int
    path: str


@dataclass(frozen=True, slots=True)
class BanRow:
    ip: str
    rule: str
    since: datetime
    until: datetime
    level: int


class Enforcement(NamedTuple):
    """One enforcer's request for one ban: when it was asked and what it answered."""

    enforcer: str
    requested: str
    accepted: str | None
    result: str | None
    attempts: int
    last_error: str | None


class StateStore:
    """Access to the state file; ``":memory:"`` gives a throw-away store (replay)."""

    def __init__(self, path: str | Path, *, read_only: bool = False) -> None:
        """Open (creating) the state; StateUnusable if it cannot be read and written.
        ``read_only``: open an existing state for reading only, creating nothing."""
        self.path = str(path)
        self.read_only = read_only
        self._local = threading.local()
        self._memory: sqlite3.Connection | None = None
        if read_only:
            try:
                self.db.execute("SELECT 1 FROM bans LIMIT 1")
            except sqlite3.Error as exc:
                self.close()
                raise StateUnusable(f"{self.path}: {exc}") from exc
            return
        try:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                _private(self.path)
            self._create()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StateUnusable(f"{self.path}: {exc}") from exc

    def _create(self) -> None:
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(bans)")}
        if "published" not in columns:  # state from before the feed journal: all published
            self.db.executescript("ALTER TABLE bans ADD COLUMN recorded TEXT; ALTER TABLE bans "
                                  "ADD COLUMN published TEXT; UPDATE bans SET published="
                                  "datetime('now');")
        if self.db.execute("SELECT 1 FROM sqlite_master WHERE name='offsets'").fetchone():
            # State from before offsets were kept by file identity: carry them over.
            self.db.executescript("INSERT OR IGNORE INTO file_offsets SELECT dev, ino, "
                                  "fingerprint, offset, path, updated FROM offsets; "
                                  "DROP TABLE offsets;")
        self.db.commit()

    @property
    def db(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            if self._memory is None:
                self._memory = sqlite3.connect(":memory:", check_same_thread=False)
            return self._memory
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self.read_only:
                conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            else:
                conn = sqlite3.connect(self.path, timeout=30)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def transaction(self) -> sqlite3.Connection:
        """``with store.transaction() as db:`` commits at the end, or rolls back on any
        exception (sqlite3's own context manager: cheaper than a generator-based one,
        and a replay records thousands of bans)."""
        return self.db

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- offsets ----------------------------------------------------------------
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

    # -- bans -------------------------------------------------------------------
    def active_ban(self, ip: str) -> BanRow | None:
        row = self.db.execute("SELECT ip, rule, since, until, level FROM bans WHERE ip=?",
                              (ip,)).fetchone()
        return None if row is None else _ban(row)

    def bans_active(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM bans").fetchone()[0])

    def outbox_waiting(self) -> int:
        """Alerts not yet delivered nor given up."""
        return int(self.db.execute("SELECT COUNT(*) FROM outbox WHERE delivered IS NULL AND "
                                   "failed IS NULL").fetchone()[0])

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
                       "count=count+1, last=excluded.last", (ip, since.isoformat()))

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

    def ban_count(self, ip: str) -> int:
        row = self.db.execute("SELECT count FROM ban_history WHERE ip=?", (ip,)).fetchone()
        return int(row[0]) if row else 0

    # -- first seen ----------------------------------------------------------------
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

    # -- housekeeping -------------------------------------------------------------
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


def _private(path: str) -> None:
    """
    The state holds offsets, bans and queued alert texts: readable by this user only
    (0600).  Created before SQLite opens it (SQLite gives its -wal and -shm files the
    database's mode), refusing a symlink in its place.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _ban(row: tuple[str, str, str, str, int]) -> BanRow:
    return BanRow(row[0], row[1], datetime.fromisoformat(row[2]), datetime.fromisoformat(row[3]),
                  int(row[4]))
