"""
Sub-commands that need the whole pipeline: replay, check-config, run, demo, bans,
notify-test.  ``cli`` imports this module only when one of them runs, so that
``jfwatch parse`` does not pay for pydantic, SQLite and the detector.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from zoneinfo import ZoneInfo

from jfwatch.config import Config, load_config
from jfwatch.decisions import Alert, Ban, Decision, Unban
from jfwatch.detector import Detector, settings_from_config
from jfwatch.errors import ConfigError
from jfwatch.events import Event
from jfwatch.lines import LineStats
from jfwatch.rules import Rule, load_rules
from jfwatch.state import StateStore


def load_all(config_path: Path | None, rules_dir: list[Path] | None
             ) -> tuple[Config, Path | None, list[Rule]]:
    """Config and rules together, so every problem of both is reported in one go."""
    problems: list[str] = []
    cfg, used = Config(), None
    rule_dirs: list[Path] | None = None
    try:
        cfg, used = load_config(config_path)
    except ConfigError as exc:
        problems += exc.problems
        rule_dirs = _raw_rule_dirs(config_path)  # still check the rules the file names
    rules: list[Rule] = []
    try:
        rules = load_rules([*(cfg.rules_dirs if rule_dirs is None else rule_dirs),
                            *(rules_dir or [])])
    except ConfigError as exc:
        problems += exc.problems
    if problems:
        raise ConfigError(problems)
    return cfg, used, rules


def _raw_rule_dirs(config_path: Path | None) -> list[Path]:
    """``rules_dirs`` from a config file that failed validation, if it can be read."""
    from jfwatch.yamlerrors import load_yaml

    if config_path is None:
        return []
    try:
        data, _ = load_yaml(config_path)
    except ValueError:
        return []
    dirs = data.get("rules_dirs") if isinstance(data, dict) else None
    if not isinstance(dirs, list):
        return []
    return [config_path.parent / d for d in dirs if isinstance(d, str)]


def _report(exc: ConfigError) -> int:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"{len(exc.problems)} problem(s) found", file=sys.stderr)
    return 2


def _load_or_report(args: argparse.Namespace) -> tuple[Config, Path | None, list[Rule]] | int:
    try:
        return load_all(args.config, getattr(args, "rules", None))
    except ConfigError as exc:
        return _report(exc)


def cmd_check_config(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, used, rules = loaded
    where = str(used) if used else "built-in defaults"
    print(f"config OK ({where}): {len(cfg.sources)} source(s), {len(rules)} rule(s) enabled, "
          f"{len(cfg.notify.urls)} notification URL(s)")
    return 0


def replay(files: list[str], cfg: Config, rules: list[Rule], fmt: str, stats: LineStats,
           state: Path | None = None) -> list[Decision]:
    """
    The whole pipeline over files, in event time: as if every event were sorted by time
    (ties in file order) and fed to one detector.

    Without a state file the detector starts on the first piece of events while a
    helper process still parses the rest of a large file (``batch``); that is the same
    as sorting everything first as long as each piece starts no earlier than the last
    piece ended, which holds for logs given in the order they were written.  When it
    does not, detection starts over on everything, sorted.
    """
    from jfwatch.batch import read_pieces, rows_to_events

    tz = ZoneInfo(cfg.timezone)
    settings = settings_from_config(cfg)
    detector = Detector(rules, settings, StateStore(state if state else ":memory:"))
    decisions: list[Decision] = []
    seen: list[Event] = []
    in_order = state is None  # with a state file, no second start is possible: sort first
    for piece in read_pieces(files, fmt, tz, stats, share=0.3):
        events = rows_to_events(piece) if isinstance(piece, bytes) else piece
        events.sort(key=lambda e: e.time)  # stable: ties keep file order
        if in_order and events and seen and events[0].time < seen[-1].time:
            in_order = False
            decisions.clear()
            detector = Detector(rules, settings, StateStore(":memory:"))
            events = sorted([*seen, *events], key=lambda e: e.time)
            seen.clear()
        seen += events
        if in_order:
            for event in events:
                decisions += detector.feed(event)
    if not in_order:
        seen.sort(key=lambda e: e.time)
        for event in seen:
            decisions += detector.feed(event)
    return decisions


def cmd_replay(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, _, rules = loaded
    # No side effects unless asked: a throw-away state unless --state is given.
    stats = LineStats()
    decisions = replay(args.files, cfg, rules, args.format, stats, args.state)
    for d in decisions:
        sys.stdout.write(json.dumps(d.to_json(), ensure_ascii=False) + "\n")
    alerts = Counter(d.rule for d in decisions if isinstance(d, Alert))
    bans = [d for d in decisions if isinstance(d, Ban)]
    unbans = [d for d in decisions if isinstance(d, Unban)]
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())) or "none"
    print(f"Lines: {stats.read} read, {stats.matched} matched, {stats.unmatched} unmatched, "
          f"{stats.rejected} rejected\nEvents: {sum(stats.events.values())} ({kinds})\n"
          f"Alerts: {sum(alerts.values())}", file=sys.stderr)
    for rule, n in sorted(alerts.items()):
        print(f"  {rule}: {n}", file=sys.stderr)
    print(f"Bans: {len(bans)} issued ({len({b.ip for b in bans})} addresses), "
          f"{len(unbans)} lifted", file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from jfwatch import log
    from jfwatch.daemon import Daemon

    log.configure(args.log_level)
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, used, rules = loaded
    logger = log.get("jfwatch")
    logger.info("starting", config=str(used) if used else "built-in defaults",
                rules=len(rules), sources=len(cfg.sources))

    def reload() -> tuple[Config, list[Rule]]:
        new_cfg, _, new_rules = load_all(args.config, getattr(args, "rules", None))
        return new_cfg, new_rules

    try:
        daemon = Daemon(cfg, rules, used, reload)
    except OSError as exc:
        logger.error("cannot_start", problem=str(exc))
        return 1
    daemon.install_signals()
    return daemon.run()


def cmd_bans(args: argparse.Namespace) -> int:
    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, _, _ = loaded
    store = StateStore(cfg.state_dir / "state.db")
    if args.action == "unban":
        from datetime import UTC, datetime

        from jfwatch.banfeed import BanFeed

        row = store.remove_ban(args.ip)
        if row is None:
            print(f"{args.ip} is not banned", file=sys.stderr)
            return 1
        if cfg.ban_feed.enabled:
            feed = BanFeed(cfg.ban_feed.path, cfg.ban_feed.list_path)
            now = datetime.now(UTC)
            feed.write(Unban(row.ip, row.rule, now, "manual"), now)
            feed.write_list([b.ip for b in store.bans()])
        print(f"unbanned {row.ip} (was banned by {row.rule} until {row.until.isoformat()})")
        return 0
    for row in store.bans():
        print(f"{row.ip}\t{row.rule}\tuntil {row.until.isoformat()}\tlevel {row.level}")
    return 0


def cmd_notify_test(args: argparse.Namespace) -> int:
    from jfwatch.notify import Outbox

    loaded = _load_or_report(args)
    if isinstance(loaded, int):
        return loaded
    cfg, _, _ = loaded
    outbox = Outbox(StateStore(":memory:"), cfg.notify, cfg.server_name)
    if not outbox.enabled:
        print("no notification targets configured (notify.urls or notify.config_file)")
        return 1
    results = outbox.test()
    for name, ok in results:
        print(f"{name}: {'delivered' if ok else 'FAILED'}")
    return 0 if all(ok for _, ok in results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from jfwatch.demo import run_demo

    return run_demo(keep=args.keep, port=args.port, pace=args.pace)
