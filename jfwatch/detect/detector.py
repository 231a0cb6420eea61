"""
The detector: events in, alerts and ban decisions out.

Single-threaded and driven by event time, so ``jfwatch replay`` of a log gives what a
live run gave; but event time is attacker input (a forged header, a wrong clock), so it
never runs ahead of a clock: the wall clock in the daemon, the newest plausible time in
a replay.  State that must survive a restart (bans, escalation history, first-seen
values) goes through the StateStore; per-group counters are in memory, capped, and at
the cap the key with the least evidence leaves first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from jfwatch.addresses import unbannable_reason
from jfwatch.detect import groups, known, rule_types
from jfwatch.detect.attempts import IP, USER, Attempts
from jfwatch.detect.campaign import Campaign
from jfwatch.detect.decisions import Decision, Unban
from jfwatch.detect.groups import _EPOCH, _TOP_RANK, _CompiledRule, _Entry, _Key, _Step, micros
from jfwatch.detect.matching import Narrowed, NetSet, compile_match
from jfwatch.detect.rules import Rule
from jfwatch.detect.settings import DetectorSettings, DetectorState, settings_from_config, wall_clock
from jfwatch.events import Event, EventKind, IPAddress

__all__ = ["Detector", "DetectorSettings", "DetectorState", "settings_from_config"]

EXPIRY_REREAD = timedelta(minutes=1)
# A second factor's answer belongs to the challenge issued to its address this recently.
_SECOND_FACTOR = frozenset({EventKind.MFA_CHALLENGE, EventKind.MFA_FAILURE,
                            EventKind.MFA_SUCCESS})
# Failed logins and second factors (``failed_within``).
_FAILED = frozenset({EventKind.AUTH_FAILURE, EventKind.MFA_FAILURE})
# The kinds that teach the detector which addresses are known (``_learn``).
_LEARNED_FROM = frozenset({EventKind.AUTH_SUCCESS, EventKind.MFA_SUCCESS,
                           EventKind.MFA_FAILURE, EventKind.MFA_CHALLENGE})


class Detector:
    """
    Feed events in time order; collect decisions.

    ``clock`` says what time it is at most (the wall clock in the daemon, the newest
    plausible time in a replay): an event dated later is counted in ``future_events``
    and taken as happening at the clock's time, so no log line can move windows,
    cooldowns or ban expiry ahead of it.
    """

    # Kept in their own modules: the rule types' handlers and firing, the memory of
    # groups, the household's addresses and the keys of events.
    _trigger = rule_types._trigger
    _threshold = rule_types._threshold
    _sequence = rule_types._sequence
    _new_value = rule_types._new_value
    _travel = rule_types._travel
    _campaign = rule_types._campaign
    _sweep = rule_types._sweep
    _campaigns_due = rule_types._campaigns_due
    _key_fields = rule_types._key_fields
    _fire = rule_types._fire
    _ban = rule_types._ban
    _unbanned = rule_types._unbanned
    _touch = groups._touch
    _group = groups._group
    _make_room = groups._make_room
    _drop = groups._drop
    _demote = groups._demote
    _rerank = groups._rerank
    _learn = known._learn
    _second_factor_user = known._second_factor_user
    _note_failure = known._note_failure
    failed_since = known.failed_since
    failures_of = known.failures_of
    _suspect = known._suspect
    _counted_as = known._counted_as
    _address_and_network = known._address_and_network
    _event_keys_of = known._event_keys_of
    key_of = known.key_of
    group_of = known.group_of
    known_as = known.known_as
    is_known = known.is_known
    is_banned = known.is_banned
    _event_keys = known._event_keys


    def __init__(self, rules: list[Rule], settings: DetectorSettings, store: DetectorState,
                 clock: Callable[[], datetime] = wall_clock) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._trusted = NetSet(settings.trusted_proxies)
        self._campaigns: dict[str, tuple[Rule, Campaign]] = {}  # by rule name
        self._allow = NetSet(settings.allow)
        self.rules = [self._compile(r) for r in rules]
        self._steps = self._index_rules()
        # For a record that joined an attempt: the steps that could not count the attempt
        # before (it lacked what they need) and can now, by kind and what was known.
        self._join_steps: dict[tuple[str, int, int], list[_Entry]] = {}
        self._attempts = Attempts(micros(settings.join_window),
                                  self._trusted.__contains__ if self._trusted.nets else None)
        # A key with no event for this long holds nothing any rule still needs.
        self._horizon = max((max(c.window, c.cooldown) for c in self.rules), default=0)
        self._keys: dict[str, _Key] = {}
        # Keys by rank, each least recently active first (dicts keep order).
        self._ranks: list[dict[str, None]] = [{} for _ in range(_TOP_RANK + 2)]
        self._group_count = 0
        self._touched: dict[str, _Key] = {}  # this event's keys, looked up and counted
        # Group key texts per (address, user): attackers repeat themselves, and the
        # texts are built once instead of for every event.
        self._key_texts: dict[tuple[IPAddress | None, str | None], dict[str, str]] = {}
        self.evictions = 0
        self.future_events = 0
        # Authentication attempts by kind (the first record of each: what rules count).
        self.attempts: dict[str, int] = {}
        self._mfa_users: set[str] = set()  # users seen with two-factor authentication
        # By address key (IPv6 by prefix): how many logins or second factors failed
        # from it, and the last time (microseconds), for ``failed_within``; the oldest
        # go first past an eighth of max_groups (about 200 bytes each).
        self._failures: dict[str, tuple[int, int, tuple[str, ...]]] = {}
        # By address key: the user of the last 2FA challenge and its time.
        self._challenges: dict[str, tuple[str, int]] = {}
        self._pending_known: tuple[tuple[str, ...], str, datetime] | None = None
        # Whether any address is known at all: a flood before the first success asks
        # the state nothing.
        self._any_known = store.any_known()
        # When the current event's decisions are taken (``decide_on_clock``), as a time
        # and in microseconds: ban start, cooldowns.
        self._at = _EPOCH
        self._at_us = 0
        # The earliest ban end, cached: asking SQLite on every event costs a query each.
        self._next_expiry: datetime | None = store.next_expiry()
        self._expiry_read = _EPOCH  # when it was last read from the store (clock time)

    def _compile(self, rule: Rule) -> _CompiledRule:
        handler = {"threshold": self._threshold, "new_value": self._new_value,
                   "trigger": self._trigger, "sequence": self._sequence,
                   "impossible_travel": self._travel, "campaign": self._campaign}[rule.type]
        if rule.type == "campaign":
            self._campaigns[rule.name] = (rule, Campaign(
                micros(rule.window), rule.min_addresses, rule.min_accounts,
                micros(rule.grace), micros(rule.cooldown)))
        window, cooldown = micros(rule.window), micros(rule.cooldown)
        first_count = rule.first.count if rule.first is not None else 0
        group_by = tuple(sorted(set(rule.group_by)))
        return _CompiledRule(rule, rule.name, group_by, "|".join(group_by), handler,
                             window, cooldown, rule.threshold, rule.distinct, first_count,
                             max(0, cooldown - window), rule.actions.ban is not None,
                             (IP if rule.needs_address() else 0) |
                             (USER if rule.needs_user() else 0))

    def _index_rules(self) -> dict[str, list[_Entry]]:
        """For each kind, the rules its events can concern, narrowed to that kind."""
        s = self.settings
        steps: dict[str, list[_Entry]] = {}
        for kind in map(str, EventKind):
            steps[kind] = []
            for c in self.rules:
                rule = c.rule
                reset = compile_match(rule.reset_on, s, kind, self) if rule.reset_on else False
                first: Narrowed = False
                then: Narrowed = False
                if rule.type == "sequence":
                    assert rule.first is not None and rule.then is not None
                    first = compile_match(rule.first, s, kind, self)
                    then = compile_match(rule.then, s, kind, self)
                    match: Narrowed = first is not False or then is not False
                else:
                    match = compile_match(rule.match, s, kind, self)
                if reset is not False or match is not False:
                    steps[kind].append((_Step(c, first, then), c.group, reset, match, c.handler))
        return steps

    @property
    def tracked_groups(self) -> int:
        return self._group_count

    @property
    def duplicates(self) -> int:
        """Records that joined an attempt another source reported (counted once)."""
        return self._attempts.joined

    def _steps_after_join(self, kind: str, before: int, now: int) -> list[_Entry]:
        """The steps that the attempt is news to: they need what it did not know."""
        found = self._join_steps.get((kind, before, now))
        if found is None:
            found = self._join_steps[kind, before, now] = [
                entry for entry in self._steps.get(kind, ())
                if entry[0].c.needs & ~before and not entry[0].c.needs & ~now]
        return found

    # -- public -----------------------------------------------------------------
    def feed(self, event: Event) -> list[Decision]:
        """Process one event; windows use ``event.time``, never later than the clock."""
        out: list[Decision] = []
        clock = self.clock()
        if event.time > clock:
            if event.time - clock > self.settings.future_tolerance:
                self.future_events += 1
            event = replace(event, time=clock.astimezone(event.time.tzinfo))
        at = clock if self.settings.decide_on_clock else event.time
        self._at, self._at_us = at, micros(at)
        if self._next_expiry is not None and self._next_expiry <= at:
            out += self.expire(at)
        now = micros(event.time)
        if self._campaigns:
            # Single-failure members whose grace is over, in event time (a backlog's
            # successes come later in it): at the first event after, in replay as live.
            out += self._campaigns_due(now)
        if event.kind in _SECOND_FACTOR and event.ip is not None:
            event = self._second_factor_user(event, now)
        joined = self._attempts.join(event, now)
        if joined is not None:
            event = joined.event
            steps = self._steps_after_join(event.kind, joined.known_before, joined.known_now)
        else:
            steps = self._steps.get(event.kind, [])
            self.attempts[event.kind] = self.attempts.get(event.kind, 0) + 1
        if event.kind in _LEARNED_FROM:
            self._learn(event)
            if self._campaigns and event.ip is not None and \
                    event.kind in (EventKind.AUTH_SUCCESS, EventKind.MFA_SUCCESS):
                target = self._counted_as(event.ip)
                for _, campaign in self._campaigns.values():
                    campaign.success(target)
        if event.kind in _FAILED and event.ip is not None and \
                not (self._trusted.nets and event.ip in self._trusted) \
                and (joined is None or not joined.known_before & IP):  # once an attempt
            self._note_failure(event, now)
        if steps:
            out += self._count(event, steps, now)
        if self._pending_known is not None:  # after the rules: "known" means known before
            self.store.mark_known(*self._pending_known)
            self._pending_known = None
            self._any_known = True
        return out

    def _count(self, event: Event, steps: list[_Entry], now: int) -> list[Decision]:
        """The event through the rules that concern it."""
        out: list[Decision] = []
        self._touched.clear()
        keys = self._event_keys(event)
        for step, group_by, reset, match, handler in steps:
            key = keys.get(group_by)
            if key is None:
                continue  # the event lacks a field this rule groups by
            if reset is not False and (reset is True or reset(event)):
                group = self._group(step.c, key, now, create=False)
                if group is not None:
                    group.clear()
                continue
            if match is True or (match is not False and match(event)):
                decisions = handler(step, event, key, now)
                if decisions:
                    out += decisions
        return out

    def expire(self, now: datetime) -> list[Decision]:
        """Lift bans whose time is over (never later than the clock says it is)."""
        now = min(now, self.clock())
        out: list[Decision] = []
        if now - self._expiry_read >= EXPIRY_REREAD:
            # Bans made by another process (`jfwatch bans add`) may end sooner.
            self._expiry_read, self._next_expiry = now, self.store.next_expiry()
        if self._next_expiry is None or self._next_expiry > now:
            return out
        for row in self.store.expired_bans(now):
            self.store.remove_ban(row.ip)
            out.append(Unban(row.ip, row.rule, row.until))
        self._next_expiry = self.store.next_expiry()
        return out

    def protected_reason(self, ip: IPAddress) -> str | None:
        """Why an address must never be banned, or None."""
        if ip in self._trusted:
            return "trusted proxy"
        if ip in self._allow:
            return "allow-listed"
        return unbannable_reason(ip)

    def ban_target(self, c: _CompiledRule, event: Event) -> str | None:
        """
        What a rule's ban covers: the network its counts were taken over, where it groups
        IPv6 addresses by prefix (an attacker rotating through a /64 is one attacker),
        else the event's address.
        """
        if event.ip is None:
            return None
        return self._counted_as(event.ip) if "ip" in c.group_by else str(event.ip)

    def _network_protected(self, target: str) -> str | None:
        """Why a network must not be banned: it holds an address that must never be."""
        net = ipaddress.ip_network(target)
        for nets, reason in ((self._trusted.nets, "holds a trusted proxy"),
                             (self._allow.nets, "holds allow-listed addresses")):
            if any(n.version == net.version and n.overlaps(net) for n in nets):
                return f"{target} {reason}"
        return None
