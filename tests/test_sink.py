"""
The daemon's sink, in-process: the ban feed's publisher (retried while any ban is
unpublished), the event export's commit protocol, and the sink that routes to them.
Real files, a real state; faults made the way a host makes them (a directory where the
feed should be, a full export cut back).
"""

from __future__ import annotations

import os
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jfwatch.actions.banfeed import BanFeed
from jfwatch.actions.export import EventExport
from jfwatch.actions.publish import RETRY_SECONDS, BanPublisher
from jfwatch.config.model import Config
from jfwatch.detect.decisions import Alert, Ban, Unban
from jfwatch.detect.detector import Detector, settings_from_config
from jfwatch.engine.engine import Stream
from jfwatch.engine.sink import DaemonSink
from jfwatch.events import Event, EventKind
from jfwatch.parsers import create_parser
from jfwatch.parsers.base import StreamContext
from jfwatch.state import StateStore

from conftest import Clock


def _feed_bans(path: Path) -> Counter[str]:
    lines = path.read_text().splitlines() if path.is_file() else []
    return Counter(line.split()[3] for line in lines if " BAN " in line)


def _ban(store: StateStore, ip: str, hours: float = 4) -> Ban:
    now = datetime.now(UTC)
    ban = Ban(ip, "brute-force-ip", now, now + timedelta(hours=hours), 0)
    store.record_ban(ip, ban.rule, ban.time, ban.until, 0)  # as the detector does
    return ban


@pytest.fixture
def parts(tmp_path: Path) -> tuple[BanPublisher, StateStore, Path, list[tuple[str, str | None]],
                                   Clock]:
    store = StateStore(tmp_path / "state.db")
    feed_path = tmp_path / "feed" / "bans.log"
    faults: list[tuple[str, str | None]] = []
    clock = Clock()
    publisher = BanPublisher(BanFeed(feed_path, tmp_path / "feed" / "banned.txt"), store,
                             lambda part, problem: faults.append((part, problem)), clock)
    publisher.idle()  # the first pass after start: nothing recorded, nothing to write
    return publisher, store, feed_path, faults, clock


def test_a_failed_ban_is_published_when_a_later_one_is_written(parts) -> None:  # type: ignore[no-untyped-def]
    """The old bug: a later ban written cleared the fault, and the failed one was never
    retried while /health said ok."""
    publisher, store, feed, faults, _ = parts
    feed.unlink()
    feed.mkdir()  # a directory where the feed should be: every write fails
    publisher.publish(_ban(store, "203.0.113.1"))
    assert publisher.problem is not None and faults[-1][0] == "ban_feed"
    assert [b.ip for b, _ in store.unpublished_bans()] == ["203.0.113.1"]
    feed.rmdir()  # the admin fixes it; the next ban is written ...
    publisher.publish(_ban(store, "203.0.113.2"))
    # ... and so is the one that failed, once; the fault ends only when nothing waits.
    assert _feed_bans(feed) == Counter({"203.0.113.1": 1, "203.0.113.2": 1})
    assert store.unpublished_bans() == []
    assert publisher.problem is None and faults[-1] == ("ban_feed", None)


