"""
The daemon in-process (a thread, not a subprocess), so the fast loop covers the loop, the
tailer, the Activity Log input and the sink: real files appended and rotated, a real
state, a real (demo) Activity Log server; stop and start again on the same state.
Every wait is on a condition, bounded by a deadline.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from jfwatch.config.model import Config
from jfwatch.detect.rules import load_rules
from jfwatch.engine.daemon import Daemon
from jfwatch.engine.demo_server import ActivityLogServer

from daemon_helper import denied


def _config(work: Path, **extra: Any) -> Config:
    return Config.model_validate({
        "state_dir": str(work / "state"), "events_file": str(work / "out" / "events.jsonl"),
        "sources": [{"path": str(work / "logs" / "log_*.log"), "start": "beginning",
                     "timezone": "UTC"}],
        "ban_feed": {"path": str(work / "out" / "bans.log")},
        "metrics": {"enabled": False}, "future_tolerance": "1d", **extra})


@contextmanager
def running(config: Config) -> Iterator[Daemon]:
    daemon = Daemon(config, load_rules([]))
    thread = threading.Thread(target=daemon.run, name="daemon-under-test")
    thread.start()
    try:
        yield daemon
    finally:
        daemon.stop_event.set()
        daemon.wake.set()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the daemon did not stop"


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _events(work: Path) -> list[dict[str, Any]]:
    path = work / "out" / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _bans(work: Path) -> Counter[str]:
    path = work / "out" / "bans.log"
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(line.split()[3] for line in lines if " BAN " in line)


def _stamp(n: int) -> str:
    when = datetime.now(UTC) - timedelta(minutes=5) + timedelta(seconds=n)
    return when.strftime("%Y-%m-%d %H:%M:%S.000")


def _append(path: Path, lines: list[str]) -> None:
    with open(path, "a") as fh:
        fh.write("".join(line + "\n" for line in lines))


def test_a_brute_force_is_banned_and_a_restart_reads_on_without_repeats(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "log_20261202.log"
    _append(log, [denied(f"user{n}", "203.0.113.7", _stamp(n)) for n in range(6)])
    config = _config(tmp_path)
    with running(config) as daemon:
        wait_for(lambda: _bans(tmp_path)["203.0.113.7"] == 1, "the ban in the feed")
        wait_for(lambda: len(_events(tmp_path)) == 6, "six events exported")
        status = daemon._status()
        assert status["files"] == [{"path": str(log), "offset": log.stat().st_size,
                                    "lag_bytes": 0}]
    # Stopped: lines written meanwhile are read by the next start, and only those.
    _append(log, [denied(f"late{n}", "198.51.100.9", _stamp(10 + n)) for n in range(2)])
    with running(config):
        wait_for(lambda: len(_events(tmp_path)) == 8, "the two new events")
        time.sleep(0.3)  # a pass or two more: nothing is read twice
    users = Counter(e["user"] for e in _events(tmp_path))
    assert max(users.values()) == 1 and len(users) == 8
    assert _bans(tmp_path) == Counter({"203.0.113.7": 1})


def test_rotation_by_rename_loses_and_repeats_nothing(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "log_app.log"
    with running(_config(tmp_path)):
        wait_for(lambda: log.parent.exists(), "start")
        _append(log, [denied("before", "198.51.100.1", _stamp(1))])
        wait_for(lambda: len(_events(tmp_path)) == 1, "the first event")
        _append(log, [denied("unread", "198.51.100.2", _stamp(2))])
        os.rename(log, tmp_path / "logs" / "log_app.log.1")  # logrotate's create mode
        _append(log, [denied("after", "198.51.100.3", _stamp(3))])
        wait_for(lambda: len(_events(tmp_path)) == 3, "all three events")
        time.sleep(0.3)
    assert sorted(e["user"] for e in _events(tmp_path)) == ["after", "before", "unread"]


def test_a_deleted_source_file_is_let_go_and_a_new_one_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted file is still read for the drain grace (a writer may still hold it
    open), then let go; made short here."""
    monkeypatch.setattr("jfwatch.sources.tailer.DRAIN_GRACE", 0.5)
    (tmp_path / "logs").mkdir()
    first = tmp_path / "logs" / "log_20261201.log"
    _append(first, [denied("one", "198.51.100.4", _stamp(1))])
    with running(_config(tmp_path)) as daemon:
        wait_for(lambda: len(_events(tmp_path)) == 1, "the first file's event")
        first.unlink()
        second = tmp_path / "logs" / "log_20261202.log"
        _append(second, [denied("two", "198.51.100.5", _stamp(2))])
        wait_for(lambda: len(_events(tmp_path)) == 2, "the new file's event")
        wait_for(lambda: list(daemon.tailer.files) == [str(second)], "the deleted file let go",
                 timeout=30)


def test_the_activity_log_is_read_as_records_and_its_cursor_kept(tmp_path: Path) -> None:
    server = ActivityLogServer().start()
    try:
        key = tmp_path / "key"
        key.write_text(server.key + "\n")
        now = datetime.now(UTC) - timedelta(minutes=1)
        for n in range(3):
            server.add("AuthenticationFailed", f"guess{n}", "203.0.113.40",
                       when=now + timedelta(seconds=n))
        config = _config(tmp_path, sources=[], jellyfin_api=[{
            "url": server.url, "api_key_file": str(key), "poll_interval": "1s",
            "start": "beginning"}])
        with running(config) as daemon:
            wait_for(lambda: len(_events(tmp_path)) == 3, "three Activity Log events")
            assert {e["origin"] for e in _events(tmp_path)} == {"jellyfin_activity.failed"}
            wait_for(lambda: daemon.activity[0].cursor is not None, "the cursor committed")
        server.add("AuthenticationFailed", "guess3", "203.0.113.40",
                   when=now + timedelta(seconds=5))
        with running(config):
            wait_for(lambda: len(_events(tmp_path)) == 4, "only the new entry")
            time.sleep(1.2)  # a poll more: nothing again
        assert [e["user"] for e in _events(tmp_path)] == ["guess0", "guess1", "guess2", "guess3"]
    finally:
        server.stop()


def test_a_commit_that_fails_is_read_again_once_it_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export cannot be written (a directory in its place): reading pauses at the last
    commit, /health says why; once fixed, the lines are read again, exported once."""
    monkeypatch.setattr("jfwatch.engine.daemon.STATE_RETRY_SECONDS", 0.2)
    (tmp_path / "logs").mkdir()
    log = tmp_path / "logs" / "log_20261202.log"
    export = tmp_path / "out" / "events.jsonl"
    with running(_config(tmp_path)) as daemon:
        _append(log, [denied("first", "198.51.100.6", _stamp(1))])
        wait_for(lambda: len(_events(tmp_path)) == 1, "the first event")
        export.rename(tmp_path / "out" / "aside.jsonl")
        export.mkdir()
        _append(log, [denied("second", "198.51.100.7", _stamp(2))])
        wait_for(lambda: "event_export" in daemon.sink.metrics.healthy()[1], "the fault reported")
        assert not daemon.sink.metrics.healthy()[0]
        export.rmdir()
        (tmp_path / "out" / "aside.jsonl").rename(export)
        wait_for(lambda: len(_events(tmp_path)) == 2, "the second event, after the fault")
        wait_for(lambda: daemon.sink.metrics.healthy()[0], "healthy again")
        time.sleep(0.3)
    assert [e["user"] for e in _events(tmp_path)] == ["first", "second"]
