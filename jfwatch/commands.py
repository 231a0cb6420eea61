"""Sub-commands that need the whole pipeline: replay, check-config, run, demo, bans, notify-test."""

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
from jfwatch.lines import LineStats
from jfwatch.parsers import FORMATS
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


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg, used, rules = load_all(args.config, args.rules)
    except ConfigError as exc:
        return _report(exc)
    where = str(used) if used else "built-in defaults"
    print(f"config OK ({where}): {len(cfg.sources)} source(s), {len(rules)} rule(s) enabled, "
          f"{len(cfg.notify.urls)} notification URL(s)")
    return 0


def replay(files: list[str], cfg: Config, rules: list[Rule], store: StateStore, fmt: str,
           stats: LineStats) -> list[Decision]:
    """The whole pipeline over files, in event time."""
    from jfwatch.cli import read_events

    events = read_events(files, fmt, ZoneInfo(cfg.timezone), stats)
    events.sort(key=lambda e: e.time)  # stable: ties keep file order
    detector = Detector(rules, settings_from_config(cfg), store)
    decisions: list[Decision] = []
    for event in events:
        decisions += detector.feed(event)
    return decisions


def cmd_replay(args: argparse.Namespace) -> int:
    try:
        cfg, _, rules = load_all(args.config, args.rules)
    except ConfigError as exc:
        return _report(exc)
    # No side effects unless asked: a throw-away state unless --state is given.
    store = StateStore(args.state if args.state else ":memory:")
    stats = LineStats()
    decisions = replay(args.files, cfg, rules, store, args.format, stats)
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the pipeline sub-commands to the CLI."""
    sp = sub.add_parser("replay", help="run the whole pipeline over log files in event time")
    sp.add_argument("--config", type=Path)
    sp.add_argument("--rules", type=Path, action="append", help="extra rule directory")
    sp.add_argument("--format", choices=FORMATS, default="auto")
    sp.add_argument("--state", type=Path, help="use (and update) this state file")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_replay)

    sp = sub.add_parser("check-config", help="validate the config and every rule")
    sp.add_argument("--config", type=Path)
    sp.add_argument("--rules", type=Path, action="append", help="extra rule directory")
    sp.set_defaults(func=cmd_check_config)