def test_a_failed_ban_is_retried_on_its_own_after_the_retry_interval(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, store, feed, faults, clock = parts
    feed.unlink()
    feed.mkdir()
    publisher.publish(_ban(store, "203.0.113.3"))
    feed.rmdir()
    publisher.idle()  # too early: not retried yet, still at fault
    assert not feed.exists() and publisher.problem is not None
    clock.now += RETRY_SECONDS
    publisher.idle()
    assert _feed_bans(feed) == Counter({"203.0.113.3": 1})
    assert store.unpublished_bans() == [] and publisher.problem is None
    assert [part for part, problem in faults if problem] == ["ban_feed"]  # reported once


def test_a_fault_that_persists_is_reported_once_and_bans_wait(parts) -> None:  # type: ignore[no-untyped-def]
    publisher, store, feed, faults, clock = parts
    feed.unlink()
    feed.mkdir()
    for n in range(5):
        publisher.publish(_ban(store, f"203.0.113.{10 + n}"))
        clock.now += RETRY_SECONDS
        publisher.idle()
    assert len([f for f in faults if f[1]]) == 1
    assert len(store.unpublished_bans()) == 5


def test_past_bans_and_their_unbans_are_not_written(parts) -> None:  # type: ignore[no-untyped-def]
    """A backfill of old logs: a ban already over is noise for Fail2Ban."""
    publisher, store, feed, _, _ = parts
    old = _ban(store, "203.0.113.20", hours=-1)
    publisher.publish(old)
    publisher.publish(Unban(old.ip, old.rule, old.until))
    publisher.publish(_ban(store, "203.0.113.21"))
    assert _feed_bans(feed) == Counter({"203.0.113.21": 1})
    assert "UNBAN" not in feed.read_text()
    publisher.idle()
    assert (feed.parent / "banned.txt").read_text() == "203.0.113.20\n203.0.113.21\n"


def _event(n: int) -> Event:
    return Event(datetime(2026, 12, 1, 20, 0, n, tzinfo=UTC), "jellyfin", EventKind.AUTH_FAILURE,
                 "jellyfin.failed", "jellyfin", None, f"user{n}")


def test_the_export_holds_each_committed_event_once(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    path = tmp_path / "events.jsonl"
    export = EventExport(path, store)
    export.restore()  # a first start records the length it found
    export.add("a", [_event(1), _event(2)])
    export.add("b", [_event(3)])
    assert (export.waiting("a"), export.waiting("b")) == (2, 1)
    store.save_offsets([], export.write("a"))  # a's commit
    assert export.waiting("a") == 0 and len(path.read_text().splitlines()) == 2
    # b's events were written, then the commit that needed them failed: cut back.
    export.write("b")
    assert len(path.read_text().splitlines()) == 3
    export.restore()
    assert len(path.read_text().splitlines()) == 2
    export.add("b", [_event(3)])
    export.drop_all()  # a commit failed: everything is read again
    assert export.waiting("b") == 0


def test_an_export_path_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    from jfwatch.actions.export import ExportFailed

    os.symlink(tmp_path / "elsewhere", tmp_path / "events.jsonl")
    export = EventExport(tmp_path / "events.jsonl", StateStore(":memory:"))
    with pytest.raises(ExportFailed, match="symlink"):
        export.restore()


def test_the_sink_routes_each_output_to_its_part(tmp_path: Path) -> None:
    config = Config.model_validate({
        "state_dir": str(tmp_path / "state"), "metrics": {"enabled": False},
        "events_file": str(tmp_path / "events.jsonl"),
        "ban_feed": {"path": str(tmp_path / "out" / "bans.log")}})
    store = StateStore(tmp_path / "state" / "state.db")
    sink = DaemonSink(config, store)
    sink.start()
    try:
        stream = Stream("jellyfin", create_parser("jellyfin", StreamContext()), key="f")
        sink.events(stream, [_event(1)])
        assert sink.export.waiting("f") == 1 and sink.newest_event["f"] == _event(1).time
        ban = _ban(store, "203.0.113.30")
        alert = Alert(rule="brute-force-ip", severity="high", time=ban.time, description="d",
                      key={"ip": ban.ip}, ip=ban.ip, user=None, count=5, window_seconds=600.0,
                      first_time=ban.time, last_time=ban.time)
        sink.act([alert, ban])
        detector = Detector([], settings_from_config(config), store)
        sink.idle(detector)
        assert _feed_bans(tmp_path / "out" / "bans.log") == Counter({"203.0.113.30": 1})
        assert sink.outbox.depth() == 0  # no notification targets: nothing queued
        metrics = sink.metrics.registry.get_sample_value
        assert metrics("jfwatch_bans_total", {"rule": "brute-force-ip"}) == 1.0
        assert metrics("jfwatch_alerts_total", {"rule": "brute-force-ip",
                                                "severity": "high"}) == 1.0
        assert metrics("jfwatch_bans_active") == 1.0
        assert metrics("jfwatch_events_total", {"source": "jellyfin", "format": "auto",
                                                "kind": "auth_failure"}) == 1.0
    finally:
        sink.stop()


def test_a_lapi_that_never_answers_delays_no_event() -> None:
    """The shared decisions are read by their own thread: a LAPI that accepts and never
    answers is reported, and events pass at once (nothing is known, nothing listed)."""
    import ipaddress
    import socket
    import time

    from jfwatch.enrich.shared_bans import SharedBans

    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    shared = SharedBans(f"http://127.0.0.1:{silent.getsockname()[1]}", "key", interval=0.1,
                        timeout=0.5)
    shared.start()
    try:
        event = _event(1)
        started = time.monotonic()
        for _ in range(1000):
            assert shared.enrich([event]) == [event]
        assert time.monotonic() - started < 0.5
        deadline = time.monotonic() + 10
        while shared.problem is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert shared.problem == "the LAPI did not answer in time"
        assert shared.listed(ipaddress.ip_address("198.51.100.1")) is None
    finally:
        shared.stop()
        shared.join(timeout=5)
        shared.close()
        silent.close()
