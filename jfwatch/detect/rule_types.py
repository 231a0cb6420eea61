"""What each rule type does with an event of its group, and how it fires (alert, ban)."""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from datetime import timedelta
from sys import intern
from typing import TYPE_CHECKING

from jfwatch.detect.decisions import Alert, Ban, Decision, format_duration_s
from jfwatch.detect.groups import _KIND_BITS, _MICROSECOND, _CompiledRule, _Group, _Step, micros
from jfwatch.detect.matching import _value_of
from jfwatch.detect.rules import Rule
from jfwatch.events import Event, IPAddress
from jfwatch.state import BanRow

if TYPE_CHECKING:
    from jfwatch.detect.detector import Detector

_SEQUENCE_MAX = 1000  # first-step events remembered per sequence group


# Methods of ``Detector`` (bound there): ruletypes kept apart.


def _trigger(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    group = self._group(step.c, key, now, create=True)
    assert group is not None
    within = step.c.rule.match.failed_within
    detail = None
    if within is not None and event.ip is not None:  # what the address did before
        detail = f"{self.failures_of(event.ip)} failed login(s) or second factor(s) " \
                 f"from this address, the last within {format_duration_s(within.total_seconds())}"
    elif step.c.rule.match.listed and event.listed is not None:  # what bans it elsewhere
        detail = f"CrowdSec decisions: {event.listed}"
    return self._fire(step.c, event, key, now, group, 1, now, users=(),
                      kinds=(event.kind,), detail=detail)


def _threshold(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    c = step.c
    group = self._group(c, key, now, create=True)
    assert group is not None
    group.kinds |= _KIND_BITS[event.kind]
    last = group.last_alert
    if c.idle and last is not None and self._at_us < last + c.idle and \
            not self._unbanned(c, event):
        # Until the cooldown's end minus the window no event can count towards the
        # next alert, so none is tracked (the bulk of a long attack), unless the
        # address is not banned now (lifted by hand, or a ban shorter than the cooldown).
        return []
    threshold, distinct = c.threshold, c.distinct
    times = group.times
    if times is None:
        times = group.times = array("q")
    # Only the last ``threshold`` times (of distinct values) are kept: whether that
    # many fell within the window decides, and no flood can grow a group past it.
    if distinct is not None:
        # Interned: the same names and addresses recur across thousands of groups.
        value = intern((event.user or "").casefold() if distinct == "user" else
                       (str(event.ip) if event.ip else ""))
        if not value:
            return []
        if group.values is None:
            group.values = []
        values = group.values
        if value in values:
            seen = values.index(value)
            del values[seen], times[seen]
        values.append(value)
    times.append(now)
    if len(times) > threshold:
        del times[0]
        if group.values is not None:
            del group.values[0]
    if len(times) < threshold or times[0] < now - c.window:
        return []
    if last is not None and c.cooldown and self._at_us - last < c.cooldown and \
            not self._unbanned(c, event):
        return []  # one alert per cooldown: the window slides on, nothing is said
    users = tuple(sorted(group.values))[:10] if distinct == "user" and group.values else ()
    kinds = tuple(kind for kind, bit in _KIND_BITS.items() if group.kinds & bit)
    out = self._fire(c, event, key, now, group, threshold, times[0], users=users,
                     kinds=kinds)
    if out:
        group.clear()
    return out


def _sequence(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    c = step.c
    horizon = now - c.window
    then, first_step = step.then, step.first
    if then is True or (then is not False and then(event)):
        group = self._group(c, key, now, create=False)
        if group is None or group.times is None:
            return []
        firsts = group.times
        stale = bisect_left(firsts, horizon)
        if stale:
            del firsts[:stale]
        if len(firsts) < c.first_count:  # first_count >= 1: never an empty array
            return []
        count, first = len(firsts), firsts[0]
        del firsts[:]
        return self._fire(c, event, key, now, group, count + 1, first, users=(),
                          kinds=(event.kind,))
    if first_step is True or (first_step is not False and first_step(event)):
        group = self._group(c, key, now, create=True)
        assert group is not None
        times = group.times
        if times is None:
            times = group.times = array("q")
        times.append(now)
        # Bounded for floods; large enough that the alert reports the real count.
        if len(times) > max(c.first_count, _SEQUENCE_MAX):
            del times[0]
        stale = bisect_left(times, horizon)
        if stale:
            del times[:stale]
    return []


def _new_value(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    c = step.c
    # An IPv6 address by its network: privacy addresses change daily, a place not.
    value = self._counted_as(event.ip) \
        if c.rule.field == "ip" and event.ip is not None else _value_of(c.rule.field, event)
    if value is None:
        return []
    known_before = self.store.has_values(c.name, key)
    is_new = self.store.remember(c.name, key, value, event.time)
    if not (is_new and known_before):
        return []  # the very first value of a group is its baseline, not news
    group = self._group(c, key, now, create=True)
    assert group is not None
    return self._fire(c, event, key, now, group, 1, now, users=(), kinds=(event.kind,))


def _travel(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    """Two events of a group from places farther apart than the rule's speed allows
    in the time between them.  Needs coordinates (a City database)."""
    if event.location is None:
        return []
    c = step.c
    group = self._group(c, key, now, create=True)
    assert group is not None
    before, group.place = group.place, (now, *event.location)
    if before is None:
        return []
    km = distance_km(before[1:], event.location)
    hours = max(now - before[0], 1) / 3.6e9
    rule = c.rule
    if km < rule.min_distance_km or km / hours <= rule.max_speed_kmh:
        return []
    return self._fire(c, event, key, now, group, 2, before[0], users=(),
                      kinds=(event.kind,),
                      detail=f"{km:,.0f} km in {format_duration_s(round(hours * 3600))}"
                             f" ({km / hours:,.0f} km/h)")


def _campaign(self: Detector, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
    """One failure of a possible campaign (``detect.campaign``): its report when it
    starts and as it grows, and a ban for each address taking part."""
    if event.ip is None or event.user is None:
        return []
    c = step.c
    campaign = self._campaigns[c.name][1]
    target = self._counted_as(event.ip)
    done = campaign.failure(target, event.ip, event.user.casefold(), now)
    out: list[Decision] = []
    banned = self._sweep(c.rule, done.sweep)
    if done.report:
        assert campaign.since is not None
        accounts = campaign.accounts
        out.append(Alert(
            rule=c.name, description=c.rule.description, severity=c.rule.severity,
            time=event.time, key={}, ip=None, user=None, count=campaign.attempts,
            window_seconds=c.rule.window.total_seconds(),
            first_time=event.time - (now - campaign.since) * _MICROSECOND,
            last_time=event.time,
            tags=tuple(c.rule.actions.notify.tags) if c.rule.actions.notify else (),
            simulate=c.rule.simulate, users=tuple(sorted(accounts))[:10],
            kinds=(event.kind,),
            detail=f"{campaign.addresses} addresses, {len(accounts)} accounts, "
                   f"{campaign.attempts} attempts, {campaign.successes} successful "
                   f"login(s) from them; {len(campaign.swept)} addresses banned or "
                   "to be banned",
            samples=(event.excerpt,)))
    return out + banned


def _sweep(self: Detector, rule: Rule, members: list[tuple[str, IPAddress]]) -> list[Decision]:
    if rule.actions.ban is None:
        return []
    out: list[Decision] = []
    for target, address in members:
        ban, _ = self._ban(rule, address, target, self.store.active_ban(target))
        if ban is not None:
            out.append(ban)
    return out


def _campaigns_due(self: Detector, now: int) -> list[Decision]:
    out: list[Decision] = []
    for rule, campaign in self._campaigns.values():
        if campaign.since is not None:
            out += self._sweep(rule, campaign.due(now))
    return out

# -- firing -----------------------------------------------------------------
def _key_fields(self: Detector, group_by: tuple[str, ...], event: Event) -> dict[str, str]:
    """An alert's group key as fields, e.g. ``{"ip": "2001:db8::/64"}``."""
    keys = self._event_keys(event)
    return {name: keys[name].partition("=")[2] for name in group_by}


def _fire(self: Detector, c: _CompiledRule, event: Event, key: str, now: int, group: _Group,
          count: int, first: int, *, users: tuple[str, ...], kinds: tuple[str, ...],
          detail: str | None = None) -> list[Decision]:
    rule = c.rule
    at = self._at
    if group.last_alert is not None and c.cooldown and \
            self._at_us - group.last_alert < c.cooldown and not self._unbanned(c, event):
        return []
    target = self.ban_target(c, event) if rule.actions.ban is not None else None
    active = self.store.active_ban(target) if target is not None else None
    if active is not None and c.cooldown and active.rule == rule.name and \
            at - active.since < rule.cooldown and active.until > at:
        # The in-memory cooldown is lost on restart (or eviction); the ban is not.
        # An address this rule banned within its cooldown is not announced again.
        group.last_alert = micros(active.since)
        return []
    group.last_alert = self._at_us
    out: list[Decision] = []
    ban_until, reason = None, None
    if rule.actions.ban is not None:
        ban, reason = self._ban(rule, event.ip, target, active)
        if ban is not None:
            out.append(ban)
            ban_until = ban.until
            self._demote(key)
        elif reason is None and active is not None:
            ban_until = active.until
    alert = Alert(
        rule=rule.name, description=rule.description, severity=rule.severity,
        time=event.time, key=self._key_fields(c.group_by, event),
        ip=None if event.ip is None else str(event.ip),
        ban_target=None if ban_until is None else target,
        user=event.user, count=count, window_seconds=rule.window.total_seconds(),
        # The same instant as the group's first event, in this event's offset.
        first_time=event.time - (now - first) * _MICROSECOND, last_time=event.time,
        tags=tuple(rule.actions.notify.tags) if rule.actions.notify else (),
        simulate=rule.simulate, ban_until=ban_until, not_banned_reason=reason,
        users=users, kinds=kinds, country=event.country, asn=event.asn, city=event.city,
        detail=detail, samples=(event.excerpt,))
    return [alert, *out]


def _unbanned(self: Detector, c: _CompiledRule, event: Event) -> bool:
    """Whether the rule bans and the event's address (its network) is not banned now: a
    cooldown silences repeated alerts, never a ban the attacker has earned again."""
    if not c.bans:
        return False
    target = self.ban_target(c, event)
    return target is not None and self.store.active_ban(target) is None


def _ban(self: Detector, rule: Rule, address: IPAddress | None, target: str | None,
         active: BanRow | None) -> tuple[Ban | None, str | None]:
    """A ban of ``target`` (``ban_target``), or why there is none (``active``: its
    ban now).  It starts at the decision's time: a line dated in the past still gets
    its full duration from now."""
    assert rule.actions.ban is not None
    if rule.simulate:
        return None, "simulate mode"
    if address is None or target is None:
        return None, "no trustworthy address"
    reason = self.protected_reason(address)
    if reason is None and "/" in target:
        reason = self._network_protected(target)
    if reason is None and rule.actions.ban.known_addresses == "spare":
        known = self.known_as(target)
        if known is not None:
            reason = (f"known address: {known[0]} logged in from it on "
                      f"{known[1]:%Y-%m-%d}; its failures look like a forgotten or "
                      "saved old password (reset it, or update the device's), not an "
                      "attack")
    if reason is not None:
        return None, reason
    ip, at, fail2ban = target, self._at, self.settings.fail2ban
    if fail2ban is not None:
        # Fail2Ban's count and formula, from the feed line's whole-second stamp.
        at = at.replace(microsecond=0)
        level = self.store.ban_count(ip, at - fail2ban.forgets_after) \
            if self.settings.ban_increment else 0
        duration = fail2ban.duration(level)
    else:
        level = self.store.ban_count(ip) if self.settings.ban_increment else 0
        # Computed in float seconds and capped before it becomes a timedelta: a repeat
        # offender's factor**level overflows timedelta long before it overflows a float.
        seconds = rule.actions.ban.duration.total_seconds() * \
            self.settings.ban_factor ** min(level, 64)
        duration = timedelta(seconds=min(seconds, self.settings.ban_max.total_seconds()))
    until = at + duration
    if active is not None and (active.until >= until or fail2ban is not None):
        # Already banned for longer; or banned at all where the enforcer owns the
        # duration (a second BAN line would change nothing in Fail2Ban).
        return None, None
    self.store.record_ban(ip, rule.name, at, until, level)
    if self._next_expiry is None or until < self._next_expiry:
        self._next_expiry = until
    return Ban(ip, rule.name, at, until, level), None



EARTH_RADIUS_KM = 6371.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + \
        math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))
