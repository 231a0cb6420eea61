"""Values that flow through the pipeline: one typed Event for every source."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any

import orjson

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
    # Where the address is (``enrich.geo``): ISO 3166 country code, autonomous system,
    # and with city-level data a city and (latitude, longitude).
    country: str | None = None
    asn: int | None = None
    city: str | None = None
    location: tuple[float, float] | None = None
    # What bans the address elsewhere (``enrich.shared_bans``: a CrowdSec LAPI's
    # decisions, in words), or None.
    listed: str | None = None

    def json_line(self) -> bytes:
        """The event as one line of JSON (``jfwatch parse``, the event export), no newline."""
        return orjson.dumps(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """Return the JSON-ready form used by ``jfwatch parse``."""
        out = {
            "time": self.time,  # orjson writes RFC 3339 with the offset
            "source": self.source,
            "kind": self.kind,
            "ip": None if self.ip is None else str(self.ip),
            "user": self.user,
            "origin": self.origin,
            "service": self.service,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "detail": self.detail,
            "excerpt": self.excerpt,
            "country": self.country,
            "asn": self.asn,
            "city": self.city,
        }
        if self.listed is not None:  # only where known: exports of other installs unchanged
            out["listed"] = self.listed
        return out
