"""
The detector: events in, alerts and ban decisions out.

Single-threaded and driven by event time only (never the wall clock), so ``jfwatch
replay`` of a log gives exactly what a live run gave.  State that must survive a
restart (bans, escalation history, first-seen values) goes through the StateStore;
per-group counters are in memory, capped, oldest evicted first.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from jfwatch.config import PRIVATE_RANGES, Config
from jfwatch.decisions import Alert, Ban, Decision, Unban
from jfwatch.events import Event, IPAddress
from jfwatch.rules import Match, Rule
from jfwatch.state import StateStore

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_SAMPLES = 3
_SEQUENCE_MAX = 1000  # first-step events remembered per sequence group


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The parts of the config the detector needs (kept apart from the config file)."""

    allow: tuple[Network, ...] = ()
    trusted_proxies: tuple[Network, ...] = ()
    private: tuple[Network, ...] = ()
    ipv6_prefix: int = 64
    max_groups: int = 50_000
    ban_increment: bool = True
    ban_factor: float = 2.0
    ban_max: timedelta = timedelta(weeks=4)


def networks(values: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


class NetSet:
    """A set of networks with a bounded membership cache (attackers repeat themselves)."""

    _CACHE_MAX = 16384

    def __init__(self, nets: Iterable[Network]) -> None:
        self.nets = tuple(nets)
        self._cache: dict[IPAddress, bool] = {}
        self._last_ip: object = None
        self._last_hit = False

    def __contains__(self, ip: object) -> bool:
        if ip is self._last_ip:  # several rules ask about the same event's address in a row
            return self._last_hit
        if not isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        hit = self._cache.get(ip)
        if hit is None:
            hit = any(ip.version == n.version and ip in n for n in self.nets)
            if len(self._cache) >= self._CACHE_MAX:
                self._cache.clear()
            self._cache[ip] = hit
        self._last_ip, self._last_hit = ip, hit
        return hit


@functools.lru_cache(maxsize=64)
def _shared_netset(nets: tuple[Network, ...]) -> NetSet:
    """Rules that test the same networks share one set and one cache."""
    return NetSet(nets)


def _in(ip: IPAddress | None, nets: NetSet) -> bool:
    return ip is not None and ip in nets


def compile_match(match: Match, settings: DetectorSettings) -> Callable[[Event], bool]:
    """Turn a declarative match into a predicate (sets and networks, no expressions)."""
    kinds = set(match.kind) if match.kind else None
    sources = set(match.source) if match.source else None
    services = set(match.service) if match.service else None
    origins = set(match.origin) if match.origin else None
    users = {u.casefold() for u in match.user} if match.user else None

    def nets(values: list[str] | None) -> NetSet | None:
        if values is None:
            return None
        symbolic = {"@trusted_proxies": settings.trusted_proxies, "@private": settings.private,
                    "@allow": settings.allow}
        out: list[Network] = []
        for v in values:
            out += symbolic[v] if v in symbolic else (ipaddress.ip_network(v, strict=False),)
        return _shared_netset(tuple(out))

    ips, not_ips = nets(match.ip), nets(match.not_ip)

    def predicate(e: Event) -> bool:
        return not (
            (kinds is not None and e.kind not in kinds)
            or (sources is not None and e.source not in sources)
            or (services is not None and e.service not in services)
            or (origins is not None and e.origin not in origins)
            or (users is not None and (e.user is None or e.user.casefold() not in users))
            or (ips is not None and not _in(e.ip, ips))
            or (not_ips is not None and _in(e.ip, not_ips))
            or (match.has_ip is not None and (e.ip is not None) != match.has_ip)
            or (match.has_user is not None and (e.user is not None) != match.has_user)
        )

    return predicate


@dataclass(slots=True)
class _Group:
    """
    Per-group state, kept small: a flood fills max_groups of these.

    ``times``: a threshold rule's last ``threshold`` event times (enough to decide), or a
    sequence rule's first-step times.  ``distinct``: for ``distinct`` rules, the last
    time each value was seen, oldest first.  Both O(1) per event, created on first use.
    """

    times: deque[datetime] | None = None
    distinct: OrderedDict[str, datetime] | None = None
    samples: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    last_alert: datetime | None = None

    def sample(self, excerpt: str) -> None:
        self.samples = (*self.samples[1 - _SAMPLES:], excerpt)

    def clear(self) -> None:
        if self.times is not None:
            self.times.clear()
        if self.distinct is not None:
            self.distinct.clear()
        self.kinds = ()


@dataclass(slots=True)
class _CompiledRule:
    rule: Rule
    match: Callable[[Event], bool]
    reset: Callable[[Event], bool] | None
    first: Callable[[Event], bool] | None
    then: Callable[[Event], bool] | None
    kinds: frozenset[str] | None  # every kind any of its matches can accept; None: any
    group: tuple[str, ...]  # group_by, sorted: the key into the per-event key table
    handler: Callable[[_CompiledRule, Event, str], list[Decision]]
    name: str
    sequence: bool  # its own first/then decide; ``match`` is not used


class Detector:
    """Feed events in time order; collect decisions."""

    def __init__(self, rules: list[Rule], settings: DetectorSettings, store: StateStore) -> None:
        self.settings = settings
        self.store = store
        self._trusted = NetSet(settings.trusted_proxies)
        self._allow = NetSet(settings.allow)
        self.rules = [self._compile(r) for r in rules]
        self._rules_any: list[_CompiledRule] = []
        self._rules_by_kind: dict[str, list[_CompiledRule]] = {}
        self._index_rules()
        self._groups: OrderedDict[tuple[str, str], _Group] = OrderedDict()
        self.evictions = 0
        self.now: datetime | None = None
        # The earliest ban end, cached: asking SQLite on every event costs a query each.
        self._next_expiry: datetime | None = store.next_expiry()

    def _compile(self, rule: Rule) -> _CompiledRule:
        s = self.settings
        parts = [m for m in (rule.match if rule.type != "sequence" else None, rule.reset_on,
                             rule.first, rule.then) if m is not None]
        kinds: frozenset[str] | None = frozenset()
        for part in parts:
            kinds = None if part.kind is None or kinds is None else \
                kinds | {str(k) for k in part.kind}
        handler = {"threshold": self._threshold, "new_value": self._new_value,
                   "trigger": self._trigger, "sequence": self._sequence}[rule.type]
        return _CompiledRule(
            rule, compile_match(rule.match, s),
            compile_match(rule.reset_on, s) if rule.reset_on else None,
            compile_match(rule.first, s) if rule.first else None,
            compile_match(rule.then, s) if rule.then else None, kinds,
            tuple(sorted(set(rule.group_by))), handler, rule.name, rule.type == "sequence")

    @property
    def tracked_groups(self) -> int:
        return len(self._groups)

    # -- public -----------------------------------------------------------------
    def feed(self, event: Event) -> list[Decision]:
        """Process one event; windows and expiry use ``event.time``."""
        out: list[Decision] = []
        if self._next_expiry is not None and self._next_expiry <= event.time:
            out += self.expire(event.time)
        elif self.now is None or event.time > self.now:
            self.now = event.time
        keys = self._event_keys(event)
        for c in self._rules_by_kind.get(event.kind) or self._rules_any:
            key_text = keys.get(c.group)
            if key_text is None:
                continue  # the event lacks a field this rule groups by
            if c.reset is not None and c.reset(event):
                group = self._group(c.name, key_text, create=False)
                if group is not None:
                    group.clear()
            elif c.sequence or c.match(event):
                decisions = c.handler(c, event, key_text)
                if decisions:
                    out += decisions
        return out

    def _index_rules(self) -> None:
        """Which rules can care about each kind, so an event only visits those."""
        from jfwatch.events import EventKind

        self._rules_any = [c for c in self.rules if c.kinds is None]
        self._rules_by_kind = {
            str(kind): [c for c in self.rules if c.kinds is None or str(kind) in c.kinds]
            for kind in EventKind}

    def _event_keys(self, event: Event) -> dict[tuple[str, ...], str]:
        """
        The group key text of one event for every group_by combination, computed once
        for all rules; a combination whose field is missing is absent.
        """
        ip = event.ip
        if ip is not None:
            if ip.version == 6 and self.settings.ipv6_prefix < 128:
                ip_key = "ip=" + _v6_prefix(ip, self.settings.ipv6_prefix)
            else:
                ip_key = "ip=" + str(ip)
            if event.user is None:
                return {(): "", ("ip",): ip_key}
            user_key = "user=" + event.user.casefold()
            return {(): "", ("ip",): ip_key, ("user",): user_key,
                    ("ip", "user"): f"{ip_key}|{user_key}"}
        if event.user is None:
            return {(): ""}
        return {(): "", ("user",): "user=" + event.user.casefold()}

    def expire(self, now: datetime) -> list[Unban]:
        """Lift bans whose time is over (in event time for replay, wall time when idle)."""
        if self.now is None or now > self.now:
            self.now = now
        if self._next_expiry is None or self._next_expiry > now:
            return []
        out = []
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
        return None

    # -- rules ------------------------------------------------------------------

    def _group(self, rule: str, key: str, create: bool) -> _Group | None:
        slot = (rule, key)
        group = self._groups.get(slot)
        if group is not None:
            self._groups.move_to_end(slot)
            return group
        if not create:
            return None
        group = self._groups[slot] = _Group()
        if len(self._groups) > self.settings.max_groups:
            self._groups.popitem(last=False)
            self.evictions += 1
        return group

    def _trigger(self, c: _CompiledRule, event: Event, key_text: str) -> list[Decision]:
        group = self._group(c.rule.name, key_text, create=True)
        assert group is not None
        group.sample(event.excerpt)
        return self._fire(c.rule, event, c.group, group, 1, event.time, users=(), kinds=(event.kind,))

    def _threshold(self, c: _CompiledRule, event: Event, key_text: str) -> list[Decision]:
        rule = c.rule
        group = self._group(c.name, key_text, create=True)
        assert group is not None
        if event.kind not in group.kinds:
            group.kinds = (*group.kinds, event.kind)
        now = event.time
        if group.last_alert is not None and rule.cooldown > rule.window and \
                now < group.last_alert + rule.cooldown - rule.window:
            # Until the cooldown's end minus the window no event can count towards the
            # next alert, so none is tracked (the bulk of a long attack).
            return []
        group.sample(event.excerpt)
        horizon = now - rule.window
        if rule.distinct is not None:
            value = (event.user or "").casefold() if rule.distinct == "user" else \
                (str(event.ip) if event.ip else "")
            if not value:
                return []
            seen = group.distinct
            if seen is None:
                seen = group.distinct = OrderedDict()
            seen[value] = now
            seen.move_to_end(value)
            while next(iter(seen.values())) < horizon:
                seen.popitem(last=False)
            count = len(seen)
        else:
            times = group.times
            if times is None:
                times = group.times = deque(maxlen=rule.threshold)
            times.append(now)
            while times[0] < horizon:
                times.popleft()
            count = len(times)
        if count < rule.threshold:
            return []
        if group.last_alert is not None and rule.cooldown and now - group.last_alert < rule.cooldown:
            return []  # one alert per cooldown: the window slides on, nothing is said
        if group.distinct is not None:
            first = min(group.distinct.values())
            users = tuple(sorted(group.distinct))[:10] if rule.distinct == "user" else ()
        else:
            assert group.times is not None
            first, users = group.times[0], ()
        kinds = tuple(sorted(group.kinds))
        out = self._fire(rule, event, c.group, group, count, first, users=users, kinds=kinds)
        if out:
            group.clear()
        return out

    def _sequence(self, c: _CompiledRule, event: Event, key_text: str) -> list[Decision]:
        rule = c.rule
        assert c.first is not None and c.then is not None and rule.first is not None
        horizon = event.time - rule.window
        if c.then(event):
            group = self._group(rule.name, key_text, create=False)
            if group is None:
                return []
            firsts = group.times
            while firsts and firsts[0] < horizon:
                firsts.popleft()
            if firsts is None or len(firsts) < rule.first.count:
                return []
            count, first = len(firsts), firsts[0]
            firsts.clear()
            group.sample(event.excerpt)
            return self._fire(rule, event, c.group, group, count + 1, first, users=(),
                              kinds=(event.kind,))
        if c.first(event):
            group = self._group(rule.name, key_text, create=True)
            assert group is not None
            if group.times is None:
                # Bounded for floods; large enough that the alert reports the real count.
                group.times = deque(maxlen=max(rule.first.count, _SEQUENCE_MAX))
            group.times.append(event.time)
            group.sample(event.excerpt)
            while group.times and group.times[0] < horizon:
                group.times.popleft()
        return []

    def _new_value(self, c: _CompiledRule, event: Event, key_text: str) -> list[Decision]:
        rule = c.rule
        if rule.field == "ip":
            if event.ip is None:
                return []
            value = str(event.ip)
        else:
            if event.user is None:
                return []
            value = event.user.casefold()
        known_before = self.store.has_values(rule.name, key_text)
        is_new = self.store.remember(rule.name, key_text, value, event.time)
        if not (is_new and known_before):
            return []  # the very first value of a group is its baseline, not news
        group = self._group(rule.name, key_text, create=True)
        assert group is not None
        group.sample(event.excerpt)
        return self._fire(rule, event, c.group, group, 1, event.time, users=(), kinds=(event.kind,))

    # -- firing -----------------------------------------------------------------
    def _key_fields(self, group_by: tuple[str, ...], event: Event) -> dict[str, str]:
        """An alert's group key as fields, e.g. ``{"ip": "2001:db8::/64"}``."""
        keys = self._event_keys(event)
        return {name: keys[(name,)].partition("=")[2] for name in group_by}

    def _fire(self, rule: Rule, event: Event, group_by: tuple[str, ...], group: _Group, count: int,
              first: datetime, *, users: tuple[str, ...], kinds: tuple[str, ...]
              ) -> list[Decision]:
        if group.last_alert is not None and rule.cooldown and \
                event.time - group.last_alert < rule.cooldown:
            return []
        if rule.actions.ban is not None and event.ip is not None and rule.cooldown:
            # The in-memory cooldown is lost on restart (or eviction); the ban is not.
            # An address this rule banned within its cooldown is not announced again.
            active = self.store.active_ban(str(event.ip))
            if active is not None and active.rule == rule.name and \
                    event.time - active.since < rule.cooldown and active.until > event.time:
                group.last_alert = active.since
                return []
        group.last_alert = event.time
        out: list[Decision] = []
        ban_until, reason = None, None
        if rule.actions.ban is not None:
            ban, reason = self._ban(rule, event)
            if ban is not None:
                out.append(ban)
                ban_until = ban.until
            elif reason is None and event.ip is not None:
                active = self.store.active_ban(str(event.ip))
                ban_until = active.until if active else None
        alert = Alert(
            rule=rule.name, description=rule.description, severity=rule.severity,
            time=event.time, key=self._key_fields(group_by, event),
            ip=None if event.ip is None else str(event.ip),
            user=event.user, count=count, window_seconds=rule.window.total_seconds(),
            first_time=first, last_time=event.time,
            tags=tuple(rule.actions.notify.tags) if rule.actions.notify else (),
            simulate=rule.simulate, ban_until=ban_until, not_banned_reason=reason,
            users=users, kinds=kinds, samples=group.samples)
        return [alert, *out]

    def _ban(self, rule: Rule, event: Event) -> tuple[Ban | None, str | None]:
        assert rule.actions.ban is not None
        if rule.simulate:
            return None, "simulate mode"
        if event.ip is None:
            return None, "no trustworthy address"
        reason = self.protected_reason(event.ip)
        if reason is not None:
            return None, reason
        ip = str(event.ip)
        level = self.store.ban_count(ip) if self.settings.ban_increment else 0
        # Computed in float seconds and capped before it becomes a timedelta: a repeat
        # offender's factor**level overflows timedelta long before it overflows a float.
        seconds = rule.actions.ban.duration.total_seconds() * self.settings.ban_factor ** min(level, 64)
        duration = timedelta(seconds=min(seconds, self.settings.ban_max.total_seconds()))
        until = event.time + duration
        active = self.store.active_ban(ip)
        if active is not None and active.until >= until:
            return None, None  # already banned for longer: no second line in the feed
        self.store.record_ban(ip, rule.name, event.time, until, level)
        if self._next_expiry is None or until < self._next_expiry:
            self._next_expiry = until
        return Ban(ip, rule.name, event.time, until, level), None


@functools.lru_cache(maxsize=65536)
def _v6_prefix(ip: IPAddress, prefix: int) -> str:
    """The /prefix network of an IPv6 address as text (cached: formatting IPv6 is slow)."""
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def settings_from_config(cfg: Config) -> DetectorSettings:
    """Build detector settings from a Config (kept here so config.py stays declarative)."""
    return DetectorSettings(
        allow=networks(cfg.allow), trusted_proxies=networks(cfg.trusted_proxies),
        private=networks(PRIVATE_RANGES), ipv6_prefix=cfg.ipv6_prefix,
        max_groups=cfg.max_groups, ban_increment=cfg.ban.increment,
        ban_factor=cfg.ban.factor, ban_max=cfg.ban.max)
