"""
One login, one story: the records a proxy, Jellyfin's log and its Activity Log write of
one authentication attempt are joined (``detect.attempts``), rules count attempts, and a
success gets the address its proxy logged; a known address (the household's) is not
banned by failure counts.
"""

from __future__ import annotations

import ipaddress
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.config.model import Config
from jfwatch.detect.attempts import Attempts
from jfwatch.detect.decisions import Alert, Ban
from jfwatch.detect.detector import Detector, settings_from_config
from jfwatch.detect.memory_state import MemoryState
from jfwatch.detect.rules import load_rules
from jfwatch.events import Event, EventKind

T0 = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
DENIED, SUCCESS = EventKind.AUTH_FAILURE, EventKind.AUTH_SUCCESS


def _record(source: str, kind: EventKind, at: float, ip: str | None = None,
            user: str | None = None) -> Event:
    """A record as its parser writes it: the proxy has the address and no user, Jellyfin
    the user (and on a denial the address), the Activity Log both."""
    return Event(time=T0 + timedelta(seconds=at), source=source, kind=kind,
                 origin=f"{source}.x", service="jellyfin",
                 ip=None if ip is None else ipaddress.ip_address(ip), user=user)


def _proxy(kind: EventKind, at: float, ip: str) -> Event:
    return _record("nginx", kind, at, ip)


def _app(kind: EventKind, at: float, user: str, ip: str | None = None) -> Event:
    return _record("jellyfin", kind, at, ip if kind != SUCCESS else None, user)


def _detect(events: list[Event], config: Config | None = None) -> list[object]:
    cfg = config or Config()
    det = Detector(load_rules([]), settings_from_config(cfg, decide_on_clock=False),
                   MemoryState(), clock=lambda: T0 + timedelta(days=1))
    out: list[object] = []
    for event in events:
        out += det.feed(event)
    return out


def _alerts(out: list[object], rule: str) -> list[Alert]:
    return [d for d in out if isinstance(d, Alert) and d.rule == rule]


def _bans(out: list[object]) -> set[str]:
    return {d.ip for d in out if isinstance(d, Ban)}


def test_a_failure_logged_by_the_proxy_and_jellyfin_counts_once_in_either_order() -> None:
    """Four wrong passwords, each in nginx's log (401) and Jellyfin's (denied): four
    attempts, below brute-force-ip's five, whichever line comes first; a fifth bans."""
    for proxy_first in (True, False):
        events: list[Event] = []
        for n in range(4):
            pair = [_proxy(DENIED, n * 10 + 0.4, "203.0.113.5"),
                    _app(DENIED, n * 10, "alice", "203.0.113.5")]
            events += pair if proxy_first else pair[::-1]
        out = _detect(events)
        assert _bans(out) == set(), f"4 attempts counted as more (proxy first: {proxy_first})"
        out = _detect([*events, _app(DENIED, 50, "alice", "203.0.113.5"),
                       _proxy(DENIED, 50.2, "203.0.113.5")])
        assert _bans(out) == {"203.0.113.5"}
        assert [a.count for a in _alerts(out, "brute-force-ip")] == [5]


def test_records_further_apart_than_the_window_are_not_joined() -> None:
    """Clock skew between files within join_window (2s) joins; beyond it, two records."""
    join = Attempts(2_000_000, None)
    first = _app(DENIED, 0, "alice", "203.0.113.5")
    assert join.join(first, 0) is None
    assert join.join(_proxy(DENIED, 1.5, "203.0.113.5"), 1_500_000) is not None
    assert join.join(_app(DENIED, 10, "bob", "203.0.113.6"), 10_000_000) is None
    assert join.join(_proxy(DENIED, 13, "203.0.113.6"), 13_000_000) is None


def test_a_success_gets_the_address_its_proxy_logged() -> None:
    """Jellyfin logs a success without an address; nginx's 200 of the same login has it:
    one attempt with both, so new-ip-for-user works on a log-only install."""
    out = _detect([_app(SUCCESS, 0, "alice"), _proxy(SUCCESS, 0.3, "198.51.100.10"),
                   _proxy(SUCCESS, 3600, "203.0.113.81"), _app(SUCCESS, 3600.1, "alice")])
    assert [(a.user, a.ip) for a in _alerts(out, "new-ip-for-user")] == \
        [("alice", "203.0.113.81")]


