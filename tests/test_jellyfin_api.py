"""
The ``jellyfin_api`` source against a local server that answers like Jellyfin's
ActivityLogController (tests/jellyfin_api_server.py): paging while entries arrive,
a restart in the middle of paging, outages, a refused key, malformed answers, a server
whose log starts again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.parsers.base import StreamContext
from jfwatch.parsers.jellyfin_activity import ActivityParser, address_in
from jfwatch.sources.jellyfin_api import (
    ActivityClient,
    ActivityPoller,
    ApiError,
    Batch,
    Cursor,
    read_api_key,
)

from activity_server import ActivityLogServer

KEY = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def server() -> Iterator[ActivityLogServer]:
    fake = ActivityLogServer(KEY).start()
    yield fake
    fake.stop()


def poller(fake: ActivityLogServer, cursor: Cursor | None = None, *, key: str = KEY,
           start: str = "beginning", page_size: int = 10) -> ActivityPoller:
    client = ActivityClient(fake.url, key, timeout=2.0)
    return ActivityPoller(client, cursor, name="test", interval=0.05, page_size=page_size,
                          start=start)


def take(p: ActivityPoller, cursor: Cursor | None, *, until: int, limit: int = 10_000,
         timeout: float = 20.0, rewound: bool = False) -> tuple[list[int], Cursor | None]:
    """Batches as the daemon takes them until ``until`` entries or ``limit`` batches;
    the ids in order and the last cursor.  Each must start at the last cursor, except
    (``rewound``) one built before a rewind, which the daemon drops as done here."""
    ids: list[int] = []
    batches = 0
    deadline = time.monotonic() + timeout
    while len(ids) < until and batches < limit and time.monotonic() < deadline:
        batch = p.take()
        if batch is None:
            time.sleep(0.005)
            continue
        if rewound and batch.after != cursor:
            p.rewind(cursor)
            continue
        assert batch.after == cursor, "a batch must start where the last one ended"
        ids += [record["Id"] for record in batch.records]
        cursor = batch.cursor
        batches += 1
    return ids, cursor


@contextlib.contextmanager
def running(p: ActivityPoller) -> Iterator[ActivityPoller]:
    """The poller's thread, stopped on the way out."""
    p.start()
    try:
        yield p
    finally:
        p.stop()


