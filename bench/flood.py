"""
An interleaved botnet flood against the detector: ``--addresses`` addresses each fail
``--attempts`` times, in round-robin order (every address once, then every address
again...), all inside the shipped rules' ten-minute window, each attempt with another
common username.  Reports how many addresses were banned, the groups kept and evicted,
CPU seconds and peak RSS.

    taskset -c 0 python bench/flood.py --addresses 1000000

With the default ``max_groups`` a flood of 100,000 addresses is banned whole; beyond the
cap the addresses that gathered evidence first keep their place (README, "Rules").
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import tempfile
import time
from datetime import UTC, datetime, timedelta

from jfwatch.config.model import Config
from jfwatch.detect.detector import Detector, settings_from_config
from jfwatch.detect.rules import load_rules
from jfwatch.events import Event, EventKind
from jfwatch.state import StateStore

NAMES = ("admin", "root", "user", "test", "guest", "jellyfin", "media", "demo", "alice", "bob",
         "family", "kids", "tv", "plex", "emby", "server", "owner", "home", "movies", "music")


def flood(addresses: int, attempts: int = 5, max_groups: int | None = None,
          own_names: bool = False) -> dict[str, float]:
    """``own_names``: each address tries one username of its own (a fresh account key per
    address), instead of common names shared by all."""
    cfg = Config() if max_groups is None else Config(max_groups=max_groups)
    # Bans go to a state file, as in the daemon (it is not part of the detector's memory).
    with tempfile.TemporaryDirectory() as tmp:
        return _flood(addresses, attempts, cfg, StateStore(os.path.join(tmp, "state.db")),
                      own_names)


def _flood(addresses: int, attempts: int, cfg: Config, store: StateStore, own_names: bool
           ) -> dict[str, float]:
    detector = Detector(load_rules([]), settings_from_config(cfg), store)
    # Attempts spread evenly over nine minutes, ending an hour ago (never ahead of the clock).
    start = datetime.now(UTC) - timedelta(hours=1)
    step = timedelta(minutes=9) / (addresses * attempts)
    base = int(ipaddress.IPv4Address("11.0.0.0"))
    cpu = time.process_time()
    n = 0
    for attempt in range(attempts):
        for i in range(addresses):
            user = f"user{i}" if own_names else NAMES[(i + attempt) % len(NAMES)]
            ip = ipaddress.IPv4Address(base + i)
            event = Event(time=start + step * n, source="jellyfin", kind=EventKind.AUTH_FAILURE,
                          origin="jellyfin.denied", service="jellyfin", ip=ip, user=user,
                          excerpt=f"Authentication request for {user} has been denied (IP: {ip}).")
            n += 1
            detector.feed(event)
    banned = store.db.execute("SELECT COUNT(*) FROM ban_history").fetchone()[0]
    return {"addresses": addresses, "banned": banned, "groups": detector.tracked_groups,
            "evictions": detector.evictions, "cpu_seconds": round(time.process_time() - cpu, 2),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addresses", type=int, default=100_000)
    ap.add_argument("--attempts", type=int, default=5)
    ap.add_argument("--max-groups", type=int, default=None)
    ap.add_argument("--own-names", action="store_true", help="one username per address")
    args = ap.parse_args()
    print(json.dumps(flood(args.addresses, args.attempts, args.max_groups, args.own_names)))


if __name__ == "__main__":
    main()
