"""
Following one file, in process, with a clock the test moves: the partial-line timeout,
rotation, the drain grace of a renamed file and copytruncate, each line exactly once.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jfwatch.sources.follow import DRAIN_GRACE, PARTIAL_TIMEOUT, Follower, Identity, identity_of

from conftest import Clock


def identity_of_path(path: Path) -> Identity:
    with open(path, "rb") as fh:
        return identity_of(fh)


def _lines(follower: Follower) -> list[bytes]:
    """Everything readable now, read in bounded passes (at most 100)."""
    out: list[bytes] = []
    for _ in range(100):
        pieces = follower.read(budget=64)
        if not pieces:
            return out
        out += [line for data, _, _ in pieces for line in data.splitlines()]
    raise AssertionError("read never caught up")


def test_a_partial_line_waits_for_its_newline_then_for_the_timeout(tmp_path: Path) -> None:
    log, clock = tmp_path / "a.log", Clock()
    log.write_bytes(b"one\ntw")
    follower = Follower(str(log), clock=clock)
    assert _lines(follower) == [b"one"]
    assert follower.offset == 4  # the committable offset stops before the partial line
    clock.now += PARTIAL_TIMEOUT - 0.1
    assert _lines(follower) == []
    with open(log, "ab") as fh:
        fh.write(b"o\nthr")
    assert _lines(follower) == [b"two"]
    clock.now += PARTIAL_TIMEOUT - 1
    with open(log, "ab") as fh:  # still written to: the line waits on
        fh.write(b"ee")
    assert _lines(follower) == []
    clock.now += PARTIAL_TIMEOUT - 1
    assert _lines(follower) == []
    clock.now += 1
    assert _lines(follower) == [b"three"]  # quiet long enough: taken as it is, once
    assert follower.offset == log.stat().st_size
    assert _lines(follower) == []


def test_a_renamed_file_is_drained_until_its_grace_ends(tmp_path: Path) -> None:
    log, clock = tmp_path / "a.log", Clock()
    log.write_bytes(b"1\n2\n")
    follower = Follower(str(log), clock=clock)
    assert _lines(follower) == [b"1", b"2"]
    os.rename(log, tmp_path / "a.log.1")
    log.write_bytes(b"new\n")
    with open(tmp_path / "a.log.1", "ab") as old:  # the writer has not reopened yet
        old.write(b"3\nlate-partial")
    # The old descriptor is still the current file until it is drained: its lines first.
    assert _lines(follower) == [b"3", b"new"]
    rotated = identity_of_path(tmp_path / "a.log.1")
    clock.now += DRAIN_GRACE / 2
    with open(tmp_path / "a.log.1", "ab") as old:
        old.write(b"\n4\n")
    assert _lines(follower) == [b"late-partial", b"4"]
    assert follower.owns(rotated)
    clock.now += DRAIN_GRACE + 1
    assert _lines(follower) == []
    assert not follower.owns(rotated)  # let go (its offset says how far it was read)


def test_copytruncate_reads_the_new_start(tmp_path: Path) -> None:
    log, clock = tmp_path / "a.log", Clock()
    log.write_bytes(b"old 1\nold 2\n")
    follower = Follower(str(log), clock=clock)
    assert _lines(follower) == [b"old 1", b"old 2"]
    with open(log, "r+b") as fh:
        fh.truncate(0)
    with open(log, "ab") as fh:
        fh.write(b"fresh\n")
    assert _lines(follower) == [b"fresh"]
    assert follower.offset == 6


def test_a_huge_line_is_cut_and_never_held_whole(tmp_path: Path) -> None:
    log, clock = tmp_path / "a.log", Clock()
    log.write_bytes(b"x" * 10_000)
    follower = Follower(str(log), max_line=100, clock=clock)
    assert follower.read(budget=1 << 20) == []
    cursor = follower._cur
    assert cursor is not None and len(cursor.reader._partial) == 101
    with open(log, "ab") as fh:
        fh.write(b"x" * 10_000 + b"\nok\n")
    lines = [line for data, _, _ in follower.read(budget=1 << 20) for line in data.splitlines()]
    assert [len(line) for line in lines] == [101, 2]  # rejected later as over-long
    assert follower.offset == log.stat().st_size


def test_an_unfinished_line_is_not_unread(tmp_path: Path) -> None:
    """What a stall is measured by: bytes no read has taken (not a line waiting for its
    newline, which is read already)."""
    log, clock = tmp_path / "a.log", Clock()
    log.write_bytes(b"one\ntw")
    follower = Follower(str(log), clock=clock)
    assert follower.backlog() == (6, 6)
    assert _lines(follower) == [b"one"]
    assert follower.backlog() == (2, 0)  # lag 2, and nothing unread


def test_out_of_descriptors_is_a_problem_reported_and_recovered(tmp_path: Path) -> None:
    """EMFILE when a follower opens its file is never swallowed: the follower says so
    (the daemon reports it and marks the source unhealthy), and reads once a descriptor
    is free again."""
    import resource

    from jfwatch.sources.files import file_budget

    log = tmp_path / "app.log"
    log.write_bytes(b"one\n")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert file_budget(256) < 256 - 32  # room kept for the state, sockets, drains
        with pytest.raises(OSError):
            for _ in range(300):
                held.append(os.open(os.devnull, os.O_RDONLY))
        follower = Follower(str(log))
        assert follower.problem is not None and "out of file descriptors" in follower.problem
        assert follower.read() == []
        for fd in held:
            os.close(fd)
        held = []
        pieces = follower.read()
        assert [p[0] for p in pieces] == [b"one\n"] and follower.problem is None
        follower.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
