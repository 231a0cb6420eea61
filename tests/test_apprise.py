"""
Real Apprise delivering to a local HTTP receiver (``json://127.0.0.1:PORT``): payload,
retries while the receiver is down, exactly-once delivery across a daemon restart, and
a bounded number of pushes under a flood while every ban still reaches the feed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemon_helper import append, start_daemon
from http_receiver import Receiver, free_port

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)

UM = "Jellyfin.Server.Implementations.Users.UserManager"


def _denied(t: datetime, user: str, ip: str) -> str:
    return (f"[{t:%Y-%m-%d %H:%M:%S}.000 +00:00] [INF] [9] {UM}: Authentication request for "
            f'"{user}" has been denied (IP: "{ip}").\n')


def _brute(ip: str, start: datetime, n: int = 5) -> str:
    return "".join(_denied(start + timedelta(seconds=i), "victim", ip) for i in range(n))


def _config(port: int) -> str:
    return ("notify:\n  urls: ['json://jf:SECRETPASS@127.0.0.1:" + str(port) + "/hook']\n"
            "  retry_max: 1s\n")


def test_delivery_retry_and_exactly_once_across_restart(tmp_path: Path) -> None:
    port = free_port()
    receiver = Receiver(port)
    run, log = start_daemon(tmp_path, extra=_config(port))
    now = datetime.now(UTC) - timedelta(minutes=2)
    # Receiver down: two attackers' alerts wait in the outbox and are retried.
    append(log, _brute("203.0.113.21", now) + _brute("203.0.113.22", now))
    run.wait_for(lambda: "notification_failed" in run.log_text(), what="failed send")
    assert run.stop() == 0  # restart while alerts are undelivered
    run.start()
    append(log, _brute("203.0.113.23", now + timedelta(seconds=30)))
    receiver.start()
    try:
        run.wait_for(lambda: {m["title"] for m in receiver.messages} >= {
            "[jellyfin] brute-force-ip: 203.0.113.21", "[jellyfin] brute-force-ip: 203.0.113.22",
            "[jellyfin] brute-force-ip: 203.0.113.23"}, timeout=30, what="delivery")
        assert run.stop() == 0
        count = len(receiver.messages)
        run.start()  # a restart must not re-send what was delivered
        run.wait_for(lambda: len(run.events()) == 15, what="events")
        assert run.stop() == 0
    finally:
        receiver.stop()
    titles = [m["title"] for m in receiver.messages]
    assert count == len(titles)
    assert len(titles) == len(set(titles)), f"duplicate deliveries: {titles}"
    brute = next(m for m in receiver.messages if m["title"].endswith("203.0.113.21"))
    assert "Address: 203.0.113.21" in brute["message"]
    assert "Count: 5 within 10 min" in brute["message"]
    assert "Banned until" in brute["message"]
    assert brute["type"] == "failure"
    assert all(a and a.startswith("Basic ") for a in receiver.auth)
    assert "SECRETPASS" not in run.log_text()


def test_flood_is_folded_and_every_ban_reaches_the_feed(tmp_path: Path) -> None:
    """10,000 attacking addresses within a minute: pushes stay bounded, bans all land."""
    port = free_port()
    receiver = Receiver(port)
    receiver.start()
    run, log = start_daemon(tmp_path, extra=_config(port))
    start = datetime.now(UTC) - timedelta(minutes=1)
    attackers = [f"198.{18 + (i >> 16)}.{(i >> 8) % 256}.{i % 256}" for i in range(10_000)]
    chunks = []
    for n, ip in enumerate(attackers):
        chunks.append(_brute(ip, start + timedelta(milliseconds=6 * n), n=5))
    append(log, "".join(chunks))
    feed = tmp_path / "out" / "bans.log"
    try:
        run.wait_for(lambda: feed.exists() and feed.read_text().count(" BAN ") >= 10_000,
                     timeout=300, what="10,000 bans")
        assert run.stop() == 0
    finally:
        receiver.stop()
    banned = {line.split(" BAN ")[1].split()[0] for line in feed.read_text().splitlines()
              if " BAN " in line}
    assert set(attackers) == banned
    # Bound: rules x (max_per_rule_per_hour + 1 digest, sent when the hour is over) per
    # hour; 13 rules, 10 per hour.
    assert len(receiver.messages) <= 13 * 11


def test_notify_test_reports_each_target(tmp_path: Path) -> None:
    """``jfwatch notify-test``: one reachable, one unreachable target; each reported."""
    up, down = free_port(), free_port()
    receiver = Receiver(up)
    receiver.start()
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"notify:\n  urls: ['json://127.0.0.1:{up}/', "
                   f"'json://user:TOPSECRET@127.0.0.1:{down}/']\n")
    try:
        result = subprocess.run([sys.executable, "-m", "jfwatch", "notify-test", "--config",
                                 str(cfg)], capture_output=True, text=True, check=False,
                                timeout=120)
    finally:
        receiver.stop()
    assert result.returncode == 1
    assert "target 1 (JSON): delivered" in result.stdout
    assert "target 2 (JSON): FAILED: " in result.stdout  # and why, in Apprise's words
    assert "rror" in result.stdout.split("target 2 (JSON): FAILED: ", 1)[1]
    assert "TOPSECRET" not in result.stdout + result.stderr
    assert [m["title"] for m in receiver.messages] == ["[jellyfin] jfwatch test"]


def test_each_target_gets_each_alert_once_when_one_is_down_a_while(tmp_path: Path) -> None:
    """Two targets, the second down at first and through a daemon restart: each alert
    reaches each exactly once; the healthy one never gets an alert twice."""
    up_port, down_port = free_port(), free_port()
    up, down = Receiver(up_port), Receiver(down_port)
    up.start()
    extra = (f"notify:\n  urls: ['json://127.0.0.1:{up_port}/a', "
             f"'json://127.0.0.1:{down_port}/b']\n  retry_max: 1s\n")
    run, log = start_daemon(tmp_path, extra=extra)
    start = datetime.now(UTC) - timedelta(minutes=1)
    attackers = [f"203.0.113.{120 + i}" for i in range(4)]
    try:
        append(log, "".join(_brute(ip, start + timedelta(seconds=10 * n))
                            for n, ip in enumerate(attackers[:2])))
        run.wait_for(lambda: len(up.messages) >= 2, what="the healthy target's first alerts")
        assert run.stop() == 0
        run.start()
        append(log, "".join(_brute(ip, start + timedelta(seconds=30 + 10 * n))
                            for n, ip in enumerate(attackers[2:])))
        run.wait_for(lambda: len(up.messages) >= 4, what="the healthy target's other alerts")
        down.start()  # the second target comes back: it gets what it missed, once
        run.wait_for(lambda: len(down.messages) >= 4, timeout=30, what="the late target's alerts")
        time.sleep(2.5)  # more retries would show now
        assert run.stop() == 0
    finally:
        up.stop()
        down.stop()
    for receiver in (up, down):
        titles = [m["title"] for m in receiver.messages]
        assert sorted(titles) == sorted(set(titles)), f"sent twice: {titles}"
        assert {t.rsplit(" ", 1)[1] for t in titles} == set(attackers)
    assert '"notification_failed"' in run.log_text() and "target 2 (JSON)" in run.log_text()
