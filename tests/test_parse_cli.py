"""``jfwatch parse`` as a user runs it: real files, a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.system  # starts processes (the CLI, the daemon, system tools)

SAMPLES = ROOT.parent / "shared" / "samples"
DENIED = ('[2026-01-02 10:00:01.002 +00:00] [INF] [12] Jellyfin.Server.Implementations.Users.'
          'UserManager: Authentication request for "bob" has been denied (IP: "203.0.113.10").\n')


def _parse(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jfwatch", "parse", *args], input=stdin,
                          capture_output=True, check=False, timeout=120,
                          text=stdin is None)


def test_every_event_has_the_interface_fields(tmp_path: Path) -> None:
    """Each JSON line carries time (with offset), source, kind, ip, user and origin."""
    log = ROOT / "demo" / "jellyfin" / "log_20260102.log"
    result = _parse(str(log))
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert events
    for event in events:
        assert {"time", "source", "kind", "ip", "user", "origin"} <= event.keys()
        assert event["time"][-6] in "+-"
        assert event["origin"].startswith(event["source"] + ".")
    assert "Lines:" in result.stderr


def test_bad_bytes_are_counted_and_skipped(tmp_path: Path) -> None:
    """Invalid UTF-8, NUL bytes and a 10 MB line are rejected; the good lines still parse."""
    log = tmp_path / "log_20260102.log"
    log.write_bytes(DENIED.encode() + b"\xff\xfe bad utf8\n" + b"nul\x00byte\n"
                    + b"A" * (10 * 1024 * 1024) + b"\n" + DENIED.encode())
    result = subprocess.run([sys.executable, "-m", "jfwatch", "parse", str(log)],
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0
    assert len(result.stdout.splitlines()) == 2
    assert "5 read, 2 matched, 0 unmatched, 3 rejected" in result.stderr


def test_stdin_and_explicit_format() -> None:
    """``-`` reads standard input; ``--format`` forces a parser."""
    result = _parse("--format", "jellyfin", "-", stdin=DENIED.encode())
    assert result.returncode == 0
    event = json.loads(result.stdout.decode())
    assert (event["ip"], event["user"], event["origin"]) == ("203.0.113.10", "bob", "jellyfin.denied")


def test_secrets_never_reach_the_output(tmp_path: Path) -> None:
    """``pw=`` and ``api_key=`` values in proxy logs are redacted from excerpts and paths."""
    log = tmp_path / "access.log"
    log.write_text('203.0.113.5 - - [02/Jan/2026:12:00:03 +0000] "POST /Users/6e1f0a529d4b4f7e8a3c2b1d'
                   '0c9e8f7a/Authenticate?pw=Sup3rSecret&api_key=KEY123 HTTP/1.1" 401 24 "-" "curl"\n')
    result = _parse(str(log))
    assert result.returncode == 0
    assert "Sup3rSecret" not in result.stdout and "KEY123" not in result.stdout
    assert "pw=REDACTED" in result.stdout


def test_shared_samples_parse_without_error() -> None:
    """Every shared sample log parses; the run exits 0 and finds events."""
    files = sorted(str(p) for p in SAMPLES.glob("*.log"))
    if not files:
        files = sorted(str(p) for p in (ROOT / "tests" / "golden" / "parsers").glob("*/*.log"))
    result = _parse(*files)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) > 50