def test_two_users_logging_in_at_once_from_one_nat_address() -> None:
    """alice and bob behind one address, in the same second: both attempts get it."""
    join = Attempts(2_000_000, None)
    records = [_app(SUCCESS, 0, "alice"), _app(SUCCESS, 0.1, "bob"),
               _proxy(SUCCESS, 0.2, "198.51.100.20"), _proxy(SUCCESS, 0.3, "198.51.100.20")]
    merged = [j.event for r in records
              if (j := join.join(r, int((r.time - T0).total_seconds() * 1e6))) is not None]
    assert sorted((e.user, str(e.ip)) for e in merged) == \
        [("alice", "198.51.100.20"), ("bob", "198.51.100.20")]


def test_activity_log_log_and_proxy_of_one_login_are_one_attempt() -> None:
    """Three sources, one failure: counted once (five logins are five attempts)."""
    events: list[Event] = []
    for n in range(4):
        events += [_app(DENIED, n * 10, "alice", "203.0.113.7"),
                   _record("jellyfin_activity", DENIED, n * 10 + 0.2, "203.0.113.7", "alice"),
                   _proxy(DENIED, n * 10 + 0.5, "203.0.113.7")]
    assert _bans(_detect(events)) == set()


def test_a_record_without_an_address_is_not_given_a_guessed_one() -> None:
    """A success without an address, after two proxies' successes from two addresses in
    the window: which is its address cannot be told, and none is taken."""
    join = Attempts(2_000_000, None)
    assert join.join(_proxy(SUCCESS, 0, "198.51.100.1"), 0) is None
    assert join.join(_proxy(SUCCESS, 0.1, "203.0.113.9"), 100_000) is None
    assert join.join(_app(SUCCESS, 0.2, "alice"), 200_000) is None
    assert join.ambiguous == 1


def test_an_attacker_cannot_become_known_by_racing_a_household_success() -> None:
    """In the same millisecond as grandma's success from home, an attacker's failure:
    the success joins the home's 200, never the attacker's 401; the attacker is banned
    by its failures, her home is known and spared."""
    events = [_app(SUCCESS, 0, "grandma"), _proxy(DENIED, 0, "203.0.113.66"),
              _proxy(SUCCESS, 0, "198.51.100.30")]
    for n in range(1, 6):
        events += [_app(DENIED, n, "admin", "203.0.113.66"), _proxy(DENIED, n, "203.0.113.66")]
        events += [_app(DENIED, n + 0.5, "grandma", "198.51.100.30"),
                   _proxy(DENIED, n + 0.5, "198.51.100.30")]
    out = _detect(events)
    assert "203.0.113.66" in _bans(out)
    assert "198.51.100.30" not in _bans(out)
    spared = [a for a in _alerts(out, "brute-force-ip") if a.ip == "198.51.100.30"]
    assert spared and spared[0].not_banned_reason is not None
    assert spared[0].not_banned_reason.startswith("known address: grandma logged in")


def test_a_known_address_enumerating_accounts_is_banned_all_the_same() -> None:
    """Only failure counts spare a known address: trying many usernames is no household's
    doing (user-enumeration bans it)."""
    events = [_record("jellyfin_activity", SUCCESS, 0, "198.51.100.40", "kid")]
    events += [_record("jellyfin_activity", DENIED, 60 + n, "198.51.100.40", f"name{n}")
               for n in range(5)]
    out = _detect(events)
    assert "198.51.100.40" in _bans(out)
    assert _alerts(out, "user-enumeration")[0].ban_until is not None


