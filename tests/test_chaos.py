"""
Exactly once through chaos: two sources (daily Jellyfin files, and a log renamed away by
rotation, also while the daemon is down, and files created and renamed away entirely while
it is down), failures and held successes, and at least 20 SIGKILLs at random moments.  In
the end every line's event is in the export exactly once, and every ban the state recorded
is in the feed exactly once.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon_helper import DaemonRun, append, denied

pytestmark = pytest.mark.system

SUCCEEDED = ("[{ts} +00:00] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: "
             'Authentication request for "{user}" has succeeded.\n')


class Writer:
    """Appends numbered lines to both sources and rotates them, under one lock."""

    def __init__(self, work: Path, rng: random.Random) -> None:
        self.daily_dir, self.app_dir = work / "logs" / "jf", work / "logs" / "app"
        self.daily_dir.mkdir(parents=True)
        self.app_dir.mkdir(parents=True)
        self.day, self.rotations, self.rng = 1, 0, rng
        self.lock = threading.Lock()
        self.app = self.app_dir / "app.log"
        self.app.write_text("")
        self.daily().write_text("")

    def daily(self) -> Path:
        return self.daily_dir / f"log_202605{self.day:02d}.log"

    def line(self, i: int) -> str:
        now = datetime.now(UTC)
        ts = f"{now:%Y-%m-%d %H:%M:%S}.{now.microsecond // 1000:03d}"
        if self.rng.random() < 0.1:  # held by the parser for the TOTP plugin's verdict
            return SUCCEEDED.format(ts=ts, user=f"m{i:05d}")
        return denied(f"m{i:05d}", ip=f"203.0.113.{i % 40}", ts=ts)

    def write(self, i: int) -> None:
        with self.lock:
            target = self.daily() if i % 2 else self.app
            append(target, self.line(i))
            if i % 1000 == 999:
                self.day += 1  # tomorrow's file
                self.daily().write_text("")

    def unseen_file(self, tag: str, lines: int) -> list[str]:
        """While the daemon is down: a new app.log written and renamed away before it can
        ever see it.  The users of its lines."""
        users = [f"{tag}-{j}" for j in range(lines)]
        with self.lock:
            self._shift()
            self.app.write_text("".join(denied(u, ip="198.51.100.7") for u in users))
            self._shift()
            self.app.write_text("")
        return users

    def rotate_app(self) -> None:
        """Rotate the app log as logrotate does without ``dateext``: every app.log.N moves
        to app.log.N+1, app.log to app.log.1 (so each name is reused by the file read
        under the name before it), and a new app.log is started."""
        with self.lock:
            self._shift()
            self.app.write_text("")

    def _shift(self) -> None:
        self.rotations += 1
        for n in range(self.rotations - 1, 0, -1):
            older = self.app_dir / f"app.log.{n}"
            if older.exists():
                older.rename(self.app_dir / f"app.log.{n + 1}")
        self.app.rename(self.app_dir / "app.log.1")


def test_sigkills_and_rotations_lose_and_repeat_nothing(tmp_path: Path) -> None:
    rng = random.Random(20261130)
    writer = Writer(tmp_path, rng)
    run = DaemonRun(tmp_path)
    run.config.write_text(
        "state_dir: state\nsources:\n"
        "  - {path: logs/jf/log_*.log, format: jellyfin, start: beginning}\n"
        "  - {path: logs/app/app.log, format: jellyfin, start: beginning}\n"
        "ban_feed: {path: out/bans.log, list_path: out/banned.txt}\n"
        "events_file: out/events.jsonl\nmetrics: {enabled: false}\n")
    total, done = 6000, threading.Event()

    def write_all() -> None:
        for i in range(total):
            writer.write(i)
            if i % 25 == 0:
                time.sleep(0.1)  # about 250 lines a second, over about 25 s
            if i % 1500 == 1499:
                writer.rotate_app()
        done.set()

    run.start()
    thread = threading.Thread(target=write_all)
    thread.start()
    kills, unseen = 0, []
    while not done.is_set() or kills < 20:
        time.sleep(rng.uniform(0.2, 1.0))
        run.stop(signal.SIGKILL)
        kills += 1
        if kills % 5 == 0:
            writer.rotate_app()  # rotated while the daemon is down
        if kills % 7 == 0:  # created and rotated away while it is down, never seen
            unseen += writer.unseen_file(f"x{kills}", 3)
        run.start()
    thread.join(timeout=120)
    assert done.is_set() and kills >= 20 and writer.rotations >= 6

    assert len(unseen) >= 6
    run.wait_users(Counter([*(f"m{i:05d}" for i in range(total)), *unseen]), timeout=90)
    assert run.stop() == 0
    feed = (tmp_path / "out" / "bans.log").read_text().splitlines()
    written = Counter(line.split()[3] for line in feed if " BAN " in line)
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        recorded = Counter(dict(db.execute("SELECT ip, count FROM ban_history")))
    assert recorded, "no ban at all: the test proves nothing about the feed"
    assert written == recorded