def next_batch(p: ActivityPoller, timeout: float = 10.0) -> Batch | None:
    """The next batch the poller hands out, or None after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = p.take()
        if batch is not None:
            return batch
        time.sleep(0.005)
    return None


def test_every_entry_once_while_entries_arrive_during_paging(server: ActivityLogServer) -> None:
    """95 entries paged 10 at a time, while 3 more arrive before each of the first 8
    page answers: all 119 are taken once, in id order."""
    for n in range(95):
        server.add("AuthenticationFailed", f"user{n}", f"203.0.113.{n % 250}")
    arrivals = iter(range(8))

    def arrive(_: int) -> None:
        if next(arrivals, None) is not None:
            for _ in range(3):
                server.add("AuthenticationFailed", "late", "198.51.100.1")

    server.on_page = arrive
    with running(poller(server)) as p:
        ids, cursor = take(p, None, until=119)
    assert ids == list(range(1, 120))
    assert cursor is not None and cursor.last_id == 119
    # The walk went from the oldest page up: answers were asked with startIndex > 0.
    assert any("startIndex=90" in r or "startIndex=85" in r for r in server.requests)


def test_a_restart_in_the_middle_of_paging_loses_and_repeats_nothing(
        server: ActivityLogServer) -> None:
    """The first poller hands out 3 batches (committed) and one more (never committed)
    before it dies; the second starts from the committed cursor: every entry once."""
    for n in range(60):
        server.add("AuthenticationSucceeded", f"user{n % 7}", f"203.0.113.{n}")
    first = poller(server)
    first.start()
    committed_ids, committed = take(first, None, until=60, limit=3)
    uncommitted = next_batch(first)  # taken, then lost with the process
    first.stop()
    assert len(committed_ids) == 30 and uncommitted is not None
    with running(poller(server, committed)) as second:
        rest, _ = take(second, committed, until=30)
    assert committed_ids + rest == list(range(1, 61))


def test_a_rewind_drops_what_was_handed_out_after_the_cursor(server: ActivityLogServer) -> None:
    """A failed commit rewinds the poller: the walk starts again from the cursor."""
    for n in range(30):
        server.add("AuthenticationFailed", "x", f"203.0.113.{n}")
    with running(poller(server)) as p:
        ids, _cursor = take(p, None, until=10, limit=1)
        p.rewind(None)  # the first batch's commit failed
        again, _ = take(p, None, until=30, rewound=True)
    assert ids == list(range(1, 11)) and again == list(range(1, 31))


def test_start_end_takes_only_what_comes_after_the_first_start(server: ActivityLogServer) -> None:
    for n in range(5):
        server.add("AuthenticationFailed", "old", f"203.0.113.{n}")
    with running(poller(server, start="end")) as p:
        first = next_batch(p)
        assert first is not None and first.records == [] and first.cursor.last_id == 5
        server.add("AuthenticationFailed", "new", "203.0.113.9")
        ids, _ = take(p, first.cursor, until=1)
    assert ids == [6]
    # Rounds after the first ask only for entries since the last one taken (minDate).
    assert "minDate=" not in server.requests[0] and "minDate=" in server.requests[-1]


def test_a_server_whose_log_starts_again_is_followed(server: ActivityLogServer) -> None:
    """A reinstalled server numbers entries from 1 again: newer ones are still taken."""
    old = server.add("AuthenticationFailed", "x", "203.0.113.1")
    for _ in range(40):
        server.add("AuthenticationFailed", "x", "203.0.113.1")
    cursor = Cursor(41, server.entries[-1]["Date"])
    server.reset_database()
    assert old == 1
    server.add("AuthenticationSucceeded", "alice", "203.0.113.5")
    with running(poller(server, cursor)) as p:
        ids, after = take(p, cursor, until=1)
    assert ids == [1] and after is not None and after.last_id == 1


@pytest.mark.slow
def test_refused_key_outage_slowness_and_garbage_are_reported(server: ActivityLogServer) -> None:
    server.add("AuthenticationFailed", "x", "203.0.113.1")
    wrong = "f" * 32
    with pytest.raises(ApiError, match="401") as refused:
        poller(server, key=wrong).poll_once()
    assert wrong not in str(refused.value) and KEY not in str(refused.value)
    # The key went in the Authorization header only, never in a URL.
    assert all(KEY not in r and wrong not in r for r in server.requests)
    assert server.auth_headers[-1] == f'MediaBrowser Client="jfwatch", Token="{wrong}"'
    server.broken = True
    with pytest.raises(ApiError, match="malformed"):
        poller(server).poll_once()
    server.broken, server.status = False, 500
    with pytest.raises(ApiError, match="HTTP 500"):
        poller(server).poll_once()
    server.status, server.delay = None, 3.0
    with pytest.raises(ApiError, match="in time"):
        poller(server).poll_once()
    server.delay = 0.0
    server.stop()
    with pytest.raises(ApiError, match="cannot reach"):
        poller(server).poll_once()


def test_the_poller_reports_an_outage_and_recovers(server: ActivityLogServer) -> None:
    server.add("AuthenticationFailed", "x", "203.0.113.1")
    with running(poller(server)) as p:
        ids, cursor = take(p, None, until=1)
        server.stop()
        _wait(lambda: p.problem is not None and "cannot reach" in p.problem)
        server.add("AuthenticationFailed", "y", "203.0.113.2")
        server.start()  # the same port
        _wait(lambda: p.problem is None, timeout=15)
        more, _ = take(p, cursor, until=1)
    assert ids == [1] and more == [2]


def test_user_names_are_resolved_from_user_ids_in_any_language(server: ActivityLogServer) -> None:
    """A German server's success names the user in German; UserId gives the name."""
    server.add("AuthenticationSucceeded", "alice", "203.0.113.5", lang="de")
    server.entries[-1]["Name"] = "alice erfolgreich authentifiziert"
    with running(poller(server)) as p:
        batch = next_batch(p)
    assert batch is not None
    events = ActivityParser(StreamContext()).feed_record(batch.records[0])
    assert [(e.kind, e.user, str(e.ip)) for e in events] == [
        ("auth_success", "alice", "203.0.113.5")]