def test_a_password_alone_does_not_make_an_address_known_where_2fa_is_used() -> None:
    """Where a user has two-factor authentication, a correct password followed by a
    failed second factor leaves the address unknown: its failures are banned."""
    ip = "203.0.113.44"
    events = [_record("jellyfin_activity", EventKind.MFA_SUCCESS, 0, "198.51.100.2", "bob"),
              _record("jellyfin_activity", SUCCESS, 100, ip, "bob"),
              _record("jellyfin_activity", EventKind.MFA_FAILURE, 101, ip, "bob")]
    events += [_record("jellyfin_activity", DENIED, 200 + n, ip, "bob") for n in range(5)]
    assert ip in _bans(_detect(events))


def test_a_thousand_interleaved_addresses_each_counted_once() -> None:
    """1,000 addresses failing five times each, every failure in the proxy's log and
    Jellyfin's, the two interleaved: each address banned once, at a count of 5."""
    events: list[Event] = []
    rng = random.Random(7)
    for n in range(5):
        round_ = []
        for i in range(1000):
            ip = f"203.{i // 250}.{i % 250}.9"
            at = n * 60 + i * 0.05
            round_ += [_app(DENIED, at, "admin", ip), _proxy(DENIED, at + rng.uniform(0, 1), ip)]
        round_.sort(key=lambda e: e.time)
        events += round_
    out = _detect(events)
    assert len(_bans(out)) == 1000
    assert {a.count for a in _alerts(out, "brute-force-ip")} == {5}


@settings(max_examples=60, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(min_value=1, max_value=12))
def test_any_interleaving_gives_the_same_attempts(rng: random.Random, logins: int) -> None:
    """The same records in any order give the same attempts: each login's app record,
    proxy record (up to a second apart) and Activity Log entry joined, nothing else."""
    records: list[Event] = []
    for n in range(logins):
        ip, user, at = f"198.51.100.{n + 1}", f"user{n}", n * 5.0
        kind = SUCCESS if n % 2 else DENIED
        records += [_app(kind, at, user, ip), _proxy(kind, at + rng.uniform(0, 1), ip),
                    _record("jellyfin_activity", kind, at + rng.uniform(0, 1), ip, user)]
    rng.shuffle(records)
    join = Attempts(2_000_000, None)
    for record in records:
        join.join(record, int((record.time - T0).total_seconds() * 1e6))
    attempts = sorted((str(a.seen.ip), a.seen.user, tuple(sorted(a.sources)))
                      for a in join._order)
    assert attempts == sorted((f"198.51.100.{n + 1}", f"user{n}",
                               ("jellyfin", "jellyfin_activity", "nginx"))
                              for n in range(logins))


def test_a_stuffed_success_does_not_make_its_address_known() -> None:
    """An address that failed as other users (credential stuffing) and then got in as
    emma is not the household's: its later failures are banned as anyone's."""
    ip = "203.0.113.70"
    events = [_record("jellyfin_activity", DENIED, n, ip, name)
              for n, name in enumerate(("leak1", "leak2"))]
    events.append(_record("jellyfin_activity", SUCCESS, 5, ip, "emma"))
    events += [_record("jellyfin_activity", DENIED, 100 + n, ip, "emma") for n in range(5)]
    out = _detect(events)
    assert ip in _bans(out)
    assert [a.user for a in _alerts(out, "success-from-failing-address")] == ["emma"]


def test_replay_explains_how_far_each_rule_got() -> None:
    """``replay --explain``: per rule grouped by the address or user, how far it got;
    whether the address is known, protected or banned."""
    import subprocess
    import sys

    from conftest import ROOT

    case = ROOT / "tests" / "golden" / "rules" / "success-from-failing-address"
    done = subprocess.run([sys.executable, "-m", "jfwatch", "replay", "--explain",
                           "203.0.113.66", "--explain", "198.51.100.10", "--explain", "emma",
                           *sorted(str(p) for p in case.glob("*.log"))],
                          capture_output=True, text=True, timeout=120, check=True)
    text = done.stderr
    assert "203.0.113.66 (ip 203.0.113.66):" in text
    assert "  brute-force-ip: 3 of 5 attempts within 10m (last at 2026-02-01 12:10:02 UTC)" \
        in text
    assert "  success-from-failing-address: fired, last at 2026-02-01 12:10:05 UTC" in text
    assert "  known address: alice logged in from it on 2026-02-01" in text
    assert text.count("not banned now") == 2
    assert "  many-ips-one-account: 1 of 3 distinct ips within 30m" in text


