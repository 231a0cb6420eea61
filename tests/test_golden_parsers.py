"""
Every sample line in tests/golden/parsers/<format>/*.log is parsed (one parser per file,
as one stream) and the events it yields are compared with the ``# expect:`` line above
it.  Like fail2ban's "Regex has no samples", a parser pattern without a sample fails.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.parsers import PARSERS, create_parser
from jfwatch.parsers.base import context_for

from golden_format import attribute, read_samples

GOLDEN = Path(__file__).parent / "golden" / "parsers"
FILES = sorted(GOLDEN.glob("*/*.log"))


def _run(path: Path) -> list[tuple[int, list[dict[str, Any]], list[dict[str, Any]]]]:
    samples = read_samples(path)
    parser = create_parser(path.parent.name,
                           context_for(path, UTC, proxy_token_failures="token" in path.name))
    actual = attribute(parser, samples)
    return [(s.lineno, s.expect, a) for s, a in zip(samples, actual, strict=True)]


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden_file(path: Path) -> None:
    """Each line yields exactly the expected events, with the expected fields."""
    for lineno, expect, actual in _run(path):
        got = [{k: e.get(k) for k in want} for want, e in zip(expect, actual, strict=False)]
        assert len(expect) == len(actual), f"{path.name}:{lineno}: expected {expect}, got {actual}"
        assert expect == got, f"{path.name}:{lineno}"


@pytest.mark.parametrize("fmt", sorted(PARSERS))
def test_every_pattern_has_a_sample(fmt: str) -> None:
    """Every pattern a parser declares is exercised by at least one golden sample."""
    seen = set()
    for path in (GOLDEN / fmt).glob("*.log"):
        for sample in read_samples(path):
            seen.update(e["origin"] for e in sample.expect if "origin" in e)
    missing = {f"{fmt}.{p}" for p in PARSERS[fmt].patterns} - seen
    assert not missing, f"patterns without a golden sample: {sorted(missing)}"


def test_expectations_name_declared_patterns() -> None:
    """An expectation never names an origin that no parser declares (catches typos)."""
    declared = {f"{name}.{p}" for name, spec in PARSERS.items() for p in spec.patterns}
    for path in FILES:
        for sample in read_samples(path):
            for e in sample.expect:
                assert e.get("origin", next(iter(declared))) in declared, f"{path}:{sample.lineno}"


def test_json_lines_hold_every_field_with_the_time_as_isoformat() -> None:
    """Each event line (orjson) is the event's fields; the time keeps its offset."""
    parser = create_parser("auto", context_for(None, UTC))
    events = [e for p in FILES for line in p.read_text().splitlines() for e in parser.feed(line)]
    assert len(events) > 100
    for event in events:
        line = orjson.loads(event.json_line())
        assert line == {**event.to_json(), "time": event.time.isoformat(), "kind": str(event.kind)}


def _formats_claiming(line: str) -> set[str]:
    from jfwatch.parsers import PARSERS
    from jfwatch.parsers.wrappers import unwrap

    found = unwrap(line, UTC)
    inner = line if found is None else found.line
    return {name for name, spec in PARSERS.items() if spec.sniff(inner)}


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_format_claims_another_formats_lines(path: Path) -> None:
    """Auto-detection: every golden line is claimed by its own format or by none."""
    own = path.parent.name
    for sample in read_samples(path):
        claimed = _formats_claiming(sample.line)
        assert claimed <= {own}, f"{path.name}:{sample.lineno}: claimed by {claimed}"


