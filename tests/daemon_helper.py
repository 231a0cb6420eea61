"""Start a real ``jfwatch run`` subprocess on a temp directory and read what it produced."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Every daemon started by a test, so that a failing test cannot leave one running.
LIVE: list[subprocess.Popen[bytes]] = []

DENIED = ("[{ts} +00:00] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: "
          'Authentication request for "{user}" has been denied (IP: "{ip}").\n')


def denied(user: str, ip: str = "203.0.113.7", ts: str = "2026-05-01 10:00:00.000") -> str:
    return DENIED.format(ts=ts, user=user, ip=ip)


class DaemonRun:
    def __init__(self, work: Path, *, watch_mode: str = "auto", start: str = "end",
                 pattern: str = "logs/log_*.log", metrics_port: int | None = None,
                 extra: str = "", drop_root_file_access: bool = False,
                 max_open_fds: int | None = None, wrap: list[str] | None = None) -> None:
        self.work = work
        self.events_file = work / "out" / "events.jsonl"
        (work / "out").mkdir(parents=True, exist_ok=True)
        metrics = f"{{port: {metrics_port}}}" if metrics_port is not None else "{enabled: false}"
        self.config = work / "jfwatch.yml"
        self.config.write_text(
            f"state_dir: state\nsources:\n  - {{path: {pattern}, watch_mode: {watch_mode}, "
            f"start: {start}, format: jellyfin}}\nban_feed: {{path: out/bans.log, "
            f"list_path: out/banned.txt}}\nevents_file: out/events.jsonl\nmetrics: {metrics}\n"
            + extra)
        self.drop_root_file_access = drop_root_file_access
        self.max_open_fds = max_open_fds  # RLIMIT_NOFILE for the daemon (None: inherited)
        self.wrap = wrap or []  # a command the daemon runs under (it execs its arguments)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "daemon.log"

    def start(self) -> None:
        since = self.log_path.stat().st_size if self.log_path.exists() else 0
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        prefix: list[str] = []
        if self.drop_root_file_access:
            # Root ignores permission bits; without these capabilities it obeys them,
            # like the unprivileged service user would.
            prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
        if self.max_open_fds is not None:
            prefix = ["prlimit", f"--nofile={self.max_open_fds}", "--", *prefix]
        prefix = [*self.wrap, *prefix]
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "jfwatch", "run", "--config", str(self.config)],
            cwd=self.work, stdout=subprocess.DEVNULL, stderr=open(self.log_path, "ab"),  # noqa: SIM115
            env=env)
        LIVE.append(self.proc)
        self.wait_for(lambda: '"ready"' in self.log_text()[since:], what="daemon start")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=15)
        LIVE.remove(self.proc)
        self.proc = None
        return code

    def events(self) -> list[dict[str, Any]]:
        if not self.events_file.exists():
            return []
        return [json.loads(line) for line in self.events_file.read_text().splitlines() if line]

    def users(self) -> Counter[str]:
        return Counter(e["user"] for e in self.events())

    def wait_for(self, check: Callable[[], bool], *, timeout: float = 20.0, what: str = "") -> None:
        """Poll ``check`` (bounded: at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.log_text()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}\n{self.log_text()[-3000:]}")

    def wait_users(self, expected: Counter[str], timeout: float = 20.0) -> None:
        self.wait_for(lambda: self.users() == expected, timeout=timeout,
                      what=f"events {dict(expected)} (have {dict(self.users())})")


def append(path: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    with open(path, "ab") as fh:
        fh.write(data)
        fh.flush()


def start_daemon(tmp_path: Path, name: str = "log_20260501.log", **options: Any
                 ) -> tuple[DaemonRun, Path]:
    """An empty log file in ``tmp_path/logs`` and a running daemon following it."""
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / name
    log.write_text("")
    run = DaemonRun(tmp_path, **options)
    run.start()
    return run, log
