"""
``jfwatch bans``: the bans active now, each with what its enforcers confirmed, in the
configured timezone; ``add`` bans by hand through every enforcer; ``unban`` lifts one in
jfwatch and in every enforcer, whatever jfwatch's own state says (Fail2Ban may hold a ban
jfwatch has forgotten).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from jfwatch.actions.fail2ban import Fail2banClient, Fail2banUnreachable
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Unban
from jfwatch.engine.commands import Loaded, _with_config
from jfwatch.state import BanRow, Enforcement, StateStore

MANUAL_RULE = "manual"  # the rule name of a ban by hand (safe for the feed)


@_with_config(runtime="none")
def cmd_bans(args: argparse.Namespace, loaded: Loaded) -> int:
    cfg, _, _ = loaded
    path = cfg.state_dir / "state.db"
    if args.action == "unban":
        return _unban(cfg, path, args.ip)
    if args.action == "add":
        return _add(cfg, path, args.ip, args.duration, args.reason)
    if not path.exists():  # listing creates nothing: no state, no bans
        print(f"no bans: no state yet at {path}", file=sys.stderr)
        return 0
    return _list(cfg, StateStore(path, read_only=True), getattr(args, "output", "text"))


def _list(cfg: Config, store: StateStore, output: str) -> int:
    tz = ZoneInfo(cfg.timezone)
    now = datetime.now(UTC)
    rows = store.bans()
    active = [row for row in rows if row.until > now]
    feed, held, unconfirmed = cfg.ban_feed, None, None
    fail2ban = feed.enabled and feed.enforcer == "fail2ban"
    if fail2ban and active:
        try:
            held = _fail2ban(cfg).held()
        except Fail2banUnreachable as exc:
            unconfirmed = str(exc)
    listed = [(row, _enforced(cfg, row, held, unconfirmed), store.enforcements(row.ip, row.until))
              for row in active]
    if output == "json":
        import orjson

        print(orjson.dumps([{"ip": row.ip, "rule": row.rule, "since": row.since.astimezone(tz),
                             "until": row.until.astimezone(tz), "level": row.level,
                             "enforced": said, "enforcers": [e._asdict() for e in asked]}
                            for row, said, asked in listed], option=orjson.OPT_INDENT_2).decode())
        return 0
    for row, said, asked in listed:
        print(f"{row.ip}\t{row.rule}\tuntil {row.until.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}"
              f"\tlevel {row.level}\t{said}")
        for e in asked:
            print(f"\t{_asked(e)}")
    ended = len(rows) - len(active)
    if ended:
        print(f"({ended} ban(s) ended while the daemon was not running: it lifts them when it "
              "starts)", file=sys.stderr)
    return 0


def _enforced(cfg: Config, row: BanRow, held: dict[str, datetime] | None,
              unconfirmed: str | None) -> str:
    """What the feed's reader says of the ban: confirmed only when it was asked."""
    feed = cfg.ban_feed
    if not feed.enabled:
        return "not enforced (ban_feed disabled)"
    if feed.enforcer == "list":
        return f"in the list {feed.list_path} (enforced by whatever reads it: not confirmed)"
    if held is None:
        return (f"written to the feed for Fail2Ban jail {feed.jail}; not confirmed "
                f"(fail2ban-client: {unconfirmed})")
    end = held.get(row.ip)
    if end is None:
        return f"NOT held by Fail2Ban jail {feed.jail} (ignoreip? the jail restarted?)"
    until = end.astimezone(ZoneInfo(cfg.timezone))
    return f"confirmed by Fail2Ban jail {feed.jail} until {until:%H:%M:%S}"


def _asked(e: Enforcement) -> str:
    if e.accepted:
        return f"{e.enforcer}: requested {e.requested}, accepted {e.accepted}: {e.result}"
    error = f", last error: {e.last_error}" if e.last_error else ""
    return f"{e.enforcer}: requested {e.requested}, waiting ({e.attempts} attempt(s){error})"


def _unban(cfg: Config, path: Any, given: str) -> int:
    try:
        ipaddress.ip_network(given, strict=False)
    except ValueError:
        print(f"error: {given!r} is not an address or network", file=sys.stderr)
        return 2
    feed = cfg.ban_feed
    fail2ban = feed.enabled and feed.enforcer == "fail2ban"
    row = None
    if path.exists():
        store = StateStore(path)
        row = store.remove_ban(_banned_as(store, given))
    if row is not None:
        print(f"unbanned {row.ip} in jfwatch (was banned by {row.rule} until "
              f"{row.until.astimezone(ZoneInfo(cfg.timezone)):%Y-%m-%d %H:%M:%S %Z})")
        _tell_enforcers(cfg, store, row)
    elif not fail2ban:
        print(f"{given} is not banned", file=sys.stderr)
        return 1
    else:
        print(f"{given} is not banned in jfwatch; asking Fail2Ban anyway")
    if fail2ban:
        return _lift_in_fail2ban(cfg, row.ip if row is not None else given)
    return 0


