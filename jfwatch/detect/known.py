"""
The household's addresses: a successful login makes its address known (unless the
address failed as others or often before); failures and 2FA challenges by address.
"""

from __future__ import annotations

import functools
import ipaddress
from array import array
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING

from jfwatch.detect.groups import micros
from jfwatch.events import Event, EventKind, IPAddress

if TYPE_CHECKING:
    from jfwatch.detect.detector import Detector

_KEY_TEXTS_MAX = 4096  # cached group-key tables (one per address and user pair)
# A success does not make its address known after this many failures from it, or one as
# another user, within this time (``_suspect``): a stuffed or guessed password.
_SUSPECT_FAILURES = 3
_SUSPECT_MICROS = 6 * 3600 * 1_000_000
_CHALLENGE_MICROS = 5 * 60 * 1_000_000


# Methods of ``Detector`` (bound there): knownaddresses kept apart.


def _learn(self: Detector, event: Event) -> None:
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


def _second_factor_user(self: Detector, event: Event, now: int) -> Event:
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


def _note_failure(self: Detector, event: Event, now: int) -> None:
    key = self._event_keys(event)["ip"]
    count, _, users = self._failures.pop(key, (0, 0, ()))
    user = None if event.user is None else event.user.casefold()
    if user is not None and user not in users and len(users) < 4:
        users += (user,)
    self._failures[key] = (count + 1, now, users)  # last in order: the oldest go first
    if len(self._failures) > self.settings.max_groups // 8:
        del self._failures[next(iter(self._failures))]


def failed_since(self: Detector, ip: IPAddress, since: datetime) -> bool:
    key = self._event_keys_of(ip)
    found = self._failures.get(key)
    return found is not None and found[1] >= micros(since)


def failures_of(self: Detector, ip: IPAddress) -> int:
    """Logins and second factors failed from this address (its IPv6 network)."""
    return self._failures.get(self._event_keys_of(ip), (0, 0, ()))[0]


def _suspect(self: Detector, ip: IPAddress, user: str, now: int) -> bool:
    """A success from this address does not make it known: in the hours before, it
    failed as another user (stuffing, spraying) or failed often (guessing)."""
    found = self._failures.get(self._event_keys_of(ip))
    if found is None or found[1] < now - _SUSPECT_MICROS:
        return False
    count, _, users = found
    return count >= _SUSPECT_FAILURES or any(u != user for u in users)


def _counted_as(self: Detector, ip: IPAddress) -> str:
    """An address as rules count it: IPv6 by its ipv6_prefix network."""
    if ip.version == 6 and self.settings.ipv6_prefix < 128:
        return _v6_prefix(ip, self.settings.ipv6_prefix)
    return str(ip)


def _address_and_network(self: Detector, ip: IPAddress) -> tuple[str, ...]:
    """The address, and the network it is counted by where that differs."""
    counted = self._counted_as(ip)
    return (counted,) if counted == str(ip) else (str(ip), counted)


def _event_keys_of(self: Detector, ip: IPAddress) -> str:
    return "ip=" + self._counted_as(ip)


def key_of(self: Detector, subject: str) -> tuple[str, str | None]:
    """The group key of an address (IPv6 by prefix) or a user name, and the ban
    target of an address (None for a user)."""
    try:
        ip = ipaddress.ip_address(subject)
    except ValueError:
        return "user=" + subject.casefold(), None
    return self._event_keys_of(ip), self._counted_as(ip)


def group_of(self: Detector, rule: str, key: str) -> tuple[array[int], list[str] | None,
                                                 int | None] | None:
    """A rule's memory of one key: the event times it holds (microseconds), the
    distinct values, and when it last alerted; None if it holds nothing."""
    tracked = self._keys.get(key)
    group = None if tracked is None else tracked.groups.get(rule)
    if group is None:
        return None
    return group.times or array("q"), group.values, group.last_alert


def known_as(self: Detector, target: str) -> tuple[str, datetime] | None:
    """Who last logged in from this address or network within known_for, and when."""
    if not self._any_known:
        return None
    return self.store.known(target, self._at - self.settings.known_for)


def is_known(self: Detector, ip: IPAddress) -> bool:
    """IPv6 by its network: privacy addresses change daily, the household's /64 not."""
    return self.known_as(self._counted_as(ip)) is not None


def is_banned(self: Detector, ip: IPAddress) -> bool:
    return any(self.store.active_ban(t) is not None
               for t in self._address_and_network(ip))


def _event_keys(self: Detector, event: Event) -> dict[str, str]:
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



@functools.lru_cache(maxsize=4096)
def _v6_prefix(ip: IPAddress, prefix: int) -> str:
    """The /prefix network of an IPv6 address as text (cached: formatting IPv6 is slow)."""
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
