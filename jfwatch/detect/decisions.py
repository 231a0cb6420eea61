"""What the detector decides: alerts, bans and unbans (plain values, JSON-ready)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from jfwatch.config.durations import format_duration


@dataclass(frozen=True, slots=True)
class Alert:
    """A rule fired.  Every field an alert message needs, nothing attacker-executable."""

    rule: str
    description: str
    severity: str
    time: datetime
    key: dict[str, str]
    ip: str | None
    user: str | None
    count: int
    window_seconds: float
    first_time: datetime
    last_time: datetime
    tags: tuple[str, ...] = ()
    simulate: bool = False
    ban_until: datetime | None = None
    # What the ban covers, where there is one: the address, or the IPv6 network the rule
    # counted over (``2001:db8:1:2::/64``).
    ban_target: str | None = None
    not_banned_reason: str | None = None
    users: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    country: str | None = None  # of ``ip``
    asn: int | None = None
    city: str | None = None
    detail: str | None = None  # what the rule type adds (impossible_travel: how far, how fast)
    samples: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": "alert", "rule": self.rule, "severity": self.severity,
            "time": self.time, "key": self.key, "ip": self.ip, "user": self.user,
            "count": self.count, "window": format_duration_s(self.window_seconds),
            "first": self.first_time, "last": self.last_time,
            "description": self.description, "tags": list(self.tags), "simulate": self.simulate,
            "ban_until": self.ban_until if self.ban_until else None,
            "ban_target": self.ban_target,
            "not_banned_reason": self.not_banned_reason, "users": list(self.users),
            "kinds": list(self.kinds), "country": self.country, "asn": self.asn,
            "city": self.city, "detail": self.detail, "samples": list(self.samples),
        }


@dataclass(frozen=True, slots=True)
class Ban:
    ip: str
    rule: str
    time: datetime
    until: datetime
    level: int

    @property
    def duration_seconds(self) -> float:
        return (self.until - self.time).total_seconds()

    def to_json(self) -> dict[str, Any]:
        return {"type": "ban", "ip": self.ip, "rule": self.rule, "time": self.time,
                "until": self.until,
                "duration": format_duration_s(self.duration_seconds), "level": self.level}


@dataclass(frozen=True, slots=True)
class Unban:
    ip: str
    rule: str
    time: datetime
    reason: str = "expired"

    def to_json(self) -> dict[str, Any]:
        return {"type": "unban", "ip": self.ip, "rule": self.rule, "time": self.time,
                "reason": self.reason}


Decision = Alert | Ban | Unban


@functools.lru_cache(maxsize=256)
def format_duration_s(seconds: float) -> str:
    """Cached: a replay writes thousands of decisions with a handful of durations."""
    return format_duration(timedelta(seconds=seconds))
