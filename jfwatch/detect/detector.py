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

import functools
import ipaddress
import itertools
import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from sys import intern
from typing import Protocol

from jfwatch.addresses import PRIVATE_RANGES, Network, network, networks, unbannable_reason
from jfwatch.config.model import Config
from jfwatch.detect.attempts import IP, USER, Attempts
from jfwatch.detect.campaign import Campaign
from jfwatch.detect.decisions import Alert, Ban, Decision, Unban, format_duration_s
from jfwatch.detect.rules import Match, Rule
from jfwatch.events import Event, EventKind, IPAddress
from jfwatch.state import BanRow

_SEQUENCE_MAX = 1000  # first-step events remembered per sequence group
_KEY_TEXTS_MAX = 4096  # cached group-key tables (one per address and user pair)
# A success does not make its address known after this many failures from it, or one as
# another user, within this time (``_suspect``): a stuffed or guessed password.
_SUSPECT_FAILURES = 3
_SUSPECT_MICROS = 6 * 3600 * 1_000_000
# A second factor's answer belongs to the challenge issued to its address this recently.
_SECOND_FACTOR = frozenset({EventKind.MFA_CHALLENGE, EventKind.MFA_FAILURE,
                            EventKind.MFA_SUCCESS})
_CHALLENGE_MICROS = 5 * 60 * 1_000_000
# Failed logins and second factors (``failed_within``).
_FAILED = frozenset({EventKind.AUTH_FAILURE, EventKind.MFA_FAILURE})
# The kinds that teach the detector which addresses are known (``_learn``).
_LEARNED_FROM = frozenset({EventKind.AUTH_SUCCESS, EventKind.MFA_SUCCESS,
                           EventKind.MFA_FAILURE, EventKind.MFA_CHALLENGE})
# Evidence levels of a key (events counted, capped): eviction takes the lowest first.
_LEVELS = 8
_TOP_RANK = 2 * (_LEVELS - 1)


# Event kinds as bits, in sorted order (the order an alert lists them in).
_KIND_BITS = {kind: 1 << bit for bit, kind in enumerate(sorted(map(str, EventKind)))}


def wall_clock() -> datetime:
    return datetime.now(UTC)


class DetectorState(Protocol):
    """What the detector keeps beyond its groups: ``state.StateStore`` (SQLite, survives
    a restart) or ``memory_state.MemoryState`` (one replay)."""

    def active_ban(self, ip: str) -> BanRow | None: ...
    def record_ban(self, ip: str, rule: str, since: datetime, until: datetime,
                   level: int) -> None: ...
    def remove_ban(self, ip: str) -> BanRow | None: ...
    def expired_bans(self, now: datetime) -> list[BanRow]: ...
    def next_expiry(self) -> datetime | None: ...
    def ban_count(self, ip: str) -> int: ...
    def has_values(self, rule: str, key: str) -> bool: ...
    def remember(self, rule: str, key: str, value: str, when: datetime) -> bool: ...
    def mark_known(self, ips: tuple[str, ...], user: str, when: datetime) -> None: ...
    def known(self, ip: str, since: datetime) -> tuple[str, datetime] | None: ...
    def any_known(self) -> bool: ...


