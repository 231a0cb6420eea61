"""
``jfwatch demo``: the real daemon, as a subprocess, over bundled realistic logs (a brute
force, a password spray, a 2FA failure after a correct password, an injection attempt,
a proxy misconfiguration), replayed into a temporary directory at the current time; and
Jellyfin's Activity Log, served on 127.0.0.1 and polled by the daemon, where a user who
always signs in from Germany signs in from Japan.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import IO

from jfwatch.engine.demo_server import ActivityLogServer

_JELLYFIN_TS = re.compile(r"^\[(\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2})\.(\d{3}) \+00:00\]")
_CLF_TS = re.compile(r"\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2}) \+0000\]")


def demo_dir() -> Path:
    packaged = Path(str(resources.files("jfwatch"))) / "_data" / "demo"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "demo"


def shift_line(line: str, delta: timedelta) -> str:
    """Move a demo line's timestamp by ``delta`` (so the demo happens "now")."""
    if m := _JELLYFIN_TS.match(line):
        t = datetime.strptime(m[1] + "+0000", "%Y-%m-%d %H:%M:%S%z") + delta
        return f"[{t:%Y-%m-%d %H:%M:%S}.{m[2]} +00:00]" + line[m.end():]
    if m := _CLF_TS.search(line):
        t = datetime.strptime(m[1] + "+0000", "%d/%b/%Y:%H:%M:%S%z") + delta
        return line[:m.start()] + f"[{t:%d/%b/%Y:%H:%M:%S} +0000]" + line[m.end():]
    return line


DEMO_KEY = "d3m0" * 8  # the demo server's API key (it listens on 127.0.0.1 only)


def _config(work: Path, port: int, activity_url: str) -> Path:
    (work / "jellyfin-api.key").write_text(DEMO_KEY + "\n")
    cfg = work / "jfwatch.yml"
    cfg.write_text(
        "# Written by `jfwatch demo`.\n"
        "server_name: demo\n"
        "state_dir: state\n"
        "sources:\n"
        "  - {path: logs/jellyfin/log_*.log, format: jellyfin, start: beginning}\n"
        "  - {path: logs/nginx/access.log, format: nginx, start: beginning}\n"
        "jellyfin_api:\n"
        f"  - {{url: '{activity_url}', api_key_file: jellyfin-api.key, poll_interval: 1s,"
        " start: beginning}\n"
        "trusted_proxies: [172.18.0.2/32]\n"
        "ban_feed: {path: out/bans.log, list_path: out/banned.txt}\n"
        "events_file: out/events.jsonl\n"
        f"metrics: {{listen: 127.0.0.1, port: {port}}}\n")
    return cfg


def _print_alert(record: dict[str, object]) -> None:
    who = record.get("ip") or f"user {record.get('user')}"
    if record.get("ip") and record.get("country"):
        who = f"{who} ({record['country']}, user {record.get('user')})"
    extra = f", banned until {record['ban_until']}" if record.get("ban_until") else ""
    print(f"  ALERT {str(record['severity']).upper():8} {record['rule']}: {who} "
          f"(count {record['count']}){extra}", flush=True)


def _relay_alerts(stream: IO[str]) -> None:
    """Print the daemon's alerts as they fire (its log is JSON lines on stderr)."""
    for raw in stream:
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "alert":
            _print_alert(record)


def run_demo(*, keep: Path | None, port: int, pace: float) -> int:
    work = keep or Path(tempfile.mkdtemp(prefix="jfwatch-demo-"))
    (work / "logs" / "jellyfin").mkdir(parents=True, exist_ok=True)
    (work / "logs" / "nginx").mkdir(parents=True, exist_ok=True)
    if port == 0:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
    activity = ActivityLogServer(DEMO_KEY)
    activity.clock = datetime.now(UTC) - timedelta(minutes=30)
    activity.add("AuthenticationSucceeded", "alice", "193.99.144.80")  # Germany, as always
    activity.start()
    cfg = _config(work, port, activity.url)
    print(f"jfwatch demo in {work}\nstarting the daemon: jfwatch run --config {cfg}", flush=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "jfwatch", "run", "--config", str(cfg)],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env, cwd=work)
    assert proc.stderr is not None
    reader = threading.Thread(target=_relay_alerts, args=(proc.stderr,), daemon=True)
    reader.start()
    try:
        time.sleep(1.5)
        sources = sorted(p for p in demo_dir().rglob("*.log") if p.is_file())
        now = datetime.now(UTC) - timedelta(minutes=15)
        first = datetime(2026, 1, 2, 21, 0, 0, tzinfo=UTC)
        for src in sources:
            target = work / "logs" / src.parent.name / src.name
            if src.parent.name == "jellyfin":
                target = target.with_name(f"log_{datetime.now(UTC):%Y%m%d}.log")
            print(f"writing {target.relative_to(work)} ...", flush=True)
            with open(target, "a", encoding="utf-8") as out:
                for line in src.read_text("utf-8").splitlines():
                    out.write(shift_line(line, now - first) + "\n")
                    out.flush()
                    time.sleep(pace)
        activity.clock = datetime.now(UTC) - timedelta(seconds=2)
        print("Jellyfin's Activity Log: alice signs in from 133.242.0.1 (Japan) ...", flush=True)
        activity.add("AuthenticationSucceeded", "alice", "133.242.0.1")
        time.sleep(5)  # let the daemon release held lines and finish
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        alerts = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.decode().splitlines()
                     if line.startswith("jfwatch_alerts_total{"))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        reader.join(timeout=2)
        activity.stop()
    print(f"\n{int(alerts)} alerts. Everything is in {work}:\n"
          f"  ban feed (for Fail2Ban): {work / 'out' / 'bans.log'}\n"
          f"  banned addresses list:   {work / 'out' / 'banned.txt'}\n"
          f"  every event (JSON):      {work / 'out' / 'events.jsonl'}\n"
          f"  state (SQLite):          {work / 'state' / 'state.db'}\n"
          f"  config used:             {cfg}\n"
          f"Metrics were served on http://127.0.0.1:{port}/metrics while the demo ran.\n"
          f"Try: jfwatch replay --config {cfg} {work}/logs/*/*.log")
    return 0 if proc.returncode == 0 and alerts > 0 else 1
