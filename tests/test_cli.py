"""Commands without side effects, options in any position, help with defaults, and log
lines that carry a journald priority under systemd."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jfwatch.config.model import BanFeedConfig

JFWATCH = [sys.executable, "-m", "jfwatch"]


def _run(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*JFWATCH, *args], capture_output=True, text=True, check=False,
                          timeout=60, **kwargs)  # type: ignore[call-overload]


def test_the_banned_list_moves_with_the_feed() -> None:
    moved = BanFeedConfig(path=Path("/srv/f2b/bans.log"))
    assert moved.list_path == Path("/srv/f2b/banned.txt")
    assert BanFeedConfig(path=Path("/srv/f2b/bans.log"), list_path=None).list_path is None
    assert BanFeedConfig().list_path == Path("/var/log/jfwatch/banned.txt")


@pytest.mark.system
def test_listing_bans_creates_nothing_and_takes_config_anywhere(tmp_path: Path) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"state_dir: {state}\n")
    before = _run("bans", "list", "--config", str(cfg))
    after = _run("bans", "--config", str(cfg), "list")
    first = _run("--config", str(cfg), "bans", "list")
    assert before.returncode == after.returncode == first.returncode == 0, \
        before.stderr + after.stderr + first.stderr
    assert str(state) in first.stderr  # the config given first was used
    assert "no state yet" in before.stderr
    assert not state.exists()  # a command that only reads writes nothing


@pytest.mark.system
def test_help_is_plain_and_shows_defaults() -> None:
    helped = _run("replay", "--help")
    assert helped.returncode == 0
    assert "(default: auto)" in helped.stdout and "``" not in helped.stdout
    assert "``" not in _run("--help").stdout


def _first_log_line(tmp_path: Path, journal: bool) -> str:
    cfg = tmp_path / "c.yml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nsources: []\nban_feed: {{enabled: false}}\n"
                   "metrics: {enabled: false}\n")
    err = tmp_path / f"stderr-{journal}.txt"
    with open(err, "wb") as sink:
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)
        if journal:  # what systemd sets when stderr is the journal's stream
            st = os.fstat(sink.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.Popen([*JFWATCH, "run", "--config", str(cfg)], stdout=subprocess.DEVNULL,
                                stderr=sink, env=env)
        try:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and b'"ready"' not in err.read_bytes():
                time.sleep(0.05)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    return err.read_text().splitlines()[0]


@pytest.mark.system
def test_log_lines_carry_a_journald_priority_under_systemd_only(tmp_path: Path) -> None:
    assert _first_log_line(tmp_path, journal=True).startswith("<6>{")
    assert _first_log_line(tmp_path, journal=False).startswith("{")


@pytest.mark.system
def test_status_from_the_running_daemon_then_from_the_state(tmp_path: Path) -> None:
    from daemon_helper import append, denied, start_daemon
    from http_receiver import free_port

    port = free_port()
    run, log = start_daemon(tmp_path, metrics_port=port)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    stamp = f"{now:%Y-%m-%d %H:%M:%S}.000"  # recent: the ban is still running
    append(log, "".join(denied(f"u{i}", ip="203.0.113.9", ts=stamp) for i in range(5)))
    run.wait_for(lambda: "BAN 203.0.113.9" in (tmp_path / "out" / "bans.log").read_text(),
                 what="a ban")
    # The daemon refreshes its status once a second: wait for the one that has the ban.
    run.wait_for(lambda: "bans active: 1" in _run("status", "--config", str(run.config),
                                                   cwd=tmp_path).stdout, what="status")
    live = _run("status", "--config", str(run.config), cwd=tmp_path)
    as_json = _run("status", "-o", "json", "--config", str(run.config), cwd=tmp_path)
    assert live.returncode == 0, live.stdout + live.stderr
    assert "jfwatch is running" in live.stdout and "log_20260501.log: offset" in live.stdout
    assert "bans active: 1" in live.stdout
    import orjson

    status = orjson.loads(as_json.stdout)
    assert status["running"] and status["bans_active"] == 1
    assert status["files"][0]["lag_bytes"] == 0
    assert run.stop() == 0
    down = _run("status", "--config", str(run.config), cwd=tmp_path)
    assert down.returncode == 3 and "not running" in down.stdout and "bans active: 1" in down.stdout
    listed = _run("bans", "list", "-o", "json", "--config", str(run.config), cwd=tmp_path)
    assert [b["ip"] for b in orjson.loads(listed.stdout)] == ["203.0.113.9"]
