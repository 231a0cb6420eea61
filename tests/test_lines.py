"""
One line-counting rule whatever the reads: any split of a stream into reads gives the
same lines, the same events and the same counts.
"""

from __future__ import annotations

from datetime import UTC

from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.engine.engine import Stream
from jfwatch.parsers import create_parser
from jfwatch.parsers.base import context_for
from jfwatch.sources.lines import Block, LineReader, LineStats, decode, split_valid

from conftest import ROOT

MAX = 20
PIECES = st.sampled_from([b"\n", b"ok line", b"\xff\xfe", b"\x00", b"A" * 25, b"A" * 90,
                          "é".encode(), b"\r\n", b"x"])
SAMPLES = sorted((ROOT / "tests" / "golden" / "parsers" / "jellyfin").glob("*.log"))
JELLYFIN = b"".join(path.read_bytes() for path in SAMPLES)


class _Reads:
    """A stream handing out its bytes in the given read sizes (then the rest)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes, self._pos = data, list(sizes), 0

    def read1(self, budget: int) -> bytes:
        size = min(budget, self._sizes.pop(0) if self._sizes else budget)
        chunk = self._data[self._pos:self._pos + size]
        self._pos += len(chunk)
        return chunk

    read = read1


def _read_all(data: bytes, sizes: list[int], max_line: int, budget: int = 1 << 20) -> list[bytes]:
    reader = LineReader(_Reads(data, sizes), 0, max_line)  # type: ignore[arg-type]
    out = []
    while True:
        before = reader.position
        block = reader.read(budget)
        if block:
            out.append(block)
        elif reader.position == before:
            break
    last = reader.take_partial()
    assert reader.offset == len(data)
    return [*out, last] if last else out


def _lines(blocks: list[bytes], max_line: int) -> list[str | None]:
    out: list[str | None] = []
    for block in blocks:
        valid = split_valid(block, max_line)
        if isinstance(valid, Block):
            out += [line.rstrip("\r") for line in valid.data[:valid.end].decode().split("\n")]
        else:
            out += [None if raw is None else decode(raw, max_line) for raw in valid]
    return out


def _reference(data: bytes, max_line: int) -> list[str | None]:
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [decode(raw, max_line) for raw in lines]


@settings(max_examples=300, deadline=None)
@given(data=st.lists(PIECES, max_size=40).map(b"".join),
       sizes=st.lists(st.integers(1, 64), max_size=40), budget=st.integers(1, 64))
def test_any_reads_give_the_lines_a_line_reader_gives(data: bytes, sizes: list[int],
                                                      budget: int) -> None:
    # Over-long lines keep max_line + 1 bytes: still rejected, never held whole.
    assert _lines(_read_all(data, sizes, MAX, budget), MAX) == _reference(data, MAX)


def _parse(blocks: list[bytes]) -> tuple[list[dict[str, object]], LineStats]:
    stream = Stream("t", create_parser("auto", context_for("log_20260102.log", UTC)), 4096)
    events, totals = [], LineStats()
    for block in blocks:
        found, counts = stream.parse(block)
        events += found
        totals.add(counts)
    found, counts = stream.flush(force=True)
    totals.add(counts)
    return [e.to_json() for e in events + found], totals


def test_the_samples_are_jellyfin_logs() -> None:
    assert len(SAMPLES) >= 5
    events, counts = _parse([JELLYFIN])
    assert counts.matched > 20 and len(events) >= counts.matched


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 4096), min_size=1, max_size=200))
def test_any_split_gives_the_same_events_and_counts(sizes: list[int]) -> None:
    """Held successes, injection openers, continuation lines: whatever the reads."""
    whole_events, whole = _parse(_read_all(JELLYFIN, [], 4096))
    split_events, split = _parse(_read_all(JELLYFIN, sizes, 4096, budget=max(sizes)))
    assert split_events == whole_events
    assert (split.read, split.matched, split.unmatched, split.rejected, split.events) == \
        (whole.read, whole.matched, whole.unmatched, whole.rejected, whole.events)


def test_three_held_successes_then_noise_count_alike_read_at_once_or_one_by_one() -> None:
    success = b'[2026-01-02 10:00:0%d.000 +00:00] [INF] [9] Jellyfin.Server.Implementations.' \
              b'Users.UserManager: Authentication request for "bob" has succeeded.\n'
    noise = b"[2026-01-02 10:00:09.000 +00:00] [INF] [9] Main: Startup complete\n"
    data = b"".join(success % i for i in range(3)) + noise * 5
    at_once = _parse([data])[1]
    one_by_one = _parse([line + b"\n" for line in data.split(b"\n")[:-1]])[1]
    assert at_once.matched == one_by_one.matched == 3
    assert at_once.events == one_by_one.events == {"auth_success": 3}
