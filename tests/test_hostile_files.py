"""
Files and sockets an attacker (or an accident) puts in the daemon's way: a FIFO where a
log was, more files than descriptors, a flood of idle metrics connections, a symlink in
place of the feed.  None may stop the other sources, hide the newest log, or redirect
a write.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon_helper import DaemonRun, append, denied, start_daemon


def _metrics_port(run: DaemonRun) -> int:
    run.wait_for(lambda: "metrics_listening" in run.log_text(), what="metrics port")
    line = next(x for x in run.log_text().splitlines() if "metrics_listening" in x)
    return int(json.loads(line)["port"])


@pytest.mark.system
def test_fifo_swapped_in_stops_nothing(tmp_path: Path) -> None:
    """A followed log replaced by a FIFO (no writer): it is reported and skipped, the
    other file is still read, and SIGTERM ends the daemon in under 5 s."""
    run, log = start_daemon(tmp_path, name="log_20260501.log")
    other = log.parent / "log_20260502.log"
    other.write_text("")
    append(log, denied("before"))
    run.wait_users(Counter({"before": 1}))
    log.rename(log.parent / "old.txt")
    os.mkfifo(log)
    run.wait_for(lambda: "file_not_followed" in run.log_text() and "FIFO" in run.log_text(),
                 what="the FIFO reported")
    append(other, denied("after"))
    run.wait_users(Counter({"before": 1, "after": 1}))
    # A FIFO that matches the glob from the start is reported too, never opened.
    os.mkfifo(log.parent / "log_20260503.log")
    run.wait_for(lambda: "log_20260503.log" in run.log_text(), what="the new FIFO reported")
    append(other, denied("still"))
    run.wait_users(Counter({"before": 1, "after": 1, "still": 1}))
    began = time.monotonic()
    assert run.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5


@pytest.mark.system
def test_many_files_and_idle_connections_leave_the_newest_log_followed(tmp_path: Path) -> None:
    """
    1,100 older logs in the glob and 2,000 idle connections to the metrics port, with
    the daemon limited to 1,024 descriptors: the glob over the budget is reported, the
    newest log is followed, and a scrape still gets an answer.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    old = time.time() - 30 * 86400
    for day in range(1100):
        path = logs / f"log_2023{day:05d}.log"
        path.write_text("")
        os.utime(path, (old + day, old + day))
    newest = logs / "log_20260501.log"
    newest.write_text("")
    run = DaemonRun(tmp_path, metrics_port=0, max_open_fds=1024)
    run.start()
    port = _metrics_port(run)
    assert "too_many_files" in run.log_text()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    idle: list[socket.socket] = []
    try:
        for _ in range(2000):
            conn = socket.socket()
            conn.setblocking(False)
            conn.connect_ex(("127.0.0.1", port))
            idle.append(conn)
        time.sleep(1)
        append(newest, denied("newest"))
        run.wait_users(Counter({"newest": 1}), timeout=30)
        # A scrape gets through once the idle ones time out (5 s) or are refused.
        deadline = time.monotonic() + 30
        body = ""
        while not body and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    body = r.read().decode()
            except OSError:
                time.sleep(0.5)
        assert "jfwatch_files_skipped" in body
    finally:
        for conn in idle:
            conn.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert "Too many open files" not in run.log_text()
    assert run.stop() == 0


@pytest.mark.system
def test_symlinked_feed_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A symlink planted where the feed goes: the daemon refuses to start and says why;
    the link's target is not written."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "out").mkdir()
    target = tmp_path / "victim.conf"
    target.write_text("precious\n")
    (tmp_path / "out" / "bans.log").symlink_to(target)
    run = DaemonRun(tmp_path)
    result = subprocess.run([sys.executable, "-m", "jfwatch", "run", "--config", str(run.config)],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "symlink" in result.stderr and "bans.log" in result.stderr
    assert target.read_text() == "precious\n"


@pytest.mark.system
def test_state_feed_and_list_have_their_stated_modes(tmp_path: Path) -> None:
    """State 0600 (it holds alert texts), feed and list 0640, the feed there from the start."""
    run, log = start_daemon(tmp_path)
    feed = tmp_path / "out" / "bans.log"
    assert feed.exists() and feed.read_text() == ""
    now = datetime.now(UTC)
    ts = now.strftime("%Y-%m-%d %H:%M:%S.000")
    append(log, "".join(denied(f"u{i}", ip="203.0.113.5", ts=ts) for i in range(5)))
    run.wait_for(lambda: "BAN 203.0.113.5" in feed.read_text(), what="a ban")
    run.wait_for(lambda: (tmp_path / "out" / "banned.txt").exists(), what="the list")
    assert run.stop() == 0

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "state" / "state.db") == 0o600
    assert mode(feed) == 0o640
    assert mode(tmp_path / "out" / "banned.txt") == 0o640