def test_the_key_comes_from_a_file_or_the_environment(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    assert read_api_key(str(key_file), None) == KEY
    monkeypatch.setenv("JF_KEY", KEY)
    assert read_api_key(None, "JF_KEY") == KEY
    for problem in (lambda: read_api_key(str(tmp_path / "missing"), None),
                    lambda: read_api_key(None, "JF_UNSET")):
        with pytest.raises(ApiError) as exc:
            problem()
        assert KEY not in str(exc.value)


_names = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=60)
_addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@settings(max_examples=300, deadline=None)
@given(name=_names, decoy=_addresses, real=_addresses,
       label=st.sampled_from(["IP address: {0}", "IP-Adresse: {0}", "Adresse IP : {0}",
                              "{0}: IP ئادرىسى", "آئ پی ایڈریس {0}"]))
def test_the_address_is_the_endpoint_whatever_the_username(name: str, decoy: str, real: str,
                                                          label: str) -> None:
    """A username with line breaks, a forged label or an address never gives the
    address: it comes from ShortOverview, and the user is escaped onto one line."""
    entry = {"Id": 1, "Type": "AuthenticationFailed", "Date": "2026-11-30T08:00:00Z",
             "Name": f"Failed login attempt from {name}\nIP address: {decoy}",
             "ShortOverview": label.format(real), "UserId": "0" * 32}
    events = ActivityParser(StreamContext()).feed(json.dumps(entry))
    expected = address_in(label.format(real))
    assert expected is not None
    assert events and all(e.ip == expected for e in events)
    failure = events[0]
    assert failure.kind == "auth_failure" and failure.user is not None
    assert "\n" not in failure.user and "\r" not in failure.user


