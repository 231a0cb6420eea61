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


# The default allow-list: the private ranges and carrier-grade NAT (RFC 6598), where
# Tailscale peers and a phone on a mobile network behind the same CGNAT as the server
# are; remove it from ``allow`` where the server itself sits behind CGNAT and every
# outside address arrives from the provider's range is wrong (it does not).
DEFAULT_ALLOW = [*PRIVATE_RANGES, "100.64.0.0/10"]

# Never anyone's own address: banning one blocks nothing an attacker controls and can
# block whole classes of traffic (0.0.0.0 in a set, multicast, NAT64's translated
# IPv4 internet).  ``ipaddress`` knows most of them; NAT64's well-known prefix and the
# IPv4 broadcast it names explicitly.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def unbannable_reason(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address can never be banned (not anyone's own), or None."""
    if isinstance(ip, ipaddress.IPv4Address):
        # In integers: ipaddress's properties build networks on every call, and a flood
        # asks this of every address it bans.
        value = int(ip)
        if value == 0:
            return "unspecified address"
        if value == 0xFFFFFFFF:
            return "broadcast address"
        top = value >> 28
        return "multicast address" if top == 0xE else "reserved address" if top == 0xF \
            else None
    if ip.is_unspecified:
        return "unspecified address"
    if ip.is_multicast:
        return "multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "broadcast address"
    if ip.is_reserved:
        return "reserved address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _NAT64:
        return "NAT64 address (stands for the whole IPv4 internet)"
    return None


def canonical(addr: ipaddress.IPv4Address | ipaddress.IPv6Address
              ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """IPv4-mapped IPv6 as IPv4 (as Jellyfin itself does): one client, one address."""
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_or_network(text: str) -> str:
    """An address or network as jfwatch writes it everywhere (state, feed, enforcers):
    IPv4-mapped IPv6 as IPv4, a network in CIDR form.  ValueError if it is neither."""
    if "/" in text:
        return str(ipaddress.ip_network(text, strict=False))
    return str(canonical(ipaddress.ip_address(text)))


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
