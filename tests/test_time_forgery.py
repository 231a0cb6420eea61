"""
Event time is attacker input: a forged or wrongly clocked line dated far ahead must not
lift bans, ban for decades, or move windows ahead of the wall clock (daemon), nor of the
newest input's modification time (replay).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch.detect.decisions import Ban, Unban
from jfwatch.detect.detector import Detector, DetectorSettings
from jfwatch.detect.memory_state import MemoryState
from jfwatch.detect.rules import load_rules
from jfwatch.events import Event, EventKind

from daemon_helper import append, denied, start_daemon

CONTEXT = "Jellyfin.Server.Implementations.Users.UserManager"
# A username holding a newline and a 2099 header: in the file sink its second half
# becomes a physical line of its own, dated 2099 (Serilog escapes the quote as \").
FORGED_NEWLINE = (f'[{{now}} +00:00] [INF] [12] {CONTEXT}: Authentication request for "a\n'
                  f'[2099-01-01 00:00:00.000 +00:00] [INF] [12] {CONTEXT}: Authentication '
                  f'request for \\"b" has been denied (IP: "198.51.100.66").\n')
FORGED_PLAIN = (f'[2099-01-01 00:00:00.000 +00:00] [INF] [12] {CONTEXT}: Authentication '
                f'request for "c" has been denied (IP: "198.51.100.67").\n')


def _stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}"


def _fail(ip: str, at: datetime, user: str = "u") -> Event:
    return Event(time=at, source="jellyfin", kind=EventKind.AUTH_FAILURE, origin="jellyfin.denied",
                 service="jellyfin", ip=ipaddress.ip_address(ip), user=user)


def test_detector_never_runs_ahead_of_its_clock() -> None:
    """A 2099 event lifts no ban, bans for the rule's duration from now, and is counted."""
    now = datetime.now(UTC)
    det = Detector(load_rules([]), DetectorSettings(), MemoryState(), clock=lambda: now)
    out = []
    for i in range(5):
        out += det.feed(_fail("203.0.113.50", now - timedelta(seconds=10 - i), user=f"u{i}"))
    bans = [d for d in out if isinstance(d, Ban)]
    assert [b.ip for b in bans] == ["203.0.113.50"]
    later = []
    for i in range(5):
        later += det.feed(_fail("198.51.100.9", datetime(2099, 1, 1, tzinfo=UTC), user=f"x{i}"))
    assert not [d for d in later if isinstance(d, Unban)]
    new_bans = [d for d in later if isinstance(d, Ban)]
    assert [b.ip for b in new_bans] == ["198.51.100.9"]
    assert all(b.time == now and b.until <= now + timedelta(days=1) for b in new_bans)
    assert det.future_events == 5
    # A little ahead (clock skew within the tolerance) is taken at now, and not counted.
    det.feed(_fail("198.51.100.10", now + timedelta(minutes=1)))
    assert det.future_events == 5
    # Only the wall clock lifts bans: asked with a 2099 time, expiry still uses the clock.
    assert det.expire(datetime(2099, 1, 1, tzinfo=UTC)) == []


@pytest.mark.system
def test_forged_future_lines_leave_every_ban_in_place(tmp_path: Path) -> None:
    """
    The attack from the issue against the real daemon: a ban is active, then a username
    with a newline and a 2099 header, and a plain 2099 line.  No UNBAN, the list keeps
    the address, and the attacker's own ban ends within the rule's duration (7 days),
    not in 2099.
    """
    run, log = start_daemon(tmp_path)
    now = datetime.now(UTC)
    append(log, "".join(denied(f"u{i}", ip="203.0.113.50", ts=_stamp(now)) for i in range(5)))
    feed = tmp_path / "out" / "bans.log"
    run.wait_for(lambda: feed.exists() and "BAN 203.0.113.50" in feed.read_text(),
                 what="the first ban")
    append(log, FORGED_NEWLINE.format(now=_stamp(datetime.now(UTC))) + FORGED_PLAIN)
    run.wait_for(lambda: sum(1 for e in run.events() if e["time"].startswith("2099")) >= 3,
                 what="the forged lines read")
    run.wait_for(lambda: "BAN 198.51.100.66" in feed.read_text(), what="the injector's ban")
    assert run.stop() == 0
    text = feed.read_text()
    assert "UNBAN" not in text
    assert "203.0.113.50" in (tmp_path / "out" / "banned.txt").read_text().split()
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        rows = dict(db.execute("SELECT ip, until FROM bans").fetchall())
    assert "203.0.113.50" in rows
    limit = datetime.now(UTC) + timedelta(days=7, minutes=1)
    assert all(datetime.fromisoformat(until) <= limit for until in rows.values()), rows
    assert Counter(e["kind"] for e in run.events())["injection_suspected"] >= 2


