"""Detector behaviour on synthetic events: windows, cooldown, bans, allow-list, memory bound."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch.addresses import networks
from jfwatch.detect.decisions import Alert, Ban, Unban
from jfwatch.detect.detector import Detector, DetectorSettings
from jfwatch.detect.rules import Rule
from jfwatch.events import Event, EventKind
from jfwatch.state import StateStore

from conftest import ROOT

T0 = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)


def _rule(**kw: object) -> Rule:
    base: dict[str, object] = {"name": "bf", "description": "test rule", "type": "threshold",
                               "match": {"kind": ["auth_failure"]}, "group_by": ["ip"],
                               "threshold": 3, "window": "10m",
                               "actions": {"notify": {}, "ban": {"duration": "1h"}}}
    base.update(kw)
    return Rule.model_validate(base)


def _fail(ip: str, at: float, user: str = "u") -> Event:
    return Event(time=T0 + timedelta(seconds=at), source="jellyfin", kind=EventKind.AUTH_FAILURE,
                 origin="jellyfin.denied", service="jellyfin", ip=ipaddress.ip_address(ip),
                 user=user)


def _detector(rule: Rule, store: StateStore | None = None, **settings: object) -> Detector:
    return Detector([rule], DetectorSettings(**settings), store or StateStore(":memory:"))  # type: ignore[arg-type]


def _run(det: Detector, events: list[Event]) -> list[object]:
    out: list[object] = []
    for e in events:
        out += det.feed(e)
    return out


class TestThreshold:
    def test_fires_at_threshold_within_window(self) -> None:
        """Three failures inside ten minutes raise one alert and one ban."""
        out = _run(_detector(_rule()), [_fail("203.0.113.1", s) for s in (0, 60, 120)])
        assert [type(d).__name__.lower() for d in out] == ["alert", "ban"]

    def test_window_edge(self) -> None:
        """Failures further apart than the window never add up."""
        out = _run(_detector(_rule()), [_fail("203.0.113.1", s) for s in (0, 400, 801)])
        assert out == []

    def test_cooldown_suppresses_repeat_alerts(self) -> None:
        """After an alert, the same group stays quiet for the cooldown period."""
        det = _detector(_rule(cooldown="1h", actions={"notify": {}}))
        out = _run(det, [_fail("203.0.113.1", s) for s in range(0, 60, 5)])
        assert sum(isinstance(d, Alert) for d in out) == 1
        out = _run(det, [_fail("203.0.113.1", 3700 + s) for s in (0, 1, 2)])
        assert sum(isinstance(d, Alert) for d in out) == 1

    def test_ipv6_grouped_by_prefix(self) -> None:
        """Addresses in one /64 count as one attacker, and the ban covers what was
        counted: the /64, not the one address of the last attempt."""
        out = _run(_detector(_rule()), [_fail(f"2001:db8:1:2::{i}", i) for i in range(1, 4)])
        alert = next(d for d in out if isinstance(d, Alert))
        assert alert.key == {"ip": "2001:db8:1:2::/64"}
        assert alert.ban_target == "2001:db8:1:2::/64"
        assert next(d for d in out if isinstance(d, Ban)).ip == "2001:db8:1:2::/64"

    def test_200_addresses_of_one_prefix_are_one_ban_of_the_network(self) -> None:
        """An attacker rotating through its /64 (200 failures from 200 addresses within
        the ban's hour) gets the network banned once, and the ban covers every address
        it used; once it is over, a return is banned again, twice as long."""
        det = _detector(_rule(cooldown="1h"))
        events = [_fail(f"2001:db8:7:8:{i:x}::{i:x}", i * 15) for i in range(200)]
        out = _run(det, events)
        bans = [d for d in out if isinstance(d, Ban)]
        assert [b.ip for b in bans] == ["2001:db8:7:8::/64"]
        assert bans[0].until - bans[0].time == timedelta(hours=1)
        assert all(e.ip in ipaddress.ip_network(bans[0].ip) for e in events)
        assert sum(isinstance(d, Alert) for d in out) == 1
        again = _run(det, [_fail(f"2001:db8:7:8::{i:x}", 4000 + i) for i in range(1, 4)])
        assert [(b.ip, b.until - b.time) for b in again if isinstance(b, Ban)] == \
            [("2001:db8:7:8::/64", timedelta(hours=2))]

    def test_per_address_rules_ban_the_address(self) -> None:
        """With ipv6_prefix 128 each address is its own attacker, and banned alone."""
        out = _run(_detector(_rule(), ipv6_prefix=128),
                   [_fail("2001:db8:1:2::9", s) for s in range(3)])
        assert next(d for d in out if isinstance(d, Ban)).ip == "2001:db8:1:2::9"

    def test_a_prefix_holding_an_allow_listed_address_is_never_banned(self) -> None:
        """The household's own /64 holds its allow-listed address: the network is not
        banned by failures from its other addresses, and the alert says why."""
        out = _run(_detector(_rule(), allow=networks(["2001:db8:1:2::10/128"])),
                   [_fail(f"2001:db8:1:2::{i}", i) for i in range(1, 4)])
        alert = next(d for d in out if isinstance(d, Alert))
        assert not any(isinstance(d, Ban) for d in out)
        assert alert.not_banned_reason == "2001:db8:1:2::/64 holds allow-listed addresses"

    @pytest.mark.parametrize("ip", ["0.0.0.0", "::", "255.255.255.255", "224.0.0.1",
                                    "ff02::1", "240.0.0.9", "64:ff9b::c000:221"])
    def test_reserved_addresses_are_never_banned(self, ip: str) -> None:
        """Unspecified, broadcast, multicast, reserved and NAT64 addresses are nobody's
        own: counted and alerted, never banned."""
        out = _run(_detector(_rule(), ipv6_prefix=128), [_fail(ip, s) for s in range(3)])
        alert = next(d for d in out if isinstance(d, Alert))
        assert not any(isinstance(d, Ban) for d in out)
        assert alert.not_banned_reason is not None and "address" in alert.not_banned_reason

    def test_distinct_counts_unique_values(self) -> None:
        """``distinct: user`` counts different usernames, not attempts."""
        det = _detector(_rule(distinct="user"))
        assert _run(det, [_fail("203.0.113.1", s, "same") for s in range(5)]) == []
        out = _run(det, [_fail("203.0.113.1", 10 + s, f"u{s}") for s in range(3)])
        assert any(isinstance(d, Alert) for d in out)


class TestBans:
    def test_allow_listed_and_trusted_never_banned(self) -> None:
        """Allow-listed and trusted-proxy addresses raise alerts but never bans."""
        det = _detector(_rule(), allow=networks(["192.168.0.0/16"]),
                        trusted_proxies=networks(["172.18.0.2/32"]))
        out = _run(det, [_fail("192.168.1.5", s) for s in range(3)]
                   + [_fail("172.18.0.2", 10 + s) for s in range(3)])
        alerts = [d for d in out if isinstance(d, Alert)]
        assert not any(isinstance(d, Ban) for d in out)
        assert [a.not_banned_reason for a in alerts] == ["allow-listed", "trusted proxy"]

    def test_escalation_doubles_up_to_max(self) -> None:
        """Each repeat ban doubles, capped by ban_max (Fail2Ban's bantime.increment)."""
        det = _detector(_rule(), ban_max=timedelta(hours=3))
        durations = []
        for round_ in range(4):
            start = round_ * 20000
            out = _run(det, [_fail("203.0.113.9", start + s) for s in range(3)])
            ban = next(d for d in out if isinstance(d, Ban))
            durations.append(ban.duration_seconds / 3600)
        assert durations == [1, 2, 3, 3]

    def test_expired_ban_is_lifted_in_event_time(self) -> None:
        """A later event past the ban's end produces the unban."""
        det = _detector(_rule())
        _run(det, [_fail("203.0.113.9", s) for s in range(3)])
        out = det.feed(_fail("198.51.100.1", 3 * 3600))
        assert [(d.ip, d.rule) for d in out if isinstance(d, Unban)] == [("203.0.113.9", "bf")]

    def test_restart_keeps_bans_and_escalation(self, tmp_path: Path) -> None:
        """Bans and history live in SQLite: a new detector on the same file remembers them."""
        state = tmp_path / "state.db"
        _run(_detector(_rule(), StateStore(state)), [_fail("203.0.113.9", s) for s in range(3)])
        det = _detector(_rule(), StateStore(state))
        assert det.store.active_ban("203.0.113.9") is not None
        out = _run(det, [_fail("203.0.113.9", 5000 + s) for s in range(3)])
        assert next(d for d in out if isinstance(d, Ban)).duration_seconds == 2 * 3600


class TestSequenceAndNewValue:
    def test_success_after_failures(self) -> None:
        rule = _rule(type="sequence", first={"kind": ["auth_failure"], "count": 2},
                     then={"kind": ["auth_success"]}, group_by=["user"], match={},
                     actions={"notify": {}})
        ok = Event(time=T0 + timedelta(seconds=30), source="jellyfin", kind=EventKind.AUTH_SUCCESS,
                   origin="jellyfin.succeeded", service="jellyfin", user="u")
        out = _run(_detector(rule), [_fail("203.0.113.1", 0), _fail("203.0.113.2", 10), ok])
        assert [(a.rule, a.count) for a in out if isinstance(a, Alert)] == [("bf", 3)]
        # Every failure in the window is counted, not just the `count` that were needed.
        more = [_fail("203.0.113.3", 100 + i) for i in range(4)]
        ok2 = Event(time=T0 + timedelta(seconds=200), source="jellyfin",
                    kind=EventKind.AUTH_SUCCESS, origin="jellyfin.succeeded",
                    service="jellyfin", user="u")
        det = _detector(rule)
        out = _run(det, [*more, ok2])
        assert [a.count for a in out if isinstance(a, Alert)] == [5]

    def test_first_seen_survives_restart(self, tmp_path: Path) -> None:
        """A value seen before a restart is not news after it."""
        rule = _rule(type="new_value", field="ip", group_by=["user"], threshold=1,
                     match={"kind": ["auth_failure"]}, actions={"notify": {}})
        state = tmp_path / "s.db"
        _run(_detector(rule, StateStore(state)), [_fail("203.0.113.1", 0), _fail("203.0.113.2", 1)])
        out = _run(_detector(rule, StateStore(state)), [_fail("203.0.113.2", 5),
                                                        _fail("203.0.113.3", 6)])
        assert [a.ip for a in out if isinstance(a, Alert)] == ["203.0.113.3"]


def _flood(*args: str) -> dict[str, int]:
    """bench/flood.py in its own process (its peak RSS is the detector's, not pytest's),
    not traced by coverage: tracing doubles its minutes and the detector's code is
    covered by the tests above."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "flood.py"), *args],
                         capture_output=True, text=True, check=True, timeout=600, env=env).stdout
    return dict(json.loads(out))


@pytest.mark.system
def test_interleaved_flood_of_100000_addresses_is_banned_whole() -> None:
    """
    100,000 addresses failing 5 times each in round-robin order within the window, on
    the default cap: every one is banned, nothing is evicted.  (Evicting the least
    recently active key first banned none of 20,000.)
    """
    result = _flood("--addresses", "100000")
    assert result["banned"] == 100_000
    assert result["evictions"] == 0


@pytest.mark.system
def test_flood_keeps_keys_that_can_ban_over_one_off_accounts() -> None:
    """Over the cap, scaled down: 20,000 addresses, each with a username of its own (an
    account key per address, which no rule bans by), on a cap that holds the addresses'
    groups but not the accounts' too.  The account keys go; every address is banned."""
    result = _flood("--addresses", "20000", "--own-names", "--max-groups", "70000")
    assert result["evictions"] > 0
    assert result["banned"] == 20_000


@pytest.mark.system
def test_flood_beyond_the_cap_stays_bounded_and_serves_the_first_come() -> None:
    """
    200,000 addresses x 5 on a cap of 100,000 groups: groups stay at the cap, evictions
    are counted, and the addresses tracked first are banned instead of none (each
    newcomer displaces the newest equal key, never one with more evidence).
    """
    result = _flood("--addresses", "200000", "--max-groups", "100000")
    assert 100_000 - 10 < result["groups"] <= 100_000
    assert result["evictions"] > 200_000
    assert result["banned"] >= 25_000


@pytest.mark.system
def test_flood_of_a_million_addresses_is_bounded() -> None:
    """
    1,000,000 distinct attackers, one failure each: groups stay at the cap, evictions
    are counted, the account they all target is never evicted, RSS < 250 MB.
    """
    script = textwrap.dedent("""
        import ipaddress, resource
        from datetime import UTC, datetime, timedelta
        from jfwatch.detect.detector import Detector, DetectorSettings
        from jfwatch.events import Event, EventKind
        from jfwatch.detect.rules import load_rules
        from jfwatch.state import StateStore
        rules = load_rules([])
        det = Detector(rules, DetectorSettings(), StateStore(":memory:"))
        t0 = datetime(2026, 1, 1, tzinfo=UTC)
        base = int(ipaddress.ip_address("11.0.0.0"))
        for i in range(1_000_000):
            det.feed(Event(time=t0 + timedelta(microseconds=i), source="jellyfin",
                           kind=EventKind.AUTH_FAILURE, origin="jellyfin.denied",
                           service="jellyfin", ip=ipaddress.IPv4Address(base + i), user="admin"))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
        print(det.tracked_groups, det.evictions, rss, int("user=admin" in det._keys))
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}  # untraced
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=900, env=env).stdout.split()
    groups, evictions, rss_mb, admin_kept = map(int, out)
    cap = DetectorSettings().max_groups
    assert cap - 10 < groups <= cap
    assert admin_kept
    assert evictions > 1_000_000
    assert rss_mb * 1024 * 1024 < 250_000_000


def test_escalation_never_overflows() -> None:
    """A hundred repeat bans of one address stay at ban_max instead of crashing."""
    det = _detector(_rule(), ban_max=timedelta(weeks=4))
    last = None
    for round_ in range(100):
        start = round_ * 40 * 86400
        out = _run(det, [_fail("203.0.113.9", start + s) for s in range(3)])
        last = next(d for d in out if isinstance(d, Ban))
    assert last is not None and last.duration_seconds == 28 * 86400


def test_restart_does_not_re_alert_on_an_active_ban(tmp_path: Path) -> None:
    """After a restart, renewed failures from an address banned within the cooldown stay quiet."""
    state = tmp_path / "state.db"
    rule = _rule(cooldown="1h")
    first = _run(_detector(rule, StateStore(state)), [_fail("203.0.113.9", s) for s in range(3)])
    assert any(isinstance(d, Alert) for d in first)
    again = _run(_detector(rule, StateStore(state)),
                 [_fail("203.0.113.9", 60 + s) for s in range(3)])
    assert again == []


@pytest.mark.system
class TestBansCommand:
    def test_list_and_unban(self, tmp_path: Path) -> None:
        """``jfwatch bans`` lists the state's bans; ``unban`` lifts one and writes the feed
        (enforced by the list: nothing else to lift)."""
        state_dir = tmp_path / "state"
        store = StateStore(state_dir / "state.db")
        now = datetime.now(UTC)
        store.record_ban("203.0.113.9", "bf", now, now + timedelta(hours=1), 0)
        cfg = tmp_path / "c.yml"
        cfg.write_text(f"state_dir: {state_dir}\nban_feed: {{path: {tmp_path / 'bans.log'}, "
                       f"list_path: {tmp_path / 'banned.txt'}, enforcer: list}}\n")
        base = [sys.executable, "-m", "jfwatch", "bans", "--config", str(cfg)]
        listed = subprocess.run(base, capture_output=True, text=True, check=True, timeout=60)
        assert listed.stdout.startswith("203.0.113.9\tbf\tuntil ")
        lifted = subprocess.run([*base, "unban", "203.0.113.9"], capture_output=True, text=True,
                                check=True, timeout=60)
        assert "unbanned 203.0.113.9" in lifted.stdout
        assert " UNBAN 203.0.113.9 rule=bf" in (tmp_path / "bans.log").read_text()
        assert (tmp_path / "banned.txt").read_text() == ""
        again = subprocess.run([*base, "unban", "203.0.113.9"], capture_output=True, text=True,
                               check=False, timeout=60)
        assert again.returncode == 1
        nonsense = subprocess.run([*base, "unban", "not-an-ip"], capture_output=True, text=True,
                                  check=False, timeout=60)
        assert nonsense.returncode == 2 and "not an address" in nonsense.stderr
        # Only bans active now are listed; one that ended while no daemon ran is counted.
        store.record_ban("203.0.113.10", "bf", now - timedelta(hours=2), now - timedelta(hours=1),
                         0)
        listed = subprocess.run(base, capture_output=True, text=True, check=True, timeout=60)
        assert listed.stdout == "" and "1 ban(s) ended" in listed.stderr

    def test_a_ban_by_hand(self, tmp_path: Path) -> None:
        """``bans add`` records, writes the feed and the list, and is listed like any ban;
        what can never be banned, or is no address, is refused."""
        cfg = tmp_path / "c.yml"
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\ntimezone: Europe/Paris\nban_feed: "
                       f"{{path: {tmp_path / 'bans.log'}, list_path: {tmp_path / 'banned.txt'}, "
                       "enforcer: list}\n")
        base = [sys.executable, "-m", "jfwatch", "bans", "--config", str(cfg)]
        added = subprocess.run([*base, "add", "198.51.100.77", "--for", "10m", "--reason",
                                "seen in the proxy log"], capture_output=True, text=True,
                               check=False, timeout=60)
        assert added.returncode == 0, added.stderr
        assert "banned 198.51.100.77 until" in added.stdout and "CET" in added.stdout
        assert " BAN 198.51.100.77 rule=manual duration=" in (tmp_path / "bans.log").read_text()
        assert (tmp_path / "banned.txt").read_text() == "198.51.100.77\n"
        row = StateStore(tmp_path / "state" / "state.db").active_ban("198.51.100.77")
        assert row is not None and row.rule == "manual"
        assert timedelta(minutes=9) < row.until - datetime.now(UTC) <= timedelta(minutes=10)
        listed = subprocess.run(base, capture_output=True, text=True, check=True, timeout=60)
        assert listed.stdout.startswith("198.51.100.77\tmanual\tuntil ")
        for bad in ("0.0.0.0", "not-an-ip"):
            refused = subprocess.run([*base, "add", bad], capture_output=True, text=True,
                                     check=False, timeout=60)
            assert refused.returncode == 2 and "error:" in refused.stderr

    def test_unban_says_what_to_run_when_fail2ban_cannot_be_reached(self, tmp_path: Path) -> None:
        store = StateStore(tmp_path / "state" / "state.db")
        now = datetime.now(UTC)
        store.record_ban("203.0.113.8", "bf", now, now + timedelta(hours=1), 0)
        cfg = tmp_path / "c.yml"
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\nban_feed: {{path: "
                       f"{tmp_path / 'bans.log'}, fail2ban_socket: {tmp_path / 'none.sock'}}}\n")
        lifted = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "--config", str(cfg),
                                 "unban", "203.0.113.8"], capture_output=True, text=True,
                                check=False, timeout=60)
        assert lifted.returncode == 1 and "unbanned 203.0.113.8 in jfwatch" in lifted.stdout
        assert f"sudo fail2ban-client -s {tmp_path / 'none.sock'} set jfwatch unbanip " \
               "203.0.113.8" in lifted.stderr
        # jfwatch no longer holds it: Fail2Ban is asked all the same (it may).
        again = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "--config", str(cfg),
                                "unban", "203.0.113.8"], capture_output=True, text=True,
                               check=False, timeout=60)
        assert "not banned in jfwatch; asking Fail2Ban anyway" in again.stdout
        assert "set jfwatch unbanip 203.0.113.8" in again.stderr
        # A ban listed without Fail2Ban to ask is not called enforced.
        store.record_ban("203.0.113.11", "bf", now, now + timedelta(hours=1), 0)
        listed = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "--config", str(cfg)],
                                capture_output=True, text=True, check=True, timeout=60).stdout
        assert "written to the feed for Fail2Ban jail jfwatch; not confirmed" in listed


def test_attempt_memory_stays_bounded_under_a_flood() -> None:
    """An attacker's flood of attempts from fresh addresses and names, and of records on
    one address from two sources, cannot grow the join's memory past its caps; each
    record joins at most one attempt, and never one from its own source."""
    from jfwatch.detect import attempts

    join = attempts.Attempts(2_000_000, lambda ip: False)
    now = 1_800_000_000_000_000
    for n in range(attempts.MAX_ATTEMPTS + 20_000):
        ip = ipaddress.ip_address(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
        source = "jellyfin" if n % 2 else "nginx"  # two sources: every attempt is indexed
        event = Event(T0, source, EventKind.AUTH_FAILURE, f"{source}.x", "jellyfin",
                      ip, f"user{n}")
        assert join.join(event, now) is None
    assert len(join) == attempts.MAX_ATTEMPTS
    ip = ipaddress.ip_address("203.0.113.9")
    for n in range(5_000):
        source = "jellyfin" if n % 2 else "nginx"
        join.join(Event(T0, source, EventKind.AUTH_FAILURE, f"{source}.x", "jellyfin",
                        ip, "admin" if source == "jellyfin" else None), now + n)
    assert join.joined == 2_500  # each record joined once, never twice
    assert all(len(v) <= attempts._MAX_PER_ADDRESS for v in join._by_ip.values())


def test_carrier_grade_nat_is_allow_listed_by_default() -> None:
    """100.64.0.0/10 (carrier-grade NAT, Tailscale peers) is in the default allow-list:
    failures from it are alerted, never banned; an admin can remove it."""
    from jfwatch.config.model import Config
    from jfwatch.detect.detector import settings_from_config

    default = settings_from_config(Config())
    out = _run(Detector([_rule()], default, StateStore(":memory:")),
               [_fail("100.100.1.2", s) for s in range(3)])
    alert = next(d for d in out if isinstance(d, Alert))
    assert not any(isinstance(d, Ban) for d in out)
    assert alert.not_banned_reason == "allow-listed"
    narrowed = settings_from_config(Config(allow=["192.168.0.0/16"]))
    out = _run(Detector([_rule()], narrowed, StateStore(":memory:")),
               [_fail("100.100.1.2", s) for s in range(3)])
    assert any(isinstance(d, Ban) for d in out)


class TestCooldownNeverBlocksABan:
    """A cooldown silences repeated alerts; an address that is not banned and crosses a
    banning threshold is banned again, with an alert saying so."""

    def _kinds(self, out: list[object]) -> list[str]:
        return [type(d).__name__.lower() for d in out]

    def test_after_a_manual_unban(self) -> None:
        store = StateStore(":memory:")
        det = _detector(_rule(cooldown="1h"), store)
        ip = "203.0.113.5"
        assert self._kinds(_run(det, [_fail(ip, s) for s in (0, 10, 20)])) == ["alert", "ban"]
        # Still banned: the attack goes on silently (one alert per cooldown, no ban twice).
        assert _run(det, [_fail(ip, s) for s in (30, 40, 50, 60)]) == []
        store.remove_ban(ip)  # `jfwatch bans unban` (another process, the same state)
        assert _run(det, [_fail(ip, 70), _fail(ip, 80)]) == []  # below the threshold
        out = _run(det, [_fail(ip, 90)])
        assert self._kinds(out) == ["alert", "ban"]
        assert store.active_ban(ip) is not None

    def test_after_a_ban_shorter_than_the_cooldown(self) -> None:
        store = StateStore(":memory:")
        det = _detector(_rule(cooldown="1h", actions={"notify": {}, "ban": {"duration": "5m"}}),
                        store, ban_increment=False)
        ip = "203.0.113.6"
        assert self._kinds(_run(det, [_fail(ip, s) for s in (0, 10, 20)])) == ["alert", "ban"]
        assert self._kinds(det.expire(T0 + timedelta(minutes=6))) == ["unban"]
        out = _run(det, [_fail(ip, 400 + s) for s in (0, 10, 20)])  # within the hour
        assert self._kinds(out) == ["alert", "ban"]

    def test_a_rule_that_only_alerts_keeps_its_cooldown(self) -> None:
        det = _detector(_rule(cooldown="1h", actions={"notify": {}}))
        ip = "203.0.113.7"
        assert self._kinds(_run(det, [_fail(ip, s) for s in (0, 10, 20)])) == ["alert"]
        assert _run(det, [_fail(ip, 100 + s) for s in range(0, 300, 10)]) == []


class TestFail2banEscalation:
    """The stated end of a ban is Fail2Ban's: bantime x 2^n x factor after n earlier bans
    (those it still remembers), at most maxtime, from the feed line's whole second."""

    def test_durations_follow_fail2bans_formula(self) -> None:
        from jfwatch.detect.settings import Fail2banPolicy

        policy = Fail2banPolicy(timedelta(hours=4), 1.0, timedelta(weeks=4))
        assert [policy.duration(n) for n in range(5)] == [
            timedelta(hours=h) for h in (4, 8, 16, 32, 64)]
        assert policy.duration(10) == timedelta(weeks=4)  # capped
        doubled = Fail2banPolicy(timedelta(minutes=1), 2.0, timedelta(days=365))
        assert [doubled.duration(n) for n in range(4)] == [
            timedelta(minutes=m) for m in (1, 4, 8, 16)]  # the factor from the 2nd ban on
        small = Fail2banPolicy(timedelta(minutes=10), 0.1, timedelta(days=1))
        assert small.duration(1) == timedelta(minutes=10)  # never below bantime
        assert Fail2banPolicy(timedelta(seconds=1), 1.0, timedelta(days=3650)).duration(
            99) == timedelta(seconds=1 << 20)  # 2^n stops growing at n = 20

    def test_a_repeat_offender_within_a_day_is_escalated_then_forgotten(self) -> None:
        from jfwatch.detect.settings import Fail2banPolicy

        store = StateStore(":memory:")
        policy = Fail2banPolicy(timedelta(minutes=10), 1.0, timedelta(weeks=4))
        det = _detector(_rule(cooldown="0s"), store, fail2ban=policy)
        ip = "203.0.113.8"
        ends = []
        for start in (0.4, 3600.4, 7200.4, 7200.4 + 3 * 86400):
            bans = [d for d in _run(det, [_fail(ip, start + s) for s in (0, 1, 2)])
                    if isinstance(d, Ban)]
            assert len(bans) == 1
            ends.append(bans[0].until - bans[0].time)
            assert bans[0].time.microsecond == 0  # the feed line's stamp
            det.expire(bans[0].until)
        assert ends == [timedelta(minutes=m) for m in (10, 20, 40, 10)]