def _add(cfg: Config, path: Any, given: str, duration: str, reason: str | None) -> int:
    """A ban by hand, through every enforcer: recorded, written to the feed, requested
    from the others (the daemon delivers it), lifted at its end like any other."""
    from jfwatch.actions.banfeed import BanFeed
    from jfwatch.actions.enforce import request_rows
    from jfwatch.addresses import unbannable_reason
    from jfwatch.config.durations import Duration
    from jfwatch.detect.decisions import Ban

    try:
        net = ipaddress.ip_network(given, strict=False)
        length = Duration.parse(duration)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ip = str(net) if "/" in given else str(net.network_address)
    why = None if "/" in ip else unbannable_reason(net.network_address)
    if why is not None or length.total_seconds() <= 0:
        print(f"error: {ip} cannot be banned: {why or 'a ban lasts longer than 0s'}",
              file=sys.stderr)
        return 2
    store = StateStore(path)
    now = datetime.now(UTC).replace(microsecond=0)
    ban = Ban(ip, MANUAL_RULE, now, now + length, store.ban_count(ip))
    store.record_ban(ip, MANUAL_RULE, now, ban.until, ban.level)
    feed = cfg.ban_feed
    tz = ZoneInfo(cfg.timezone)
    print(f"banned {ip} until {ban.until.astimezone(tz):%Y-%m-%d %H:%M:%S %Z}"
          + (f" ({reason})" if reason else ""))
    if feed.enabled:
        banfeed = BanFeed(feed.path, feed.list_path)
        banfeed.write(ban, now)
        store.mark_published(ip, ban.until)
        banfeed.write_list([b.ip for b in store.bans()])
        if feed.enforcer == "fail2ban" and not feed.confirm:
            print(f"written to the feed: Fail2Ban's jail {feed.jail} bans it for its own "
                  "bantime (it does not read the line's duration)")
    others = [name for name in cfg.enforcers if name in ("crowdsec", "nftables")]
    if feed.enabled and feed.enforcer == "fail2ban" and feed.confirm:
        others.append("fail2ban")
    if others:
        request_rows(store, others, ban)
        print(f"requested from {', '.join(others)}: the daemon delivers it (now if it runs, "
              "else when it starts)")
    return 0


def _tell_enforcers(cfg: Config, store: StateStore, row: BanRow) -> None:
    from jfwatch.actions.banfeed import BanFeed

    feed = cfg.ban_feed
    if feed.enabled:
        banfeed = BanFeed(feed.path, feed.list_path)
        now = datetime.now(UTC)
        banfeed.write(Unban(row.ip, row.rule, now, "manual"), now)
        banfeed.write_list([b.ip for b in store.bans()])
    others = [name for name in cfg.enforcers if name in ("crowdsec", "nftables")]
    if others:
        from jfwatch.actions.enforce import request_rows

        request_rows(store, others, Unban(row.ip, row.rule, datetime.now(UTC), "manual"))
        print(f"lift requested from {', '.join(others)}: the daemon delivers it (now if it "
              "runs, else when it starts)")


def _lift_in_fail2ban(cfg: Config, ip: str) -> int:
    """Fail2Ban ignores the feed's UNBAN lines: lift the ban through fail2ban-client, or
    say exactly what to run where this user may not."""
    feed = cfg.ban_feed
    client = _fail2ban(cfg)
    try:
        client.unban(ip)
    except Fail2banUnreachable as exc:
        command = " ".join(client.command("set", feed.jail, "unbanip", ip))
        print(f"not lifted in Fail2Ban ({exc or 'no answer'}): run\n  sudo {command}",
              file=sys.stderr)
        return 1
    print(f"lifted in Fail2Ban (jail {feed.jail})")
    return 0


def _fail2ban(cfg: Config) -> Fail2banClient:
    """The client as the daemon runs it (its socket, its helper command)."""
    feed = cfg.ban_feed
    return Fail2banClient(feed.jail, feed.fail2ban_socket, command=feed.fail2ban_client)


def _banned_as(store: StateStore, given: str) -> str:
    """What a ban on the address or network the admin named is recorded under: the text
    as jfwatch writes it, or the banned network holding the address."""
    named = ipaddress.ip_network(given, strict=False)
    if "/" in given or named.num_addresses > 1:
        return str(named)
    address = str(named.network_address)
    if store.active_ban(address) is not None:
        return address
    inside = [row.ip for row in store.bans() if "/" in row.ip and
              named.network_address in ipaddress.ip_network(row.ip)]
    return inside[0] if inside else address