class AddressFacts(Protocol):
    """What the state says of an address, for ``known`` and ``banned`` in a match."""

    def is_known(self, ip: IPAddress) -> bool: ...
    def is_banned(self, ip: IPAddress) -> bool: ...
    def failed_since(self, ip: IPAddress, since: datetime) -> bool: ...


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The parts of the config the detector needs (kept apart from the config file)."""

    allow: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    private: tuple[Network, ...] = ()
    ipv6_prefix: int = 64
    max_groups: int = 400_000
    ban_increment: bool = True
    ban_factor: float = 2.0
    ban_max: timedelta = timedelta(weeks=4)
    # Set when an enforcer owns durations (Fail2Ban's jail bantime): every ban starts
    # from it, whatever the rule's own duration.
    ban_base: timedelta | None = None
    # An event dated further ahead of the clock than this is counted as forged or
    # wrongly clocked (anything ahead is taken at the clock's time either way).
    future_tolerance: timedelta = timedelta(minutes=5)
    # The records of one authentication attempt from several sources (the proxy, the
    # log, the Activity Log) within this time are one attempt (``attempts``); zero: every
    # record counts on its own.
    join_window: timedelta = timedelta(seconds=2)
    # A successful login makes its address (and IPv6 network) known for this long: the
    # household's.  Failure-count rules do not ban a known address (``known_addresses``).
    known_for: timedelta = timedelta(days=30)
    # Decisions (ban start and end, cooldowns) taken at the clock's time, not the event's:
    # the daemon's, where a line dated in the past (a forged header, a lagging clock, a
    # backfill) must still get a ban that lasts from now (``settings_from_config``'s
    # default).  A replay decides in event time.
    decide_on_clock: bool = False


class NetSet:
    """A set of networks with a bounded membership cache (attackers repeat themselves)."""

    _CACHE_MAX = 16384

    def __init__(self, nets: Iterable[Network]) -> None:
        self.nets = tuple(nets)
        self._cache: dict[object, bool] = {}

    def __contains__(self, ip: object) -> bool:
        hit = self._cache.get(ip)
        if hit is None:
            hit = isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address) and \
                any(ip.version == n.version and ip in n for n in self.nets)
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        return hit


@functools.lru_cache(maxsize=64)
def _shared_netset(nets: tuple[Network, ...]) -> NetSet:
    """Rules that test the same networks share one set and one cache."""
    return NetSet(nets)


Predicate = Callable[[Event], bool]
# A match narrowed to one event kind: True (every event of that kind matches), False
# (none can), or the checks that are left.
Narrowed = Predicate | bool


def compile_match(match: Match, settings: DetectorSettings, kind: str | None = None,
                  facts: AddressFacts | None = None) -> Narrowed:
    """
    Turn a declarative match into the fewest checks (sets and networks, no expressions).

    With ``kind``, the match is narrowed to events of that kind: the kind test is decided
    here, once, as are tests against empty address sets (``not_ip: [@trusted_proxies]``
    with no proxies configured), so most rules need no call per event at all.
    """
    if match.kind is not None and kind is not None and kind not in match.kind:
        return False
    checks: list[Predicate] = []
    if match.kind is not None and kind is None:
        kinds = frozenset(str(k) for k in match.kind)
        checks.append(lambda e: e.kind in kinds)
    for name in ("source", "service", "origin"):
        allowed: list[str] | None = getattr(match, name)
        if allowed is not None:
            checks.append(_field_in(name, frozenset(allowed)))
    if match.not_origin is not None:
        origins = frozenset(match.not_origin)
        checks.append(lambda e: e.origin not in origins)
    if match.user is not None:
        users = frozenset(u.casefold() for u in match.user)
        checks.append(lambda e: e.user is not None and e.user.casefold() in users)
    inside = None if match.ip is None else _netset(match.ip, settings)
    outside = None if match.not_ip is None else _netset(match.not_ip, settings)
    if inside is not None and not inside.nets:
        return False
    if outside is not None and not outside.nets:
        outside = None
    if inside is not None or outside is not None:
        checks.append(_address_check(inside, outside))
    if match.has_ip is not None:
        has_ip = match.has_ip
        checks.append(lambda e: (e.ip is not None) == has_ip)
    if match.has_user is not None:
        has_user = match.has_user
        checks.append(lambda e: (e.user is not None) == has_user)
    if match.country is not None:
        countries = frozenset(match.country)
        checks.append(lambda e: e.country in countries)
    if match.not_country is not None:
        excluded = frozenset(match.not_country)
        checks.append(lambda e: e.country is not None and e.country not in excluded)
    if (match.known is not None or match.banned is not None or match.failed_within) and \
            facts is None:
        raise ValueError("known, banned and failed_within need the detector's state")
    if match.failed_within is not None:
        assert facts is not None
        within, failed_since = match.failed_within, facts.failed_since
        checks.append(lambda e: e.ip is not None and failed_since(e.ip, e.time - within))
    if match.known is not None:
        assert facts is not None
        known, is_known = match.known, facts.is_known
        checks.append(lambda e: e.ip is not None and is_known(e.ip) == known)
    if match.banned is not None:
        assert facts is not None
        banned, is_banned = match.banned, facts.is_banned
        checks.append(lambda e: e.ip is not None and is_banned(e.ip) == banned)
    if not checks:
        return True
    combined = checks[0]
    for check in checks[1:]:
        combined = _both(combined, check)
    return combined


def _address_check(inside: NetSet | None, outside: NetSet | None) -> Predicate:
    """``ip`` and ``not_ip`` in one call (both are asked of every failure)."""
    if inside is None:
        assert outside is not None
        return lambda e: e.ip is None or e.ip not in outside
    if outside is None:
        return lambda e: e.ip is not None and e.ip in inside
    return lambda e: e.ip is not None and e.ip in inside and e.ip not in outside


def _field_in(field: str, allowed: frozenset[str]) -> Predicate:
    return lambda e: getattr(e, field) in allowed


def _both(first: Predicate, second: Predicate) -> Predicate:
    return lambda e: first(e) and second(e)


def _netset(values: list[str], settings: DetectorSettings) -> NetSet:
    symbolic = {"@trusted_proxies": settings.trusted_proxies, "@private": settings.private,
                "@allow": settings.allow}
    out: list[Network] = []
    for v in values:
        out += symbolic[v] if v in symbolic else (network(v),)
    return _shared_netset(tuple(out))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(t: datetime | timedelta) -> int:
    """A time (since the epoch) or a duration in whole microseconds: windows and
    cooldowns in exact integer arithmetic, each event's time converted once."""
    return (t - _EPOCH if isinstance(t, datetime) else t) // _MICROSECOND


