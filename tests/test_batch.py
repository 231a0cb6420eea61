"""
A large file parsed on two cores gives exactly what one parser gives: same events in
the same order, same counts; a failing (or SIGKILLed) helper changes nothing; replay of
files or lines given out of order equals replay of everything sorted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch import batch, piped
from jfwatch.batch import read_events, read_pieces, render_json
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Decision
from jfwatch.detect.rules import load_rules
from jfwatch.events import Event
from jfwatch.parsers.jellyfin import QUIET_LINES, quiet_cut
from jfwatch.sources.lines import LineStats

UM = "Jellyfin.Server.Implementations.Users.UserManager"
UID = "6e1f0a52-9d4b-4f7e-8a3c-2b1d0c9e8f7a"


def _log(path: Path, lines: int, start: datetime) -> Path:
    """
    A file-sink log with everything that outlives its line (held successes, TOTP
    rejections, injection openers with continuation lines) in every other stretch of
    1,000 lines, and plain failures and noise throughout.
    """
    out: list[str] = []
    t = start
    i = 0
    while len(out) < lines:
        t += timedelta(milliseconds=37)
        head = f"[{t:%Y-%m-%d %H:%M:%S}.{t.microsecond // 1000:03d} +00:00] [INF] [{i % 50}]"
        lively = (len(out) // 1000) % 2 == 0
        r = i % 41
        if lively and r == 0:
            out.append(f'{head} {UM}: Authentication request for "bob" has succeeded.')
            out.append(f"{head} Emby.Server.Implementations.Session.SessionManager: "
                       f"Creating new access token for user {UID}")
            out.append(f"{head} Jellyfin.Plugin.Totp.Services.TotpMiddleware: Rejecting "
                       f"authentication for user {UID}: TOTP is enabled but the code was invalid.")
        elif lively and r == 1:
            out.append(f'{head} {UM}: Authentication request for "carol" has succeeded.')
        elif lively and r == 2:
            out.append(f'{head} {UM}: Authentication request for "eve')
            out.append(f'(IP: "6.6.6.6")." has been denied (IP: "203.0.113.{i % 200 + 1}").')
        elif r in (3, 4, 5, 6, 7):
            out.append(f'{head} {UM}: Authentication request for "u{i % 13}" has been denied '
                       f'(IP: "198.51.100.{i % 250 + 1}").')
        elif r == 8:
            out.append(f'{head} {UM}: Disabling user "u{i % 13}" due to 3 unsuccessful login attempts.')
        else:
            out.append(f"{head} Emby.Server.Implementations.Library.LibraryManager: "
                       f'Validating media library "{i}"')
        i += 1
    path.write_text("\n".join(out) + "\n")
    return path


@pytest.fixture
def big_log(tmp_path: Path) -> Path:
    return _log(tmp_path / "log_20260102.log", 60_000, datetime(2026, 1, 2, tzinfo=UTC))


@pytest.fixture
def split_small(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Split files from 1 MiB on, and record each cut a helper took over from."""
    monkeypatch.setattr(batch, "SPLIT_MIN_BYTES", 1 << 20)
    cuts: list[int] = []
    finish = batch._finish_helper

    def recording(helper: batch._Helper, stats: LineStats) -> list[bytes] | None:
        cuts.append(helper.cut)
        return finish(helper, stats)

    monkeypatch.setattr(batch, "_finish_helper", recording)
    return cuts


def _serial(path: Path) -> tuple[list[Event], LineStats]:
    """What one parser gives (never split, whatever a fixture set)."""
    stats = LineStats()
    threshold, batch.SPLIT_MIN_BYTES = batch.SPLIT_MIN_BYTES, 1 << 40
    try:
        return read_events([str(path)], "auto", UTC, stats), stats
    finally:
        batch.SPLIT_MIN_BYTES = threshold


