"""
Asking Fail2Ban what it enforces, through ``fail2ban-client`` (its socket speaks pickle
to root only: the client, run by whoever may, is the supported way in).  Used by
``jfwatch bans``: a ban is "confirmed" only when the jail holds it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

_HELD = re.compile(r"(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+ (\d+) = "
                   r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


class Fail2banUnreachable(Exception):
    """The client could not ask the server (not running, no rights on its socket)."""


class Fail2banClient:
    def __init__(self, jail: str, socket: Path | None = None, timeout: float = 30.0) -> None:
        self.jail, self.timeout = jail, timeout
        self.socket = ["-s", str(socket)] if socket else []
        self.client = shutil.which("fail2ban-client") or "/usr/bin/fail2ban-client"

    def command(self, *args: str) -> list[str]:
        """The command line, as a person would type it (for "run this")."""
        return ["fail2ban-client", *self.socket, *args]

    def _run(self, *args: str) -> str:
        try:
            done = subprocess.run([self.client, *self.socket, *args], capture_output=True,
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
