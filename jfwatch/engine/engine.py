"""
The one engine: bounded blocks of lines -> parser -> events -> detector -> sink.

``jfwatch run``, ``replay`` and ``parse`` all build it, with different sources and
sinks: the daemon follows files and acts (feed, notifications, metrics); ``replay``
reads files once and prints decisions; ``parse`` has no detector and prints events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Protocol

from jfwatch.events import Event
from jfwatch.parsers.base import RecordParser, StreamParser
from jfwatch.sources.lines import DEFAULT_MAX_LINE, Block, LineStats, decode, split_valid
from jfwatch.sources.records import Record

if TYPE_CHECKING:  # parse needs neither, nor the config models they bring in
    from jfwatch.detect.decisions import Decision
    from jfwatch.detect.detector import Detector

_KIND_OF = attrgetter("kind")
_TIME_OF = attrgetter("time")


class Enricher(Protocol):
    """Adds what is known of an event's address (``enrich.geo``, ``enrich.shared_bans``)."""

    def enrich(self, events: list[Event]) -> list[Event]: ...


class Sink(Protocol):
    """Where the engine's output goes."""

    def lines(self, stream: Stream, counts: LineStats) -> None:
        """Line and event counts of one block of one stream."""

    def events(self, stream: Stream, events: list[Event]) -> None:
        """Events as parsed, before detection (metrics, the event export, ``parse``)."""

    def act(self, decisions: Sequence[Decision]) -> None:
        """What the detector decided."""


class Stream:
    """One input (a file, or stdin): its parser, the source its counts go under, and a key
    of its own (the file's path: a source's glob matches many files)."""

    def __init__(self, source: str, parser: StreamParser, max_line: int = DEFAULT_MAX_LINE,
                 key: str | None = None, fmt: str = "auto") -> None:
        self.source, self.parser, self.max_line, self.format = source, parser, max_line, fmt
        self.key = source if key is None else key

    def parse(self, data: bytes) -> tuple[list[Event], LineStats]:
        """
        The events of complete lines (each ending in a newline) and their counts.  A line
        is ``matched`` when it yields an event, counted when it is parsed (also when the
        event is held for a later line): the counts never depend on how reads cut a stream.
        """
        counts = LineStats()
        parser = self.parser
        before = parser.matched_lines
        valid = split_valid(data, self.max_line)
        if isinstance(valid, Block):
            events = parser.feed_block(valid.data, valid.end)
            counts.read = valid.data.count(b"\n", 0, valid.end) + 1 if data else 0
        else:
            events = []
            for raw in valid:
                line = None if raw is None else decode(raw, self.max_line)
                if line is None:
                    counts.rejected += 1
                else:
                    events += parser.feed(line)
            counts.read = len(valid)
        counts.matched = parser.matched_lines - before
        counts.unmatched = counts.read - counts.rejected - counts.matched
        _count_kinds(events, counts)
        return events, counts

    def parse_records(self, records: list[Record]) -> tuple[list[Event], LineStats]:
        """The events of records an API source handed over (each counts as a line)."""
        parser = self.parser
        if not isinstance(parser, RecordParser):
            raise TypeError(f"{self.format} streams take lines, not records")
        counts = LineStats(read=len(records))
        before = parser.matched_lines
        events = [e for record in records for e in parser.feed_record(record)]
        counts.matched = parser.matched_lines - before
        counts.unmatched = counts.read - counts.matched
        _count_kinds(events, counts)
        return events, counts

    def flush(self, *, force: bool) -> tuple[list[Event], LineStats]:
        """What the parser held back (all of it if ``force``: end of input)."""
        counts = LineStats()
        events = self.parser.flush(force=force)
        _count_kinds(events, counts)
        return events, counts


def _count_kinds(events: list[Event], counts: LineStats) -> None:
    for kind, n in Counter(map(_KIND_OF, events)).items():  # counted in C
        counts.events[str(kind)] = n


class Engine:
    """
    Parse, enrich (where each address is), detect, act.  ``in_event_time``: hold every
    event until ``finish`` and feed the detector in time order (ties keep input order),
    as ``replay`` over several files needs; otherwise (the daemon) events are detected
    as they arrive.
    """

    def __init__(self, sink: Sink, detector: Detector | None = None, *,
                 in_event_time: bool = False, enrichers: Sequence[Enricher | None] = ()
                 ) -> None:
        self.sink, self.detector, self.in_event_time = sink, detector, in_event_time
        self.enrichers = [e for e in enrichers if e is not None]
        self._waiting: list[Event] = []

    def feed(self, stream: Stream, data: bytes) -> None:
        """Complete lines read from ``stream``."""
        self._pass(stream, *stream.parse(data))

    def feed_records(self, stream: Stream, records: list[Record]) -> None:
        """Records an API source read for ``stream``."""
        self._pass(stream, *stream.parse_records(records))

    def flush(self, stream: Stream, *, force: bool) -> None:
        self._pass(stream, *stream.flush(force=force))

    def _pass(self, stream: Stream, events: list[Event], counts: LineStats) -> None:
        self.sink.lines(stream, counts)
        if not events:
            return
        for enricher in self.enrichers:
            events = enricher.enrich(events)
        self.sink.events(stream, events)
        if self.detector is None:
            return
        if self.in_event_time:
            self._waiting += events
        else:
            # In time order within the block too: a success the parser held for its
            # TOTP verdict comes out after lines written later.
            self._detect(sorted(events, key=_TIME_OF))

    def finish(self) -> None:
        """Detect what waited for event-time order."""
        waiting, self._waiting = self._waiting, []
        waiting.sort(key=_TIME_OF)  # stable: ties keep input order
        self._detect(waiting)

    def _detect(self, events: list[Event]) -> None:
        if self.detector is None or not events:
            return
        feed, decisions = self.detector.feed, []
        for event in events:
            decisions += feed(event)
        if decisions:
            self.sink.act(decisions)
