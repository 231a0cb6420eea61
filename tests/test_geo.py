"""Where addresses are: the embedded country table, real .mmdb files (written by
mmdb-writer), and what parse, replay and check-config make of them."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest

from jfwatch.config.errors import ConfigError
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert
from jfwatch.detect.rules import load_rules
from jfwatch.engine.commands import load_all
from jfwatch.engine.oneshot import replay
from jfwatch.enrich.geo import Geo, GeoError

from mmdb import write_db

PLACES = {
    "192.0.2.0/24": {"city": "Berlin", "country": "DE", "latitude": 52.52, "longitude": 13.40,
                     "asn": 3320},
    "2001:db8::/32": {"country": "NL", "asn": 1136},
    "81.2.69.160/32": {"country": "SE"},  # the database wins over the embedded table
}


def test_the_embedded_table_needs_nothing(tmp_path: Path) -> None:
    geo = Geo()
    assert geo.place(ipaddress.ip_address("8.8.8.8")).country == "US"  # type: ignore[union-attr]
    assert geo.place(ipaddress.ip_address("192.168.1.5")) is None  # private: never looked up
    assert geo.place(ipaddress.ip_address("::1")) is None
    assert not geo.has_locations


def test_a_city_database_gives_city_coordinates_and_asn(tmp_path: Path) -> None:
    geo = Geo([write_db(tmp_path / "city.mmdb", PLACES)])
    berlin = geo.place(ipaddress.ip_address("192.0.2.7"))
    assert berlin is not None
    assert (berlin.country, berlin.city, berlin.asn) == ("DE", "Berlin", 3320)
    assert berlin.location == pytest.approx((52.52, 13.40))
    v6 = geo.place(ipaddress.ip_address("2001:db8::1"))
    assert v6 is not None and (v6.country, v6.asn, v6.location) == ("NL", 1136, None)
    assert geo.place(ipaddress.ip_address("81.2.69.160")).country == "SE"  # type: ignore[union-attr]
    # Not in the database: the embedded table answers.
    assert geo.place(ipaddress.ip_address("8.8.8.8")).country == "US"  # type: ignore[union-attr]


def test_a_database_that_does_not_open_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.mmdb"
    bad.write_bytes(b"not a database")
    with pytest.raises(GeoError, match=r"broken\.mmdb"):
        Geo([bad])
    cfg = tmp_path / "jfwatch.yml"
    cfg.write_text("geo:\n  mmdb: [broken.mmdb, missing.mmdb]\n")
    with pytest.raises(ConfigError) as exc:  # the runtime checks of check-config, run, replay
        load_all(cfg, None, "files")
    text = "\n".join(exc.value.problems)
    assert "broken.mmdb" in text and "missing.mmdb" in text and "jfwatch.yml:2" in text


def test_parse_shows_the_country(tmp_path: Path) -> None:
    log = tmp_path / "activity.log"
    log.write_text(json.dumps({"Id": 1, "Type": "AuthenticationSucceeded",
                               "Date": "2026-11-30T08:00:00Z", "Name": "a successfully authenticated",
                               "ShortOverview": "IP address: 81.2.69.160"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "jfwatch", "parse", str(log)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    event = json.loads(out)
    assert (event["ip"], event["country"], event["user"]) == ("81.2.69.160", "GB", "a")


def _entry(i: int, kind: str, user: str, ip: str, when: str) -> str:
    name = f"{user} successfully authenticated" if kind == "AuthenticationSucceeded" \
        else f"Failed login attempt from {user}"
    return json.dumps({"Id": i, "Type": kind, "Date": when, "Name": name,
                       "ShortOverview": f"IP address: {ip}"})


def test_country_and_not_country_in_a_rule_match(tmp_path: Path) -> None:
    """A user rule: successes from outside DE, NL alert; unknown countries match neither."""
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "abroad.yaml").write_text(
        "name: login-abroad\ndescription: a login from abroad\ntype: trigger\n"
        "match: {kind: auth_success, not_country: [de, NL]}\ngroup_by: [user]\n")
    log = tmp_path / "activity.log"
    log.write_text("\n".join([
        _entry(1, "AuthenticationSucceeded", "home", "192.0.2.9", "2026-11-30T08:00:00Z"),
        _entry(2, "AuthenticationSucceeded", "abroad", "8.8.8.8", "2026-11-30T08:01:00Z"),
        _entry(3, "AuthenticationSucceeded", "lan", "192.168.1.9", "2026-11-30T08:02:00Z"),
    ]) + "\n")
    cfg = Config.model_validate({"geo": {"mmdb": [str(write_db(tmp_path / "c.mmdb", PLACES))]}})
    rules = [r for r in load_rules([rules_dir]) if r.name == "login-abroad"]
    alerts = [d for d in replay([str(log)], cfg, rules).decisions if isinstance(d, Alert)]
    assert [(a.user, a.country) for a in alerts] == [("abroad", "US")]


def test_bad_country_codes_are_named(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "x.yaml").write_text(
        "name: x-rule\ndescription: bad codes\ntype: trigger\n"
        "match: {country: [Germany, D3]}\n")
    (rules_dir / "y.yaml").write_text(
        "name: y-rule\ndescription: speed on a trigger\ntype: trigger\nmax_speed_kmh: 100\n")
    with pytest.raises(ConfigError) as exc:
        load_rules([rules_dir])
    text = "\n".join(exc.value.problems)
    assert "Germany" in text and "D3" in text and "impossible_travel rules only" in text


def test_log_and_activity_log_report_one_authentication_once(tmp_path: Path) -> None:
    """Replay of Jellyfin's log and a saved Activity Log with the same three failures:
    counted three times, not six (brute-force-ip needs five); with dedup off they add up."""
    log = tmp_path / "log_20261130.log"
    log.write_text("".join(
        f"[2026-11-30 08:00:0{n}.000 +00:00] [INF] [9] Jellyfin.Server.Implementations."
        f'Users.UserManager: Authentication request for "alice" has been denied '
        f'(IP: "203.0.113.9").\n' for n in range(3)))
    api = tmp_path / "activity.log"
    api.write_text("".join(_entry(n + 1, "AuthenticationFailed", "alice", "203.0.113.9",
                                  f"2026-11-30T08:00:0{n}Z") + "\n" for n in range(3)))

    def brute_force(cfg: Config) -> list[int]:
        decisions = replay([str(log), str(api)], cfg, load_rules([])).decisions
        return [d.count for d in decisions if isinstance(d, Alert) and d.rule == "brute-force-ip"]

    assert brute_force(Config()) == []
    assert brute_force(Config.model_validate({"dedup_window": "0s"})) == [5]


def test_the_second_report_that_brings_the_address_reaches_the_address_rules(
        tmp_path: Path) -> None:
    """The log's success has no address, the Activity Log's has: rules keyed by address
    (new-ip-for-user) still see it."""
    log = tmp_path / "log_20261130.log"
    log.write_text("[2026-11-30 09:00:00.000 +00:00] [INF] [9] Jellyfin.Server.Implementations."
                   'Users.UserManager: Authentication request for "alice" has succeeded.\n')
    api = tmp_path / "activity.log"
    api.write_text("\n".join([
        _entry(1, "AuthenticationSucceeded", "alice", "203.0.113.1", "2026-11-30T08:00:00Z"),
        _entry(2, "AuthenticationSucceeded", "alice", "203.0.113.2", "2026-11-30T09:00:01Z"),
    ]) + "\n")
    decisions = replay([str(log), str(api)], Config(), load_rules([])).decisions
    assert [(d.user, d.ip) for d in decisions if isinstance(d, Alert)
            and d.rule == "new-ip-for-user"] == [("alice", "203.0.113.2")]
