"""
The detector's state kept in dictionaries, for a replay without ``--state``: nothing
outlives the run, so nothing needs SQLite, whose per-statement cost is a tenth of a
replay's detection time.  Same behaviour as ``StateStore`` for everything the detector
asks (a test replays the same logs through both).
"""

from __future__ import annotations

from datetime import UTC, datetime

from jfwatch.state import BanRow


class MemoryState:
    """Bans, repeat-offender counts and first-seen values of one run."""

    def __init__(self) -> None:
        self._bans: dict[str, BanRow] = {}
        self._ban_counts: dict[str, int] = {}
        self._last_ban: dict[str, datetime] = {}
        self._values: set[tuple[str, str, str]] = set()
        self._keys: set[tuple[str, str]] = set()
        self._known: dict[str, tuple[str, datetime]] = {}

    # -- bans (times kept in UTC, as the state file keeps them) -------------------
    def active_ban(self, ip: str) -> BanRow | None:
        return self._bans.get(ip)

    def record_ban(self, ip: str, rule: str, since: datetime, until: datetime, level: int) -> None:
        self._bans[ip] = BanRow(ip, rule, since.astimezone(UTC), until.astimezone(UTC), level)
        self._ban_counts[ip] = self._ban_counts.get(ip, 0) + 1
        self._last_ban[ip] = since

    def remove_ban(self, ip: str) -> BanRow | None:
        return self._bans.pop(ip, None)

    def expired_bans(self, now: datetime) -> list[BanRow]:
        ending = sorted(self._bans.values(), key=lambda ban: ban.until)
        return [ban for ban in ending if ban.until <= now][:10_000]

    def next_expiry(self) -> datetime | None:
        return min((ban.until for ban in self._bans.values()), default=None)

    def ban_count(self, ip: str, since: datetime | None = None) -> int:
        if since is not None and self._last_ban.get(ip, since) < since:
            return 0
        return self._ban_counts.get(ip, 0)

    # -- known addresses ------------------------------------------------------------
    def mark_known(self, ips: tuple[str, ...], user: str, when: datetime) -> None:
        for ip in ips:
            last = self._known.get(ip)
            if last is None or when > last[1]:
                self._known[ip] = (user, when)

    def any_known(self) -> bool:
        return bool(self._known)

    def known(self, ip: str, since: datetime) -> tuple[str, datetime] | None:
        found = self._known.get(ip)
        return found if found is not None and found[1] >= since else None

    # -- first seen -----------------------------------------------------------------
    def has_values(self, rule: str, key: str) -> bool:
        return (rule, key) in self._keys

    def remember(self, rule: str, key: str, value: str, when: datetime) -> bool:
        """Store a value; return True if it was new."""
        if (rule, key, value) in self._values:
            return False
        self._values.add((rule, key, value))
        self._keys.add((rule, key))
        return True
