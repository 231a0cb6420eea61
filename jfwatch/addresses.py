"""
Addresses that remember their text and hash.

``ipaddress`` formats and hashes in Python code on every call; the detector keys each
event by its address several times over (group keys, distinct values, ban look-ups),
and every parsed event is written out as JSON.  Parsing caches one of these per
address text, so each address is formatted and hashed once.
"""

from __future__ import annotations

import functools
import ipaddress


class _Memoised:
    """Formats and hashes once; mixed into the two address classes below."""

    __slots__ = ()
    _text: str
    _hash: int

    def __init__(self, address: int | str | bytes) -> None:
        super().__init__(address)  # type: ignore[call-arg]  # the ipaddress class's
        # The slots are declared by the concrete classes (two slotted bases cannot both
        # have them), which mypy cannot see from here.
        self._text = super().__str__()  # type: ignore[misc]
        self._hash = super().__hash__()  # type: ignore[misc]

    def __str__(self) -> str:
        return self._text

    def __hash__(self) -> int:
        return self._hash


class MemoIPv4Address(_Memoised, ipaddress.IPv4Address):
    __slots__ = ("_hash", "_text")


class MemoIPv6Address(_Memoised, ipaddress.IPv6Address):
    __slots__ = ("_hash", "_text")


def memo_address(addr: ipaddress.IPv4Address | ipaddress.IPv6Address
                 ) -> MemoIPv4Address | MemoIPv6Address:
    """The memoising twin of a parsed address (equal to it, same hash)."""
    if isinstance(addr, ipaddress.IPv4Address):
        return MemoIPv4Address(int(addr))
    return MemoIPv6Address(str(addr))


@functools.lru_cache(maxsize=65536)
def address(text: str) -> MemoIPv4Address | MemoIPv6Address:
    """A memoising address from its canonical text (our own output, never log input)."""
    return memo_address(ipaddress.ip_address(text))
