"""
The ``nftables`` enforcer with the real ``nft``, inside a network namespace the test
creates (``ip netns add``, an unshare of the network namespace kept by a bind mount): an
element per ban with the ban's timeout, removed on unban, the sets kept across a jfwatch
restart; and the host's own ruleset never touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch.actions.nftables import Nftables

from conftest import require_tool
from daemon_helper import DaemonRun, append, denied

pytestmark = pytest.mark.system


@pytest.fixture
def netns() -> Iterator[str]:
    require_tool("nft")
    ip = require_tool("ip")
    if os.geteuid() != 0:
        pytest.skip("creating a network namespace needs root")
    name = f"jfwtest-{uuid.uuid4().hex[:8]}"
    subprocess.run([ip, "netns", "add", name], check=True, timeout=30)
    yield name
    subprocess.run([ip, "netns", "del", name], check=False, timeout=30)


def _in(ns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *command]


def _elements(ns: str, set_name: str) -> dict[str, dict[str, int]]:
    """The set's elements: address -> {timeout, expires} in seconds (none while the set
    is not there: the daemon's enforcement thread creates it after its start)."""
    done = subprocess.run(_in(ns, "nft", "-j", "list", "set", "inet", "jfwatch", set_name),
                          capture_output=True, text=True, timeout=30, check=False)
    out: dict[str, dict[str, int]] = {}
    if done.returncode != 0:
        assert "No such file or directory" in done.stderr, done.stderr
        return out
    for item in json.loads(done.stdout)["nftables"]:
        for elem in item.get("set", {}).get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                val = elem["elem"]["val"]
                if isinstance(val, dict) and "prefix" in val:  # a network
                    val = f"{val['prefix']['addr']}/{val['prefix']['len']}"
                out[str(val)] = elem["elem"]
            else:
                out[str(elem)] = {}
    return out


def _nft_daemon(netns: str, tmp_path: Path) -> tuple[DaemonRun, Path]:
    """A daemon in the namespace with the nftables enforcer (and the list, not Fail2Ban,
    so each ban lasts its rule's duration), following an empty log of today."""
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / f"log_{datetime.now(UTC):%Y%m%d}.log"
    log.touch()
    run = DaemonRun(tmp_path, wrap=_in(netns), extra="nftables: {enabled: true}\nallow: []\n")
    run.config.write_text(run.config.read_text().replace(
        "ban_feed: {", "ban_feed: {enforcer: list, "))
    return run, log


def test_bans_become_elements_with_their_timeout(netns: str, tmp_path: Path) -> None:
    run, log = _nft_daemon(netns, tmp_path)
    run.start()
    try:
        now = datetime.now(UTC)
        for ip in ("203.0.113.7", "2001:db8::7"):
            for i in range(5):
                stamp = (now - timedelta(seconds=5 - i)).strftime("%Y-%m-%d %H:%M:%S.000")
                append(log, denied("alice", ip, stamp))
        run.wait_for(lambda: "203.0.113.7" in _elements(netns, "banned4") and
                     "2001:db8::/64" in _elements(netns, "banned6net"), what="elements")
        v4 = _elements(netns, "banned4")["203.0.113.7"]
        assert v4["timeout"] == pytest.approx(4 * 3600, abs=120)  # brute-force-ip: 4h
        assert 0 < v4["expires"] <= v4["timeout"]
        # A restart keeps the table, the sets and their elements.
        run.stop()
        run.start()
        assert "203.0.113.7" in _elements(netns, "banned4")
        lifted = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "unban", "203.0.113.7",
                                 "--config", str(run.config)], capture_output=True, text=True,
                                timeout=60, check=False, cwd=tmp_path)
        assert lifted.returncode == 0, lifted.stderr
        run.wait_for(lambda: "203.0.113.7" not in _elements(netns, "banned4"),
                     what="element removed")
        assert "2001:db8::/64" in _elements(netns, "banned6net")
    finally:
        run.stop()
    # Nothing leaked into the host's ruleset.
    host = subprocess.run(["nft", "list", "table", "inet", "jfwatch"], capture_output=True,
                          text=True, timeout=30, check=False)
    assert host.returncode != 0


def test_a_ban_already_there_gets_the_new_timeout(netns: str) -> None:
    """Escalation: the element's timeout is replaced in one transaction."""
    nft = Nftables(command=_in(netns, "nft"))
    nft.setup()
    nft.setup()  # idempotent
    now = datetime.now(UTC)
    nft.ban("198.51.100.5", "r", now + timedelta(hours=1), "x/1", now)
    nft.ban("198.51.100.5", "r", now + timedelta(hours=8), "x/2", now)
    assert _elements(netns, "banned4")["198.51.100.5"]["timeout"] == 8 * 3600
    nft.unban("198.51.100.5", [])
    nft.unban("198.51.100.5", [])  # absent already: no error
    assert "198.51.100.5" not in _elements(netns, "banned4")