def test_parse_shows_the_lines_nothing_matched(tmp_path: Path) -> None:
    """``parse --show-unmatched`` prints the lines no parser recognised, as they are."""
    import subprocess
    import sys

    log = tmp_path / "log_20260201.log"
    known = ("[2026-02-01 12:00:00.000 +00:00] [INF] [9] Jellyfin.Server.Implementations."
             'Users.UserManager: Authentication request for "a" has been denied '
             '(IP: "203.0.113.5").\n')
    unknown = ("[2026-02-01 12:00:01.000 +00:00] [INF] [9] Emby.Server.Implementations."
               'Session.SessionManager: Playback stopped reported by app "Jellyfin Web"\n')
    log.write_text(known + unknown + known)
    done = subprocess.run([sys.executable, "-m", "jfwatch", "parse", "--show-unmatched",
                           str(log)], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout == unknown
    assert "3 read, 2 matched, 1 unmatched" in done.stderr


def test_an_ipv6_household_is_known_by_its_network() -> None:
    """A phone's privacy address changes daily; the household's /64 does not: a success
    from one address of it spares the network's failures from another."""
    events = [_record("jellyfin_activity", SUCCESS, 0, "2001:db8:5:5::aaaa", "mum")]
    events += [_record("jellyfin_activity", DENIED, 86_400 + n, "2001:db8:5:5::bbbb", "mum")
               for n in range(5)]
    out = _detect(events)
    assert _bans(out) == set()
    assert _alerts(out, "brute-force-ip")[0].not_banned_reason.startswith(  # type: ignore[union-attr]
        "known address: mum")


def test_a_stuffing_campaign_is_banned_whole_and_the_household_is_not() -> None:
    """The campaign fixture (30 addresses, two or three attempts each, through nginx and
    Jellyfin): every address banned, also those with two attempts; one growing alert;
    the stuffed success alerted with its address and user; dad's typo at a cafe,
    followed by his password, not banned."""
    from jfwatch.engine.oneshot import replay

    from conftest import ROOT

    case = ROOT / "tests" / "golden" / "rules" / "credential-stuffing-campaign"
    decisions = replay(sorted(str(p) for p in case.glob("*.log")), Config(),
                       load_rules([])).decisions
    assert _bans(decisions) == {f"203.0.113.{100 + a}" for a in range(30)}
    campaign = _alerts(decisions, "credential-stuffing-campaign")
    assert campaign and campaign[0].severity == "critical"
    assert campaign[0].detail is not None and "addresses" in campaign[0].detail
    stuffed = _alerts(decisions, "success-from-failing-address") + \
        _alerts(decisions, "success-from-banned-address")
    assert ("203.0.113.129", "emma") in {(a.ip, a.user) for a in stuffed}
    # No alert counts more attempts than were made: 2 or 3 per address, 30 addresses.
    assert all(a.count <= 90 for a in campaign)


def test_a_single_failure_is_swept_once_its_grace_is_over() -> None:
    """During a campaign, an address with one failure and no success within the grace
    is banned; one whose success comes within it is not (a typo)."""
    events: list[Event] = []
    for a in range(12):  # the campaign: 12 addresses, 6 accounts, two failures each
        for k in range(2):
            events.append(_record("jellyfin_activity", DENIED, a * 10 + k, f"203.0.113.{a}",
                                  f"leak{a % 6}"))
    events.append(_record("jellyfin_activity", DENIED, 200, "198.51.100.50", "zed"))  # silent
    events.append(_record("jellyfin_activity", DENIED, 210, "198.51.100.51", "mum"))  # typo
    events.append(_record("jellyfin_activity", SUCCESS, 230, "198.51.100.51", "mum"))
    events.append(_record("jellyfin_activity", DENIED, 900, "203.0.113.99", "leak1"))  # later
    bans = _bans(_detect(events))
    assert "198.51.100.50" in bans and "198.51.100.51" not in bans
    assert {f"203.0.113.{a}" for a in range(12)} <= bans
