"""
The ``crowdsec`` enforcer against a real CrowdSec LAPI (tests/lapi.py): bans with the
rule's duration, escalation, unban, the LAPI down then up with jfwatch restarted in
between, a push made just before a crash found and not repeated, and a login from an
address another host banned.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch.actions.crowdsec import CrowdsecEnforcer, LapiClient, read_credentials
from jfwatch.actions.enforce import EnforcementQueue, request_rows
from jfwatch.detect.decisions import Ban
from jfwatch.state import StateStore

from daemon_helper import DaemonRun, append, denied
from lapi import Lapi, seconds

pytestmark = pytest.mark.system


@pytest.fixture
def lapi(tmp_path: Path) -> Iterator[Lapi]:
    server = Lapi(tmp_path / "lapi").start()
    yield server
    server.stop()


def _daemon(tmp_path: Path, lapi: Lapi, *, bouncer: bool = False) -> tuple[DaemonRun, Path]:
    logs = tmp_path / "logs"
    logs.mkdir(exist_ok=True)
    log = logs / f"log_{datetime.now(UTC):%Y%m%d}.log"
    log.touch()
    key = f", bouncer_key_file: {lapi.bouncer_key_file}" if bouncer else ""
    run = DaemonRun(tmp_path, extra=(
        f"crowdsec: {{enabled: true, credentials_file: {lapi.credentials}{key}}}\n"
        "allow: []\n"))
    # The list enforcer: each ban lasts its rule's own duration (Fail2Ban would own it).
    run.config.write_text(run.config.read_text().replace(
        "ban_feed: {", "ban_feed: {enforcer: list, "))
    return run, log


def _failures(log: Path, ip: str, n: int = 5) -> None:
    now = datetime.now(UTC)
    for i in range(n):
        stamp = (now - timedelta(seconds=n - i)).strftime("%Y-%m-%d %H:%M:%S.000")
        append(log, denied("alice", ip, stamp))


def _jfwatch(run: DaemonRun, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jfwatch", *args, "--config", str(run.config)],
                          capture_output=True, text=True, timeout=60, check=False,
                          cwd=run.work)


def test_ban_escalation_and_unban_reach_every_bouncer(tmp_path: Path, lapi: Lapi) -> None:
    run, log = _daemon(tmp_path, lapi)
    run.start()
    try:
        _failures(log, "203.0.113.7")
        run.wait_for(lambda: bool(lapi.bouncer_view("203.0.113.7")), what="decision")
        first = lapi.bouncer_view("203.0.113.7")
        assert len(first) == 1 and first[0]["type"] == "ban"
        assert first[0]["origin"] == "crowdsec" and first[0]["scenario"] == "jfwatch/brute-force-ip"
        # The admin's usual check shows it (CrowdSec 1.4 hides other origins without -a).
        assert "203.0.113.7" in lapi._cscli("decisions", "list")
        assert 4 * 3600 - 120 < seconds(first[0]["duration"]) <= 4 * 3600  # the rule's 4h
        listed = _jfwatch(run, "bans", "list")
        assert "crowdsec: requested" in listed.stdout and "accepted" in listed.stdout, listed
        # Lifted by the admin: the decision goes from the LAPI.
        lifted = _jfwatch(run, "bans", "unban", "203.0.113.7")
        assert lifted.returncode == 0, lifted.stderr
        run.wait_for(lambda: not lapi.bouncer_view("203.0.113.7"), what="decision deleted")
        # A repeat offence (after a restart: the rule's hour of cooldown is in memory):
        # twice as long.
        run.stop()
        run.start()
        _failures(log, "203.0.113.7")
        run.wait_for(lambda: bool(lapi.bouncer_view("203.0.113.7")), what="second decision")
        second = lapi.bouncer_view("203.0.113.7")
        assert len(second) == 1 and 8 * 3600 - 120 < seconds(second[0]["duration"]) <= 8 * 3600
    finally:
        run.stop()
    assert "jfwatch-test-Passw0rd" not in run.log_text()


def test_lapi_down_then_up_with_jfwatch_restarted_in_between(tmp_path: Path,
                                                             lapi: Lapi) -> None:
    run, log = _daemon(tmp_path, lapi)
    lapi.stop()
    run.start()
    _failures(log, "198.51.100.44")
    run.wait_for(lambda: "enforcer_failed" in run.log_text(), timeout=30, what="LAPI failure")
    run.wait_for(lambda: "crowdsec: requested" in _jfwatch(run, "bans", "list").stdout,
                 what="the ban waiting for the LAPI")
    assert "waiting" in _jfwatch(run, "bans", "list").stdout
    run.stop(signal.SIGKILL)
    lapi.start()
    run.start()
    try:
        run.wait_for(lambda: bool(lapi.bouncer_view("198.51.100.44")), timeout=60,
                     what="the waiting ban delivered")
        run.wait_for(lambda: "accepted" in _jfwatch(run, "bans", "list").stdout,
                     what="accepted in bans list")
    finally:
        run.stop()
    mine = [d for d in lapi.decisions() if d["value"] == "198.51.100.44"]
    assert len(mine) == 1, mine
    # Delivered late, it still ends when it was decided to: 4h after the failures.
    assert seconds(mine[0]["duration"]) <= 4 * 3600


def test_a_push_made_just_before_a_crash_is_found_not_repeated(tmp_path: Path,
                                                               lapi: Lapi) -> None:
    """The row was marked as tried and the alert reached the LAPI, then the process died
    before recording it: the next delivery finds the alert by its ref."""
    store = StateStore(tmp_path / "state.db")
    now = datetime.now(UTC)
    ban = Ban("203.0.113.99", "brute-force-ip", now, now + timedelta(hours=4), 0)
    request_rows(store, ["crowdsec"], ban)
    with store.transaction() as db:
        db.execute("UPDATE enforcements SET attempts=1")
    url, login, password = read_credentials(lapi.credentials)
    client = LapiClient(url, login, password)
    client.push_ban(ban.ip, ban.rule, ban.until, "testserver/1", now)  # before the "crash"
    client._token = "a.revoked.token"  # refused by the LAPI: it logs in again, once
    client._token_until = datetime.now(UTC).timestamp() + 3600
    queue = EnforcementQueue(store, [CrowdsecEnforcer(client)], "testserver")
    queue.deliver(queue.enforcers[0])
    assert queue.counts == {("crowdsec", "recovered"): 1, ("crowdsec", "accepted"): 1}
    assert len([d for d in lapi.decisions() if d["value"] == "203.0.113.99"]) == 1
    row = store.db.execute("SELECT accepted, remote_id FROM enforcements").fetchone()
    assert row[0] is not None and row[1] is not None


def test_a_login_from_an_address_another_host_banned_is_critical(tmp_path: Path,
                                                                 lapi: Lapi) -> None:
    lapi.add_decision("198.51.100.9", "2h")
    run, _ = _daemon(tmp_path, lapi, bouncer=True)
    authelia = tmp_path / "logs" / "authelia.log"
    authelia.touch()
    run.config.write_text(run.config.read_text().replace(
        "sources:\n", "sources:\n  - {path: logs/authelia.log, format: authelia, start: end}\n"))
    run.start()
    try:
        # The decisions are pulled by a thread of their own (as a bouncer pulls them);
        # a login read before the first pull cannot be known to be from a banned address.
        run.wait_for(lambda: "crowdsec_decisions_loaded" in run.log_text(), what="decisions")
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        append(authelia, f'time="{stamp}" level=debug msg="Successful 1FA authentication '
                         "attempt made by user 'alice'\" method=POST path=/api/firstfactor "
                         "remote_ip=198.51.100.9\n")
        run.wait_for(lambda: "crowdsec-banned-login" in run.log_text(), what="alert")
    finally:
        run.stop()
    alert = next(json.loads(line) for line in run.log_text().splitlines()
                 if "crowdsec-banned-login" in line)
    assert alert["severity"] == "critical" and alert["user"] == "alice"
    assert "another host" in alert["detail"]


def test_a_rotating_ipv6_attacker_is_one_range_decision(tmp_path: Path, lapi: Lapi) -> None:
    """200 addresses of one /64: one decision of scope Range on the network, which a
    bouncer applies to an address of it that never attacked."""
    run, log = _daemon(tmp_path, lapi)
    run.start()
    try:
        now = datetime.now(UTC)
        append(log, "".join(
            denied("alice", f"2001:db8:5:6:{i:x}::{i:x}",
                   (now - timedelta(seconds=60 - i % 60)).strftime("%Y-%m-%d %H:%M:%S.000"))
            for i in range(200)))
        run.wait_for(lambda: bool(lapi.bouncer_view("2001:db8:5:6::99")), what="decision")
        run.wait_for(lambda: len(run.events()) == 200, what="every attempt read")
        found = lapi.bouncer_view("2001:db8:5:6:ffff::1")
        assert [(d["scope"], d["value"], d["type"]) for d in found] == \
            [("Range", "2001:db8:5:6::/64", "ban")]
        assert lapi.bouncer_view("2001:db8:5:7::1") == []
        lifted = _jfwatch(run, "bans", "unban", "2001:db8:5:6::42")  # an address of it
        assert lifted.returncode == 0 and "2001:db8:5:6::/64" in lifted.stdout, lifted
        run.wait_for(lambda: not lapi.bouncer_view("2001:db8:5:6::99"), what="range lifted")
    finally:
        run.stop()


def test_shared_bans_follow_the_decisions_stream(lapi: Lapi) -> None:
    """Decisions made after the first pull arrive with the next one (the stream's deltas),
    deleted ones leave; a look-up is a dictionary probe, never a request."""
    import ipaddress

    from jfwatch.enrich.shared_bans import SharedBans

    from lapi import BOUNCER_KEY

    shared = SharedBans(lapi.url, BOUNCER_KEY, interval=0.2)
    shared.start()
    try:
        deadline = time.monotonic() + 30
        while not shared.loaded and time.monotonic() < deadline:
            time.sleep(0.05)
        address = ipaddress.ip_address("198.51.100.66")
        assert shared.loaded and shared.listed(address) is None
        lapi.add_decision(str(address), "30m")
        while shared.listed(address) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "another host" in (shared.listed(address) or "")
        lapi._cscli("decisions", "delete", "--ip", str(address))
        while shared.listed(address) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert shared.listed(address) is None and shared.problem is None
    finally:
        shared.stop()
        shared.join(timeout=15)
        shared.close()


def test_a_refused_bouncer_key_shows_in_status_and_health(tmp_path: Path, lapi: Lapi) -> None:
    """A bouncer key the LAPI refuses (revoked, mistyped): logged once, and `status` and
    /health say that the shared decisions cannot be read."""
    from http_receiver import free_port

    run, _ = _daemon(tmp_path, lapi, bouncer=True)
    wrong = tmp_path / "wrong.key"
    wrong.write_text("notthebouncerkey0123456789abcdef\n")
    port = free_port()
    run.config.write_text(run.config.read_text().replace(
        str(lapi.bouncer_key_file), str(wrong)).replace(
        "metrics: {enabled: false}", f"metrics: {{port: {port}}}"))
    run.start()
    try:
        run.wait_for(lambda: "crowdsec_decisions_unavailable" in run.log_text(),
                     what="the refusal logged")
        run.wait_for(lambda: "bouncer key is refused" in _jfwatch(run, "status").stdout,
                     what="status")
        status = _jfwatch(run, "status").stdout
    finally:
        run.stop()
    assert "crowdsec_decisions: HTTP 403" in status or "crowdsec_decisions: HTTP 401" in status
    assert run.log_text().count("crowdsec_decisions_unavailable") == 1