@dataclass(slots=True)
class _Group:
    """
    One rule's state for one key, kept small: a flood fills max_groups of these.  Times
    are event times in microseconds since the epoch (``micros``).

    ``times``: a threshold rule's last ``threshold`` event times (enough to decide), or a
    sequence rule's first-step times, oldest first, in a machine-integer array (a list
    of ints costs four times as much, a deque ten times).  ``values``: for ``distinct``
    rules, the last ``threshold`` distinct values, least recently seen first, each seen
    last at the time at the same index of ``times``.  ``kinds``: the event kinds
    counted, as bits of ``_KIND_BITS`` (a small int costs nothing, a tuple 50 bytes).
    """

    times: array[int] | None = None
    values: list[str] | None = None
    kinds: int = 0
    last_alert: int | None = None
    place: tuple[int, float, float] | None = None  # impossible_travel: time, lat, lon

    def clear(self) -> None:
        if self.times is not None:
            del self.times[:]
        if self.values is not None:
            self.values.clear()
        self.kinds = 0


@dataclass(slots=True)
class _Key:
    """
    What the detector tracks for one key (an address, an account, a pair): one group per
    rule and how much evidence it holds.  No excerpt is kept: at 200 bytes a line it
    would double the cost of a key, and a flood must fit (an alert carries the line
    that fired it).

    ``rank`` orders keys for eviction, lowest first: twice the number of events
    counted for this key (capped at ``_LEVELS - 1``; zero again once its address is
    banned), plus one if a rule that bans groups by it.  So at the cap a flood of fresh
    addresses cannot push out a key that is closer to a ban, and among equals a key
    that could only ever raise an alert (a one-off username) goes before one that can
    ban.  ``last`` is the time of its last event, for expiry.
    """

    groups: dict[str, _Group] = field(default_factory=dict)
    rank: int = 0
    last: int = 0


