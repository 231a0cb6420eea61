"""Crash safety and signals of the real daemon process."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from daemon_helper import DaemonRun, append, denied, start_daemon

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)


def test_sigkill_at_random_points_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """
    N lines with unique markers are written while the daemon is SIGKILLed and restarted
    several times; in the end each marker was processed exactly once.
    """
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "log_20260501.log"
    log.write_text("")
    total, kills = 3000, 6
    rng = random.Random(20261127)
    run = DaemonRun(tmp_path)
    run.start()
    done = threading.Event()

    def writer() -> None:
        for i in range(total):
            append(log, denied(f"m{i:05d}", ip=f"203.0.113.{i % 200}"))
            if i % 50 == 0:
                time.sleep(0.01)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    for _ in range(kills):
        time.sleep(rng.uniform(0.05, 0.6))
        run.stop(signal.SIGKILL)
        run.start()
    thread.join(timeout=120)
    assert done.is_set()
    expected = Counter({f"m{i:05d}": 1 for i in range(total)})
    run.wait_users(expected, timeout=60)
    assert run.stop() == 0


def test_sigterm_exits_zero_quickly_and_saves_offsets(tmp_path: Path) -> None:
    """SIGTERM: in-flight lines finished, offsets saved, exit 0 within 5 s; no re-read."""
    run, log = start_daemon(tmp_path)
    append(log, denied("a") + denied("b"))
    run.wait_users(Counter({"a": 1, "b": 1}))
    began = time.monotonic()
    assert run.stop(signal.SIGTERM) == 0
    assert time.monotonic() - began < 5
    append(log, denied("while-down"))
    run.start()
    run.wait_users(Counter({"a": 1, "b": 1, "while-down": 1}))
    assert run.stop(signal.SIGINT) == 0


def test_sighup_reloads_and_keeps_old_config_when_new_is_bad(tmp_path: Path) -> None:
    """SIGHUP reloads the config; a broken new config is reported and the old one kept."""
    run, log = start_daemon(tmp_path)
    good = run.config.read_text()
    run.config.write_text(good + "max_groups: -5\n")
    assert run.proc is not None
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: "reload_failed_keeping_old_config" in run.log_text(), what="reload error")
    append(log, denied("still-working"))
    run.wait_users(Counter({"still-working": 1}))
    run.config.write_text(good.replace("state_dir: state", "state_dir: state\nmax_groups: 500")
                          + "notify: {max_per_rule_per_hour: 3}\n")
    run.proc.send_signal(signal.SIGHUP)
    run.wait_for(lambda: '"reloaded"' in run.log_text(), what="reload")
    run.wait_for(lambda: '"restart_needed"' in run.log_text() and '"notify"' in run.log_text(),
                 what="notice that notify changes need a restart")
    assert run.stop() == 0


def test_sighup_with_hostile_config_keeps_the_daemon_running(tmp_path: Path) -> None:
    """Overflowing numbers and an alias bomb sent through SIGHUP: each reload is refused
    with the file and line, the old config stays, and lines are still read."""
    run, log = start_daemon(tmp_path)
    good = run.config.read_text()
    assert run.proc is not None
    rules = tmp_path / "rules.d"
    rules.mkdir()
    hostile = [
        good + "ban: {max: 99999999999999w}\n",
        good + "max_groups: 99999999999999999999999999\n",
        good + f"rules_dirs: [{rules}]\n",
    ]
    (rules / "bomb.yaml").write_text(
        'a: &a ["x","x","x","x","x","x","x","x"]\n'
        + "".join(f"{n}: &{n} [" + ",".join([f"*{p}"] * 8) + "]\n"
                  for p, n in zip("abcdefgh", "bcdefghi", strict=True)))
    for number, text in enumerate(hostile, start=1):
        run.config.write_text(text)
        run.proc.send_signal(signal.SIGHUP)
        run.wait_for(lambda n=number: run.log_text().count("reload_failed_keeping_old_config") >= n,
                     what=f"reload error {number}")
        append(log, denied(f"after-{number}"))
        run.wait_for(lambda n=number: run.users()[f"after-{n}"] == 1, what=f"line {number}")
    assert "bomb.yaml:2: YAML aliases" in run.log_text()
    assert run.stop() == 0


def test_files_created_and_rotated_away_while_stopped_are_read_once(tmp_path: Path) -> None:
    """While jfwatch is stopped: a rename rotation, a file created and renamed away
    entirely, and a copytruncate; on start every line is read exactly once."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_text(denied("before"))
    run = DaemonRun(tmp_path, pattern="logs/app.log", start="beginning")
    run.start()
    run.wait_users(Counter({"before": 1}))
    assert run.stop() == 0
    append(log, denied("tail-of-1"))
    log.rename(logs / "app.log.1")                      # known file, renamed
    log.write_text(denied("unseen-a") + denied("unseen-b"))
    log.rename(logs / "app.log.2")                      # created and renamed away, unseen
    log.write_text(denied("current"))
    run.start()
    expected = Counter(dict.fromkeys(("before", "tail-of-1", "unseen-a", "unseen-b", "current"), 1))
    run.wait_users(expected)
    assert run.stop() == 0
    append(log, denied("copied"))                       # copytruncate while stopped
    (logs / "app.log.3").write_bytes(log.read_bytes())
    with open(log, "r+b") as fh:
        fh.truncate(0)
    append(log, denied("after-truncate"))
    run.start()
    run.wait_users(expected + Counter({"copied": 1, "after-truncate": 1}))
    time.sleep(1)  # nothing more arrives
    assert run.users() == expected + Counter({"copied": 1, "after-truncate": 1})
    assert run.stop() == 0


def test_rename_rotation_after_a_restart_reads_no_file_twice(tmp_path: Path) -> None:
    """A file resumed under its rotated name after a restart (app.log.1) gets, with the
    next rotation, the file read as app.log put at its name: it continues where that
    file was read, never again from 0."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "app.log"
    log.write_text(denied("first"))
    run = DaemonRun(tmp_path, pattern="logs/app.log", start="beginning")
    run.start()
    run.wait_users(Counter({"first": 1}))
    assert run.stop() == 0
    log.rename(logs / "app.log.1")  # rotated while stopped: resumed as app.log.1
    log.write_text(denied("second-a") + denied("second-b"))
    run.start()
    expected = Counter({"first": 1, "second-a": 1, "second-b": 1})
    run.wait_users(expected)
    (logs / "app.log.1").rename(logs / "app.log.2")  # a live rename rotation
    log.rename(logs / "app.log.1")
    append(logs / "app.log.1", denied("late-write-to-rotated"))  # the writer had not reopened
    log.write_text(denied("third"))
    expected += Counter({"late-write-to-rotated": 1, "third": 1})
    run.wait_users(expected)
    time.sleep(1.5)  # several passes: nothing is read again
    assert run.users() == expected
    assert run.stop() == 0
    run.start()  # and a restart after it repeats nothing either
    append(log, denied("fourth"))
    run.wait_users(expected + Counter({"fourth": 1}))
    assert run.stop() == 0
