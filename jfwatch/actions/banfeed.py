"""
The Fail2Ban-compatible ban feed: one append-only file, never renamed by jfwatch, one
line per decision, and nothing an attacker typed (no usernames, no user agents):

    2026-01-02T21:00:37+00:00 jfwatch[812]: BAN 203.0.113.50 rule=brute-force-ip duration=14400s
    2026-01-02T21:00:38+00:00 jfwatch[812]: BAN 2001:db8:1:2::/64 rule=brute-force-ip duration=14400s

plus a plain list of currently banned addresses, replaced atomically, for nginx ``deny``,
ipset or ``cscli decisions import``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from datetime import datetime, timedelta
from pathlib import Path

from jfwatch.addresses import address_or_network
from jfwatch.detect.decisions import Ban, Unban

RECENT = timedelta(seconds=30)  # a ban decided this long ago is stamped with its own time
_RULE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_BAN_LINE = re.compile(r"^(?P<stamp>\S+) jfwatch\[\d+\]: BAN (?P<ip>\S+) rule=(?P<rule>\S+) ")


def feed_address(ip: str) -> str:
    """Canonical address or network for the feed; IPv4-mapped IPv6 is written as IPv4,
    a network (``2001:db8:1:2::/64``, an IPv6 prefix banned whole) in CIDR form, which
    the jail's ``<SUBNET>`` matches and Fail2Ban's actions ban as one network."""
    return address_or_network(ip)


def format_line(decision: Ban | Unban, pid: int, written: datetime) -> str:
    """
    The feed line; every field has a restricted character set.

    The stamp is when the ban was decided, where that was just now (the daemon decides on
    the wall clock: Fail2Ban's ban then starts, and ends, exactly when jfwatch says), else
    when the line is written (a backfilled or retried decision is not dropped by Fail2Ban
    as older than its findtime); the duration is what is left of the ban.
    """
    if not _RULE.match(decision.rule):
        raise ValueError(f"rule name not safe for the feed: {decision.rule!r}")
    if isinstance(decision, Ban) and timedelta(0) <= written - decision.time <= RECENT:
        written = decision.time
    stamp = written.isoformat(timespec="seconds")
    addr = feed_address(decision.ip)
    if isinstance(decision, Ban):
        left = max(1, int((decision.until - written).total_seconds()))
        return (f"{stamp} jfwatch[{pid}]: BAN {addr} rule={decision.rule} "
                f"duration={left}s level={decision.level}\n")
    return f"{stamp} jfwatch[{pid}]: UNBAN {addr} rule={decision.rule}\n"


FEED_MODE = 0o640  # Fail2Ban (root or the adm group) reads it; nobody else needs to


def open_for_append(path: Path, mode: int = FEED_MODE) -> int:
    """
    Open (creating) a file jfwatch appends to, refusing a symlink or anything but a
    regular file in its place: whoever can plant a link there must not get BAN lines
    written into a file of their choosing, nor block the daemon with a FIFO.
    """
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(exc.errno, f"{path} is a symlink: refusing to write through it "
                                     "(remove the link; jfwatch creates the file itself)") from None
        if exc.errno == errno.ENXIO:  # a FIFO without a reader (O_NONBLOCK: never waits)
            raise OSError(exc.errno, f"{path} is not a regular file (a FIFO): refusing to "
                                     "write to it (remove it; jfwatch creates the file "
                                     "itself)") from None
        if exc.errno == errno.EISDIR:
            raise OSError(exc.errno, f"{path} is a directory: the ban feed cannot be written "
                                     "(remove it; jfwatch creates the file itself)") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, f"{path} is not a regular file: refusing to write to it")
    return fd


class BanFeed:
    """Appends decisions to the feed and keeps the banned list file current."""

    def __init__(self, path: Path, list_path: Path | None) -> None:
        self.path, self.list_path = path, list_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        # Created (empty) at once, so that Fail2Ban's jail finds its log from the first
        # start, and checked at once, so that a planted symlink stops the start with a
        # clear error instead of at the first ban.  Any other problem (a full disk, a
        # directory in its place) is a fault the daemon reports and retries.
        self.problem: str | None = None
        try:
            os.close(open_for_append(path))
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise
            self.problem = str(exc)

    def write(self, decision: Ban | Unban, written: datetime) -> None:
        """
        Append one line, whole or not at all: O_APPEND and one write per line, and a
        write cut short (a full disk) is cut back off, so no later line is appended to
        half a line that Fail2Ban's filter would no longer match.  OSError if it failed.
        """
        data = format_line(decision, self.pid, written).encode("ascii")
        fd = open_for_append(self.path)
        try:
            size = os.fstat(fd).st_size
            try:
                if os.write(fd, data) != len(data):
                    raise OSError(errno.ENOSPC, "short write (disk full?)")
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise
        finally:
            os.close(fd)

    def last_bans(self, tail_bytes: int = 1 << 20) -> dict[tuple[str, str], datetime]:
        """When each (address, rule) was last written as a BAN line, in the feed's last
        ``tail_bytes`` (read once): after a crash between writing a ban and recording that
        it was written, it is not written twice."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(max(0, os.fstat(fh.fileno()).st_size - tail_bytes))
                tail = fh.read().decode("ascii", errors="replace").splitlines()
        except OSError:
            return {}
        last: dict[tuple[str, str], datetime] = {}
        for line in tail:
            m = _BAN_LINE.match(line)
            if m is None:
                continue
            try:
                last[m["ip"], m["rule"]] = datetime.fromisoformat(m["stamp"])
            except ValueError:
                continue
        return last

    def write_list(self, addresses: list[str]) -> None:
        if self.list_path is None:
            return
        self.list_path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{feed_address(a)}\n" for a in sorted(set(addresses)))
        # A fresh file renamed over the list: a symlink in its place is replaced, never
        # followed.
        fd, tmp = tempfile.mkstemp(dir=self.list_path.parent, prefix=".banned.")
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(body)
            os.chmod(tmp, FEED_MODE)
            os.replace(tmp, self.list_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