@dataclass(slots=True)
class _CompiledRule:
    """A rule with its durations in microseconds and its handler chosen."""

    rule: Rule
    name: str
    group_by: tuple[str, ...]  # sorted
    group: str  # group_by joined by "|": the key into the per-event key table
    handler: Callable[[_Step, Event, str, int], list[Decision]]
    window: int
    cooldown: int
    threshold: int
    distinct: str | None
    first_count: int  # sequence rules: first-step events needed
    # Until last_alert + idle no event can count towards the next alert (0: no such
    # stretch, the cooldown is not longer than the window).
    idle: int
    bans: bool  # the rule has a ban action (its keys are evicted last among equals)
    needs: int  # what an event must know to be counted (attempts.IP, USER bits)


@dataclass(slots=True)
class _Step:
    """A rule as the events of one kind see it: its matches narrowed to that kind."""

    c: _CompiledRule
    first: Narrowed  # sequence rules only
    then: Narrowed


# What feed() reads of a rule for each event of one kind, unpacked in one go: the step,
# its group key name, ``reset`` (this kind clears the group), ``match`` (this kind goes
# to the handler; a sequence's ``first`` or ``then``) and the handler.
_Entry = tuple[_Step, str, Narrowed, Narrowed, Callable[[_Step, Event, str, int], list[Decision]]]


