"""
The ban feed against the real consumer: Debian's fail2ban-server reads the feed that a
real ``jfwatch run`` writes, and bans the attacker but not the allow-listed address.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conftest import ROOT, require_tool
from daemon_helper import DaemonRun, append, start_daemon

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)

FILTER = ROOT / "contrib" / "fail2ban" / "filter.d" / "jfwatch.conf"
UM = "Jellyfin.Server.Implementations.Users.UserManager"


def _line(t: datetime, user: str, ip: str) -> str:
    # Attacker-controlled usernames, quoted and escaped as Jellyfin's file sink does.
    escaped = user.replace('"', '\\"')
    return (f"[{t:%Y-%m-%d %H:%M:%S}.000 +00:00] [INF] [9] {UM}: Authentication request for "
            f'"{escaped}" has been denied (IP: "{ip}").\n')


def _attack(now: datetime) -> str:
    text = ""
    tricks = ['adm"in (IP: "198.51.100.99")', "root\n[x] BAN 198.51.100.98 rule=x", "x'; rm -rf /",
              "alice", "bob", "carol"]
    for i in range(6):
        text += _line(now + timedelta(seconds=i), tricks[i], "203.0.113.44")
        text += _line(now + timedelta(seconds=i), f"user{i}", "192.0.2.55")  # allow-listed
    # An IPv6 attacker rotating through its /64: 200 addresses, one attempt each.
    for i in range(200):
        text += _line(now + timedelta(seconds=i % 50), "admin", f"2001:db8:44:1:{i:x}::{i:x}")
    return text


def _feed_from_daemon(tmp_path: Path) -> Path:
    run, log = start_daemon(tmp_path, extra="allow: [192.0.2.0/24]\n")
    append(log, _attack(datetime.now(UTC) - timedelta(minutes=1)))
    feed = tmp_path / "out" / "bans.log"
    run.wait_for(lambda: feed.exists() and "BAN 203.0.113.44" in feed.read_text() and
                 "BAN 2001:db8:44:1::/64 " in feed.read_text(), what="bans")
    run.wait_for(lambda: len(run.events()) >= 212, what="all events")
    assert run.stop() == 0
    return feed


def _fail2ban_dir(tmp_path: Path, actionban: str, actionunban: str = "") -> tuple[Path, Path, Path]:
    """A private Fail2Ban configuration: the shipped filter, a recording action, a socket
    and pid file of its own.  Returns (config dir, socket, pid file)."""
    conf = tmp_path / "f2b"
    for sub in ("filter.d", "action.d", "jail.d"):
        (conf / sub).mkdir(parents=True)
    shutil.copy(FILTER, conf / "filter.d" / "jfwatch.conf")
    common = Path("/etc/fail2ban/filter.d/common.conf")
    (conf / "filter.d" / "common.conf").write_text(
        common.read_text() if common.exists() else "[DEFAULT]\n_daemon = \\S*\n")
    (conf / "action.d" / "record.conf").write_text(
        "[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
        f"actionban = {actionban}\nactionunban = {actionunban}\n")
    sock, pid = tmp_path / "f2b.sock", tmp_path / "f2b.pid"
    (conf / "fail2ban.conf").write_text(
        f"[Definition]\nloglevel = INFO\nlogtarget = {tmp_path / 'f2b.log'}\n"
        f"socket = {sock}\npidfile = {pid}\ndbfile = :memory:\n")
    return conf, sock, pid


def test_fail2ban_regex_matches_every_ban_line_and_nothing_else(tmp_path: Path) -> None:
    """fail2ban-regex on a feed written during an injection attack: BAN lines only."""
    regex = require_tool("fail2ban-regex")
    feed = _feed_from_daemon(tmp_path)
    now = datetime.now(UTC)
    append(feed, f"{now:%Y-%m-%dT%H:%M:%S}+00:00 jfwatch[1]: UNBAN 203.0.113.44 rule=manual\n")
    text = feed.read_text()
    bans = [line for line in text.splitlines() if " BAN " in line]
    assert [line.split(" BAN ")[1].split()[0] for line in bans] == \
        ["203.0.113.44", "2001:db8:44:1::/64"]
    assert "192.0.2.55" not in text and "198.51.100" not in text
    out = subprocess.run([regex, "--print-all-matched", str(feed), str(FILTER)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    summary = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out)
    assert summary is not None, out
    assert (len(bans) + 1, 0, len(bans), 1) == tuple(map(int, summary.groups()))


def test_real_fail2ban_bans_the_attacker_not_the_allow_listed(tmp_path: Path) -> None:
    """fail2ban-server with a private socket and a recording action enforces the feed."""
    server = require_tool("fail2ban-server")
    client = require_tool("fail2ban-client")
    recorded = tmp_path / "banned-by-fail2ban.txt"
    conf, sock, pid = _fail2ban_dir(tmp_path, f"echo <ip> >> {recorded}")
    feed_dir = tmp_path / "jf"
    feed_dir.mkdir()
    feed = feed_dir / "out" / "bans.log"
    feed.parent.mkdir(parents=True)
    feed.write_text("")
    (conf / "jail.conf").write_text(
        "[DEFAULT]\nbackend = polling\nusedns = no\n"
        f"[jfwatch]\nenabled = true\nfilter = jfwatch\nlogpath = {feed}\n"
        "maxretry = 1\nfindtime = 1h\nbantime = 1h\naction = record\n")
    proc = subprocess.Popen([server, "-f", "-x", "-c", str(conf), "-s", str(sock), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = subprocess.run([client, "-c", str(conf), "-s", str(sock), "ping"],
                                  capture_output=True, text=True, check=False, timeout=30)
            if ping.returncode == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError("fail2ban-server did not answer")
        _feed_from_daemon(feed_dir)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (recorded.exists() and
                                                   len(recorded.read_text().split()) >= 2):
            time.sleep(0.3)
        banned = Counter(recorded.read_text().split()) if recorded.exists() else Counter()
        status = subprocess.run([client, "-c", str(conf), "-s", str(sock), "status", "jfwatch"],
                                capture_output=True, text=True, check=True, timeout=30).stdout
    finally:
        subprocess.run([client, "-c", str(conf), "-s", str(sock), "stop"], capture_output=True,
                       check=False, timeout=30)
        proc.wait(timeout=30)
    # The /64 is banned as one network by Fail2Ban's action (iptables takes it as -s).
    assert Counter({"203.0.113.44": 1, "2001:db8:44:1::/64": 1}) == banned
    assert "203.0.113.44" in status and "192.0.2.55" not in status
    assert "2001:db8:44:1::/64" in status


JAIL = ROOT / "contrib" / "fail2ban" / "jail.d" / "jfwatch.conf"


def test_shipped_jail_starts_before_any_ban_and_bans_within_a_second(tmp_path: Path) -> None:
    """
    The shipped jail (jail.d/jfwatch.conf, overridden in jail.local as a user would) starts
    on the empty feed a jfwatch that has banned no one created, then bans each attacker
    soon after its BAN line: median of 10 under 1 s.  UNBAN lines are ignored.
    """
    server = require_tool("fail2ban-server")
    client = require_tool("fail2ban-client")
    (tmp_path / "jf").mkdir()
    run, log = start_daemon(tmp_path / "jf")
    feed = tmp_path / "jf" / "out" / "bans.log"
    assert feed.exists() and feed.read_text() == ""  # there before the first ban
    recorded = tmp_path / "banned-by-fail2ban.txt"
    conf, sock, pid = _fail2ban_dir(tmp_path, f"echo <ip> $(date +%%s.%%N) >> {recorded}",
                                    f"echo <ip> >> {tmp_path / 'unbanned-by-fail2ban.txt'}")
    shutil.copy(JAIL, conf / "jail.d" / "jfwatch.conf")
    (conf / "jail.conf").write_text("[DEFAULT]\n")
    (conf / "jail.local").write_text(f"[jfwatch]\nlogpath = {feed}\naction = record\n")
    proc = subprocess.Popen([server, "-f", "-x", "-c", str(conf), "-s", str(sock), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    seen: dict[str, float] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ping = subprocess.run([client, "-c", str(conf), "-s", str(sock), "status", "jfwatch"],
                                  capture_output=True, text=True, check=False, timeout=30)
            if ping.returncode == 0:
                break
            assert proc.poll() is None, (tmp_path / "f2b.log").read_text()
            time.sleep(0.3)
        else:
            raise AssertionError("the shipped jail did not start on the empty feed")
        time.sleep(1.5)  # the jail's first look at the feed
        attackers = [f"203.0.113.{60 + i}" for i in range(10)]
        for ip in attackers:
            now = datetime.now(UTC) - timedelta(seconds=10)
            append(log, "".join(_line(now + timedelta(seconds=s), f"u{s}", ip) for s in range(5)))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and ip not in seen:
                if f"BAN {ip} " in feed.read_text():
                    seen[ip] = time.time()
                time.sleep(0.005)
            time.sleep(0.3)
        append(feed, f"{datetime.now(UTC):%Y-%m-%dT%H:%M:%S}+00:00 jfwatch[1]: UNBAN "
                     f"{attackers[0]} rule=manual\n")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(_bans(recorded)) < len(attackers):
            time.sleep(0.05)
        time.sleep(1.5)  # an UNBAN line read as a failure would ban once more
        bans = _bans(recorded)
        # `jfwatch bans unban` lifts the ban in Fail2Ban too (its UNBAN line is ignored).
        config = tmp_path / "jf" / "unban.yml"
        config.write_text(run.config.read_text().replace(
            "list_path: out/banned.txt}", f"list_path: out/banned.txt, fail2ban_socket: {sock}}}"))
        lifted = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "--config", str(config),
                                 "unban", attackers[1]], cwd=tmp_path / "jf", capture_output=True,
                                text=True, timeout=60, check=False)
        unbanned = tmp_path / "unbanned-by-fail2ban.txt"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not unbanned.exists():
            time.sleep(0.1)
        lifted_ips = unbanned.read_text().split() if unbanned.exists() else []
    finally:
        subprocess.run([client, "-c", str(conf), "-s", str(sock), "stop"], capture_output=True,
                       check=False, timeout=30)
        proc.wait(timeout=30)
        run.stop()
    assert Counter(ip for ip, _ in bans) == Counter(attackers)
    assert lifted.returncode == 0, lifted.stderr
    assert "lifted in Fail2Ban (jail jfwatch)" in lifted.stdout
    assert lifted_ips == [attackers[1]]  # (stopping Fail2Ban lifts the rest)
    delays = sorted(when - seen[ip] for ip, when in bans)
    print(f"fail2ban ban delays (s): {[round(d, 3) for d in delays]}")
    assert delays[len(delays) // 2] < 1.0, f"ban delays {delays}"


def _bans(recorded: Path) -> list[tuple[str, float]]:
    if not recorded.exists():
        return []
    return [(ip, float(when)) for ip, when in
            (line.split() for line in recorded.read_text().splitlines() if line.strip())]


def _f2b_bans(client: str, conf: Path, sock: Path) -> dict[str, tuple[datetime, datetime]]:
    """What Fail2Ban holds now: address -> (start, end), from ``banip --with-time``."""
    out = subprocess.run([client, "-c", str(conf), "-s", str(sock), "get", "jfwatch", "banip",
                          "--with-time"], capture_output=True, text=True, check=False,
                         timeout=30).stdout
    held = {}
    for m in re.finditer(r"(\S+)\s+(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) \+ \d+ = "
                         r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", out):
        held[m[1]] = tuple(datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
                           for s in (m[2], m[3]))
    return held  # type: ignore[return-value]


def _jfwatch_beside(tmp_path: Path, feed_settings: str = "") -> tuple[DaemonRun, Path, Path]:
    """A daemon (not started) following an empty log in ``tmp_path/jf``, with more
    ``ban_feed`` settings; returns it, its log and its feed."""
    work = tmp_path / "jf"
    (work / "logs").mkdir(parents=True)
    log = work / "logs" / "log_20260501.log"
    log.write_text("")
    run = DaemonRun(work)
    if feed_settings:
        run.config.write_text(run.config.read_text().replace(
            "list_path: out/banned.txt}", f"list_path: out/banned.txt, {feed_settings}}}"))
    return run, log, work / "out" / "bans.log"


def _shipped_jail(conf: Path, feed: Path, local: str = "") -> None:
    """The shipped jail on ``feed``, overridden in jail.local as a user would."""
    shutil.copy(JAIL, conf / "jail.d" / "jfwatch.conf")
    (conf / "jail.conf").write_text("[DEFAULT]\n")
    (conf / "jail.local").write_text(f"[jfwatch]\nlogpath = {feed}\naction = record\n{local}")


def _start_fail2ban(conf: Path, sock: Path, pid: Path) -> subprocess.Popen[bytes]:
    """fail2ban-server on the private config, once its jfwatch jail answers (in UTC, as
    the ends it prints are read)."""
    server, client = require_tool("fail2ban-server"), require_tool("fail2ban-client")
    proc = subprocess.Popen([server, "-f", "-x", "-c", str(conf), "-s", str(sock), "-p", str(pid)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            env={**os.environ, "TZ": "UTC"})
    deadline = time.monotonic() + 30
    while subprocess.run([client, "-s", str(sock), "status", "jfwatch"], capture_output=True,
                         check=False, timeout=30).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "the jail did not start"
        time.sleep(0.2)
    return proc


def _stop_fail2ban(sock: Path, proc: subprocess.Popen[bytes]) -> None:
    subprocess.run([require_tool("fail2ban-client"), "-s", str(sock), "stop"],
                   capture_output=True, check=False, timeout=30)
    proc.wait(timeout=30)


def _brute_force(log: Path, ip: str) -> None:
    """Five failures from ``ip``, just now: a brute-force ban."""
    now = datetime.now(UTC)
    append(log, "".join(_line(now - timedelta(seconds=5 - s), f"u{s}", ip) for s in range(5)))


@pytest.mark.parametrize(("factor", "lengths"), [(1, (2, 4, 8)), (2, (2, 8, 16))])
def test_three_offences_end_when_fail2ban_ends_them(tmp_path: Path, factor: int,
                                                    lengths: tuple[int, ...]) -> None:
    """
    The shipped jail (bantime made 2 s, as a test can wait) and jfwatch over three offences
    of one address: each ban jfwatch states ends at the second Fail2Ban ends it, by
    Fail2Ban's formula bantime x 2^n x bantime.factor (the shipped factor 1, and 2).
    """
    client = require_tool("fail2ban-client")
    run, log, feed = _jfwatch_beside(
        tmp_path, f"jail_bantime: 2s, jail_maxtime: 1h, jail_factor: {factor}")
    conf, sock, pid = _fail2ban_dir(tmp_path, "true")
    _shipped_jail(conf, feed, f"bantime = 2s\nbantime.maxtime = 1h\nbantime.factor = {factor}\n")
    run.start()
    run.wait_for(feed.exists, what="the feed")
    proc = _start_fail2ban(conf, sock, pid)
    ip = "203.0.113.77"
    stated: list[datetime] = []
    enforced: list[tuple[datetime, datetime]] = []
    try:
        for offence in range(3):
            _brute_force(log, ip)
            run.wait_for(lambda n=offence: run.log_text().count('"event": "ban"') > n,
                         what=f"ban {offence + 1}")
            ban = [json.loads(line) for line in run.log_text().splitlines()
                   if '"event": "ban"' in line][offence]
            run.wait_for(lambda: ip in _f2b_bans(client, conf, sock), what="Fail2Ban's ban")
            stated.append(datetime.fromisoformat(ban["until"]))
            enforced.append(_f2b_bans(client, conf, sock)[ip])
            # Both lift it at its end; the next offence comes after.
            run.wait_for(lambda: ip not in _f2b_bans(client, conf, sock), timeout=30,
                         what="Fail2Ban's unban")
            run.wait_for(lambda n=offence: run.log_text().count('"event": "unban"') > n,
                         timeout=30, what="jfwatch's unban")
    finally:
        _stop_fail2ban(sock, proc)
        run.stop()
    assert [end - start for start, end in enforced] == [timedelta(seconds=s) for s in lengths]
    assert stated == [end for _, end in enforced]


def test_fail2ban_first_on_a_fresh_install(tmp_path: Path) -> None:
    """
    Fail2Ban started before jfwatch ever ran (a fresh install, a boot with /var/log on
    tmpfs): the shipped tmpfiles.d entry has created the feed, so the shipped jail starts
    on it and takes no other jail down; jfwatch's first run then writes into it and the
    attacker is banned.
    """
    client = require_tool("fail2ban-client")
    tmpfiles = require_tool("systemd-tmpfiles")
    root = tmp_path / "root"
    (root / "etc" / "tmpfiles.d").mkdir(parents=True)
    for name in ("passwd", "group"):  # the users and groups, as on the host
        shutil.copy(f"/etc/{name}", root / "etc" / name)
    shutil.copy(ROOT / "systemd" / "jfwatch.tmpfiles", root / "etc" / "tmpfiles.d" / "jfwatch.conf")
    subprocess.run([tmpfiles, "--create", f"--root={root}", "jfwatch.conf"], check=True,
                   timeout=60)
    feed = root / "var" / "log" / "jfwatch" / "bans.log"
    assert feed.exists() and feed.stat().st_mode & 0o777 == 0o640
    recorded = tmp_path / "banned-by-fail2ban.txt"
    conf, sock, pid = _fail2ban_dir(tmp_path, f"echo <ip> >> {recorded}")
    shutil.copy(JAIL, conf / "jail.d" / "jfwatch.conf")
    other = tmp_path / "other.log"
    other.write_text("")
    (conf / "jail.conf").write_text(  # another jail of the host, which must stay up
        f"[DEFAULT]\n[other]\nenabled = true\nfilter = jfwatch\nlogpath = {other}\n"
        "action = record\n")
    (conf / "jail.local").write_text(f"[jfwatch]\nlogpath = {feed}\naction = record\n"
                                     "ignoreip = 203.0.113.99\n")
    proc = _start_fail2ban(conf, sock, pid)
    run, log, _ = _jfwatch_beside(tmp_path)
    run.config.write_text(run.config.read_text().replace(
        "path: out/bans.log, list_path: out/banned.txt}", f"path: {feed}, list_path: "
                                                          f"out/banned.txt, fail2ban_socket: "
                                                          f"{sock}}}"))
    try:
        status = subprocess.run([client, "-s", str(sock), "status"], capture_output=True,
                                text=True, check=True, timeout=30)
        assert "jfwatch" in status.stdout and "other" in status.stdout
        run.start()
        for ip in ("203.0.113.88", "203.0.113.99"):  # .99 is in the jail's ignoreip
            _brute_force(log, ip)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (recorded.exists() and
                                                   "203.0.113.88" in recorded.read_text()):
            time.sleep(0.1)
        run.wait_for(lambda: "BAN 203.0.113.99 " in feed.read_text(), what="the second ban")
        time.sleep(1)  # Fail2Ban reads it, and ignores it
        # `bans list` asks Fail2Ban: one ban confirmed, the ignored one said not held.
        listed = subprocess.run([sys.executable, "-m", "jfwatch", "bans", "list", "--config",
                                 str(run.config)], cwd=run.work, capture_output=True, text=True,
                                timeout=60, check=True).stdout
        held = subprocess.run([client, "-s", str(sock), "get", "jfwatch", "banip", "--with-time"],
                              capture_output=True, text=True, timeout=30, check=True).stdout
    finally:
        _stop_fail2ban(sock, proc)
        run.stop()
    assert recorded.read_text().split() == ["203.0.113.88"]
    lines = {line.split("\t")[0]: line for line in listed.splitlines()}
    end = re.search(r"203\.0\.113\.88\s+\S+ \S+ \+ \d+ = \S+ (\d\d:\d\d:\d\d)", held)
    assert end is not None, held
    assert f"confirmed by Fail2Ban jail jfwatch until {end[1]}" in lines["203.0.113.88"]
    assert "NOT held by Fail2Ban jail jfwatch" in lines["203.0.113.99"]


def test_bans_are_confirmed_and_put_back_after_fail2ban_was_down(tmp_path: Path) -> None:
    """
    With ``confirm`` (jfwatch may run fail2ban-client): a ban the jail holds is "confirmed
    until T"; one in the jail's ignoreip is "NOT enforced"; a ban made while Fail2Ban was
    down, whose line is older than the jail's findtime when it comes back (so Fail2Ban
    skips it), is put back, as is one its restart lost, and each is lifted at the end
    jfwatch stated, not at the put-back's own.
    """
    client = require_tool("fail2ban-client")
    conf, sock, pid = _fail2ban_dir(tmp_path, f"echo ban <ip> $(date +%%s) >> {tmp_path}/rec",
                                    f"echo unban <ip> $(date +%%s) >> {tmp_path}/rec")
    run, log, feed = _jfwatch_beside(
        tmp_path, f"jail_bantime: 30s, confirm: true, fail2ban_client: [{client}], "
                  f"fail2ban_socket: {sock}")
    _shipped_jail(conf, feed, "bantime = 30s\nfindtime = 2s\nignoreip = 203.0.113.99\n")

    def listed() -> str:
        return subprocess.run([sys.executable, "-m", "jfwatch", "bans", "list", "--config",
                               str(run.config)], cwd=run.work, capture_output=True, text=True,
                              timeout=60, check=True).stdout

    run.start()
    run.wait_for(feed.exists, what="the feed")
    proc = _start_fail2ban(conf, sock, pid)
    try:
        _brute_force(log, "203.0.113.41")
        _brute_force(log, "203.0.113.99")
        run.wait_for(lambda: "fail2ban: " in listed() and "confirmed by Fail2Ban until" in
                     listed() and "NOT enforced: in the jail's ignoreip" in listed(),
                     timeout=30, what="confirmed, and not enforced")
        _stop_fail2ban(sock, proc)  # its bans are lost with it (its database is in memory)
        _brute_force(log, "203.0.113.42")
        run.wait_for(lambda: "BAN 203.0.113.42 " in feed.read_text(), what="the ban while down")
        time.sleep(3)  # its line is now older than the jail's findtime
        proc = _start_fail2ban(conf, sock, pid)
        held = lambda: set(_f2b_bans(client, conf, sock))  # noqa: E731
        run.wait_for(lambda: {"203.0.113.41", "203.0.113.42"} <= held(), timeout=40,
                     what="both put back")
        run.wait_for(lambda: "put back by banip" in listed(), what="the put-back recorded")
        bans = {json.loads(line)["ip"]: datetime.fromisoformat(json.loads(line)["until"])
                for line in run.log_text().splitlines() if '"event": "ban"' in line}
        run.wait_for(lambda: "203.0.113.42" not in held(), timeout=40, what="lifted")
    finally:
        _stop_fail2ban(sock, proc)
        run.stop()
    lifted = [float(when) for what, ip, when in (line.split() for line in
                                                 (tmp_path / "rec").read_text().splitlines())
              if what == "unban" and ip == "203.0.113.42"]
    assert lifted and abs(lifted[0] - bans["203.0.113.42"].timestamp()) < 4, \
        (lifted, bans["203.0.113.42"])


def test_a_bantime_changed_in_jail_local_is_the_one_stated(tmp_path: Path) -> None:
    """jfwatch's config says 4h (the default), jail.local says 3s: with Fail2Ban read back,
    the ban jfwatch states lasts what the jail enforces, and the difference is logged."""
    client = require_tool("fail2ban-client")
    conf, sock, pid = _fail2ban_dir(tmp_path, "true")
    run, log, feed = _jfwatch_beside(
        tmp_path, f"confirm: true, fail2ban_client: [{client}], fail2ban_socket: {sock}")
    _shipped_jail(conf, feed, "bantime = 3s\n")
    run.start()
    run.wait_for(feed.exists, what="the feed")
    proc = _start_fail2ban(conf, sock, pid)
    try:
        # Both, in either order: the difference is logged by the enforcement thread, the
        # durations taken by the reading thread.
        run.wait_for(lambda: "ban_durations_from_the_jail" in run.log_text() and
                     "enforcer_settings_differ" in run.log_text(), timeout=30,
                     what="the jail read")
        _brute_force(log, "203.0.113.51")
        run.wait_for(lambda: '"event": "ban"' in run.log_text(), what="the ban")
        run.wait_for(lambda: "203.0.113.51" in _f2b_bans(client, conf, sock), what="held")
        start, end = _f2b_bans(client, conf, sock)["203.0.113.51"]
        ban = next(json.loads(line) for line in run.log_text().splitlines()
                   if '"event": "ban"' in line)
    finally:
        _stop_fail2ban(sock, proc)
        run.stop()
    assert end - start == timedelta(seconds=3)
    assert datetime.fromisoformat(ban["until"]) == end
