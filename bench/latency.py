"""
Latency from a line's append to its event leaving the parser (as seen in the event
export of a running ``jfwatch run``), p50/p99 over 1,000 appends, inotify and poll modes.

    python bench/latency.py [--appends 1000]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LINE = ('[2026-05-01 10:00:00.000 +00:00] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: '
        'Authentication request for "lat{n}" has been denied (IP: "203.0.113.{o}").\n')


def measure(mode: str, appends: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "logs").mkdir()
        log = work / "logs" / "log_20260501.log"
        log.write_text("")
        (work / "jfwatch.yml").write_text(
            f"state_dir: state\nsources:\n  - {{path: logs/log_*.log, watch_mode: {mode}, "
            "format: jellyfin}\nevents_file: out/events.jsonl\nban_feed: {enabled: false}\n"
            "metrics: {enabled: false}\nrules_dirs: []\n")
        (work / "out").mkdir()
        events = work / "out" / "events.jsonl"
        proc = subprocess.Popen([sys.executable, "-m", "jfwatch", "run", "--config",
                                 str(work / "jfwatch.yml")], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(2.0)
            samples = []
            fd = os.open(log, os.O_WRONLY | os.O_APPEND)
            rng = random.Random(7)
            for n in range(appends):
                # Idle gaps between appends, as in a real log: a daemon that is still busy
                # with the previous line would otherwise flatter the figures.
                time.sleep(rng.uniform(0.005, 0.05))
                size = events.stat().st_size if events.exists() else 0
                start = time.perf_counter()
                os.write(fd, LINE.format(n=n, o=n % 250).encode())
                deadline = start + 10
                while time.perf_counter() < deadline:
                    if events.exists() and events.stat().st_size > size:
                        break
                    time.sleep(0.0005)
                samples.append(time.perf_counter() - start)
            os.close(fd)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=10)
        return samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--appends", type=int, default=1000)
    ap.add_argument("--modes", nargs="+", default=["inotify", "poll"], choices=["inotify", "poll"])
    args = ap.parse_args()
    for mode in args.modes:
        s = sorted(measure(mode, args.appends))
        p50 = statistics.median(s) * 1000
        p99 = s[int(len(s) * 0.99) - 1] * 1000
        print(f"{mode:8} appends={len(s)} p50={p50:7.1f} ms  p99={p99:7.1f} ms  max={s[-1] * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
