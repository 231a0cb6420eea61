"""Real .mmdb files for tests, written by mmdb-writer in the GeoIP2 City/ASN layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_db(path: Path, places: dict[str, dict[str, Any]]) -> Path:
    """``places``: network -> {city, country, latitude, longitude, asn} (any subset)."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City",
                        languages=["en"], description="jfwatch test data")
    for network, place in places.items():
        record: dict[str, Any] = {}
        if "city" in place:
            record["city"] = {"names": {"en": place["city"]}}
        if "country" in place:
            record["country"] = {"iso_code": place["country"]}
        if "latitude" in place:
            record["location"] = {"latitude": float(place["latitude"]),
                                  "longitude": float(place["longitude"])}
        if "asn" in place:
            record["autonomous_system_number"] = int(place["asn"])
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path
