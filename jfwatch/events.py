"""Values that flow through the pipeline: one typed Event for every source."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from json.encoder import encode_basestring as _enc
from typing import Any

from jfwatch.addresses import address
from jfwatch.isotime import iso_time

IPAddress = IPv4Address | IPv6Address


class EventKind(StrEnum):
    """What happened, normalised across sources; rules match on these values."""

    AUTH_FAILURE = "auth_failure"
    AUTH_SUCCESS = "auth_success"
    AUTH_BLOCKED = "auth_blocked"  # disabled account, remote access off, parental schedule, IP filter
    ACCOUNT_LOCKED = "account_locked"
    MFA_FAILURE = "mfa_failure"
    MFA_SUCCESS = "mfa_success"
    MFA_CHALLENGE = "mfa_challenge"
    TOKEN_FAILURE = "token_failure"  # noqa: S105 - an event name, not a secret
    INJECTION_SUSPECTED = "injection_suspected"


_KINDS = {kind.value: kind for kind in EventKind}
EventRow = tuple[datetime, str, str, str, str, str | None, str | None, str | None, str | None,
                 int | None, str | None, str]


@dataclass(slots=True)
class Event:
    """
    One security-relevant log line, normalised.  Treat it as immutable: derive changed
    copies with ``dataclasses.replace``.  (It is not ``frozen`` because a frozen
    dataclass costs five times as much to build, and backfill builds one per event.)

    ``time`` is timezone-aware and comes from the log line, never the wall clock.
    ``origin`` is ``"<parser>.<pattern>"``. ``ip`` is set only when it was taken from
    the position the application writes it and parsed as an address. ``excerpt`` is the
    raw line with secrets redacted and control characters escaped.
    """

    time: datetime
    source: str
    kind: EventKind
    origin: str
    service: str
    ip: IPAddress | None = None
    user: str | None = None
    method: str | None = None
    path: str | None = None
    status: int | None = None
    detail: str | None = None
    excerpt: str = ""
    # ``time.isoformat()``, set right after construction by a parser that read the time
    # as text (the file sink's header) and so had it at hand: formatting a time was a
    # sixth of the cost of a JSON line.  Not an __init__ argument, so
    # ``dataclasses.replace`` gives a copy without it (formatted from ``time`` when
    # needed), never a stale one.
    time_text: str | None = field(default=None, init=False, repr=False, compare=False)

    def json_line(self) -> str:
        """``json.dumps(self.to_json(), ensure_ascii=False)``, written out field by field.

        ``jfwatch parse`` and the event export write one of these per event, so this is
        on the hot path of every backfill; a test checks it equals ``json.dumps``.  The
        fields a parser's pattern fixes (source, kind, origin, service, ...) are encoded
        once per combination.
        """
        fixed = (self.source, self.kind, self.origin, self.service, self.method, self.path,
                 self.status, self.detail)
        parts = _FIXED_PARTS.get(fixed)
        if parts is None:
            parts = _fixed_parts(fixed)
        # str(), not a format field: an address formats through a Python __format__.
        ip = "null" if self.ip is None else '"' + str(self.ip) + '"'
        user = "null" if self.user is None else _enc(self.user)
        time = self.time_text or iso_time(self.time)
        return (f'{{"time": "{time}", {parts[0]}"ip": {ip}, "user": {user}, '
                f'{parts[1]}"excerpt": {_enc(self.excerpt)}}}')

    def to_row(self) -> EventRow:
        """Plain values, cheap to pickle: how a helper process hands events over.  The
        kind goes as itself: pickle writes each member once per dump, where ``.value``
        is a Python-level property read for every event."""
        return (self.time, self.source, self.kind, self.origin, self.service,
                None if self.ip is None else str(self.ip), self.user, self.method, self.path,
                self.status, self.detail, self.excerpt)

    @classmethod
    def from_row(cls, row: EventRow) -> Event:
        when, source, kind, origin, service, ip, user, method, path, status, detail, text = row
        return cls(when, source, _KINDS[kind], origin, service, None if ip is None else address(ip),
                   user, method, path, status, detail, text)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready form used by ``jfwatch parse``."""
        return {
            "time": self.time.isoformat(),
            "source": self.source,
            "kind": str(self.kind),
            "ip": None if self.ip is None else str(self.ip),
            "user": self.user,
            "origin": self.origin,
            "service": self.service,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "detail": self.detail,
            "excerpt": self.excerpt,
        }


def _text(value: str | None) -> str:
    return "null" if value is None else _enc(value)


_Fixed = tuple[str, str, str, str, str | None, str | None, int | None, str | None]
# Encoded (source, kind) and (origin ... detail) parts of JSON lines, by their values.
# Bounded: a proxy's paths and details vary with what clients send.
_FIXED_PARTS: dict[_Fixed, tuple[str, str]] = {}
_FIXED_MAX = 4096


def _fixed_parts(fixed: _Fixed) -> tuple[str, str]:
    source, kind, origin, service, method, path, status, detail = fixed
    status_text = "null" if status is None else int(status)
    parts = (f'"source": {_enc(source)}, "kind": "{kind}", ',
             f'"origin": {_enc(origin)}, "service": {_enc(service)}, "method": {_text(method)}, '
             f'"path": {_text(path)}, "status": {status_text}, "detail": {_text(detail)}, ')
    if len(_FIXED_PARTS) >= _FIXED_MAX:
        _FIXED_PARTS.clear()
    _FIXED_PARTS[fixed] = parts
    return parts
