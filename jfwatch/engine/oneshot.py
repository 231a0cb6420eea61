"""
``jfwatch parse`` and ``jfwatch replay``: the engine over files read once, block by
block, in one process.  ``parse`` stops after parsing; ``replay`` detects in event time
with the state in memory (or in ``--state``) and prints what it decided.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TextIO
from zoneinfo import ZoneInfo

import orjson

from jfwatch.engine.engine import Engine, Enricher, Stream
from jfwatch.events import Event
from jfwatch.parsers import create_parser
from jfwatch.parsers.base import context_for
from jfwatch.sources.lines import DEFAULT_MAX_LINE, LineReader, LineStats

if TYPE_CHECKING:
    from jfwatch.config.model import Config
    from jfwatch.detect.decisions import Decision
    from jfwatch.detect.rules import Rule


def read_files(engine: Engine, files: Sequence[str], fmt: str, tz: tzinfo, *,
               max_line: int = DEFAULT_MAX_LINE, proxy_token_failures: bool = False) -> None:
    """Every file (``-`` is stdin) through the engine, in file order, then ``finish``."""
    for name in files:
        ctx = context_for(None if name == "-" else name, tz,
                          proxy_token_failures=proxy_token_failures)
        stream = Stream(name, create_parser(fmt, ctx), max_line)
        if name == "-":
            _read_through(engine, stream, sys.stdin.buffer)
            continue
        try:
            fh = open(name, "rb")  # noqa: SIM115 - closed right below
        except OSError as exc:
            raise SystemExit(f"jfwatch: cannot read {name}: {exc.strerror}") from exc
        with fh:
            _read_through(engine, stream, fh)
    engine.finish()


def _read_through(engine: Engine, stream: Stream, fh: BinaryIO) -> None:
    reader = LineReader(fh, 0, stream.max_line)
    while True:
        before = reader.position
        data = reader.read()
        if data:
            engine.feed(stream, data)
        elif reader.position == before:  # nothing more to read
            break
    last = reader.take_partial()  # a last line without its newline is still a line
    if last:
        engine.feed(stream, last)
    engine.flush(stream, force=True)


def print_unmatched(files: Sequence[str], fmt: str, tz: tzinfo, out: TextIO, *,
                    max_line: int = DEFAULT_MAX_LINE) -> LineStats:
    """
    ``parse --show-unmatched``: the lines no parser turned into an event, as they are (as
    ``fail2ban-regex --print-all-missed`` does), to find a template a log writes that
    jfwatch does not know.  Line by line: slower than ``parse``, for diagnosis.
    """
    totals = LineStats()
    write = _writer(out)
    for name in files:
        stream = Stream(name, create_parser(fmt, context_for(None if name == "-" else name,
                                                             tz)), max_line)
        try:
            fh = sys.stdin.buffer if name == "-" else open(name, "rb")  # noqa: SIM115
        except OSError as exc:
            raise SystemExit(f"jfwatch: cannot read {name}: {exc.strerror}") from exc
        with fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    line += b"\n"
                _, counts = stream.parse(line)
                totals.add(counts)
                if counts.unmatched:
                    write(line)
        _, counts = stream.flush(force=True)
        totals.add(counts)
    return totals


def summary(stats: LineStats) -> str:
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(stats.events.items())) or "none"
    return (f"Lines: {stats.read} read, {stats.matched} matched, {stats.unmatched} unmatched, "
            f"{stats.rejected} rejected\nEvents: {sum(stats.events.values())} ({kinds})")


class EventPrinter:
    """``parse``'s sink: each event as a JSON line, as it is parsed."""

    def __init__(self, out: TextIO) -> None:
        self.totals = LineStats()
        self._write = _writer(out)

    def lines(self, stream: Stream, counts: LineStats) -> None:
        self.totals.add(counts)

    def events(self, stream: Stream, events: list[Event]) -> None:
        self._write(b"".join([e.json_line() + b"\n" for e in events]))

    def act(self, decisions: Sequence[Decision]) -> None:
        raise AssertionError("parse builds no detector")


