"""
One authentication reported twice: by Jellyfin's log and by its Activity Log (the
``jellyfin_api`` source), so that an admin can enable both.

Two events are the same authentication when they have the same kind, service and user
(case-folded), come from different parsers, are dated within ``window`` of each other,
and their addresses agree (equal, or one of them has none: Jellyfin's log writes a
success without one).  The second is dropped, unless it brings the address the first
lacked: then it goes only to the rules that need an address (which skipped the first).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from jfwatch.events import Event, IPAddress

_MAX_KEYS = 4096  # users tracked at once; a flood of names empties it (no false merge)
_MAX_PER_KEY = 64  # reports kept per user: a flood on one name stays cheap to scan


class Seen(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    ADDS_ADDRESS = "adds_address"


@dataclass(slots=True)
class _Report:
    time: int  # microseconds since the epoch
    parser: str
    ip: IPAddress | None
    paired: bool = False  # already matched with a report from the other parser


class RecentLogins:
    def __init__(self, window_micros: int) -> None:
        self.window = window_micros
        self._recent: dict[tuple[str, str, str], list[_Report]] = {}
        self.duplicates = 0

    def classify(self, event: Event, now: int) -> Seen:
        if self.window <= 0 or event.user is None:
            return Seen.NEW
        key = (event.kind, event.service, event.user.casefold())
        entries = self._recent.get(key)
        if entries is None:
            if len(self._recent) >= _MAX_KEYS:
                self._recent.clear()
            entries = self._recent[key] = []
        entries[:] = [e for e in entries if abs(now - e.time) <= self.window]
        for report in entries:
            if report.paired or report.parser == event.source or not _agree(report.ip, event.ip):
                continue
            report.paired = True  # one pair per authentication
            self.duplicates += 1
            if report.ip is None and event.ip is not None:
                return Seen.ADDS_ADDRESS
            return Seen.DUPLICATE
        entries.append(_Report(now, event.source, event.ip))
        if len(entries) > _MAX_PER_KEY:
            del entries[0]
        return Seen.NEW


def _agree(first: IPAddress | None, second: IPAddress | None) -> bool:
    return first is None or second is None or first == second