def _wait(check: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def test_threads_end_when_stopped(server: ActivityLogServer) -> None:
    p = poller(server)
    p.start()
    p.stop()
    p.join(timeout=5)
    assert not p.is_alive()
    assert threading.active_count() < 50


# -- a hostile or intercepted server -------------------------------------------------------

def _page_of(entries: list[dict[str, object]], total: int | None = None) -> bytes:
    return json.dumps({"Items": entries, "TotalRecordCount": len(entries) if total is None
                       else total, "StartIndex": 0}).encode()


def _entry(entry_id: object, date: object = "2026-11-30T08:00:01.0000000Z") -> dict[str, object]:
    return {"Id": entry_id, "Name": "Failed login attempt from x", "Overview": None,
            "ShortOverview": "IP address: 203.0.113.9", "Type": "AuthenticationFailed",
            "Date": date, "UserId": "0" * 32, "Severity": "Error"}


def test_ids_and_dates_out_of_range_are_skipped_and_counted(server: ActivityLogServer) -> None:
    """An Id of 2**63 (valid JSON, too large for SQLite), negative, fractional or text
    ids, and dates that are not dates: each entry is skipped and counted, never a crash;
    the good entries around them are taken."""
    bad = [_entry(2**63), _entry(-5), _entry(1.5), _entry("7"), _entry(True),
           _entry(8, "yesterday"), _entry(9, 12345)]
    good = [_entry(3), _entry(2)]
    everything = [*good, *bad]

    def paged(query: dict[str, str]) -> list[bytes]:
        start, limit = int(query.get("startIndex", 0)), int(query.get("limit", 100))
        return [_page_of(everything[start:start + limit], total=len(everything))]

    server.hostile = paged
    p = poller(server, page_size=20)
    p.poll_once()
    batch = p.take()
    assert batch is not None and batch.cursor.last_id == 3
    assert [record["Id"] for record in batch.records] == [2, 3]
    assert p.malformed == len(bad)


@pytest.mark.parametrize("mode", ["ignores limit", "one huge string", "gzip bomb"])
def test_answers_larger_than_asked_for_are_cut_off(server: ActivityLogServer,
                                                   mode: str) -> None:
    """300,000 entries where 10 were asked for, a 50 MB string: cut off at the cap (16
    KiB an entry asked for); a compressed answer that would inflate to 100 MB (never
    asked for: the client asks for identity): refused.  In well under a second, never
    held whole."""
    import gzip
    import tracemalloc

    if mode == "ignores limit":
        server.hostile = lambda query: itertools.chain(
            [b'{"TotalRecordCount": 300000, "Items": ['],
            (json.dumps(_entry(i + 1)).encode() + b"," for i in range(300_000)), [b"{}]}"])
    elif mode == "one huge string":
        server.hostile = lambda query: itertools.chain(
            [b'{"Items": [{"Id": 1, "Name": "'], (b"x" * 1_000_000 for _ in range(50)),
            [b'"}]}'])
    else:
        bomb = gzip.compress(b'{"Items": [{"Id": 1, "Name": "' + b"x" * 100_000_000 + b'"}]}')

        def gzipped(query: dict[str, str]) -> list[bytes]:
            return [bomb]
        server.hostile = gzipped
        server.gzip = True
    p = poller(server)
    tracemalloc.start()
    began = time.monotonic()
    try:
        with pytest.raises(ApiError, match=r"larger than|entries where|compressed"):
            p.poll_once()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - began < 5
    assert peak < 20 * 1024 * 1024


@pytest.mark.slow
def test_a_dripping_server_is_cut_off_and_reported(server: ActivityLogServer) -> None:
    """A server that answers a byte at a time (each within the read timeout, forever)
    is cut off at the request's deadline: reported, never read."""
    server.add("AuthenticationFailed", "x", "203.0.113.1")
    server.drip = 0.2  # the body a byte at a time: minutes in all
    p = poller(server)  # a 2 s deadline
    began = time.monotonic()
    with pytest.raises(ApiError, match=r"took longer|in time"):
        p.poll_once()
    assert time.monotonic() - began < 2 * 2.0 + 1.5
    assert p.client.in_flight is None


@pytest.mark.slow
def test_a_request_stuck_in_the_headers_is_reported_unhealthy(server: ActivityLogServer
                                                              ) -> None:
    """Headers dripped a byte at a time cannot be cut off from the poller's thread; the
    source is still reported as not answering once the request is past twice its
    deadline, and readable again once the server answers."""
    server.add("AuthenticationFailed", "x", "203.0.113.1")
    server.drip, server.drip_head = 1.0, True
    with running(poller(server)) as p:
        _wait(lambda: (p.health() or "").startswith("a request has waited"), timeout=20)
        server.drip = 0.0
        _wait(lambda: p.health() is None, timeout=60)


def test_pages_without_end_are_a_bounded_walk(server: ActivityLogServer) -> None:
    """A server that claims 10**12 entries: pages of nothing new end the walk with an
    error after a bounded number of pages; pages of ever new entries end it at the
    walk's budget (the rest next round), memory bounded either way."""
    server.hostile = lambda query: [_page_of([], total=10**12)]
    p = ActivityPoller(ActivityClient(server.url, KEY, timeout=2.0), None, name="test",
                       interval=0.05, page_size=10, start="beginning", walk_budget=100)
    with pytest.raises(ApiError, match="without end"):
        p.poll_once()
    assert len(server.requests) < 2 * 100 // 10 + 20

    def fresh(query: dict[str, str]) -> list[bytes]:
        start = int(query.get("startIndex", 0))
        top = 10**12 - start
        return [_page_of([_entry(top - i) for i in range(int(query.get("limit", 1)))],
                         total=10**12)]

    server.hostile = fresh
    server.requests.clear()
    p = ActivityPoller(ActivityClient(server.url, KEY, timeout=2.0), None, name="test",
                       interval=0.05, page_size=10, start="beginning", walk_budget=100)
    taken = 0
    walker = threading.Thread(target=p.poll_once, daemon=True)
    walker.start()
    deadline = time.monotonic() + 20
    while walker.is_alive() and time.monotonic() < deadline:
        batch = p.take()
        if batch is not None:
            taken += batch.entries
        time.sleep(0.001)
    walker.join(timeout=5)
    assert not walker.is_alive()
    last = p.take()  # handed over as the walk ended
    taken += last.entries if last is not None else 0
    assert 100 <= taken <= 110
