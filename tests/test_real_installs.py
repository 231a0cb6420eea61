"""
What real installs write: Jellyfin's two daily names beside FFmpeg and upload logs under
the default sources, and Docker's json-file log followed through the driver's rotation.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jfwatch.config.model import Config

from daemon_helper import DaemonRun, append, denied
from http_receiver import free_port

pytestmark = pytest.mark.system

DEFAULT_DIR = "/var/log/jellyfin"


def _config(run: DaemonRun, sources: list[str]) -> None:
    listed = "".join(f"  - {{path: {path}, start: beginning}}\n" for path in sources)
    run.config.write_text(f"state_dir: state\nsources:\n{listed}"
                          "ban_feed: {path: out/bans.log, list_path: out/banned.txt}\n"
                          "events_file: out/events.jsonl\nmetrics: {enabled: false}\n")


def test_default_sources_follow_both_names_and_nothing_else(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    # The shipped defaults, moved from /var/log/jellyfin into the test's directory.
    defaults = [s.path for s in Config().sources]
    assert all(path.startswith(DEFAULT_DIR) for path in defaults)
    files = {"jellyfin20261130.log": "debian", "FFmpeg.Transcode-2026-11-30_10-00-00_abc.log":
             "ffmpeg", "upload_20261130.log": "upload", "log_20261130.log": "current"}
    for name, user in files.items():
        (logs / name).write_text(denied(user))
    run = DaemonRun(tmp_path)
    _config(run, [path.replace(DEFAULT_DIR, str(logs)) for path in defaults])
    run.start()
    run.wait_users(Counter({"debian": 1, "current": 1}))
    assert run.stop() == 0
    followed = {json.loads(line)["path"] for line in run.log_text().splitlines()
                if '"following"' in line}
    assert {Path(p).name for p in followed} == {"jellyfin20261130.log", "log_20261130.log"}


def test_a_source_matching_nothing_says_what_the_directory_holds(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "jellyfin20261130.log").write_text("")
    run = DaemonRun(tmp_path)
    _config(run, [str(logs / "log_*.log")])
    result = subprocess.run([sys.executable, "-m", "jfwatch", "check-config", "--config",
                             str(run.config)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0
    assert "0 files match" in result.stderr and "jellyfin20261130.log" in result.stderr
    port = free_port()
    run.config.write_text(run.config.read_text().replace(
        "metrics: {enabled: false}", f"metrics: {{port: {port}, stale_after: 1s}}"))
    run.start()
    run.wait_for(lambda: '"no_file_matches"' in run.log_text(), what="the empty source reported")
    assert "jellyfin20261130.log" in run.log_text() and '"level": "warning"' in run.log_text()

    def health() -> int:
        try:
            return int(urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).status)
        except urllib.error.HTTPError as exc:
            return exc.code

    run.wait_for(lambda: health() == 503, what="/health 503 for a source matching nothing")
    assert run.stop() == 0


def _json_file_line(text: str) -> str:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return json.dumps({"log": text, "stream": "stdout", "time": now}) + "\n"


def test_docker_json_file_followed_through_the_drivers_rotation(tmp_path: Path) -> None:
    """Console lines inside json-file entries (one split in two), the file renamed to
    -json.log.1 by the driver and a new one started: every event exactly once."""
    container = tmp_path / "containers" / "c0ffee"
    container.mkdir(parents=True)
    log = container / "c0ffee-json.log"
    console = "[{t}] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: " \
              "Authentication request for {u} has been denied (IP: 203.0.113.{n}).\n"
    clock = datetime.now(UTC).strftime("%H:%M:%S")
    log.write_text("".join(_json_file_line(console.format(t=clock, u=f"a{i}", n=i))
                           for i in range(3)))
    run = DaemonRun(tmp_path)
    _config(run, [str(log)])
    run.start()
    run.wait_users(Counter({"a0": 1, "a1": 1, "a2": 1}))
    long_line = console.format(t=clock, u="b" * 40, n=99)
    append(log, _json_file_line(long_line[:50]) + _json_file_line(long_line[50:]))
    log.rename(container / "c0ffee-json.log.1")  # the driver's max-size rotation
    log.write_text("")
    append(log, "".join(_json_file_line(console.format(t=clock, u=f"c{i}", n=i))
                        for i in range(2)))
    run.wait_users(Counter({"a0": 1, "a1": 1, "a2": 1, "b" * 40: 1, "c0": 1, "c1": 1}))
    events = run.events()
    assert {e["origin"] for e in events} == {"jellyfin.denied"}
    assert all(e["time"].endswith("+00:00") for e in events)
    assert run.stop() == 0