@pytest.mark.system
def test_check_config_warns_about_readable_secrets(tmp_path: Path) -> None:
    """A config holding Apprise URLs that every user can read: valid, with a warning
    that names the file but never the secret."""
    cfg = tmp_path / "c.yml"
    cfg.write_text("notify:\n  urls: ['tgram://123:SECRETTOKEN/456']\n")
    cfg.chmod(0o644)
    result = subprocess.run([sys.executable, "-m", "jfwatch", "check-config", "--config", str(cfg)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0
    assert f"warning: {cfg} holds notification secrets" in result.stderr
    assert "SECRETTOKEN" not in result.stderr + result.stdout
    cfg.chmod(0o640)
    quiet = subprocess.run([sys.executable, "-m", "jfwatch", "check-config", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, check=False)
    assert "warning" not in quiet.stderr


def test_metrics_listen_on_ipv6_loopback() -> None:
    """``metrics.listen: "::1"`` serves (it used to raise an address-family error)."""
    from jfwatch.actions.metrics import Metrics

    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this host")
    metrics = Metrics()
    port = metrics.serve("::1", 0)
    try:
        with urllib.request.urlopen(f"http://[::1]:{port}/health", timeout=5) as resp:
            assert resp.read() == b"ok\n"
    finally:
        metrics.stop()


@pytest.mark.system
def test_event_export_is_never_written_through_a_link_nor_blocks_on_a_fifo(tmp_path: Path
                                                                          ) -> None:
    """The event export opened like the feed: a FIFO put in its place is reported (the
    reading thread never blocks on it, SIGTERM ends the daemon at once); a symlink planted
    there is refused and its target never written; once a regular file can be made
    again, nothing read meanwhile is lost."""
    run, log = start_daemon(tmp_path)
    append(log, denied("before"))
    run.wait_users(Counter({"before": 1}))
    export = run.events_file
    saved = export.read_bytes()
    export.unlink()
    os.mkfifo(export)
    append(log, denied("during-fifo"))
    run.wait_for(lambda: "event_export_write_failed" in run.log_text() and
                 "not a regular file" in run.log_text(), what="the FIFO reported")
    began = time.monotonic()
    assert run.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5
    export.unlink()
    target = tmp_path / "victim.conf"
    target.write_text("precious\n")
    export.symlink_to(target)
    run.start()
    run.wait_for(lambda: "symlink" in run.log_text(), what="the link refused")
    assert target.read_text() == "precious\n"
    export.unlink()
    export.write_bytes(saved)
    run.wait_users(Counter({"before": 1, "during-fifo": 1}), timeout=30)
    assert target.read_text() == "precious\n"
    assert run.stop() == 0


@pytest.mark.system
def test_a_descriptor_limit_below_max_open_files_leaves_the_newest_log_read(tmp_path: Path
                                                                          ) -> None:
    """RLIMIT_NOFILE 256 and max_open_files 256 with 300 matching files and the event
    export on: the budget comes from the real limit (room left for the state and
    sockets), the newest file is followed and its attack banned, the rest reported,
    and SIGTERM still ends the daemon at once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    old = time.time() - 30 * 86400
    for day in range(300):
        path = logs / f"log_2024{day:04d}.log"
        path.write_text("")
        os.utime(path, (old + day, old + day))
    newest = logs / "log_20260501.log"
    newest.write_text("")
    run = DaemonRun(tmp_path, max_open_fds=256, extra="max_open_files: 256\n")
    run.start()
    assert "too_many_files" in run.log_text()
    report = next(json.loads(x) for x in run.log_text().splitlines() if "too_many_files" in x)
    assert report["following"] < 256 - 32 and report["skipped"] >= 300 - report["following"]
    now = datetime.now(UTC)
    append(newest, "".join(denied(f"u{i}", ip="203.0.113.90",
                                  ts=now.strftime("%Y-%m-%d %H:%M:%S.000")) for i in range(5)))
    feed = tmp_path / "out" / "bans.log"
    run.wait_for(lambda: "BAN 203.0.113.90" in feed.read_text(), timeout=20, what="the ban")
    text = run.log_text()
    assert "Too many open files" not in text and "out of file descriptors" not in text
    assert "event_export_write_failed" not in text
    began = time.monotonic()
    assert run.stop() == 0
    assert time.monotonic() - began < 5
