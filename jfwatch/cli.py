"""The ``jfwatch`` command line: parse, replay, run, check-config, demo, bans, notify-test."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import BinaryIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jfwatch import __version__
from jfwatch.events import Event
from jfwatch.lines import Block, LineStats, context_for, decode, iter_chunks
from jfwatch.parsers import FORMATS, create_parser, feed_lines


def _tz(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise SystemExit(f"jfwatch: unknown timezone {name!r}") from exc


def _parse_stream(stream: BinaryIO, path: str | None, fmt: str, tz: ZoneInfo, stats: LineStats,
                  proxy_token_failures: bool) -> list[Event]:
    parser = create_parser(fmt, context_for(path, tz, proxy_token_failures=proxy_token_failures))
    out: list[Event] = []
    for chunk in iter_chunks(stream):
        if isinstance(chunk, Block):
            valid = chunk.text.split("\n")
        else:
            decoded = [None if raw is None else decode(raw) for raw in chunk]
            valid = [line for line in decoded if line is not None]
            stats.rejected += len(decoded) - len(valid)
            stats.read += len(decoded) - len(valid)
        events, matched = feed_lines(parser, valid)
        stats.read += len(valid)
        stats.matched += matched
        stats.unmatched += len(valid) - matched
        out.extend(events)
    out.extend(parser.flush(force=True))
    for event in out:
        stats.events[event.kind] = stats.events.get(event.kind, 0) + 1
    return out


def read_events(files: Sequence[str], fmt: str, tz: ZoneInfo, stats: LineStats,
                proxy_token_failures: bool = False) -> list[Event]:
    """Parse every file (``-`` is stdin) and return its events in file order."""
    events: list[Event] = []
    for name in files:
        if name == "-":
            events += _parse_stream(sys.stdin.buffer, None, fmt, tz, stats, proxy_token_failures)
            continue
        try:
            with open(name, "rb") as fh:
                events += _parse_stream(fh, name, fmt, tz, stats, proxy_token_failures)
        except OSError as exc:
            raise SystemExit(f"jfwatch: cannot read {name}: {exc.strerror}") from exc
    return events


def _summary(stats: LineStats) -> str:
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())) or "none"
    return (f"lines: {stats.read} read, {stats.matched} matched, {stats.unmatched} unmatched, "
            f"{stats.rejected} rejected\nevents: {kinds}")


def cmd_parse(args: argparse.Namespace) -> int:
    stats = LineStats()
    events = read_events(args.files, args.format, _tz(args.timezone), stats,
                         args.token_failures)
    out = sys.stdout
    out.writelines(event.json_line() + "\n" for event in events)
    print(_summary(stats), file=sys.stderr)
    return 0


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
    sp.set_defaults(func=cmd_parse)

    from jfwatch import commands  # the pipeline commands; kept apart to keep this module small

    commands.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except BrokenPipeError:
        return 0
    return result
