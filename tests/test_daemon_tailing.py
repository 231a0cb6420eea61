"""
``jfwatch run`` as a real subprocess on real files: every line read exactly once through
daily files, every kind of rotation, partial lines, bad bytes and directories that
appear or become readable.  Each test asserts the exact multiset of events seen.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon_helper import DaemonRun, append, denied, start_daemon

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)

MODES = ["inotify", "poll"]


@pytest.fixture(name="logs")
def _logs(tmp_path: Path) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    return logs


@pytest.mark.parametrize("mode", MODES)
def test_next_days_file_is_picked_up(tmp_path: Path, logs: Path, mode: str) -> None:
    """start: end skips old lines; tomorrow's log_YYYYMMDD.log is read from its start."""
    today = logs / "log_20260501.log"
    today.write_text(denied("old1") + denied("old2"))
    run = DaemonRun(tmp_path, watch_mode=mode)
    run.start()
    append(today, denied("today"))
    run.wait_users(Counter({"today": 1}))
    tomorrow = logs / "log_20260502.log"
    tomorrow.write_text(denied("tomorrow1") + denied("tomorrow2"))
    run.wait_users(Counter({"today": 1, "tomorrow1": 1, "tomorrow2": 1}))
    assert run.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_rename_and_create(tmp_path: Path, logs: Path, mode: str) -> None:
    """logrotate ``create``: the rest of the renamed file is read, then the new one."""
    run, log = start_daemon(tmp_path, name="log_app.log", watch_mode=mode)
    append(log, denied("a1"))
    run.wait_users(Counter({"a1": 1}))
    rotated = logs / "log_app.log.1"
    log.rename(rotated)
    append(rotated, denied("late-in-old"))  # written by the app before it reopened
    log.write_text(denied("b1"))
    run.wait_users(Counter({"a1": 1, "late-in-old": 1, "b1": 1}))
    append(log, denied("b2"))
    run.wait_users(Counter({"a1": 1, "late-in-old": 1, "b1": 1, "b2": 1}))
    assert run.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_copytruncate(tmp_path: Path, logs: Path, mode: str) -> None:
    """logrotate ``copytruncate``: the same inode starts again at 0."""
    run, log = start_daemon(tmp_path, name="log_app.log", watch_mode=mode)
    append(log, denied("before1") + denied("before2"))
    run.wait_users(Counter({"before1": 1, "before2": 1}))
    shutil.copy(log, logs / "log_app.log.1.gz-not-matching")
    with open(log, "r+b") as fh:
        fh.truncate(0)
    append(log, denied("after"))
    run.wait_users(Counter({"before1": 1, "before2": 1, "after": 1}))
    assert run.stop() == 0


@pytest.mark.parametrize("mode", MODES)
def test_delete_and_recreate(tmp_path: Path, logs: Path, mode: str) -> None:
    """A deleted file is drained; the new file with the same name is read from its start."""
    run, log = start_daemon(tmp_path, name="log_app.log", watch_mode=mode)
    append(log, denied("first"))
    run.wait_users(Counter({"first": 1}))
    log.unlink()
    log.write_text(denied("second") + denied("third"))
    run.wait_users(Counter({"first": 1, "second": 1, "third": 1}))
    assert run.stop() == 0


def test_replaced_by_another_file(tmp_path: Path, logs: Path) -> None:
    """A file atomically replaced by another with the same name (mv over it)."""
    run, log = start_daemon(tmp_path, name="log_app.log")
    append(log, denied("one"))
    run.wait_users(Counter({"one": 1}))
    other = logs / "incoming.tmp"
    other.write_text(denied("two"))
    os.replace(other, log)
    run.wait_users(Counter({"one": 1, "two": 1}))
    assert run.stop() == 0


def test_partial_line_waits_for_its_newline(tmp_path: Path, logs: Path) -> None:
    """Half a line is held until the newline arrives; it is one event, not two."""
    run, log = start_daemon(tmp_path, name="log_app.log")
    line = denied("partial")
    append(log, line[:40])
    run.wait_for(lambda: "following" in run.log_text(), what="follow")
    append(log, line[40:])
    run.wait_users(Counter({"partial": 1}))
    assert run.stop() == 0


def test_bad_bytes_and_huge_line(tmp_path: Path, logs: Path) -> None:
    """Invalid UTF-8, NUL and an 8 MiB line are skipped; the daemon keeps going."""
    run, log = start_daemon(tmp_path, name="log_app.log")
    append(log, b"\xff\xfe\xfd not utf8\n" + b"nul\x00\n" + b"B" * (8 * 1024 * 1024) + b"\n")
    append(log, denied("survivor"))
    run.wait_users(Counter({"survivor": 1}))
    assert run.stop() == 0


def test_directory_that_appears_later(tmp_path: Path) -> None:
    """A missing log directory is reported and retried, not fatal."""
    run = DaemonRun(tmp_path)
    run.start()
    run.wait_for(lambda: "does not exist" in run.log_text(), what="missing dir report")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log_20260501.log").write_text(denied("late"))
    run.wait_users(Counter({"late": 1}), timeout=30)
    assert run.stop() == 0


def test_unreadable_directory_becomes_readable(tmp_path: Path) -> None:
    """Permissions reset by a package upgrade: reported, retried, then read."""
    as_root = os.geteuid() == 0
    if as_root and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be tested")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "log_20260501.log").write_text(denied("waiting"))
    logs.chmod(0o000)
    run = DaemonRun(tmp_path, start="beginning", drop_root_file_access=as_root)
    run.start()
    run.wait_for(lambda: "not readable" in run.log_text(), what="permission report")
    logs.chmod(0o755)
    run.wait_users(Counter({"waiting": 1}), timeout=30)
    assert run.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("mode", MODES)
def test_writer_still_appending_to_the_renamed_file(tmp_path: Path, logs: Path, mode: str) -> None:
    """
    nginx-style rotation: the file is renamed, a new one created, and the writer keeps
    appending to the renamed file until it reopens.  A glob that also matches the
    rotated name must not read it twice.
    """
    run, log = start_daemon(tmp_path, name="access.log", pattern="logs/access.log*",
                            watch_mode=mode)
    append(log, denied("before"))
    run.wait_users(Counter({"before": 1}))
    rotated = logs / "access.log.1"
    log.rename(rotated)
    log.write_text(denied("new-file"))
    run.wait_users(Counter({"before": 1, "new-file": 1}))
    append(rotated, denied("late-writer"))
    run.wait_users(Counter({"before": 1, "new-file": 1, "late-writer": 1}))
    time.sleep(1.5)  # a rescan sees access.log.1 as a glob match: it must stay a single read
    assert run.users() == Counter({"before": 1, "new-file": 1, "late-writer": 1})
    assert run.stop() == 0
