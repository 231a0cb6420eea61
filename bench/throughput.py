"""
Throughput of ``jfwatch parse`` and ``jfwatch replay`` (full shipped rule pack) on a
realistic 1,000,000-line Jellyfin log, beside ``fail2ban-regex`` with the Jellyfin docs'
community filter on the same file.  Peak RSS from getrusage of each child.

Each command runs ``--runs`` times, interleaved so that a slow spell of a shared
machine hits all of them alike; the best and the median wall time are reported, and
the ratios of both.

    python bench/throughput.py [--lines 1000000] [--runs 3] [--log /tmp/jfwatch-bench/log_20260102.log]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILTER = """[Definition]
failregex = ^.*Authentication request for .* has been denied \\(IP: "<ADDR>"\\)\\.
"""


def run(argv: list[str]) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds and peak RSS (MiB) of one child process (its rusage via
    wait4, which counts the helper processes it reaped: CPU seconds are the steadier
    figure on a shared machine)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with {proc.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


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
    # Measure jfwatch as installed: pip (and the Docker image) compile its bytecode at
    # install time, but an editable checkout under PYTHONDONTWRITEBYTECODE=1 would
    # compile every module on every run.
    import jfwatch

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(Path(jfwatch.__file__).parent)],
                   check=True)
    jf = [sys.executable, "-m", "jfwatch"]
    commands = {"jfwatch parse": [*jf, "parse", str(args.log)],
                "jfwatch replay": [*jf, "replay", str(args.log)]}
    f2b = shutil.which("fail2ban-regex")
    if f2b:
        flt = args.log.parent / "jellyfin-docs-filter.conf"
        flt.write_text(FILTER)
        commands["fail2ban-regex"] = [f2b, str(args.log), str(flt)]
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, argv in commands.items():
            runs[name].append(run(argv))
    print(f"{args.lines:,} lines, {args.log}, {args.runs} runs each")
    best = {name: min(secs for secs, _, _ in r) for name, r in runs.items()}
    median = {name: statistics.median(secs for secs, _, _ in r) for name, r in runs.items()}
    for name, r in runs.items():
        rss = max(m for _, _, m in r)
        cpu = statistics.median(c for _, c, _ in r)
        print(f"  {name:16} best {best[name]:6.2f} s ({args.lines / best[name]:>9,.0f} lines/s)  "
              f"median {median[name]:6.2f} s  CPU median {cpu:6.2f} s  peak RSS {rss:5.0f} MiB")
    if "fail2ban-regex" in runs:
        for name in ("jfwatch parse", "jfwatch replay"):
            print(f"  {name} is {best['fail2ban-regex'] / best[name]:.1f}x fail2ban-regex's lines "
                  f"per second (best), {median['fail2ban-regex'] / median[name]:.1f}x (median)")


if __name__ == "__main__":
    main()
