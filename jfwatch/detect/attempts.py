"""
One login, one story: the records every source writes about one authentication attempt
(the proxy's request line, Jellyfin's log line, its Activity Log entry) joined into one
attempt, so that rules count attempts, not lines, and a success that Jellyfin logs
without an address gets the address its proxy logged.

Two records are one attempt when they come from different sources (parsers), for the
same service, with a compatible outcome (a denial, a success, a 2FA failure or
success), dated within ``window`` of each other (in either order: a proxy writes its
line after the application), and agree where both know something: the same client
address (a trusted proxy's address is no client's: it neither matches nor is taken),
the same user (case-folded).  An attempt takes one record of each source; a record
joins at most one attempt, the nearest in time.  A record without an address that could
take its address from attempts of different addresses joins none of them (the address
must not be guessed: it decides what is "known").  A record that finds no partner is an
attempt of its own.

Memory is bounded: attempts are forgotten once every source has moved past them, and at
``MAX_ATTEMPTS`` the oldest go first.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from jfwatch.events import Event, EventKind, IPAddress

MAX_ATTEMPTS = 10_000  # about 10 MB at the cap; a flood's oldest go first
# A source with no record for this long (event time) behind the newest no longer holds
# attempts back for a partner it may still bring.
_QUIET_MICROS = 15 * 60 * 1_000_000
# Records kept while only one source has been seen (a second one's first records may be
# their partners).
_RECENT_MAX = 1024
# Attempts are kept at least this long behind the newest record (event time): for a
# source that has brought nothing yet (its lines are read later, or it is quiet).
_KEEP_MICROS = 60 * 1_000_000
_MAX_PER_BUCKET = 256  # attempts kept per time bucket for records without an address
_MAX_PER_ADDRESS = 16  # attempts kept per address (a flood from one address)

# What can be one attempt: a denial (wrong password, disabled account) is a 401 or 403
# at the proxy; a success a 2xx.
_OUTCOMES = {
    EventKind.AUTH_FAILURE: "denied", EventKind.AUTH_BLOCKED: "denied",
    EventKind.AUTH_SUCCESS: "success", EventKind.MFA_FAILURE: "mfa_failure",
    EventKind.MFA_SUCCESS: "mfa_success", EventKind.MFA_CHALLENGE: "mfa_challenge",
}

IP, USER = 1, 2  # what an attempt knows, as bits


@dataclass(slots=True)
class _Attempt:
    time: int  # microseconds since the epoch, of its first record
    key: tuple[str, str]  # service, outcome
    ip: IPAddress | None  # the client's (never a trusted proxy's)
    user: str | None  # case-folded
    seen: Event  # the attempt as the rules were last shown it
    sources: list[str] = field(default_factory=list)
    gone: bool = False  # forgotten (still in an index until its bucket goes)


@dataclass(frozen=True, slots=True)
class Joined:
    """A record that joined an attempt: the attempt as it is now, and what the rules
    knew of it before (``IP``/``USER`` bits)."""

    event: Event
    known_before: int

    @property
    def known_now(self) -> int:
        return knows(self.event, None)


def knows(event: Event, trusted: Callable[[IPAddress], bool] | None) -> int:
    """``IP``/``USER`` bits: what a record says about its attempt."""
    bits = USER if event.user is not None else 0
    if event.ip is not None and (trusted is None or not trusted(event.ip)):
        bits |= IP
    return bits


class Attempts:
    """
    The join.  ``trusted(ip)``: the address is a trusted proxy's (never a client's).
    ``join`` is given each record in the order the detector sees them.  (``trusted``
    None: there are none.)
    """

    def __init__(self, window_micros: int, trusted: Callable[[IPAddress], bool] | None
                 ) -> None:
        self.window = window_micros
        self.trusted = trusted
        self._by_ip: dict[tuple[tuple[str, str], IPAddress], list[_Attempt]] = {}
        # By time bucket (``window`` wide): every attempt, for a record without an
        # address (rare: Jellyfin's successes), and those without an address, for a record
        # with one (most records: no scan of a flood's attempts).
        self._by_time: dict[tuple[tuple[str, str], int], list[_Attempt]] = {}
        self._unaddressed: dict[tuple[tuple[str, str], int], list[_Attempt]] = {}
        self._alive: dict[tuple[tuple[str, str], int], int] = {}  # per bucket, not gone
        self._order: deque[_Attempt] = deque()
        self._newest: dict[str, int] = {}  # per source: its newest record's time
        # While a single source has been seen: its last records, not yet indexed.
        self._recent: deque[tuple[Event, int]] = deque(maxlen=_RECENT_MAX)
        self.joined = 0  # records that joined an attempt (not counted again)
        self.ambiguous = 0  # records left alone: they could belong to several

    def __len__(self) -> int:
        return len(self._order)

    def join(self, event: Event, now: int) -> Joined | None:
        """None: the record is an attempt of its own (rules count it).  Else the attempt
        it joined, with its fields merged in."""
        outcome = _OUTCOMES.get(event.kind)
        if self.window <= 0 or outcome is None:
            return None
        if now > self._newest.get(event.source, now - 1):
            if event.source not in self._newest and self._newest:
                self._index_recent()  # a second source: its partners may be among them
            self._newest[event.source] = now
        if len(self._newest) == 1:
            # One source so far (most installs read Jellyfin's log alone): nothing can
            # join, and the last records are only kept, cheaply, should another come.
            self._recent.append((event, now))
            return None
        if self._order and self._order[0].time < now - _KEEP_MICROS:
            self._forget_old()  # (the horizon is never later than that)
        key = (event.service, outcome)
        ip, user = self._client(event)
        found = self._partner(event.source, key, ip, user, now)
        if found is None:
            self._add(_Attempt(now, key, ip, user, event, [event.source]))
            return None
        before = knows(found.seen, self.trusted)
        merged = found.seen
        if found.ip is None and ip is not None:
            found.ip = ip
            merged = replace(merged, ip=event.ip, country=event.country, asn=event.asn,
                             city=event.city, location=event.location)
            self._index_ip(found)
        if found.user is None and user is not None:
            found.user = user
            merged = replace(merged, user=event.user)
        found.seen = merged
        found.sources.append(event.source)
        self.joined += 1
        return Joined(merged, before)

    def _index_recent(self) -> None:
        for event, now in self._recent:
            ip, user = self._client(event)
            self._add(_Attempt(now, (event.service, _OUTCOMES[event.kind]), ip, user, event,
                               [event.source]))
        self._recent.clear()

    def _client(self, event: Event) -> tuple[IPAddress | None, str | None]:
        """What a record says of its client: the address (never a trusted proxy's) and
        the user, case-folded."""
        ip = event.ip if event.ip is not None and \
            (self.trusted is None or not self.trusted(event.ip)) else None
        return ip, None if event.user is None else event.user.casefold()

    def _partner(self, source: str, key: tuple[str, str], ip: IPAddress | None,
                 user: str | None, now: int) -> _Attempt | None:
        candidates: list[_Attempt] = []
        if ip is not None:
            candidates += self._by_ip.get((key, ip), ())
        index = self._by_time if ip is None else self._unaddressed
        bucket = now // self.window
        for b in (bucket - 1, bucket, bucket + 1):
            candidates += index.get((key, b), ())
        fits = [a for a in candidates
                if not a.gone and abs(a.time - now) <= self.window and source not in a.sources
                and (ip is None or a.ip is None or a.ip == ip)
                and (user is None or a.user is None or a.user == user)]
        if not fits:
            return None
        if ip is None and len({a.ip for a in fits if a.ip is not None}) > 1:
            self.ambiguous += 1  # which address is this record's?  Not guessed.
            return None
        return min(fits, key=lambda a: (abs(a.time - now), a.time))

    def _add(self, attempt: _Attempt) -> None:
        self._order.append(attempt)
        where = (attempt.key, attempt.time // self.window)
        indexes = (self._by_time,) if attempt.ip is not None else \
            (self._by_time, self._unaddressed)
        for index in indexes:
            bucket = index.setdefault(where, [])
            if len(bucket) < _MAX_PER_BUCKET:
                bucket.append(attempt)
        self._alive[where] = self._alive.get(where, 0) + 1
        if attempt.ip is not None:
            self._index_ip(attempt)
        while len(self._order) > MAX_ATTEMPTS:
            self._drop(self._order.popleft())

    def _index_ip(self, attempt: _Attempt) -> None:
        assert attempt.ip is not None
        entries = self._by_ip.setdefault((attempt.key, attempt.ip), [])
        entries.append(attempt)
        if len(entries) > _MAX_PER_ADDRESS:
            del entries[0]

    def _forget_old(self) -> None:
        """Attempts every source has moved past by more than the window can no longer
        be joined (and a minute at least, for a source yet to bring its records)."""
        times = self._newest.values()
        top, low = max(times), min(times)
        if low < top - _QUIET_MICROS:
            low = min(t for t in times if t >= top - _QUIET_MICROS)
        horizon = min(low - self.window, top - _KEEP_MICROS)
        while self._order and self._order[0].time < horizon:
            self._drop(self._order.popleft())

    def _drop(self, attempt: _Attempt) -> None:
        attempt.gone = True
        where = (attempt.key, attempt.time // self.window)
        left = self._alive[where] - 1
        if left:
            self._alive[where] = left
        else:  # the bucket's last: its lists go
            del self._alive[where]
            self._by_time.pop(where, None)
            self._unaddressed.pop(where, None)
        if attempt.ip is not None:
            ip_key = (attempt.key, attempt.ip)
            entries = self._by_ip.get(ip_key)
            if entries is not None and all(a.gone for a in entries):
                del self._by_ip[ip_key]