def replay(files: Sequence[str], cfg: Config, rules: list[Rule], fmt: str = "auto", *,
           state: Path | None = None, printer: DecisionPrinter | None = None,
           explain: Sequence[str] = (), enrichers: Sequence[Enricher] = ()
           ) -> DecisionPrinter:
    """
    The whole pipeline over files in event time: as if every event were sorted by time
    (ties in file order) and fed to one detector, whose state is in memory unless
    ``state`` names a file.  Without a ``printer`` the decisions are kept in a list.
    ``enrichers``: beyond geo (the rule fixtures' CrowdSec decisions).
    """
    from jfwatch.detect.detector import Detector, settings_from_config
    from jfwatch.detect.explain import explain as explain_subject
    from jfwatch.detect.memory_state import MemoryState
    from jfwatch.enrich.geo import Geo
    from jfwatch.state import StateStore

    newest = newest_plausible_time(files)
    store = StateStore(state) if state else MemoryState()
    detector = Detector(rules, settings_from_config(cfg, decide_on_clock=False), store,
                        lambda: newest)
    printer = printer or DecisionPrinter(None)
    geo = Geo(cfg.geo.mmdb) if cfg.geo.enabled else None
    read_files(Engine(printer, detector, in_event_time=True, enrichers=[geo, *enrichers]),
               files, fmt, ZoneInfo(cfg.timezone), max_line=cfg.max_line)
    printer.future = detector.future_events
    printer.explained = [line for subject in explain
                         for line in explain_subject(detector, subject)]
    return printer


class DecisionPrinter:
    """``replay``'s sink: each decision as a JSON line (or kept, without ``out``), and the
    counts for the summary."""

    def __init__(self, out: TextIO | None) -> None:
        self.totals = LineStats()
        self.alerts: Counter[str] = Counter()
        self.banned: list[str] = []
        self.unbans = 0
        self.future = 0  # events dated after the newest input was written
        self.explained: list[str] = []  # --explain's lines
        self.decisions: list[Decision] = []
        self._write = None if out is None else _writer(out)

    def lines(self, stream: Stream, counts: LineStats) -> None:
        self.totals.add(counts)

    def events(self, stream: Stream, events: list[Event]) -> None:
        pass

    def act(self, decisions: Sequence[Decision]) -> None:
        out = []
        for d in decisions:
            data = d.to_json()
            if data["type"] == "alert":
                self.alerts[data["rule"]] += 1
            elif data["type"] == "ban":
                self.banned.append(data["ip"])
            else:
                self.unbans += 1
            out.append(orjson.dumps(data) + b"\n")
        if self._write is None:
            self.decisions += decisions
        else:
            self._write(b"".join(out))

    def summary(self) -> str:
        rules = "".join(f"\n  {rule}: {n}" for rule, n in sorted(self.alerts.items()))
        future = f"\nFuture-dated: {self.future} event(s) dated after the newest input was " \
            "written, taken at that time" if self.future else ""
        explained = "".join(f"\n{line}" for line in self.explained)
        return (f"{summary(self.totals)}\nAlerts: {sum(self.alerts.values())}{rules}\n"
                f"Bans: {len(self.banned)} issued ({len(set(self.banned))} addresses), "
                f"{self.unbans} lifted{future}{explained}")


def newest_plausible_time(files: Sequence[str]) -> datetime:
    """
    The time a replay takes as "now": no line was written after its file was last
    modified, so a line dated later is forged or wrongly clocked (the detector takes
    it at this time).  The newest modification time of the inputs, never later than
    the wall clock; the wall clock when one input is stdin.
    """
    now = datetime.now(UTC)
    newest = None
    for name in files:
        try:
            modified = os.stat(name).st_mtime if name != "-" else None
        except OSError:
            modified = None
        if modified is None:
            return now
        newest = modified if newest is None else max(newest, modified)
    return now if newest is None else min(now, datetime.fromtimestamp(newest, UTC))


def _writer(stream: TextIO) -> Callable[[bytes], object]:
    """
    How to write whole pieces of output to ``stream``: by its file descriptor where it
    has one, so that ``jfwatch parse big.log | head`` stops at the next write once the
    reader has gone (BrokenPipeError) instead of parsing the rest for no one.
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