def test_quiet_cut_needs_quiet_lines() -> None:
    noise = b"[2026-01-02 00:00:00.000 +00:00] [INF] [1] X: nothing\n"
    success = b'[2026-01-02 00:00:00.000 +00:00] [INF] [1] U: Authentication request for "a" has succeeded.\n'
    failure = (b'[2026-01-02 00:00:00.000 +00:00] [INF] [1] U: Authentication request for "a" has been '
               b'denied (IP: "1.2.3.4").\n')
    busy = (success + noise * 10) * 40
    assert quiet_cut(busy, len(busy) // 2) is None  # never QUIET_LINES lines without a success
    window = busy + failure + noise * (QUIET_LINES + 5)
    found = quiet_cut(window, len(busy) // 2)
    assert found is not None
    cut, last_hit_line = found
    before = window[:cut].split(b"\n")
    assert b"has succeeded" not in b"\n".join(before[-QUIET_LINES - 1:])
    assert window[cut - 1:cut] == b"\n"  # a line start
    assert last_hit_line is not None and "has been denied" in last_hit_line  # plain failures do not block


def test_split_file_gives_what_one_parser_gives(big_log: Path, split_small: list[int]) -> None:
    serial, serial_stats = _serial(big_log)
    split_stats = LineStats()
    split = read_events([str(big_log)], "auto", UTC, split_stats)
    assert split_small and 0 < split_small[0] < big_log.stat().st_size  # the helper took part
    assert [e.to_json() for e in split] == [e.to_json() for e in serial]
    assert split_stats == serial_stats
    kinds = {e.origin for e in serial}
    assert {"jellyfin.totp_rejected", "jellyfin.injection", "jellyfin.denied"} <= kinds


def test_split_parse_output_is_identical(big_log: Path, split_small: list[int]) -> None:
    serial, _ = _serial(big_log)
    stats = LineStats()
    text = b"".join(p if isinstance(p, bytes) else "".join(e.json_line() + "\n" for e in p).encode()
                    for p in read_pieces([str(big_log)], "auto", UTC, stats, render_json))
    assert split_small, "the file was not split"
    assert text.decode().splitlines() == [e.json_line() for e in serial]


def test_a_failing_helper_changes_nothing(big_log: Path, split_small: list[int]) -> None:
    serial, serial_stats = _serial(big_log)

    def broken(events: list[Event]) -> bytes:
        raise RuntimeError("the helper dies")

    stats = LineStats()
    pieces = list(read_pieces([str(big_log)], "auto", UTC, stats, broken))
    assert split_small, "the file was not split"
    assert all(isinstance(p, list) for p in pieces)
    events = [e for p in pieces if isinstance(p, list) for e in p]
    assert [e.to_json() for e in events] == [e.to_json() for e in serial]
    assert stats == serial_stats


def test_jfwatch_parse_of_a_split_file(big_log: Path, tmp_path: Path) -> None:
    """The command as a user runs it: same JSON lines with and without the helper."""
    code = ("import sys, jfwatch.batch as b; b.SPLIT_MIN_BYTES = int(sys.argv[1]); "
            "from jfwatch.engine.cli import main; sys.exit(main(sys.argv[2:]))")
    outputs = []
    for threshold in (1 << 20, 1 << 40):
        proc = subprocess.run([sys.executable, "-c", code, str(threshold), "parse", str(big_log)],
                              capture_output=True, text=True, timeout=120, check=True)
        outputs.append((proc.stdout, proc.stderr))
    assert outputs[0] == outputs[1]
    assert len(outputs[0][0].splitlines()) > 1000
    assert all(json.loads(line)["source"] == "jellyfin" for line in outputs[0][0].splitlines())


def test_jfwatch_parse_ended_early_stops_its_helper(big_log: Path) -> None:
    """
    ``jfwatch parse big.log | head``: when the reader goes, the helper is killed, not
    waited for.  Here the helper would sleep for an hour before handing anything back
    (the parent renders its own part with the same function, and does not sleep), so
    without the kill the command would hang until the timeout fails the test.
    """
    code = ("import os, sys, time, jfwatch.batch as b; b.SPLIT_MIN_BYTES = 1 << 20\n"
            "render, parent = b.render_json, os.getpid()\n"
            "b.render_json = lambda events: (os.getpid() != parent and time.sleep(3600)) \\\n"
            "    or render(events)\n"
            "from jfwatch.engine.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "parse", str(big_log)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: the helper too
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["source"] == "jellyfin"
        proc.stdout.close()  # as head does after its lines
        assert proc.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left, a sleeping helper included
        proc.wait()


def _decisions(decisions: list[Decision]) -> list[str]:
    return [json.dumps(d.to_json(), sort_keys=True) for d in decisions]


def test_replay_of_files_out_of_order_equals_replay_in_order(tmp_path: Path,
                                                             split_small: list[int]) -> None:
    from jfwatch.engine.commands import replay

    early = _log(tmp_path / "log_20260102.log", 30_000, datetime(2026, 1, 2, tzinfo=UTC))
    late = _log(tmp_path / "log_20260103.log", 30_000, datetime(2026, 1, 3, tzinfo=UTC))
    rules = load_rules([])
    in_order = replay([str(early), str(late)], Config(), rules, "auto", LineStats())
    reversed_ = replay([str(late), str(early)], Config(), rules, "auto", LineStats())
    sorted_first = replay([str(late), str(early)], Config(), rules, "auto", LineStats(),
                          state=tmp_path / "state.db")
    assert in_order, "the logs raised nothing"
    assert _decisions(reversed_) == _decisions(in_order) == _decisions(sorted_first)


@pytest.fixture(params=["helper only", "own part"])
def pipe_small(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """
    Hand events over from a helper from 1 MiB of input on; with "own part", this
    process parses the last part of a file from 1 MiB on (otherwise from 1 TiB).
    """
    monkeypatch.setattr(piped, "PIPE_MIN_BYTES", 1 << 20)
    monkeypatch.setattr(batch, "SPLIT_MIN_BYTES", 1 << 20 if request.param == "own part" else 1 << 40)
    return str(request.param)


def test_piped_events_are_what_one_parser_gives(big_log: Path, pipe_small: str) -> None:
    serial, serial_stats = _serial(big_log)
    stats = LineStats()
    pieces = list(piped.Backfill.start([str(big_log)], "auto", UTC).pieces(stats))
    assert len(pieces) > 2 and piped.START_OVER not in pieces  # in pieces, from the helper
    # The last OWN_SHARE of the file, parsed in this process, comes as the last piece.
    own_part = len(pieces[-1]) > len(serial) * piped.OWN_SHARE / 2
    assert own_part == (pipe_small == "own part")
    events = [e for p in pieces if isinstance(p, list) for e in p]
    assert [e.to_json() for e in events] == [e.to_json() for e in serial]
    assert stats == serial_stats


def _killed_after(pieces: int) -> Callable[..., None]:
    """A helper's send that SIGKILLs the helper itself after ``pieces`` pieces."""
    send = piped._send
    sent = [0]

    def send_then_die(*args: object) -> None:
        if sent[0] == pieces:
            os.kill(os.getpid(), signal.SIGKILL)
        sent[0] += 1
        send(*args)  # type: ignore[arg-type]

    return send_then_die


def test_a_killed_pipe_helper_starts_the_stream_over(big_log: Path, pipe_small: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    serial, serial_stats = _serial(big_log)
    monkeypatch.setattr(piped, "_send", _killed_after(2))
    stats = LineStats()
    pieces = list(piped.Backfill.start([str(big_log)], "auto", UTC).pieces(stats))
    restart = pieces.index(piped.START_OVER)
    assert restart == 2  # two pieces arrived, then the helper died
    events = [e for p in pieces[restart + 1:] if isinstance(p, list) for e in p]
    assert [e.to_json() for e in events] == [e.to_json() for e in serial]
    assert stats == serial_stats  # nothing of the dead helper was counted


def test_replay_with_a_killed_helper_equals_replay_without(big_log: Path, pipe_small: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from jfwatch.engine.commands import replay

    rules = load_rules([])
    whole = replay([str(big_log)], Config(), rules, "auto", LineStats())
    monkeypatch.setattr(piped, "_send", _killed_after(3))
    stats = LineStats()
    after_kill = replay([str(big_log)], Config(), rules, "auto", stats)
    assert whole, "the log raised nothing"
    assert _decisions(after_kill) == _decisions(whole)
    assert stats.read == sum(1 for _ in big_log.open())


def test_replay_keeps_event_time_order_across_pieces(tmp_path: Path, pipe_small: str) -> None:
    """
    Lines a little out of order (a busy server's threads) are fed in time order; a line
    far older than everything before it makes detection start over, sorted.  Both equal
    sorting everything first.
    """
    from jfwatch.engine.commands import replay

    rules = load_rules([])
    log = _log(tmp_path / "log_20260102.log", 60_000, datetime(2026, 1, 2, tzinfo=UTC))
    lines = log.read_text().splitlines()
    # Every 100th line written 150 lines late (about 5 s out of order): some such line
    # straddles every boundary between two pieces.
    swapped = [line for _, line in sorted(
        (i + 150.5 if i % 100 == 0 else i, line) for i, line in enumerate(lines))]
    late = lines[:]
    late.append(late.pop(7))  # a line of the first second comes last: hours out of order
    for name, text in (("swapped", swapped), ("late", late)):
        path = tmp_path / name / "log_20260102.log"
        path.parent.mkdir()
        path.write_text("\n".join(text) + "\n")
        streamed = replay([str(path)], Config(), rules, "auto", LineStats())
        sorted_first = replay([str(path)], Config(), rules, "auto", LineStats(),
                              state=tmp_path / name / "state.db")
        assert streamed, f"{name}: the log raised nothing"
        assert _decisions(streamed) == _decisions(sorted_first), name


def test_replay_command_with_its_early_helper(big_log: Path, tmp_path: Path) -> None:
    """
    ``jfwatch replay`` forks its parsing helper before it validates the config: the
    output equals the pipeline's without it, and a bad config still only yields its
    errors (the helper is stopped, nothing is printed on stdout).
    """
    from jfwatch.engine.commands import replay

    config = tmp_path / "jfwatch.yml"
    config.write_text("timezone: Europe/Berlin\nrules_dirs: []\n")
    assert big_log.stat().st_size >= piped.PIPE_MIN_BYTES  # the command forks a helper
    proc = subprocess.run([sys.executable, "-m", "jfwatch", "replay", "--config", str(config),
                           str(big_log)], capture_output=True, text=True, timeout=300, check=True)
    cfg = Config(timezone="Europe/Berlin", rules_dirs=[])
    expected = replay([str(big_log)], cfg, load_rules([]), "auto", LineStats())
    assert expected, "the log raised nothing"
    assert [json.loads(line) for line in proc.stdout.splitlines()] == \
        [json.loads(json.dumps(d.to_json())) for d in expected]

    config.write_text("timezone: Europe/Berlin\nmax_groups: -5\n")
    bad = subprocess.run([sys.executable, "-m", "jfwatch", "replay", "--config", str(config),
                          str(big_log)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert f"{config}:2" in bad.stderr and "max_groups" in bad.stderr


def test_backfill_reads_the_files_it_started_with(big_log: Path, pipe_small: str) -> None:
    """A log rotated (renamed, a new one created) after the helper started changes nothing."""
    serial, serial_stats = _serial(big_log)
    backfill = piped.Backfill.start([str(big_log)], "auto", UTC)
    big_log.rename(big_log.with_suffix(".1"))
    big_log.write_text('[2026-01-03 00:00:00.000 +00:00] [INF] [1] X: Authentication request for '
                       '"new" has been denied (IP: "192.0.2.1").\n' * 1000)
    stats = LineStats()
    events = [e for p in backfill.pieces(stats) if isinstance(p, list) for e in p]
    assert [e.to_json() for e in events] == [e.to_json() for e in serial]
    assert stats == serial_stats
