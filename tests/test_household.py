"""
A simulated week of a four-person household behind nginx, read as an admin sets it up
(Jellyfin's log and nginx's access log): typos, a grandmother who locks herself out and
whose Fire TV then retries the disabled account, a TV holding a stale password, phones on
mobile networks, IPv6 privacy addresses that change every day; and in the last half hour
a credential-stuffing run from 30 addresses (two or three attempts each, names from a
leak, one pair that works).  No household address may be banned; the stuffing run is,
whole; the stuffed login is alerted with its address and user; no alert counts more
attempts than were made.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert, Ban
from jfwatch.detect.rules import load_rules
from jfwatch.engine.oneshot import replay

UM = "Jellyfin.Server.Implementations.Users.UserManager"
START = datetime(2026, 3, 2, 7, 0, tzinfo=UTC)
HOME4 = "198.51.100.10"
HOME6 = "2001:db8:aa:1"  # the household's /64; each day new privacy addresses in it
FAMILY = ("dad", "mum", "kid", "grandma")
ATTACKERS = [f"203.0.113.{100 + a}" for a in range(30)]
BYPASS = "203.0.113.250"  # has dad's password, not his second factor


class Week:
    """Both logs, and what really happened (attempts per address)."""

    def __init__(self) -> None:
        self.jellyfin: list[tuple[datetime, str]] = []
        self.nginx: list[tuple[datetime, str]] = []
        self.attempts: Counter[str] = Counter()  # failed attempts per address

    def _nginx(self, t: datetime, ip: str, status: int, agent: str) -> None:
        self.nginx.append((t, f'{ip} - - [{t:%d/%b/%Y:%H:%M:%S} +0000] "POST '
                              f'/Users/AuthenticateByName HTTP/1.1" {status} 512 "-" "{agent}"\n'))

    def _jellyfin(self, t: datetime, message: str) -> None:
        self.jellyfin.append((t, f"[{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} +00:00] "
                                 f"[INF] [9] {UM}: {message}\n"))

    def fail(self, t: datetime, user: str, ip: str, agent: str = "Jellyfin Web") -> None:
        self.attempts[ip] += 1
        self._jellyfin(t, f'Authentication request for "{user}" has been denied (IP: "{ip}").')
        self._nginx(t + timedelta(milliseconds=40), ip, 401, agent)

    def disabled(self, t: datetime, user: str, ip: str) -> None:
        self.attempts[ip] += 1
        self._jellyfin(t, f'Authentication request for "{user}" has been denied because '
                          f'this account is currently disabled (IP: "{ip}").')
        self._nginx(t + timedelta(milliseconds=30), ip, 401, "Amazon Fire TV")

    def locked(self, t: datetime, user: str) -> None:
        self._jellyfin(t, f'Disabling user "{user}" due to 3 unsuccessful login attempts.')

    def succeed(self, t: datetime, user: str, ip: str, agent: str = "Jellyfin Web") -> None:
        self._jellyfin(t, f'Authentication request for "{user}" has succeeded.')
        self._nginx(t + timedelta(milliseconds=25), ip, 200, agent)

    def second_factor(self, t: datetime, user: str, ip: str, ok: bool) -> None:
        """dad uses the 2FA plugin: a challenge after his password, then his code."""
        self._jellyfin(t, f'[2FA] Issuing challenge for "{user}" from "{ip}"')
        self.nginx.append((t, f'{ip} - - [{t + timedelta(seconds=9):%d/%b/%Y:%H:%M:%S} +0000] '
                              f'"POST /TwoFactorAuth/Verify HTTP/1.1" {200 if ok else 401} 64 "-" '
                              '"Jellyfin Web"\n'))
        if not ok:
            self.attempts[ip] += 1

    def write(self, folder: Path) -> list[str]:
        jf, ng = folder / "log_20260302.log", folder / "access.log"
        jf.write_text("".join(line for _, line in sorted(self.jellyfin)))
        ng.write_text("".join(line for _, line in sorted(self.nginx)))
        return [str(jf), str(ng)]


def simulate(rng: random.Random) -> Week:
    week = Week()
    for day in range(7):
        morning = START + timedelta(days=day)
        v6 = {u: f"{HOME6}:{rng.getrandbits(16):x}:{rng.getrandbits(16):x}::{i + 1:x}"
              for i, u in enumerate(FAMILY)}  # today's privacy addresses
        for user in FAMILY:
            if user == "grandma" and day >= 2:
                continue  # locked out on day 2 (below)
            for _ in range(rng.randint(1, 3)):
                t = morning + timedelta(minutes=rng.randint(0, 14 * 60))
                place = rng.random()
                ip = HOME4 if place < 0.5 else v6[user] if place < 0.8 else \
                    f"192.0.2.{rng.randint(1, 250)}"  # a phone on a mobile network
                if rng.random() < 0.15:  # a typo first
                    week.fail(t, user, ip)
                    t += timedelta(seconds=rng.randint(5, 40))
                week.succeed(t, user, ip)
                if user == "dad":
                    week.second_factor(t + timedelta(seconds=1), user, ip, ok=True)
        if day == 2:  # grandma forgets her password: three tries, Jellyfin locks her out
            t = morning + timedelta(hours=3)
            for n in range(3):
                week.fail(t + timedelta(seconds=30 * n), "grandma", HOME4)
            week.locked(t + timedelta(seconds=61), "grandma")
        if day >= 2:  # her Fire TV keeps retrying the disabled account, every 20 minutes
            for n in range(36):
                week.disabled(morning + timedelta(hours=4, minutes=20 * n), "grandma", HOME4)
        if day == 4:  # the kid's TV holds an old password: once an hour all day
            for hour in range(14):
                week.fail(morning + timedelta(hours=hour, minutes=7), "kid", HOME4,
                          agent="Samsung TV")
    # A 2FA bypass attempt: dad's password works from an unknown address, his code not.
    t = START + timedelta(days=6, hours=14)
    week.succeed(t, "dad", BYPASS, agent="curl/8.5")
    for n in range(3):
        week.second_factor(t + timedelta(seconds=1 + 20 * n), "dad", BYPASS, ok=False)
    # The last half hour: credential stuffing from 30 addresses with names from a leak;
    # the twenty-third pair works for kid.
    leak = ["admin", "john", "dad", "mum", "sarah", "mike", "test", "emma", "kid", "alex"]
    t = START + timedelta(days=6, hours=15)
    for a, ip in enumerate(ATTACKERS):
        for k in range(rng.choice((2, 3))):
            week.fail(t + timedelta(seconds=55 * a + 9 * k), rng.choice(leak), ip,
                      agent="python-requests/2.31")
        if a == 22:
            week.succeed(t + timedelta(seconds=55 * a + 30), "kid", ip,
                         agent="python-requests/2.31")
    return week


def test_a_week_of_a_household_and_a_stuffing_run(tmp_path: Path) -> None:
    week = simulate(random.Random(2026))
    files = week.write(tmp_path)
    decisions = replay(files, Config(), load_rules([])).decisions
    alerts = [d for d in decisions if isinstance(d, Alert)]
    banned = {d.ip for d in decisions if isinstance(d, Ban)}
    by_rule = Counter(a.rule for a in alerts)
    print(f"household week: {len(alerts)} alerts {dict(sorted(by_rule.items()))}, "
          f"{len(banned)} banned, attempts {sum(week.attempts.values())}")
    household = {HOME4, f"{HOME6}::/64"} | {ip for ip in banned if ip.startswith("192.0.2.")}
    assert not banned & household, f"the household was banned: {banned & household}"
    assert set(ATTACKERS) <= banned, f"not banned: {set(ATTACKERS) - banned}"
    assert banned == {*ATTACKERS, BYPASS}
    bypass = [a for a in alerts if a.rule == "mfa-failure-after-password"]
    assert bypass and {a.user for a in bypass} == {"dad"} and bypass[0].severity == "critical"
    stuffed = [a for a in alerts if a.rule in ("success-from-failing-address",
                                               "success-from-banned-address")]
    assert (ATTACKERS[22], "kid") in {(a.ip, a.user) for a in stuffed}
    for alert in alerts:  # no alert counts more attempts than were made
        if alert.ip is not None and alert.rule in ("brute-force-ip", "user-enumeration",
                                                   "password-spraying"):
            assert alert.count <= week.attempts[alert.ip], alert
    assert by_rule["stale-device-disabled-account"] >= 1
    assert by_rule["account-locked"] == 1
    assert by_rule["credential-stuffing-campaign"] >= 1
    assert "proxy-misconfigured" not in by_rule
    assert not [a for a in alerts if a.rule == "new-ip-for-user" and a.ip and
                a.ip.startswith(("10.", "192.168."))]
