"""
Throughput of ``jfwatch parse`` and ``jfwatch replay`` (full shipped rule pack) on a
realistic 1,000,000-line Jellyfin log, beside ``fail2ban-regex`` with the Jellyfin docs'
community filter on the same file.  Peak RSS from getrusage of each child.

    python bench/throughput.py [--lines 1000000] [--log /tmp/jfwatch-bench/log_20260102.log]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILTER = """[Definition]
failregex = ^.*Authentication request for .* has been denied \\(IP: "<ADDR>"\\)\\.
"""


def run(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own rusage, via wait4)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--log", type=Path, default=Path("/tmp/jfwatch-bench/log_20260102.log"))
    args = ap.parse_args()
    args.log.parent.mkdir(parents=True, exist_ok=True)
    if not args.log.exists() or sum(1 for _ in args.log.open("rb")) != args.lines:
        subprocess.run([sys.executable, str(HERE / "gen_jellyfin_log.py"), str(args.lines),
                        str(args.log)], check=True)
    jf = [sys.executable, "-m", "jfwatch"]
    results: dict[str, tuple[float, float]] = {}
    results["jfwatch parse"] = run([*jf, "parse", str(args.log)])
    results["jfwatch replay"] = run([*jf, "replay", str(args.log)])
    f2b = shutil.which("fail2ban-regex")
    if f2b:
        flt = args.log.parent / "jellyfin-docs-filter.conf"
        flt.write_text(FILTER)
        results["fail2ban-regex"] = run([f2b, str(args.log), str(flt)])
    print(f"{args.lines:,} lines, {args.log}")
    for name, (secs, rss) in results.items():
        print(f"  {name:16} {secs:7.2f} s  {args.lines / secs:>10,.0f} lines/s  peak RSS {rss:6.0f} MiB")
    if "fail2ban-regex" in results:
        base = results["fail2ban-regex"][0]
        for name in ("jfwatch parse", "jfwatch replay"):
            print(f"  {name} is {base / results[name][0]:.1f}x fail2ban-regex's lines per second")


if __name__ == "__main__":
    main()
