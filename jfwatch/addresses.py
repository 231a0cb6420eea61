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


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Addresses that are never an attacker's own on the internet: loopback, RFC 1918,
# link-local and unique-local (the default allow-list, the rules' ``@private``, and
# never looked up by ``enrich.geo``).
PRIVATE_RANGES = ["127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16",
                  "169.254.0.0/16", "fc00::/7", "fe80::/10"]


def canonical(addr: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """IPv4-mapped IPv6 as IPv4 (as Jellyfin itself does): one client, one address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def network(text: str) -> Network:
    """An address or network (``10.0.0.0/8``, ``2001:db8::1``); ValueError otherwise."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an address or network") from exc


def networks(values: list[str] | tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(network(value) for value in values)


def bad_networks(values: list[str]) -> list[str]:
    """The values that are not an address or network (for a validator's message)."""
    bad = []
    for value in values:
        try:
            network(value)
        except ValueError:
            bad.append(value)
    return bad