@pytest.mark.system
def test_replay_takes_no_line_later_than_its_file(tmp_path: Path) -> None:
    """Replay keeps event time, but a line dated after its file was written is taken at
    the file's modification time: the 2099 line lifts no ban and bans for days, not years."""
    t = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    log = tmp_path / "log_20260301.log"
    log.write_text("".join(denied(f"u{i}", ip="203.0.113.50", ts=_stamp(t + timedelta(seconds=i)))
                           for i in range(5)) + FORGED_PLAIN * 5)
    written = t + timedelta(minutes=5)
    os.utime(log, (written.timestamp(), written.timestamp()))
    out = subprocess.run([sys.executable, "-m", "jfwatch", "replay", str(log)],
                         capture_output=True, text=True, check=True, timeout=120)
    decisions = [json.loads(line) for line in out.stdout.splitlines()]
    assert not [d for d in decisions if d["type"] == "unban"]
    bans = {d["ip"]: datetime.fromisoformat(d["until"]) for d in decisions if d["type"] == "ban"}
    assert set(bans) == {"203.0.113.50", "198.51.100.67"}
    assert bans["198.51.100.67"] <= written + timedelta(days=1)
    assert "Future-dated: 5 event(s)" in out.stderr


def test_past_dated_events_are_banned_from_now_for_the_full_duration() -> None:
    """200 attempts dated 2020 (a forged header, a lagging clock, a backfill): one alert,
    one ban that starts now and lasts the rule's full duration, and no phantom bans in
    the history to escalate the next real one."""
    now = datetime.now(UTC)
    state = MemoryState()
    det = Detector(load_rules([]), DetectorSettings(decide_on_clock=True), state,
                   clock=lambda: now)
    past = datetime(2020, 1, 1, 3, 0, tzinfo=UTC)
    out = []
    for i in range(200):
        out += det.feed(_fail("203.0.113.60", past + timedelta(seconds=20 * i), user="alice"))
    bans = [d for d in out if isinstance(d, Ban)]
    assert [(b.ip, b.time, b.until) for b in bans] == \
        [("203.0.113.60", now, now + timedelta(hours=4))]  # brute-force-ip: 4h
    assert not [d for d in out if isinstance(d, Unban)]
    assert state.ban_count("203.0.113.60") == 1
    alerts = [d for d in out if not isinstance(d, Ban | Unban)]
    assert len(alerts) == 1 and alerts[0].ban_until == now + timedelta(hours=4)


@pytest.mark.system
def test_a_lagging_clock_still_bans_from_now(tmp_path: Path) -> None:
    """The real daemon reading lines dated five hours ago (a console log read with a
    wrong timezone) and lines dated 2020 behind a newline in a username: both attackers
    are banned for the full four hours from now, never "until" a past time."""
    run, log = start_daemon(tmp_path)
    lagging = datetime.now(UTC) - timedelta(hours=5)
    append(log, "".join(denied(f"u{i}", ip="203.0.113.61", ts=_stamp(lagging))
                        for i in range(5)))
    feed = tmp_path / "out" / "bans.log"
    run.wait_for(lambda: feed.exists() and "BAN 203.0.113.61" in feed.read_text(),
                 what="the first ban")
    # Lines read as they were written but dated hours before: reported, with the lag.
    run.wait_for(lambda: '"clock_lags"' in run.log_text(), what="the lag reported")
    report = next(json.loads(line) for line in run.log_text().splitlines()
                  if '"clock_lags"' in line)
    assert 4.9 * 3600 < report["lag_seconds"] < 5.1 * 3600
    forged = (f'[{{now}} +00:00] [INF] [12] {CONTEXT}: Authentication request for "a\n'
              f'[2020-01-01 00:00:0{{i}}.000 +00:00] [INF] [12] {CONTEXT}: Authentication '
              f'request for \\"b{{i}}" has been denied (IP: "198.51.100.68").\n')
    append(log, "".join(forged.format(now=_stamp(datetime.now(UTC)), i=i) for i in range(5)))
    run.wait_for(lambda: feed.exists() and "BAN 203.0.113.61" in feed.read_text() and
                 "BAN 198.51.100.68" in feed.read_text(), what="both bans")
    assert run.stop() == 0
    text = feed.read_text()
    assert "UNBAN" not in text
    durations = [int(line.split("duration=")[1].split("s")[0]) for line in text.splitlines()]
    assert all(4 * 3600 - 120 <= d <= 4 * 3600 for d in durations), text
    with sqlite3.connect(tmp_path / "state" / "state.db") as db:
        rows = db.execute("SELECT ip, since, until FROM bans").fetchall()
    assert {ip for ip, _, _ in rows} == {"203.0.113.61", "198.51.100.68"}
    for _, since, until in rows:
        assert datetime.now(UTC) - datetime.fromisoformat(since) < timedelta(minutes=2)
        assert datetime.fromisoformat(until) > datetime.now(UTC) + timedelta(hours=3, minutes=50)
