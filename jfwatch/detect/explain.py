"""
Why a rule did or did not fire for an address or a user (``jfwatch replay --explain``),
as ``cscli explain`` and ``fail2ban-regex`` tell it for their peers: how far each rule that
groups by it got, whether the address is known, protected or banned.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

from jfwatch.detect.decisions import format_duration_s
from jfwatch.detect.detector import Detector

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _when(micros: int) -> str:
    return f"{_EPOCH + timedelta(microseconds=micros):%Y-%m-%d %H:%M:%S} UTC"


def explain(detector: Detector, subject: str) -> list[str]:
    """One line per rule that groups by the subject's kind (address or user), then what
    the state says of an address."""
    key, target = detector.key_of(subject)
    field = "ip" if target is not None else "user"
    lines = [f"{subject} ({key.replace('=', ' ', 1)}):"]
    for c in detector.rules:
        if c.group_by != (field,):
            continue
        rule = c.rule
        held = detector.group_of(c.name, key)
        if held is None:
            lines.append(f"  {c.name}: nothing counted (no matching event, or forgotten)")
            continue
        times, _, last_alert = held
        fired = f"; fired, last at {_when(last_alert)}" if last_alert is not None else ""
        if rule.type == "threshold":
            end = times[-1] if times else 0
            within = sum(1 for t in times if t >= end - c.window)
            what = f"distinct {rule.distinct}s" if rule.distinct else "attempts"
            lines.append(f"  {c.name}: {within} of {c.threshold} {what} within "
                         f"{format_duration_s(c.window / 1e6)}" +
                         (f" (last at {_when(end)})" if times else "") + fired)
        elif rule.type == "sequence":
            lines.append(f"  {c.name}: {len(times)} of {c.first_count} first steps within "
                         f"{format_duration_s(c.window / 1e6)}" + fired)
        else:
            lines.append(f"  {c.name}: " + (f"fired, last at {_when(last_alert)}"
                                            if last_alert is not None else "seen, never fired"))
    if target is not None:
        lines += _address_facts(detector, subject, target)
    return lines


def _address_facts(detector: Detector, subject: str, target: str) -> list[str]:
    out = []
    reason = detector.protected_reason(ipaddress.ip_address(subject))
    if reason is not None:
        out.append(f"  never banned: {reason}")
    known = detector.known_as(target)
    if known is not None:
        out.append(f"  known address: {known[0]} logged in from it on {known[1]:%Y-%m-%d}; "
                   "rules that count failures do not ban it")
    ban = detector.store.active_ban(target)
    out.append(f"  banned by {ban.rule} until {ban.until:%Y-%m-%d %H:%M} UTC" if ban else
               "  not banned now")
    return out
