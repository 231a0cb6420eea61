"""
The state file's connection: one SQLite connection per thread, WAL so that the outbox
and enforcement workers and the pipeline do not block each other; created private
(0600) and migrated to the current schema when opened.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path


class StateUnusable(Exception):
    """The state file cannot be opened, read or written (damaged, read-only, missing rights)."""


class Database:
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
            from jfwatch.state.schema import migrate  # it imports every owner module

            migrate(self.db)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise StateUnusable(f"{self.path}: {exc}") from exc

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
