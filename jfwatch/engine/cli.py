"""The ``jfwatch`` command line: parse, replay, run, check-config, demo, bans, notify-test."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jfwatch import __version__
from jfwatch.batch import quiet_collector, read_pieces, render_json
from jfwatch.parsers import FORMATS
from jfwatch.sources.lines import LineStats


def _tz(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SystemExit(f"jfwatch: unknown timezone {name!r}") from exc


def _summary(stats: LineStats) -> str:
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())) or "none"
    return (f"lines: {stats.read} read, {stats.matched} matched, {stats.unmatched} unmatched, "
            f"{stats.rejected} rejected\nevents: {kinds}")


def cmd_parse(args: argparse.Namespace) -> int:
    quiet_collector()
    stats = LineStats()
    # Both processes render their own part's JSON.  Timed per process on the bench log,
    # a share cost about as much CPU here as in the helper (55% here took 1.01 s, the
    # helper's 45% 0.86 s): about halves, this process's a little larger because the
    # helper's time includes pickling its part for the hand-over.
    pieces = read_pieces(args.files, args.format, _tz(args.timezone), stats, render_json,
                         args.token_failures, share=0.52)
    write = _writer(sys.stdout)
    for piece in pieces:  # a block's events, or a helper process's JSON lines for some
        write(piece if isinstance(piece, bytes) else render_json(piece))
    print(_summary(stats), file=sys.stderr)
    return 0


def _writer(stream: TextIO) -> Callable[[bytes], object]:
    """
    How to write whole pieces of output to ``stream``: by its file descriptor where it
    has one.  A buffered write of a large piece into a pipe whose reader has gone ends
    after what the pipe took, without an error (seen on CPython 3.11), so ``jfwatch
    parse big.log | head`` would have gone on to parse (and wait for) the rest; a
    write to the descriptor raises BrokenPipeError on the next try.
    """
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file: a test's capture, say
        return stream.buffer.write
    stream.flush()

    def write_all(data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    return write_all


def cmd_replay(args: argparse.Namespace) -> int:
    """
    Start parsing at once, in a helper process, with the timezone the config file
    names; this process meanwhile imports and validates config and rules (a third of a
    second that the helper spends parsing).  ``commands.cmd_replay`` undoes the early
    start if the validated config disagrees.
    """
    from jfwatch.config.files import peek_timezone
    from jfwatch.piped import Backfill

    backfill = None
    zone = peek_timezone(args.config)
    if zone is not None:
        with contextlib.suppress(ValueError, ZoneInfoNotFoundError):
            backfill = Backfill.start(args.files, args.format, ZoneInfo(zone))
    from jfwatch.engine import commands

    return commands.cmd_replay(args, backfill)


def _pipeline(name: str) -> Callable[[argparse.Namespace], int]:
    """A handler from ``jfwatch.engine.commands``, imported only when that command runs."""

    def run(args: argparse.Namespace) -> int:
        from jfwatch.engine import commands

        handler: Callable[[argparse.Namespace], int] = getattr(commands, name)
        return handler(args)

    return run


def _config_options(sp: argparse.ArgumentParser, *, rules: bool = True) -> None:
    sp.add_argument("--config", type=Path)
    if rules:
        sp.add_argument("--rules", type=Path, action="append", help="extra rule directory")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jfwatch", description=__doc__)
    p.add_argument("--version", action="version", version=f"jfwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("parse", help="print one JSON event per recognised log line")
    sp.add_argument("--format", choices=FORMATS, default="auto")
    sp.add_argument("--timezone", help="zone for logs without one (default UTC)")
    sp.add_argument("--token-failures", action="store_true",
                    help="count proxy 401s outside login endpoints as token_failure")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_parse, batch=True)

    sp = sub.add_parser("replay", help="run the whole pipeline over log files in event time")
    _config_options(sp)
    sp.add_argument("--format", choices=FORMATS, default="auto")
    sp.add_argument("--state", type=Path, help="use (and update) this state file")
    sp.add_argument("files", nargs="+", metavar="FILE")
    sp.set_defaults(func=cmd_replay, batch=True)

    sp = sub.add_parser("check-config", help="validate the config and every rule")
    _config_options(sp)
    sp.set_defaults(func=_pipeline("cmd_check_config"))

    sp = sub.add_parser("run", help="run the daemon")
    _config_options(sp)
    sp.add_argument("--log-level", default="info",
                    choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=_pipeline("cmd_run"))

    sp = sub.add_parser("bans", help="list or lift bans kept in the state")
    _config_options(sp, rules=False)
    bsub = sp.add_subparsers(dest="action")
    bsub.add_parser("list", help="show active bans")
    unban = bsub.add_parser("unban", help="lift the ban of one address")
    unban.add_argument("ip")
    sp.set_defaults(func=_pipeline("cmd_bans"), action="list")

    sp = sub.add_parser("notify-test", help="send a test alert to every notification target")
    _config_options(sp, rules=False)
    sp.set_defaults(func=_pipeline("cmd_notify_test"))

    sp = sub.add_parser("demo", help="run the real daemon over bundled attack logs")
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
    try:
        result: int = args.func(args)
        if getattr(args, "batch", False):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(result)
    except BrokenPipeError:
        return 0
    return result
