"""
What log collectors put around a line of any format, and how to take it off: journald
and syslog (RFC 3339 and BSD), ``docker logs -t``, ``docker compose logs`` and
``kubectl logs --prefix`` prefixes, Docker's ``json-file`` driver and podman/CRI
``k8s-file``.  The wrapper's time (with its offset) dates lines that carry only a clock
(Jellyfin's console sink); a line split by the collector (json-file over 16 KiB, CRI
``P``) is joined again.

Every wrapper is anchored at the start of the physical line and ends where the wrapped
line begins: nothing inside the wrapped line (attacker text) can make a wrapper.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, tzinfo

from jfwatch.parsers.base import json_object
from jfwatch.timestamps import parse_iso

_RFC3339 = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})"
# CRI / podman k8s-file: "<RFC3339Nano> stdout F <line>" (P: more of the line follows).
_CRI = re.compile(rf"^(?P<time>{_RFC3339}) (?:stdout|stderr) (?P<tag>[FP])(?::\S*)? (?P<rest>.*)$")
# journald short-iso / rsyslog RFC 3339 ("<time> host prog[pid]: "), or docker logs -t
# ("<time> ").
_ISO_SYSLOG = re.compile(rf"^(?P<time>{_RFC3339}) (?:\S+ [\w./@-]+(?:\[\d+\])?: )?(?P<rest>.*)$")
_BSD_SYSLOG = re.compile(
    r"^(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(?P<day>\d{1,2}) "
    r"(?P<clock>\d{2}:\d{2}:\d{2}) \S+ [\w./@-]+(?:\[\d+\])?: (?P<rest>.*)$")
_COMPOSE = re.compile(r"^[\w.-]+\s*\| (?P<rest>.*)$")
_KUBECTL = re.compile(r"^\[pod/[^\]\s]+\] (?P<rest>.*)$")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}
_MAX_DEPTH = 3  # journald around compose around ... is still a few layers
_MAX_PARTIAL = 1 << 20  # a split line is joined up to this many characters


@dataclass(frozen=True, slots=True)
class Unwrapped:
    line: str
    time: datetime | None  # the wrapper's (outermost) time, with an offset
    partial: bool = False  # more of this line follows in the next wrapped line


def unwrap(line: str, tz: tzinfo, today: date | None = None) -> Unwrapped | None:
    """The line inside the wrappers around it, or None when it has none."""
    found: Unwrapped | None = None
    for _ in range(_MAX_DEPTH):
        inner = _one(line, tz, today)
        if inner is None:
            break
        when = found.time if found is not None and found.time is not None else inner.time
        found = Unwrapped(inner.line, when, inner.partial or (found is not None and found.partial))
        line = inner.line
    return found


def _one(line: str, tz: tzinfo, today: date | None) -> Unwrapped | None:
    if line.startswith('{"log":'):  # Docker json-file: {"log":"...\n","stream":..,"time":..}
        doc = json_object(line)
        if doc is None or not isinstance(doc.get("log"), str):
            return None
        text, when = doc["log"], doc.get("time")
        stamp = parse_iso(when, tz) if isinstance(when, str) else None
        return Unwrapped(text.rstrip("\r\n"), stamp, partial=not text.endswith("\n"))
    if m := _CRI.match(line):
        return Unwrapped(m["rest"], parse_iso(m["time"], tz), partial=m["tag"] == "P")
    if m := _ISO_SYSLOG.match(line):
        return Unwrapped(m["rest"], parse_iso(m["time"], tz))
    if m := _BSD_SYSLOG.match(line):
        return Unwrapped(m["rest"], _bsd_time(m["mon"], m["day"], m["clock"], tz, today))
    if m := _KUBECTL.match(line):
        return Unwrapped(m["rest"], None)
    if m := _COMPOSE.match(line):
        return Unwrapped(m["rest"], None)
    return None


def _bsd_time(mon: str, day: str, clock: str, tz: tzinfo, today: date | None) -> datetime | None:
    """BSD syslog has no year: this year, or last year for a date that is still ahead."""
    today = today or datetime.now(tz).date()
    try:
        guess = date(today.year, _MONTHS[mon], int(day))
    except ValueError:
        return None
    if guess > today:
        guess = guess.replace(year=today.year - 1)
    return parse_iso(f"{guess.isoformat()}T{clock}", tz)


class Joiner:
    """Joins the pieces of a line a collector split (json-file, CRI ``P``), bounded."""

    def __init__(self) -> None:
        self._pieces: list[str] = []
        self._size = 0

    def add(self, piece: Unwrapped) -> str | None:
        """The whole line once its last piece came, else None."""
        if self._size < _MAX_PARTIAL:
            self._pieces.append(piece.line)
            self._size += len(piece.line)
        if piece.partial:
            return None
        whole = "".join(self._pieces)
        self._pieces, self._size = [], 0
        return whole

    def take(self) -> str | None:
        """What waits for its last piece, as it is (the end of input, or waited too long)."""
        if not self._pieces:
            return None
        whole = "".join(self._pieces)
        self._pieces, self._size = [], 0
        return whole

    @property
    def waiting(self) -> bool:
        return bool(self._pieces)
