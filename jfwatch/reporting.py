"""
Two patterns every long-running part needs, written once:

- ``Conditions``: something wrong is reported when it starts (or changes) and when it
  ends, never once per pass (a log line per pass would bury the one that matters);
- ``Totals``: another part's running totals turned into increments for a counter (its
  totals start again at zero when it is replaced: a reload, a new detector).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Conditions(Generic[K, V]):
    """The current condition of each key (None: fine).  ``on_change(key, old, new)`` runs
    only when a key's condition changes; a key never reported is fine."""

    def __init__(self, on_change: Callable[[K, V | None, V | None], None]) -> None:
        self._now: dict[K, V] = {}
        self._on_change = on_change

    def report(self, key: K, condition: V | None) -> bool:
        """Set ``key``'s condition; whether it changed (and was reported)."""
        old = self._now.get(key)
        if old == condition:
            return False
        if condition is None:
            del self._now[key]
        else:
            self._now[key] = condition
        self._on_change(key, old, condition)
        return True

    def get(self, key: K) -> V | None:
        return self._now.get(key)

    def forget(self, key: K) -> None:
        """Drop a key without reporting (it is gone: a deleted file, a removed source)."""
        self._now.pop(key, None)


class Totals(Generic[K]):
    """Increments from running totals: ``take(key, total)`` is how much ``total`` grew since
    the last ``take`` of that key.  ``restart()`` when the counting part is replaced."""

    def __init__(self) -> None:
        self._seen: dict[K, int] = {}
        self._owner: object = None

    def restart(self, owner: object = None) -> None:
        self._seen.clear()
        self._owner = owner

    def owned_by(self, owner: object) -> bool:
        """Whether the totals come from ``owner``; restarts (from zero) if not."""
        if owner is self._owner:
            return True
        self.restart(owner)
        return False

    def take(self, key: K, total: int) -> int:
        delta = total - self._seen.get(key, 0)
        self._seen[key] = total
        return max(0, delta)
