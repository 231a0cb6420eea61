"""
Side by side in one run, each command pinned to one core: ``fail2ban-regex`` with the
Jellyfin docs' filter, ``jfwatch parse``, ``jfwatch replay`` (shipped rule pack) and the
daemon (``jfwatch run``) ingesting the same file as a backlog (``start: beginning``).
Reported: CPU seconds and peak RSS of each process (wait4), lines per CPU second, and
each jfwatch command's lines per CPU second as a multiple of fail2ban-regex's.  The
daemon's wall figure counts from its start to the first scrape of its metrics that shows
the file read to its end (tail lag 0); it then gets SIGTERM.

    python bench/compare.py [--lines 1000000] [--runs 3] [--log /tmp/jfwatch-bench/log_20260102.log]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILTER = """[Definition]
failregex = ^.*Authentication request for .* has been denied \\(IP: "<ADDR>"\\)\\.
"""
CORE = 0


def _pin() -> None:
    os.sched_setaffinity(0, {CORE})


def _finish(proc: subprocess.Popen[bytes], start: float) -> tuple[float, float, float]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{proc.args} failed with {proc.returncode}")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def run(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one command."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=_pin)
    return _finish(proc, start)


def run_daemon(log: Path) -> tuple[float, float, float]:
    """The daemon over ``log`` as a backlog, until it has read the file to its end."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = work / "jfwatch.yml"
        port = _free_port()
        config.write_text(f"state_dir: {work / 'state'}\nsources:\n  - {{path: {log}, "
                          "start: beginning}\nban_feed: {enabled: false}\n"
                          f"metrics: {{port: {port}}}\n")
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "jfwatch", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=_pin)
        deadline = start + 600
        while time.perf_counter() < deadline and _lag(port) != 0:
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.send_signal(signal.SIGTERM)
        _, cpu, rss = _finish(proc, start)
        return wall, cpu, rss


def _lag(port: int) -> int | None:
    """The daemon's tail lag in bytes (None before it answers or follows the file)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
    except OSError:
        return None
    found = re.search(rb"^jfwatch_tail_lag_bytes\{[^}]*\} (\S+)$", text, re.M)
    return None if found is None else int(float(found[1]))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--log", type=Path, default=Path("/tmp/jfwatch-bench/log_20260102.log"))
    args = ap.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if not args.log.exists() or sum(1 for _ in args.log.open("rb")) != args.lines:
        subprocess.run([sys.executable, str(HERE / "gen_jellyfin_log.py"), str(args.lines),
                        str(args.log)], check=True)
    # Measure jfwatch as installed: pip (and the Docker image) compile bytecode at install.
    import jfwatch

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(jfwatch.__file__).parent)],
                   check=True)
    jf = [sys.executable, "-m", "jfwatch"]
    commands = {"jfwatch parse": lambda: run([*jf, "parse", str(args.log)]),
                "jfwatch replay": lambda: run([*jf, "replay", str(args.log)]),
                "jfwatch run": lambda: run_daemon(args.log)}
    f2b = shutil.which("fail2ban-regex")
    if f2b:
        flt = args.log.parent / "jellyfin-docs-filter.conf"
        flt.write_text(FILTER)
        commands = {"fail2ban-regex": lambda: run([f2b, str(args.log), str(flt)]), **commands}
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for _ in range(args.runs):  # interleaved: a slow spell of a shared machine hits all alike
        for name, measure in commands.items():
            runs[name].append(measure())
    print(f"{args.lines:,} lines, {args.log}, {args.runs} runs each, pinned to core {CORE}")
    cpu = {name: statistics.median(c for _, c, _ in r) for name, r in runs.items()}
    for name, r in runs.items():
        wall = statistics.median(w for w, _, _ in r)
        rss = max(m for _, _, m in r)
        ratio = f"  {cpu['fail2ban-regex'] / cpu[name]:5.1f}x fail2ban-regex" \
            if "fail2ban-regex" in cpu and name != "fail2ban-regex" else ""
        print(f"  {name:15} CPU {cpu[name]:6.2f} s ({args.lines / cpu[name]:>9,.0f} lines/CPU s)  "
              f"wall {wall:6.2f} s ({args.lines / wall:>9,.0f} lines/s)  peak RSS {rss:4.0f} MiB"
              f"{ratio}")


if __name__ == "__main__":
    main()
