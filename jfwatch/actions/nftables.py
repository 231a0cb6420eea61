"""
The ``nftables`` enforcer, for a single host without Fail2Ban: banned addresses are
elements of named sets (IPv4 and IPv6 addresses, and IPv6 networks: an attacker counted
by its /64 is banned by it) whose per-element timeout is the ban's remaining duration, so
the kernel lifts each ban on time even while jfwatch is stopped.  Networks have a set of
their own because only an interval set takes them, and a set's flags cannot change once
it exists (an install from before keeps its two sets as they are).

The table and sets are created at start (``add`` is idempotent: an existing table, its
sets and their elements survive a jfwatch restart); no rule is added: the example in
``contrib/nftables/jfwatch.nft`` drops traffic from both sets, and where it goes is the
admin's choice.  Each change is one ``nft -f -`` transaction.  Needs CAP_NET_ADMIN.
"""

from __future__ import annotations

import ipaddress
import json
import re
import subprocess
from collections.abc import Sequence
from datetime import datetime

from jfwatch.addresses import address_or_network

NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,31}$"


class NftError(Exception):
    """nft refused or could not run; the message is nft's own."""


class Nftables:
    """An ``enforce.Enforcer``."""

    name = "nftables"

    def __init__(self, table: str = "jfwatch", family: str = "inet",
                 command: Sequence[str] = ("nft",), timeout: float = 10.0) -> None:
        """``command``: how to run nft (a helper with the privilege, like ``sudo -n nft``,
        keeps jfwatch itself unprivileged)."""
        if not re.match(NAME_PATTERN, table) or family not in ("inet", "ip", "ip6"):
            raise NftError(f"not a table name and family: {family} {table}")
        self.table, self.family, self.command, self.timeout = table, family, list(command), timeout

    @property
    def sets(self) -> tuple[str, str, str]:
        return "banned4", "banned6", "banned6net"

    def setup(self) -> None:
        """The table and the sets, if they are not there yet."""
        t = f"{self.family} {self.table}"
        self._run(f"add table {t}\n"
                  f"add set {t} banned4 {{ type ipv4_addr; flags timeout; }}\n"
                  f"add set {t} banned6 {{ type ipv6_addr; flags timeout; }}\n"
                  f"add set {t} banned6net {{ type ipv6_addr; flags interval, timeout; }}\n")

    def ban(self, ip: str, rule: str, until: datetime, ref: str, now: datetime
            ) -> tuple[str, str | None]:
        """The address in its set until ``until`` (a ban already there gets the new
        timeout: delete and add in one transaction)."""
        seconds = max(1, round((until - now).total_seconds()))
        element = self._element(ip)
        self._run(f"add element {element} }}\ndelete element {element} }}\n"
                  f"add element {element} timeout {seconds}s }}\n")
        return f"{self._set_of(ip)} timeout {seconds}s", None

    def find(self, ip: str, ref: str) -> str | None:
        return None  # delivering again sets the same end: nothing to look up

    def held(self) -> set[str]:
        """Every address and network in the sets now (the kernel's view: after a reboot,
        or a ruleset flushed, the sets are empty whatever jfwatch asked before)."""
        out: set[str] = set()
        for name in self.sets:
            try:
                done = subprocess.run([*self.command, "-j", "list", "set", self.family,
                                       self.table, name], capture_output=True, text=True,
                                      timeout=self.timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise NftError(f"cannot run {' '.join(self.command)}: {exc}") from None
            if done.returncode != 0:
                raise NftError((done.stderr or done.stdout).strip()[:300] or "nft failed")
            for item in json.loads(done.stdout).get("nftables", []):
                for elem in (item.get("set") or {}).get("elem", []):
                    value = elem.get("elem", {}).get("val") if isinstance(elem, dict) else elem
                    if isinstance(value, dict) and "prefix" in value:
                        value = f"{value['prefix']['addr']}/{value['prefix']['len']}"
                    try:
                        out.add(address_or_network(str(value)))
                    except ValueError:
                        continue  # nothing jfwatch put there
        return out

    def unban(self, ip: str, ids: list[str]) -> str:
        element = self._element(ip)
        self._run(f"add element {element} }}\ndelete element {element} }}\n")
        return f"removed from {self._set_of(ip)}"

    def _set_of(self, ip: str) -> str:
        if "/" in ip:
            if ipaddress.ip_network(ip, strict=False).version == 4:
                raise NftError(f"no set for IPv4 networks: {ip}")
            return self.sets[2]
        return self.sets[ipaddress.ip_address(ip).version == 6]

    def _element(self, ip: str) -> str:
        # Parsed and formatted again: never a string from elsewhere into a script.
        value = ipaddress.ip_network(ip, strict=False) if "/" in ip else ipaddress.ip_address(ip)
        return f"{self.family} {self.table} {self._set_of(ip)} {{ {value}"

    def _run(self, script: str) -> None:
        try:
            done = subprocess.run([*self.command, "-f", "-"], input=script,
                                  capture_output=True, text=True, timeout=self.timeout,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NftError(f"cannot run {' '.join(self.command)}: {exc}") from None
        if done.returncode != 0:
            raise NftError((done.stderr or done.stdout).strip().splitlines()[0]
                           if (done.stderr or done.stdout).strip() else f"nft exit {done.returncode}")