def test_auto_detects_every_golden_file_alone_and_interleaved() -> None:
    """``--format auto`` gives each golden file's events, alone and with the lines of all
    the other formats' files interleaved (one stream of mixed lines)."""
    by_format: dict[str, list[str]] = {}
    for path in FILES:
        explicit = create_parser(path.parent.name, context_for(path, UTC))
        auto = create_parser("auto", context_for(path, UTC))
        lines = [s.line for s in read_samples(path)]
        got = [e.to_json() for line in lines for e in auto.feed(line)] + \
            [e.to_json() for e in auto.flush(force=True)]
        want = [e.to_json() for line in lines for e in explicit.feed(line)] + \
            [e.to_json() for e in explicit.flush(force=True)]
        assert got == want, path
        if "token" not in path.name and "injection" not in path.name:
            by_format.setdefault(path.parent.name, []).extend(
                s.line for s in read_samples(path) if s.expect)
    mixed = [line for group in zip(*by_format.values(), strict=False) for line in group]
    auto = create_parser("auto", context_for(None, UTC))
    events = [e for line in mixed for e in auto.feed(line)] + auto.flush(force=True)
    assert {e.source for e in events} == set(by_format)


BARE = [(p.parent.name, s.line) for p in FILES for s in read_samples(p)
        if (s.expect and "own" not in p.name and "real" not in p.name) or p.name == "file-sink-real.log"]


def _wrap(kind: str, line: str, when: datetime) -> str:
    iso = when.isoformat()
    if kind == "json-file":
        return orjson.dumps({"log": line + "\n", "stream": "stdout",
                             "time": when.astimezone(UTC).isoformat().replace("+00:00", "Z")}
                            ).decode()
    if kind == "cri":
        return f"{iso} stdout F {line}"
    if kind == "journald":
        return f"{iso} media app[42]: {line}"
    if kind == "docker -t":
        return f"{iso} {line}"
    if kind == "compose":
        return f"app-1  | {line}"
    return f"[pod/app-5d8/app] {line}"


@settings(max_examples=300, deadline=None)
@given(sample=st.sampled_from(BARE),
       kind=st.sampled_from(["json-file", "cri", "journald", "docker -t", "compose", "kubectl"]),
       when=st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1),
                         timezones=st.sampled_from([UTC, timezone(timedelta(hours=2)),
                                                    timezone(timedelta(hours=-5))])))
def test_a_wrapped_line_yields_the_bare_lines_events(sample: tuple[str, str], kind: str,
                                                     when: datetime) -> None:
    """Same events as the bare line; a line with only a clock (Jellyfin's console sink)
    takes the wrapper's time, with its offset, where the wrapper has one."""
    fmt, line = sample
    when = when.replace(microsecond=0)
    bare_parser = create_parser(fmt, context_for(None, UTC))
    wrapped_parser = create_parser(fmt, context_for(None, UTC))
    bare = [e.to_json() for e in bare_parser.feed(line) + bare_parser.flush(force=True)]
    wrapped = [e.to_json() for e in
               wrapped_parser.feed(_wrap(kind, line, when)) + wrapped_parser.flush(force=True)]
    clock_only = fmt == "jellyfin" and re.match(r"^\[\d\d:\d\d:\d\d", line) is not None
    if clock_only and kind not in ("compose", "kubectl"):  # those two carry no time
        for event in bare:
            event["time"] = when
    assert [dict(e, time=e["time"].astimezone(UTC)) for e in wrapped] == \
        [dict(e, time=e["time"].astimezone(UTC)) for e in bare]


def test_a_split_line_whose_end_never_came_is_released_at_the_end() -> None:
    """A json-file entry cut short (the container died mid-line): held while more could
    come, given up as it is on the final flush, so the stream never holds forever."""
    parser = create_parser("jellyfin", context_for(None, UTC))
    piece = orjson.dumps({"log": '[2026-05-22 10:00:00.000 +00:00] [INF] [9] Jellyfin.Server.'
                          'Implementations.Users.UserManager: Authentication request for "bob" '
                          'has been denied (IP: "203.0.113.5").', "stream": "stdout",
                          "time": "2026-05-22T10:00:00Z"}).decode()
    assert parser.feed(piece) == [] and parser.holding
    assert parser.flush(force=False) == [] and parser.holding
    events = parser.flush(force=True)
    assert [(e.user, str(e.ip)) for e in events] == [("bob", "203.0.113.5")]
    assert not parser.holding