class Detector:
    """
    Feed events in time order; collect decisions.

    ``clock`` says what time it is at most (the wall clock in the daemon, the newest
    plausible time in a replay): an event dated later is counted in ``future_events``
    and taken as happening at the clock's time, so no log line can move windows,
    cooldowns or ban expiry ahead of it.
    """

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

    # -- known addresses -----------------------------------------------------------
    def _learn(self, event: Event) -> None:
        """
        A successful login makes its address known (the household's), once the rules
        have seen it.  Only a success does, never a failure; where a user has two-factor
        authentication, only its success does (a password alone may be a stolen one).
        """
        user = event.user.casefold() if event.user is not None else None
        if event.kind in (EventKind.MFA_FAILURE, EventKind.MFA_CHALLENGE,
                          EventKind.MFA_SUCCESS) and user is not None:
            if len(self._mfa_users) >= _KEY_TEXTS_MAX:
                self._mfa_users.clear()
            self._mfa_users.add(user)
        if event.kind not in (EventKind.AUTH_SUCCESS, EventKind.MFA_SUCCESS) or \
                user is None or event.ip is None or \
                (self._trusted.nets and event.ip in self._trusted) or \
                (event.kind == EventKind.AUTH_SUCCESS and user in self._mfa_users) or \
                self._suspect(event.ip, user, micros(event.time)):
            return
        self._pending_known = (self._address_and_network(event.ip), event.user or user,
                               event.time)

    def _second_factor_user(self, event: Event, now: int) -> Event:
        """
        A 2FA challenge names the user its password belonged to; the code's answer that
        follows from the same address (a proxy's 401 or 200 on the verify endpoint)
        names no one.  It is that user's, within CHALLENGE_MICROS: so a failed code after
        a correct password is "mfa-failure-after-password" for that account.
        """
        key = self._event_keys(event)["ip"]
        if event.kind == EventKind.MFA_CHALLENGE:
            if event.user is not None:
                self._challenges.pop(key, None)
                self._challenges[key] = (event.user, now)
                if len(self._challenges) > _KEY_TEXTS_MAX:
                    del self._challenges[next(iter(self._challenges))]
            return event
        challenge = self._challenges.get(key)
        if event.user is None and challenge is not None and \
                0 <= now - challenge[1] <= _CHALLENGE_MICROS:
            return replace(event, user=challenge[0])
        return event

    def _note_failure(self, event: Event, now: int) -> None:
        key = self._event_keys(event)["ip"]
        count, _, users = self._failures.pop(key, (0, 0, ()))
        user = None if event.user is None else event.user.casefold()
        if user is not None and user not in users and len(users) < 4:
            users += (user,)
        self._failures[key] = (count + 1, now, users)  # last in order: the oldest go first
        if len(self._failures) > self.settings.max_groups // 8:
            del self._failures[next(iter(self._failures))]

    def failed_since(self, ip: IPAddress, since: datetime) -> bool:
        key = self._event_keys_of(ip)
        found = self._failures.get(key)
        return found is not None and found[1] >= micros(since)

    def failures_of(self, ip: IPAddress) -> int:
        """Logins and second factors failed from this address (its IPv6 network)."""
        return self._failures.get(self._event_keys_of(ip), (0, 0, ()))[0]

    def _suspect(self, ip: IPAddress, user: str, now: int) -> bool:
        """A success from this address does not make it known: in the hours before, it
        failed as another user (stuffing, spraying) or failed often (guessing)."""
        found = self._failures.get(self._event_keys_of(ip))
        if found is None or found[1] < now - _SUSPECT_MICROS:
            return False
        count, _, users = found
        return count >= _SUSPECT_FAILURES or any(u != user for u in users)

    def _counted_as(self, ip: IPAddress) -> str:
        """An address as rules count it: IPv6 by its ipv6_prefix network."""
        if ip.version == 6 and self.settings.ipv6_prefix < 128:
            return _v6_prefix(ip, self.settings.ipv6_prefix)
        return str(ip)

    def _address_and_network(self, ip: IPAddress) -> tuple[str, ...]:
        """The address, and the network it is counted by where that differs."""
        counted = self._counted_as(ip)
        return (counted,) if counted == str(ip) else (str(ip), counted)

    def _event_keys_of(self, ip: IPAddress) -> str:
        return "ip=" + self._counted_as(ip)

    def key_of(self, subject: str) -> tuple[str, str | None]:
        """The group key of an address (IPv6 by prefix) or a user name, and the ban
        target of an address (None for a user)."""
        try:
            ip = ipaddress.ip_address(subject)
        except ValueError:
            return "user=" + subject.casefold(), None
        return self._event_keys_of(ip), self._counted_as(ip)

    def group_of(self, rule: str, key: str) -> tuple[array[int], list[str] | None,
                                                     int | None] | None:
        """A rule's memory of one key: the event times it holds (microseconds), the
        distinct values, and when it last alerted; None if it holds nothing."""
        tracked = self._keys.get(key)
        group = None if tracked is None else tracked.groups.get(rule)
        if group is None:
            return None
        return group.times or array("q"), group.values, group.last_alert

    def known_as(self, target: str) -> tuple[str, datetime] | None:
        """Who last logged in from this address or network within known_for, and when."""
        if not self._any_known:
            return None
        return self.store.known(target, self._at - self.settings.known_for)

    def is_known(self, ip: IPAddress) -> bool:
        """IPv6 by its network: privacy addresses change daily, the household's /64 not."""
        return self.known_as(self._counted_as(ip)) is not None

    def is_banned(self, ip: IPAddress) -> bool:
        return any(self.store.active_ban(t) is not None
                   for t in self._address_and_network(ip))

    def _event_keys(self, event: Event) -> dict[str, str]:
        """
        The group key text of one event for every group_by combination, shared by all
        rules; a combination whose field is missing is absent.
        """
        pair = (event.ip, event.user)
        keys = self._key_texts.get(pair)
        if keys is not None:
            return keys
        ip = event.ip
        keys = {"": ""}  # by group_by joined with "|" (strings hash once, tuples every time)
        if ip is not None:
            keys["ip"] = self._event_keys_of(ip)
        if event.user is not None:
            keys["user"] = "user=" + event.user.casefold()
            if ip is not None:
                keys["ip|user"] = f"{keys['ip']}|{keys['user']}"
        if len(self._key_texts) >= _KEY_TEXTS_MAX:
            self._key_texts.clear()
        self._key_texts[pair] = keys
        return keys

    def expire(self, now: datetime) -> list[Decision]:
        """Lift bans whose time is over (never later than the clock says it is)."""
        now = min(now, self.clock())
        out: list[Decision] = []
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

    # -- groups -----------------------------------------------------------------

    def _touch(self, key: str, now: int, create: bool) -> _Key | None:
        """The key's state, counted once per event: one more level of evidence, and
        last in its rank's order."""
        tracked = self._touched.get(key)
        if tracked is not None:
            return tracked
        tracked = self._keys.get(key)
        if tracked is None:
            if not create:
                return None
            tracked = self._keys[key] = _Key()
            self._ranks[0][key] = None
        else:
            self._rerank(key, tracked, min(tracked.rank + 2, _TOP_RANK + (tracked.rank & 1)))
        tracked.last = now
        self._touched[key] = tracked
        return tracked

    def _group(self, c: _CompiledRule, key: str, now: int, create: bool) -> _Group | None:
        tracked = self._touch(key, now, create)
        if tracked is None:
            return None
        group = tracked.groups.get(c.name)
        if group is None and create:
            group = tracked.groups[c.name] = _Group()
            self._group_count += 1
            if c.bans and not tracked.rank & 1:
                self._rerank(key, tracked, tracked.rank + 1)
            if self._group_count > self.settings.max_groups:
                self._make_room(now)
        return group

    def _make_room(self, now: int) -> None:
        """
        Back under max_groups.  First keys idle past every rule's window and cooldown
        (they hold nothing any rule needs), then the newest key of the lowest rank
        (``_Key``), never a key of the current event: first come, first served among
        equals.

        So a flood of fresh addresses cannot push out a key that has gathered more
        evidence, nor, in round-robin order, keep every key from reaching its second
        event (evicting the oldest would drop each address just before it returns).
        Beyond the cap, the addresses tracked first are banned and leave (a banned key
        drops to rank zero), and newcomers take their places.
        """
        stale = now - self._horizon
        for level in self._ranks:
            while self._group_count > self.settings.max_groups and level:
                oldest = next(iter(level))
                if self._keys[oldest].last >= stale:
                    break
                self._drop(oldest)
        for level in self._ranks:
            for victim in list(itertools.islice(reversed(level), len(self._touched) + 1)):
                if self._group_count <= self.settings.max_groups:
                    return
                if victim not in self._touched:
                    self.evictions += len(self._keys[victim].groups)
                    self._drop(victim)

    def _drop(self, key: str) -> None:
        tracked = self._keys.pop(key)
        del self._ranks[tracked.rank][key]
        self._group_count -= len(tracked.groups)

    def _demote(self, key: str) -> None:
        """A key whose address is now banned holds no evidence worth keeping: the ban is
        in the state.  It goes to the front of the line for eviction."""
        tracked = self._keys.get(key)
        if tracked is not None:
            self._rerank(key, tracked, 0)

    def _rerank(self, key: str, tracked: _Key, rank: int) -> None:
        """Move a key to another rank, as its most recently active key there."""
        del self._ranks[tracked.rank][key]
        tracked.rank = rank
        self._ranks[rank][key] = None

    # -- rules ------------------------------------------------------------------

    def _trigger(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
        group = self._group(step.c, key, now, create=True)
        assert group is not None
        within = step.c.rule.match.failed_within
        detail = None
        if within is not None and event.ip is not None:  # what the address did before
            detail = f"{self.failures_of(event.ip)} failed login(s) or second factor(s) " \
                     f"from this address, the last within {format_duration_s(within.total_seconds())}"
        return self._fire(step.c, event, key, now, group, 1, now, users=(),
                          kinds=(event.kind,), detail=detail)

    def _threshold(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
        c = step.c
        group = self._group(c, key, now, create=True)
        assert group is not None
        group.kinds |= _KIND_BITS[event.kind]
        last = group.last_alert
        if c.idle and last is not None and self._at_us < last + c.idle:
            # Until the cooldown's end minus the window no event can count towards the
            # next alert, so none is tracked (the bulk of a long attack).
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
        if last is not None and c.cooldown and self._at_us - last < c.cooldown:
            return []  # one alert per cooldown: the window slides on, nothing is said
        users = tuple(sorted(group.values))[:10] if distinct == "user" and group.values else ()
        kinds = tuple(kind for kind, bit in _KIND_BITS.items() if group.kinds & bit)
        out = self._fire(c, event, key, now, group, threshold, times[0], users=users,
                         kinds=kinds)
        if out:
            group.clear()
        return out

    def _sequence(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
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

    def _new_value(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
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

    def _travel(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
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

    def _campaign(self, step: _Step, event: Event, key: str, now: int) -> list[Decision]:
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

    def _sweep(self, rule: Rule, members: list[tuple[str, IPAddress]]) -> list[Decision]:
        if rule.actions.ban is None:
            return []
        out: list[Decision] = []
        for target, address in members:
            ban, _ = self._ban(rule, address, target, self.store.active_ban(target))
            if ban is not None:
                out.append(ban)
        return out

    def _campaigns_due(self, now: int) -> list[Decision]:
        out: list[Decision] = []
        for rule, campaign in self._campaigns.values():
            if campaign.since is not None:
                out += self._sweep(rule, campaign.due(now))
        return out

    # -- firing -----------------------------------------------------------------
    def _key_fields(self, group_by: tuple[str, ...], event: Event) -> dict[str, str]:
        """An alert's group key as fields, e.g. ``{"ip": "2001:db8::/64"}``."""
        keys = self._event_keys(event)
        return {name: keys[name].partition("=")[2] for name in group_by}

    def _fire(self, c: _CompiledRule, event: Event, key: str, now: int, group: _Group,
              count: int, first: int, *, users: tuple[str, ...], kinds: tuple[str, ...],
              detail: str | None = None) -> list[Decision]:
        rule = c.rule
        at = self._at
        if group.last_alert is not None and c.cooldown and \
                self._at_us - group.last_alert < c.cooldown:
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

    def _ban(self, rule: Rule, address: IPAddress | None, target: str | None,
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
        ip, at = target, self._at
        level = self.store.ban_count(ip) if self.settings.ban_increment else 0
        # Computed in float seconds and capped before it becomes a timedelta: a repeat
        # offender's factor**level overflows timedelta long before it overflows a float.
        base = self.settings.ban_base or rule.actions.ban.duration
        seconds = base.total_seconds() * self.settings.ban_factor ** min(level, 64)
        duration = timedelta(seconds=min(seconds, self.settings.ban_max.total_seconds()))
        until = at + duration
        if active is not None and (active.until >= until or self.settings.ban_base is not None):
            # Already banned for longer; or banned at all where the enforcer owns the
            # duration (a second BAN line would change nothing in Fail2Ban).
            return None, None
        self.store.record_ban(ip, rule.name, at, until, level)
        if self._next_expiry is None or until < self._next_expiry:
            self._next_expiry = until
        return Ban(ip, rule.name, at, until, level), None


def _value_of(field: str | None, event: Event) -> str | None:
    """What a new_value rule remembers of an event (None: the event has none)."""
    if field == "ip":
        return None if event.ip is None else str(event.ip)
    if field == "user":
        return None if event.user is None else event.user.casefold()
    if field == "country":
        return event.country
    return None if event.asn is None else str(event.asn)


EARTH_RADIUS_KM = 6371.0


def distance_km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance between two (latitude, longitude) points (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + \
        math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@functools.lru_cache(maxsize=4096)
def _v6_prefix(ip: IPAddress, prefix: int) -> str:
    """The /prefix network of an IPv6 address as text (cached: formatting IPv6 is slow)."""
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def settings_from_config(cfg: Config, *, decide_on_clock: bool = True) -> DetectorSettings:
    """Build detector settings from a Config (kept here so config.py stays declarative);
    ``decide_on_clock``: the daemon's (True) or a replay's event time (False)."""
    return DetectorSettings(
        decide_on_clock=decide_on_clock,
        allow=networks(cfg.allow), trusted_proxies=networks(cfg.trusted_proxies),
        private=networks(PRIVATE_RANGES), ipv6_prefix=cfg.ipv6_prefix,
        max_groups=cfg.max_groups, ban_increment=cfg.ban.increment,
        ban_factor=cfg.ban.factor, ban_max=cfg.ban.max, future_tolerance=cfg.future_tolerance,
        join_window=cfg.join_window, known_for=cfg.known_for,
        ban_base=cfg.ban_feed.jail_bantime
        if cfg.ban_feed.enabled and cfg.ban_feed.enforcer == "fail2ban" else None)
