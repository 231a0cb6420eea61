"""
One engine: the daemon over a backlog (``start: beginning``) and ``jfwatch replay`` over
the same file decide alike and count alike; the daemon's memory stays bounded.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import ROOT
from daemon_helper import DaemonRun
from http_receiver import free_port

pytestmark = pytest.mark.system  # starts the daemon and the CLI as processes


def _generate(path: Path, lines: int, start: datetime) -> None:
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_jellyfin_log.py"), str(lines),
                    str(path), start.isoformat()], check=True)


def _metric_lines(port: int) -> dict[str, int]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {outcome: int(float(n)) for outcome, n in
            re.findall(r'^jfwatch_lines_total\{outcome="(\w+)",source="[^"]*"\} (\S+)$', text, re.M)}


def _decisions_of_replay(log: Path) -> tuple[Counter[tuple[str, ...]], str]:
    result = subprocess.run([sys.executable, "-m", "jfwatch", "replay", str(log)],
                            capture_output=True, text=True, check=True, timeout=120)
    out: Counter[tuple[str, ...]] = Counter()
    for line in result.stdout.splitlines():
        d = json.loads(line)
        if d["type"] == "alert":
            out["alert", d["rule"], str(d["ip"]), str(d["user"]), str(d["count"])] += 1
        elif d["type"] == "ban":
            out["ban", d["rule"], d["ip"]] += 1
    return out, result.stderr


def _decisions_of_daemon(log_text: str) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for line in log_text.splitlines():
        if not line.startswith("{"):
            continue
        d = json.loads(line)
        if d.get("event") == "alert":
            out["alert", d["rule"], str(d["ip"]), str(d["user"]), str(d["count"])] += 1
        elif d.get("event") == "ban":
            out["ban", d["rule"], d["ip"]] += 1
    return out


def test_daemon_over_a_backlog_decides_and_counts_as_replay(tmp_path: Path) -> None:
    port = free_port()
    start = datetime.now(UTC) - timedelta(minutes=40)  # recent: bans are still running
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / f"log_{start:%Y%m%d}.log"
    _generate(log, 30_000, start)  # about 5 MB: several bounded reads
    with open(log, "ab") as fh:  # lines the reader must reject, counted alike
        fh.write(b"\xff\xfe not utf-8\n" + b"nul\x00\n" + b"x" * 70_000 + b"\n")
    expected, summary = _decisions_of_replay(log)
    assert sum(1 for key in expected if key[0] == "ban") >= 3, "the log bans no one"
    counts = {v: int(k) for k, v in re.findall(r"(\d+) (read|matched|unmatched|rejected)", summary)}

    run = DaemonRun(tmp_path, start="beginning", metrics_port=port)
    run.start()
    size = log.stat().st_size
    run.wait_for(lambda: _committed(tmp_path) == size, timeout=60,
                 what="the backlog read to its end")
    run.wait_for(lambda: _metric_lines(port).get("matched") == counts["matched"],
                 timeout=30, what=f"matched lines {counts['matched']}")
    lines = _metric_lines(port)
    assert run.stop() == 0
    assert lines == \
        {k: counts[k] for k in ("matched", "unmatched", "rejected")}
    decided = _decisions_of_daemon(run.log_text())
    # The same bans, and an alert for everything replay alerts on; but the daemon reads
    # the backlog in seconds and its cooldowns run on the wall clock, so an alert that
    # replay repeats after a cooldown in event time is said once (a backfill must not
    # flood the phone).
    assert {k: n for k, n in decided.items() if k[0] == "ban"} == \
        {k: n for k, n in expected.items() if k[0] == "ban"}
    assert set(decided) == set(expected)
    assert all(decided[k] <= expected[k] for k in decided)


def _committed(work: Path) -> int:
    import sqlite3

    db = work / "state" / "state.db"
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute("SELECT max(offset) FROM file_offsets").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0)


def test_daemon_memory_stays_bounded_on_a_large_backlog(tmp_path: Path) -> None:
    """A first start on old logs reads bounded blocks: 300,000 lines (50 MB) in < 100 MB."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "log_20260102.log"
    _generate(log, 300_000, datetime(2026, 1, 2, tzinfo=UTC))
    run = DaemonRun(tmp_path, start="beginning")
    run.start()
    assert run.proc is not None
    size = log.stat().st_size
    run.wait_for(lambda: _committed(tmp_path) == size, timeout=120,
                 what="the backlog read to its end")
    status = Path(f"/proc/{run.proc.pid}/status").read_text()
    peak_kib = int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)[1])  # type: ignore[index]
    assert run.stop() == 0
    assert peak_kib < 100 * 1024, f"peak RSS {peak_kib // 1024} MiB"
