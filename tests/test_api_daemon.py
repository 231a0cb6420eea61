"""
``jfwatch run`` with a ``jellyfin_api`` source against a local server that answers like
Jellyfin: bans and new-country alerts from Activity Log entries, every entry exported
once across a SIGKILL in the middle of paging, an outage seen in source_readable, the
key never written anywhere, and one authentication in both the log and the API counted
once.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from activity_server import ActivityLogServer
from daemon_helper import DaemonRun, append
from http_receiver import free_port

pytestmark = pytest.mark.system
KEY = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


@pytest.fixture
def server() -> Iterator[ActivityLogServer]:
    fake = ActivityLogServer(KEY)
    fake.clock = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    fake.start()
    yield fake
    fake.stop()


def _daemon(tmp_path: Path, fake: ActivityLogServer, *, page_size: int = 10,
            metrics_port: int | None = None) -> DaemonRun:
    (tmp_path / "logs").mkdir(exist_ok=True)
    key_file = tmp_path / "jellyfin.key"
    key_file.write_text(KEY + "\n")
    return DaemonRun(tmp_path, metrics_port=metrics_port, extra=(
        f"jellyfin_api:\n  - {{url: '{fake.url}', api_key_file: jellyfin.key, "
        f"poll_interval: 1s, start: beginning, page_size: {page_size}, timeout: 2s}}\n"))


def _api_ids(run: DaemonRun) -> Counter[int]:
    """Activity Log ids in the event export (one per entry: no entry here is flagged)."""
    return Counter(json.loads(e["excerpt"])["Id"] for e in run.events()
                   if e["source"] == "jellyfin_activity")


def test_bans_and_new_country_alerts_from_the_activity_log(tmp_path: Path,
                                                          server: ActivityLogServer) -> None:
    server.add("AuthenticationSucceeded", "alice", "193.99.144.80")  # DE: her baseline
    for n in range(6):
        server.add("AuthenticationFailed", f"guess{n}", "8.8.8.8")
    server.add("AuthenticationSucceeded", "alice", "81.2.69.160")  # GB: new
    run = _daemon(tmp_path, server)
    run.start()
    try:
        run.wait_for(lambda: len(_api_ids(run)) == 8, what="8 entries exported")
        run.wait_for(lambda: "8.8.8.8" in _read(tmp_path / "out" / "bans.log"), what="ban")
        events = run.events()
        countries = {(e["user"], e["country"]) for e in events if e["kind"] == "auth_success"}
        assert countries == {("alice", "DE"), ("alice", "GB")}
        alerts = [json.loads(line) for line in run.log_text().splitlines()
                  if '"alert"' in line]
        assert [(a["user"], a["ip"], a["country"]) for a in alerts
                if a["rule"] == "new-country-for-user"] == [("alice", "81.2.69.160", "GB")]
    finally:
        run.stop()
    assert KEY not in run.log_text()
    assert KEY not in (tmp_path / "out" / "events.jsonl").read_text()


def test_every_entry_once_across_a_sigkill_in_the_middle_of_paging(
        tmp_path: Path, server: ActivityLogServer) -> None:
    for n in range(300):
        server.add("AuthenticationFailed", f"user{n % 40}", f"203.0.113.{n % 200}")
    server.delay = 0.03  # 30 pages take about a second
    run = _daemon(tmp_path, server)
    run.start()
    run.wait_for(lambda: len(_api_ids(run)) >= 40, timeout=30, what="some pages")
    run.stop(signal.SIGKILL)
    assert len(_api_ids(run)) < 300, "the kill came after the walk: nothing tested"
    for n in range(20):  # more while it was down
        server.add("AuthenticationFailed", "later", f"198.51.100.{n}")
    run.start()
    try:
        run.wait_for(lambda: len(_api_ids(run)) >= 320, timeout=60, what="all 320 entries")
    finally:
        run.stop()
    ids = _api_ids(run)
    assert sorted(ids) == list(range(1, 321)) and set(ids.values()) == {1}


def test_an_outage_is_reported_and_reading_resumes(tmp_path: Path,
                                                   server: ActivityLogServer) -> None:
    server.add("AuthenticationFailed", "x", "203.0.113.1")
    run = _daemon(tmp_path, server, metrics_port=free_port())  # status finds it there
    run.start()
    try:
        port = _metrics_port(run)
        run.wait_for(lambda: len(_api_ids(run)) == 1, what="first entry")
        run.wait_for(lambda: _readable(port) == 1.0, what="readable")
        server.stop()
        run.wait_for(lambda: _readable(port) == 0.0, timeout=20, what="unreadable")
        assert "source_unavailable" in run.log_text()
        server.add("AuthenticationFailed", "y", "203.0.113.2")
        server.start()
        run.wait_for(lambda: len(_api_ids(run)) == 2, timeout=30, what="entry after outage")
        run.wait_for(lambda: _readable(port) == 1.0, what="readable again")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert KEY not in resp.read().decode()
        status = subprocess.run([sys.executable, "-m", "jfwatch", "status", "--config",
                                 str(run.config)], capture_output=True, text=True, timeout=60,
                                check=False, cwd=tmp_path)
        assert "activity log jellyfin-api" in status.stdout and "answering" in status.stdout, \
            status.stdout + status.stderr
    finally:
        run.stop()


def test_one_authentication_in_the_log_and_the_api_counts_once(
        tmp_path: Path, server: ActivityLogServer) -> None:
    """The same five failures written by Jellyfin's log and its Activity Log: the
    brute-force threshold (5) is reached by five, not by ten half-counted, and the
    address is banned once."""
    when = server.clock
    for n in range(4):
        server.add("AuthenticationFailed", "alice", "203.0.113.50",
                   when=when + timedelta(seconds=n))
    run = _daemon(tmp_path, server)
    log = tmp_path / "logs" / f"log_{when:%Y%m%d}.log"
    log.write_text("")
    run.start()
    try:
        run.wait_for(lambda: len(_api_ids(run)) == 4, what="4 API entries")
        for n in range(4):
            stamp = (when + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S.000")
            append(log, f"[{stamp} +00:00] [INF] [9] Jellyfin.Server.Implementations.Users."
                        f'UserManager: Authentication request for "alice" has been denied '
                        f'(IP: "203.0.113.50").\n')
        run.wait_for(lambda: sum(1 for e in run.events() if e["source"] == "jellyfin") == 4,
                     what="4 log events")
        assert "203.0.113.50" not in _read(tmp_path / "out" / "bans.log"), \
            "4 failures reported twice must not reach a threshold of 5"
        server.add("AuthenticationFailed", "alice", "203.0.113.50",
                   when=when + timedelta(seconds=4))
        run.wait_for(lambda: "203.0.113.50" in _read(tmp_path / "out" / "bans.log"),
                     what="the fifth failure bans")
    finally:
        run.stop()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _metrics_port(run: DaemonRun) -> int:
    run.wait_for(lambda: "metrics_listening" in run.log_text(), what="metrics port")
    line = next(x for x in run.log_text().splitlines() if "metrics_listening" in x)
    return int(json.loads(line)["port"])


def _readable(port: int) -> float | None:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith('jfwatch_source_readable{source="jellyfin-api"}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.mark.parametrize("mode", ["ignores limit", "drips its headers"])
def test_a_hostile_activity_log_never_delays_file_bans(tmp_path: Path,
                                                       server: ActivityLogServer,
                                                       mode: str) -> None:
    """Whatever the Activity Log server does (answers 300,000 entries to every page,
    or drips its headers a byte a second), an attack in a followed file is banned
    within a second of its lines, and the API source is reported not readable."""
    import itertools
    import time

    if mode == "ignores limit":
        entry = {"Id": 1, "Name": "x", "ShortOverview": "IP address: 203.0.113.9",
                 "Type": "AuthenticationFailed", "Date": "2026-11-30T08:00:01.0000000Z",
                 "UserId": "0" * 32, "Severity": "Error"}
        piece = json.dumps(entry).encode() + b","
        server.hostile = lambda query: itertools.chain(
            [b'{"TotalRecordCount": 300000, "Items": ['], itertools.repeat(piece, 300_000),
            [b"{}]}"])
    else:
        server.add("AuthenticationFailed", "x", "203.0.113.9")
        server.drip, server.drip_head = 1.0, True
    port = free_port()
    run = _daemon(tmp_path, server, metrics_port=port)
    log = tmp_path / "logs" / "log_20260501.log"
    log.write_text("")
    run.start()
    delays = []
    try:
        for n in range(5):
            ip = f"198.51.100.{20 + n}"
            stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.000")
            written = time.monotonic()
            append(log, "".join(
                f"[{stamp} +00:00] [INF] [9] Jellyfin.Server.Implementations.Users."
                f"UserManager: Authentication request for \"u{i}\" has been denied "
                f"(IP: \"{ip}\").\n" for i in range(5)))
            run.wait_for(lambda ip=ip: f"BAN {ip} " in _read(tmp_path / "out" / "bans.log"),
                         timeout=10, what=f"ban of {ip}")
            delays.append(time.monotonic() - written)
            time.sleep(0.5)
        run.wait_for(lambda: _readable(port) == 0.0, timeout=30, what="the API source down")
    finally:
        run.stop()
    delays.sort()
    print(f"file ban delays with a hostile API server ({mode}): {delays}")
    assert delays[len(delays) // 2] < 1.0 and delays[-1] < 2.0, delays
