"""
The Fail2Ban-compatible ban feed: one append-only file, never renamed by jfwatch, one
line per decision, and nothing an attacker typed (no usernames, no user agents):

    2026-01-02T21:00:37+00:00 jfwatch[812]: BAN 203.0.113.50 rule=brute-force-ip duration=14400s

plus a plain list of currently banned addresses, replaced atomically, for nginx ``deny``,
ipset or ``cscli decisions import``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from datetime import datetime
from pathlib import Path

from jfwatch.decisions import Ban, Unban

_RULE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def feed_address(ip: str) -> str:
    """Canonical address for the feed; IPv4-mapped IPv6 is written as IPv4."""
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return str(addr)


def format_line(decision: Ban | Unban, pid: int, written: datetime) -> str:
    """
    The feed line; every field has a restricted character set.

    The stamp is when the line is written (not when the attack was logged), so that a
    backfilled decision is not dropped by Fail2Ban as older than its findtime; the
    duration is what is left of the ban.
    """
    if not _RULE.match(decision.rule):
        raise ValueError(f"rule name not safe for the feed: {decision.rule!r}")
    stamp = written.isoformat(timespec="seconds")
    addr = feed_address(decision.ip)
    if isinstance(decision, Ban):
        left = max(1, int((decision.until - written).total_seconds()))
        return (f"{stamp} jfwatch[{pid}]: BAN {addr} rule={decision.rule} "
                f"duration={left}s level={decision.level}\n")
    return f"{stamp} jfwatch[{pid}]: UNBAN {addr} rule={decision.rule}\n"


class BanFeed:
    """Appends decisions to the feed and keeps the banned list file current."""

    def __init__(self, path: Path, list_path: Path | None) -> None:
        self.path, self.list_path = path, list_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()

    def write(self, decision: Ban | Unban, written: datetime) -> None:
        line = format_line(decision, self.pid, written)
        # O_APPEND: one write per line, so fail2ban never sees half a line.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, line.encode("ascii"))
        finally:
            os.close(fd)

    def write_list(self, addresses: list[str]) -> None:
        if self.list_path is None:
            return
        self.list_path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{feed_address(a)}\n" for a in sorted(set(addresses)))
        fd, tmp = tempfile.mkstemp(dir=self.list_path.parent, prefix=".banned.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.list_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
