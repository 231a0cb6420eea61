"""jfwatch: a security log monitor for Jellyfin.  Commands: parse, replay, run,
check-config, bans, notify-test, demo."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jfwatch import __version__
from jfwatch.parsers import FORMATS


def _tz(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SystemExit(f"jfwatch: unknown timezone {name!r}") from exc


def cmd_parse(args: argparse.Namespace) -> int:
    """The engine without a detector: it imports no config models, state or rules."""
    from jfwatch.engine.engine import Engine
    from jfwatch.engine.oneshot import EventPrinter, read_files, summary
    from jfwatch.enrich.geo import Geo

    if args.show_unmatched:
        from jfwatch.engine.oneshot import print_unmatched

        totals = print_unmatched(args.files, args.format, _tz(args.timezone), sys.stdout)
        print(summary(totals), file=sys.stderr)
        return 0
    printer = EventPrinter(sys.stdout)
    read_files(Engine(printer, enrichers=[Geo()]), args.files, args.format, _tz(args.timezone),
               proxy_token_failures=args.token_failures)
    print(summary(printer.totals), file=sys.stderr)
    return 0


def _pipeline(name: str, module: str = "commands") -> Callable[[argparse.Namespace], int]:
    """A handler from ``jfwatch.engine.<module>``, imported only when that command runs."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        handler: Callable[[argparse.Namespace], int] = getattr(
            importlib.import_module(f"jfwatch.engine.{module}"), name)
        return handler(args)

    return run


CONFIG_HELP = ("config file (none: $JFWATCH_CONFIG, else /etc/jfwatch/jfwatch.yml if it "
               "exists, else the built-in defaults)")


def _config_options(sp: argparse.ArgumentParser, *, rules: bool = True) -> None:
    # SUPPRESS: a --config given before the command is not reset by this level's default.
    sp.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    if rules:
        sp.add_argument("--rules", type=Path, action="append",
                        help="an extra rule directory (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    plain = argparse.ArgumentDefaultsHelpFormatter  # every --help shows the defaults
    p = argparse.ArgumentParser(prog="jfwatch", description=__doc__, formatter_class=plain)
    p.add_argument("--version", action="version", version=f"jfwatch {__version__}")
    p.add_argument("--config", type=Path, default=None, help=CONFIG_HELP)  # or after the command
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("parse", formatter_class=plain, help="print one JSON event per recognised log line")
    sp.add_argument("--format", choices=FORMATS, default="auto", help="the logs' format")
    sp.add_argument("--timezone", default="UTC", help="zone for log times without one")
    sp.add_argument("--token-failures", action="store_true",
                    help="count proxy 401s outside login endpoints as token_failure")
    sp.add_argument("--show-unmatched", action="store_true",
                    help="print the lines no parser recognised, instead of the events")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_parse, batch=True)

    sp = sub.add_parser("replay", formatter_class=plain,
                        help="run the whole pipeline over log files in event time")
    _config_options(sp)
    sp.add_argument("--format", choices=FORMATS, default="auto", help="the logs' format")
    sp.add_argument("--state", type=Path,
                    help="use (and update) this state file; none: the state lives in memory")
    sp.add_argument("--explain", action="append", metavar="ADDRESS_OR_USER",
                    help="after the summary, say how far each rule got for this address or "
                         "user, and whether the address is known, protected or banned "
                         "(repeatable)")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=_pipeline("cmd_replay"), batch=True)

    sp = sub.add_parser("check-config", formatter_class=plain, help="validate the config and every rule")
    _config_options(sp)
    sp.set_defaults(func=_pipeline("cmd_check_config"))

    sp = sub.add_parser("run", formatter_class=plain, help="run the daemon")
    _config_options(sp)
    sp.add_argument("--log-level", default="info", help="the least important log lines shown",
                    choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=_pipeline("cmd_run"))

    sp = sub.add_parser("bans", formatter_class=plain, help="list or lift bans kept in the state")
    _config_options(sp, rules=False)
    bsub = sp.add_subparsers(dest="action")
    listing = bsub.add_parser("list", formatter_class=plain, help="show active bans")
    unban = bsub.add_parser("unban", formatter_class=plain, help="lift the ban of one address")
    unban.add_argument("ip")
    add = bsub.add_parser("add", formatter_class=plain,
                          help="ban an address or network by hand, through every enforcer")
    add.add_argument("ip")
    add.add_argument("--for", dest="duration", default="4h", help="how long (10m, 4h, 7d)")
    add.add_argument("--reason", help="why (shown in the output)")
    for action in (listing, unban, add):  # --config before or after the action
        action.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=CONFIG_HELP)
    listing.add_argument("-o", "--output", choices=["text", "json"], default="text")
    sp.set_defaults(func=_pipeline("cmd_bans", "bans_command"), action="list")

    sp = sub.add_parser("status", formatter_class=plain,
                        help="how the daemon is: files, lag, bans, alerts waiting, faults")
    _config_options(sp, rules=False)
    sp.add_argument("-o", "--output", choices=["text", "json"], default="text")
    sp.set_defaults(func=_pipeline("cmd_status"))

    sp = sub.add_parser("notify-test", formatter_class=plain,
                        help="send a test alert to every notification target")
    _config_options(sp, rules=False)
    sp.set_defaults(func=_pipeline("cmd_notify_test"))

    sp = sub.add_parser("demo", formatter_class=plain, help="run the real daemon over bundled attack logs")
    sp.add_argument("--keep", type=Path, help="work in this directory instead of a temporary one")
    sp.add_argument("--port", type=int, default=0, help="metrics port (default: any free port)")
    sp.add_argument("--pace", type=float, default=0.02, help="seconds between demo log lines")
    sp.set_defaults(func=_pipeline("cmd_demo"))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run one command.  The batch commands (parse, replay) end the process themselves
    when done: the interpreter would free what they built (every event and group) one
    object at a time on the way out, about a tenth of a second, for nothing.  Their
    output is flushed first, and state is committed as it is made.
    """
    args = build_parser().parse_args(argv)
    if getattr(args, "batch", False):
        # What is loaded now (modules, config) lives to the end, and the events and
        # groups that follow are acyclic, freed by reference counts: collections can be
        # rare (about 7% of a replay's time).
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
    try:
        result: int = args.func(args)
        if getattr(args, "batch", False):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(result)
    except BrokenPipeError:
        return 0
    return result
