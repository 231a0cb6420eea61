"""
The detector's memory of each key (an address, an account, a pair): one group per rule,
capped at max_groups; at the cap the key with the least evidence leaves first.
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from jfwatch.detect.decisions import Decision
from jfwatch.detect.matching import Narrowed
from jfwatch.detect.rules import Rule
from jfwatch.events import Event, EventKind

if TYPE_CHECKING:
    from jfwatch.detect.detector import Detector

# Evidence levels of a key (events counted, capped): eviction takes the lowest first.
_LEVELS = 8
_TOP_RANK = 2 * (_LEVELS - 1)
# Event kinds as bits, in sorted order (the order an alert lists them in).
_KIND_BITS = {kind: 1 << bit for bit, kind in enumerate(sorted(map(str, EventKind)))}

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


# Methods of ``Detector`` (bound there): groupmemory kept apart.


def _touch(self: Detector, key: str, now: int, create: bool) -> _Key | None:
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


def _group(self: Detector, c: _CompiledRule, key: str, now: int, create: bool) -> _Group | None:
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


def _make_room(self: Detector, now: int) -> None:
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


def _drop(self: Detector, key: str) -> None:
    tracked = self._keys.pop(key)
    del self._ranks[tracked.rank][key]
    self._group_count -= len(tracked.groups)


def _demote(self: Detector, key: str) -> None:
    """A key whose address is now banned holds no evidence worth keeping: the ban is
    in the state.  It goes to the front of the line for eviction."""
    tracked = self._keys.get(key)
    if tracked is not None:
        self._rerank(key, tracked, 0)


def _rerank(self: Detector, key: str, tracked: _Key, rank: int) -> None:
    """Move a key to another rank, as its most recently active key there."""
    del self._ranks[tracked.rank][key]
    tracked.rank = rank
    self._ranks[rank][key] = None