def test_the_shipped_drop_rule_loads_beside_the_sets(netns: str) -> None:
    """contrib/nftables/jfwatch.nft loads after jfwatch made its sets, and before (its set
    definitions are the same), and a banned address is in the set it drops from."""
    example = Path(__file__).resolve().parents[1] / "contrib" / "nftables" / "jfwatch.nft"
    subprocess.run(_in(netns, "nft", "-f", str(example)), check=True, timeout=30)
    nft = Nftables(command=_in(netns, "nft"))
    nft.setup()
    now = datetime.now(UTC)
    nft.ban("203.0.113.8", "r", now + timedelta(minutes=5), "x/1", now)
    subprocess.run(_in(netns, "nft", "-f", str(example)), check=True, timeout=30)
    rules = subprocess.run(_in(netns, "nft", "list", "chain", "inet", "jfwatch", "input"),
                           capture_output=True, text=True, check=True, timeout=30).stdout
    assert "ip saddr @banned4 drop" in rules
    assert "203.0.113.8" in _elements(netns, "banned4")
    # Loaded any number of times: one rule of each, in each chain.
    subprocess.run(_in(netns, "nft", "-f", str(example)), check=True, timeout=30)
    for chain in ("input", "forward"):
        rules = subprocess.run(_in(netns, "nft", "list", "chain", "inet", "jfwatch", chain),
                               capture_output=True, text=True, check=True, timeout=30).stdout
        assert [rules.count(f"saddr @{s} drop") for s in ("banned4", "banned6", "banned6net")] \
            == [1, 1, 1], rules


def test_a_rotating_ipv6_attacker_is_dropped_by_its_network(netns: str, tmp_path: Path) -> None:
    """200 failures from 200 addresses of one /64: one element, the network, in the
    interval set, and any address of it matches (the kernel drops it)."""
    run, log = _nft_daemon(netns, tmp_path)
    run.start()
    try:
        now = datetime.now(UTC)
        append(log, "".join(
            denied("alice", f"2001:db8:9:9:{i:x}::{i:x}",
                   (now - timedelta(seconds=60 - i % 60)).strftime("%Y-%m-%d %H:%M:%S.000"))
            for i in range(200)))
        run.wait_for(lambda: "2001:db8:9:9::/64" in _elements(netns, "banned6net"),
                     what="the network's element")
        run.wait_for(lambda: len(run.events()) == 200, what="every attempt read")
    finally:
        run.stop()
    assert list(_elements(netns, "banned6net")) == ["2001:db8:9:9::/64"]
    assert _elements(netns, "banned6") == {}
    inside = subprocess.run(_in(netns, "nft", "get", "element", "inet", "jfwatch", "banned6net",
                                "{ 2001:db8:9:9:ffff::1 }"), capture_output=True, text=True,
                            timeout=30, check=False)
    assert inside.returncode == 0 and "2001:db8:9:9::/64" in inside.stdout
    assert "2001:db8:9:9::/64" in (tmp_path / "out" / "banned.txt").read_text().split()


def test_active_bans_are_put_back_after_a_reboot(netns: str, tmp_path: Path) -> None:
    """A reboot empties the kernel's sets (here: the table deleted while jfwatch is
    stopped, as a fresh namespace has none): at its start jfwatch puts every active ban
    back, with the time that is left."""
    run, log = _nft_daemon(netns, tmp_path)
    run.start()
    try:
        now = datetime.now(UTC)
        for i in range(5):
            stamp = (now - timedelta(seconds=5 - i)).strftime("%Y-%m-%d %H:%M:%S.000")
            append(log, denied("alice", "203.0.113.70", stamp))
        run.wait_for(lambda: "203.0.113.70" in _elements(netns, "banned4"), what="element")
        run.stop()
        subprocess.run(_in(netns, "nft", "delete", "table", "inet", "jfwatch"), check=True,
                       timeout=30)
        assert _elements(netns, "banned4") == {}
        time.sleep(1.1)  # the timeout put back is what is left, not the whole ban
        run.start()
        run.wait_for(lambda: "203.0.113.70" in _elements(netns, "banned4"), what="put back")
        assert "bans_restored" in run.log_text()
        element = _elements(netns, "banned4")["203.0.113.70"]
        assert 4 * 3600 - 120 < element["timeout"] < 4 * 3600
    finally:
        run.stop()


def test_a_ban_by_hand_reaches_the_sets(netns: str, tmp_path: Path) -> None:
    """`jfwatch bans add` while the daemon runs: the element appears with its timeout."""
    run, _ = _nft_daemon(netns, tmp_path)
    run.start()
    try:
        added = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "add", "198.51.100.78",
                                "--for", "10m", "--config", str(run.config)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60, check=False)
        assert added.returncode == 0, added.stderr
        assert "requested from nftables" in added.stdout
        run.wait_for(lambda: "198.51.100.78" in _elements(netns, "banned4"), what="element")
        assert 540 < _elements(netns, "banned4")["198.51.100.78"]["timeout"] <= 600
    finally:
        run.stop()
