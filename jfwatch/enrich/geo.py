"""
Where an address is.  Everything is looked up locally: no address leaves the machine.

- Country: an embedded table (``iptocc``, packaged on PyPI, no account and no download).
- City, coordinates and autonomous system: optional ``.mmdb`` files (MaxMind GeoLite2 or
  GeoIP2, DB-IP Lite: City, Country and ASN databases, any mix), asked in order; a
  database's answer wins over the embedded country.

Private, loopback and link-local addresses are never looked up (they have no country).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from jfwatch.addresses import PRIVATE_RANGES, networks
from jfwatch.events import Event, IPAddress

_CACHE_MAX = 65_536  # attackers repeat their addresses; bounded for floods of new ones
# Never looked up: the private ranges, and CGNAT and "this network", which no database
# places either.
_LOCAL = networks([*PRIVATE_RANGES, "100.64.0.0/10", "0.0.0.0/8", "::/128"])


class GeoError(Exception):
    """A database that cannot be opened or read (the message names the file)."""


@dataclass(frozen=True, slots=True)
class Place:
    country: str | None = None
    asn: int | None = None
    city: str | None = None
    location: tuple[float, float] | None = None  # latitude, longitude


def open_databases(paths: Sequence[Path]) -> list[tuple[Path, Any]]:
    """Open each ``.mmdb``; GeoError names every file that fails."""
    import maxminddb  # here: only configs with a database pay for it

    readers, problems = [], []
    for path in paths:
        try:
            readers.append((path, maxminddb.open_database(str(path))))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        raise GeoError("; ".join(problems))
    return readers


class Geo:
    """Looks up places, cached per address.  ``embedded``: use the packaged country table."""

    def __init__(self, databases: Sequence[Path] = (), *, embedded: bool = True) -> None:
        self._readers = open_databases(databases)
        self._country_code = _embedded_lookup() if embedded else None
        self._cache: dict[IPAddress, Place | None] = {}
        self.has_locations = bool(self._readers)  # only databases know cities
        self.lookup_errors = 0

    def place(self, ip: IPAddress) -> Place | None:
        if ip in self._cache:
            return self._cache[ip]
        place = None if _local(ip) else self._look_up(ip)
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[ip] = place
        return place

    def enrich(self, events: Iterable[Event]) -> list[Event]:
        """Events with their address's place filled in (copies; the rest as they were)."""
        out = []
        for event in events:
            place = None if event.ip is None else self.place(event.ip)
            if place is not None:
                event = replace(event, country=place.country, asn=place.asn, city=place.city,
                                location=place.location)
            out.append(event)
        return out

    def _look_up(self, ip: IPAddress) -> Place | None:
        country, asn, city, location = None, None, None, None
        for _path, reader in self._readers:
            try:
                record = reader.get(str(ip))
            except (ValueError, OSError):  # a record damaged: the others may answer
                self.lookup_errors += 1
                continue
            if not isinstance(record, dict):
                continue
            country = country or _country_of(record)
            asn = asn or _int(record.get("autonomous_system_number"))
            city = city or _name(record.get("city"))
            location = location or _location(record.get("location"))
        if country is None and self._country_code is not None:
            country = self._country_code(str(ip))
        if country is None and asn is None and city is None:
            return None
        return Place(country, asn, city, location)


def _local(ip: IPAddress) -> bool:
    return any(ip.version == net.version and ip in net for net in _LOCAL)


def _embedded_lookup() -> Any:
    from iptocc import country_code  # here: `jfwatch parse` without addresses skips it

    return country_code


def _country_of(record: dict[str, Any]) -> str | None:
    for key in ("country", "registered_country"):
        value = record.get(key)
        if isinstance(value, dict) and isinstance(value.get("iso_code"), str):
            code: str = value["iso_code"]
            return code.upper()
    flat = record.get("country_code")  # flat databases (DB-IP/IPinfo "lite" variants)
    return flat.upper() if isinstance(flat, str) and len(flat) == 2 else None


def _name(value: object) -> str | None:
    if isinstance(value, dict):
        names = value.get("names")
        if isinstance(names, dict) and isinstance(names.get("en"), str):
            name: str = names["en"]
            return name
    return None


def _location(value: object) -> tuple[float, float] | None:
    if isinstance(value, dict):
        lat, lon = value.get("latitude"), value.get("longitude")
        if isinstance(lat, int | float) and isinstance(lon, int | float) and \
                -90 <= lat <= 90 and -180 <= lon <= 180:
            return float(lat), float(lon)
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
