"""A rule's declarative match turned into the fewest checks, narrowed per event kind."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable, Iterable

from jfwatch.addresses import Network, network
from jfwatch.detect.rules import Match
from jfwatch.detect.settings import AddressFacts, DetectorSettings
from jfwatch.events import Event


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
    if match.listed is not None:
        listed = match.listed
        checks.append(lambda e: (e.listed is not None) == listed)
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


def _value_of(field: str | None, event: Event) -> str | None:
    """What a new_value rule remembers of an event (None: the event has none)."""
    if field == "ip":
        return None if event.ip is None else str(event.ip)
    if field == "user":
        return None if event.user is None else event.user.casefold()
    if field == "country":
        return event.country
    return None if event.asn is None else str(event.asn)
