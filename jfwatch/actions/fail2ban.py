"""
Asking Fail2Ban what it enforces, through ``fail2ban-client`` (its socket speaks pickle
to root only: the client, run by whoever may, is the supported way in).  Used by
``jfwatch bans``: a ban is "confirmed" only when the jail holds it.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

_HELD = re.compile(r"(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+ (\d+) = "
                   r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


class Fail2banUnreachable(Exception):
    """The client could not ask the server (not running, no rights on its socket)."""


class Fail2banClient:
    def __init__(self, jail: str, socket: Path | None = None, timeout: float = 30.0,
                 command: Sequence[str] | None = None) -> None:
        """``command``: how to run the client (``["sudo", "-n", "fail2ban-client"]`` with a
        sudoers rule keeps the daemon unprivileged); the one on PATH by default."""
        self.jail, self.timeout = jail, timeout
        self.socket = ["-s", str(socket)] if socket else []
        self.client = list(command) if command else \
            [shutil.which("fail2ban-client") or "/usr/bin/fail2ban-client"]

    def command(self, *args: str) -> list[str]:
        """The command line, as a person would type it (for "run this")."""
        return ["fail2ban-client", *self.socket, *args]

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run([*self.client, *self.socket, *args], capture_output=True,
                                  text=True, timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise Fail2banUnreachable(str(exc)) from None
        if done.returncode != 0:
            why = (done.stderr or done.stdout).strip().splitlines()
            raise Fail2banUnreachable(why[-1][-300:] if why else f"exit {done.returncode}")
        return done.stdout

    def held(self) -> dict[str, datetime]:
        """Every address or network the jail bans now, with the end Fail2Ban will lift it
        at (its times are the server's local time: the client runs on the same host)."""
        out = self._run("get", self.jail, "banip", "--with-time")
        local = datetime.now().astimezone().tzinfo
        return {m[1]: datetime.strptime(m[4], "%Y-%m-%d %H:%M:%S").replace(tzinfo=local)
                .astimezone(UTC) for m in _HELD.finditer(out)}

    def unban(self, ip: str) -> None:
        self._run("set", self.jail, "unbanip", ip)

    def ban(self, ip: str) -> None:
        self._run("set", self.jail, "banip", ip)

    def number(self, *args: str, default: float | None = None) -> float:
        """A setting that is a number (``get <jail> bantime``)."""
        out = self._run(*args).strip()
        try:
            return float(out.split()[-1]) if out else float("nan")
        except ValueError:
            if default is not None:
                return default
            raise Fail2banUnreachable(f"{' '.join(args)}: not a number: {out[:80]}") from None

    def words(self, *args: str) -> list[str]:
        r"""The items of a list setting (``get <jail> ignoreip``), as the client prints
        them (``|- item`` and ``\`- item`` lines)."""
        out = self._run(*args)
        return [line.split("- ", 1)[1].strip() for line in out.splitlines()
                if line.lstrip().startswith(("|-", "`-")) and "- " in line]


class Fail2banEnforcer:
    """
    An ``enforce.Enforcer`` that reads Fail2Ban back: the feed carries the ban, this
    confirms that the jail holds it ("confirmed until T"), says why not where it cannot
    ("NOT enforced: in the jail's ignoreip"), and puts a ban back that the jail skipped
    (Fail2Ban started after the line was older than its findtime, or restarted without
    it) through ``set <jail> banip``.  At the ban's end it lifts it (``unbanip``): a ban
    put back lasts the jail's bantime from then, and jfwatch's stated end is the one that
    holds.  Runs on the enforcement thread, never the one that reads logs.
    """

    name = "fail2ban"
    wants_expiry = True  # a put-back ban outlasts jfwatch's end unless it is lifted

    def __init__(self, client: Fail2banClient, expected: dict[str, float], *,
                 wait_for_feed: float = 2.0) -> None:
        """``expected``: what jfwatch assumes of the jail (bantime, factor, maxtime in
        seconds), compared once with what the jail says."""
        self.client, self.expected, self.wait_for_feed = client, expected, wait_for_feed
        self.ignored: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self.disagreements: list[str] = []
        # What the jail said at the last setup (seconds; factor), read by the daemon's
        # thread to state durations as the jail enforces them.  Replaced whole.
        self.jail_says: dict[str, float] | None = None

    def setup(self) -> None:
        jail = self.client.jail
        said = {"bantime": self.client.number("get", jail, "bantime"),
                "factor": self.client.number("get", jail, "bantime.factor", default=1.0),
                "maxtime": self.client.number("get", jail, "bantime.maxtime", default=-1.0)}
        self.disagreements = [
            f"the jail's {key} is {said[key]:g}, jfwatch's config says {value:g} (the "
            "jail's is used while it answers)"
            for key, value in self.expected.items()
            if said.get(key, -1.0) >= 0 and abs(said[key] - value) > 0.01]
        self.jail_says = {k: v for k, v in said.items() if v == v and v >= 0}  # not NaN
        self.ignored = []
        for word in self.client.words("get", jail, "ignoreip"):
            try:
                self.ignored.append(ipaddress.ip_network(word, strict=False))
            except ValueError:
                continue  # a host name: Fail2Ban resolves it, jfwatch cannot know

    def held(self) -> set[str]:
        return set(self.client.held())

    def ban(self, ip: str, rule: str, until: datetime, ref: str, now: datetime
            ) -> tuple[str, str | None]:
        deadline = time.monotonic() + self.wait_for_feed
        while True:
            end = self.client.held().get(ip)
            if end is not None:
                return f"confirmed by Fail2Ban until {end:%Y-%m-%dT%H:%M:%SZ}", None
            if self._ignored(ip):
                return "NOT enforced: in the jail's ignoreip", None
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # the jail reads the feed within about a second
        self.client.ban(ip)  # skipped by the jail: put back
        end = self.client.held().get(ip)
        if end is None:
            raise Fail2banUnreachable(f"the jail does not hold {ip} after banip")
        return f"put back by banip: confirmed by Fail2Ban until {end:%Y-%m-%dT%H:%M:%SZ}", None

    def find(self, ip: str, ref: str) -> str | None:
        return None  # asking again gives the answer

    def unban(self, ip: str, ids: list[str]) -> str:
        try:
            self.client.unban(ip)
        except Fail2banUnreachable as exc:
            if "not banned" in str(exc).lower():
                return "not held (already lifted)"
            raise
        return "lifted"

    def _ignored(self, ip: str) -> bool:
        net = ipaddress.ip_network(ip, strict=False)
        return any(n.version == net.version and net.subnet_of(n)  # type: ignore[arg-type]
                   for n in self.ignored)
