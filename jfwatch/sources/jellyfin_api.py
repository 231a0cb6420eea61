"""
The ``jellyfin_api`` source: Jellyfin's Activity Log, polled over HTTP.

``GET /System/ActivityLog/Entries`` lists entries newest first, ``minDate`` filtered and
paged by ``startIndex``/``limit``.  Each round asks for entries since the last one taken
(minus a minute of slack), then walks the pages from the oldest end, so every batch is
in ascending id order and small.  An entry added while the walk goes on pushes the older
ones down a place: every answer carries ``TotalRecordCount``, and a changed count moves
the walk by as much, so nothing is skipped; ids at or below the last one taken are
dropped, so nothing is taken twice.

Each batch goes to the daemon as JSON lines (``parsers.jellyfin_activity``) with the
cursor after it, and is committed with the event export: a batch continues where the
committed one ended or it is dropped and the walk starts again from there (after a
crash, a failed commit or a server restart in the middle of paging).

The API key goes in the ``Authorization`` header only (never a URL, a log line or an
error message).  Fetching runs in its own thread: a slow or absent server never holds
up the files.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from jfwatch import log
from jfwatch.keys import KeyUnreadable, read_key
from jfwatch.sources.records import RESOLVED_USER, Record
from jfwatch.timestamps import parse_iso

ENTRIES = "/System/ActivityLog/Entries"
SLACK = timedelta(minutes=1)  # entries written in the same second as the last one taken
MAX_RESHUFFLES = 10  # count changes in a row before a round gives up (retried later)
BACKOFF_MAX = 300.0
# The fields a detection needs: Overview can be long, and nothing else is read.
_KEPT = ("Id", "Type", "Date", "Name", "ShortOverview", "UserId", "Severity")
# A server is attacker-controlled input too (a hostile one, or an intercepted plain-HTTP
# connection).  Real entries are well under 2 KiB each: an answer is read up to this much
# per entry asked for (the stream cut there), and no more entries than asked are taken.
BYTES_PER_ENTRY = 16 * 1024
MIN_ANSWER_BYTES = 256 * 1024
# Ids are Jellyfin's SQLite row ids: positive 64-bit integers.
MAX_ID = 2**63 - 1
# One round takes at most this many entries (a backlog goes on in the next round; an
# endless stream of pages holds no more than this in memory).
WALK_BUDGET = 20_000


class ApiError(Exception):
    """The server could not be asked, or answered with something unusable.  The message
    says what, never the key."""


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last entry taken: its id and date (as the server wrote it)."""

    last_id: int
    last_date: str | None


@dataclass(frozen=True, slots=True)
class Batch:
    """Entries after ``after`` up to ``cursor``, oldest first, as records."""

    after: Cursor | None
    cursor: Cursor
    records: list[Record]

    @property
    def entries(self) -> int:
        return len(self.records)


def read_api_key(key_file: str | None, key_env: str | None) -> str:
    """The API key (``keys.read_key``); ApiError names where it looked, never what it
    found."""
    try:
        return read_key("API key", key_file, key_env)
    except KeyUnreadable as exc:
        raise ApiError(str(exc)) from None


class ActivityClient:
    """
    The HTTP side: one page of entries, and the server's user names.  ``timeout`` is
    a deadline for each whole request (a server dripping a byte a second is cut off
    there, not waited on for as long as it keeps dripping); ``in_flight`` says since
    when a request has been waiting, for a thread that cannot be interrupted.
    """

    def __init__(self, url: str, key: str, *, timeout: float = 10.0, verify: bool = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        if '"' in key or "\n" in key:
            raise ApiError("the API key holds a quote or a line break: not a Jellyfin key")
        self.timeout = timeout
        self.in_flight: float | None = None  # monotonic start of the request waiting now
        self._http = httpx.Client(
            base_url=url.rstrip("/"), timeout=timeout, verify=verify, transport=transport,
            follow_redirects=False, headers={
                # The only form 12.0 accepts by default; the legacy ones put the key in
                # URLs and access logs.
                "Authorization": f'MediaBrowser Client="jfwatch", Token="{key}"',
                # Uncompressed: a page is tens of KiB, and a compressed answer inflates
                # a whole read at once, past any cap (a 100 KB gzip bomb is 100 MB).
                "Accept": "application/json", "Accept-Encoding": "identity"})

    def close(self) -> None:
        self._http.close()

    def page(self, start: int, limit: int, min_date: datetime | None) -> tuple[list[Any], int]:
        """Entries ``start`` to ``start + limit`` (newest first) and how many there are."""
        params: dict[str, str | int] = {"startIndex": start, "limit": limit}
        if min_date is not None:
            params["minDate"] = min_date.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        doc = self._get(ENTRIES, params, max(MIN_ANSWER_BYTES, limit * BYTES_PER_ENTRY))
        items, total = (doc.get("Items"), doc.get("TotalRecordCount")) \
            if isinstance(doc, dict) else (None, None)
        if not isinstance(items, list) or not isinstance(total, int) or isinstance(total, bool):
            raise ApiError("malformed answer: no Items list and TotalRecordCount")
        if len(items) > limit:
            raise ApiError(f"the server answered {len(items)} entries where {limit} were "
                           "asked for: not Jellyfin's paging")
        if not 0 <= total <= MAX_ID:
            raise ApiError(f"the server counts {total} entries: not a count")
        return items, total

    def user_names(self) -> dict[str, str]:
        """Names by user id (ids without dashes, lower case)."""
        doc = self._get("/Users", {}, 4 * 1024 * 1024)
        if not isinstance(doc, list):
            raise ApiError("malformed answer to /Users: not a list")
        return {_guid(u["Id"]): u["Name"] for u in doc if isinstance(u, dict)
                and isinstance(u.get("Id"), str) and isinstance(u.get("Name"), str)}

    def _get(self, path: str, params: dict[str, str | int], max_bytes: int) -> Any:
        """The JSON answer, streamed: at most ``max_bytes``, within ``timeout`` in all."""
        began = self.in_flight = time.monotonic()
        deadline = began + self.timeout
        try:
            with self._http.stream("GET", path, params=params) as answer:
                if answer.status_code in (401, 403):
                    raise ApiError(f"the server refused the API key (HTTP "
                                   f"{answer.status_code}): create one in Dashboard > API Keys")
                if answer.status_code != 200:
                    raise ApiError(f"HTTP {answer.status_code} from {path}")
                if answer.headers.get("Content-Encoding", "identity").lower() != "identity":
                    raise ApiError(f"the server sent a compressed answer to {path} that was "
                                   "not asked for: refused")
                body = bytearray()
                for chunk in answer.iter_raw():  # as it arrives: the deadline is checked
                    body += chunk
                    if len(body) > max_bytes:
                        raise ApiError(f"the answer from {path} is larger than "
                                       f"{max_bytes // 1024} KiB: cut off")
                    if time.monotonic() > deadline:
                        raise ApiError(f"the server took longer than {self.timeout:g} s to "
                                       "answer: cut off")
        except httpx.TimeoutException:
            raise ApiError("the server did not answer in time") from None
        except httpx.HTTPError as exc:  # refused, reset, DNS, TLS, a bad encoding
            raise ApiError(f"cannot reach the server: {type(exc).__name__}") from None
        finally:
            self.in_flight = None
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ApiError(f"malformed answer from {path}: not JSON") from None


def _guid(text: str) -> str:
    return text.replace("-", "").lower()


def _entry_id(entry: object) -> int | None:
    """A usable entry's id; None for anything else (no id, an id out of range, or a
    date that is not one: the cursor and the event are built from both)."""
    if not isinstance(entry, dict):
        return None
    value, date = entry.get("Id"), entry.get("Date")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_ID:
        return None
    if date is not None and (not isinstance(date, str) or len(date) > 64 or
                             _date(date) is None):
        return None
    return value


class ActivityPoller(threading.Thread):
    """
    Polls one server every ``interval`` seconds (``backoff`` doubling up to 5 minutes
    while it fails) and hands batches to the daemon through ``take``.  ``problem`` is
    the last failure, None while the server answers.
    """

    def __init__(self, client: ActivityClient, cursor: Cursor | None, *, name: str,
                 interval: float, page_size: int = 100, start: str = "end",
                 wake: threading.Event | None = None, walk_budget: int = WALK_BUDGET) -> None:
        super().__init__(name=f"poll-{name}", daemon=True)
        self.client, self.interval, self.page_size = client, interval, page_size
        self.walk_budget = walk_budget
        self.start_at_end = start == "end"
        self.problem: str | None = None
        self.polls = 0
        self.malformed = 0  # entries skipped as unusable
        self._cursor = cursor
        self._rewind: Cursor | bool | None = False  # False: none asked
        self._batches: queue.Queue[Batch] = queue.Queue(maxsize=1)
        self._stop_event = threading.Event()
        self._wake = wake
        self._names: dict[str, str] = {}
        self._names_round = -1
        self._lock = threading.Lock()
        self.log = log.get("jfwatch.api")

    # -- the daemon's side --------------------------------------------------------
    def take(self) -> Batch | None:
        try:
            return self._batches.get_nowait()
        except queue.Empty:
            return None

    def rewind(self, cursor: Cursor | None) -> None:
        """Start again from ``cursor`` (the last committed): batches handed out after it
        were not committed."""
        with self._lock:
            self._rewind = cursor
        self.take()  # a batch waiting was built on the old position

    def stop(self) -> None:
        self._stop_event.set()

    def health(self) -> str | None:
        """The last failure; or a request that has waited past twice its deadline (a
        server dripping its headers cannot be cut off from here, but is not read)."""
        started = self.client.in_flight
        waited = 0.0 if started is None else time.monotonic() - started
        if waited > 2 * self.client.timeout + 1:
            return f"a request has waited {waited:.0f} s for the server (deadline " \
                   f"{self.client.timeout:g} s): not answering"
        return self.problem

    # -- the thread ----------------------------------------------------------------
    def run(self) -> None:
        backoff = self.interval
        while not self._stop_event.is_set():
            try:
                self.poll_once()
            except ApiError as exc:
                self._report(str(exc))
                backoff = min(max(backoff, self.interval) * 2, BACKOFF_MAX)
                self._stop_event.wait(backoff)
                continue
            except Exception as exc:  # noqa: BLE001 - a bug must not end polling silently
                self._report(f"unexpected error: {exc!r}")
                self._stop_event.wait(BACKOFF_MAX)
                continue
            self._report(None)
            backoff = self.interval
            self._stop_event.wait(self.interval)
        self.client.close()

    def _report(self, problem: str | None) -> None:
        if problem != self.problem:
            self.problem = problem
            if self._wake is not None:
                self._wake.set()  # the daemon reports health changes

    def poll_once(self) -> None:
        """One round: every entry since the cursor, in batches; or at the first start,
        just where the log ends now (``start: end``)."""
        self.polls += 1
        self._take_rewind()
        if self._cursor is None and self.start_at_end:
            items, _ = self.client.page(0, 1, None)
            newest = items[0] if items else None
            cursor = Cursor(_entry_id(newest) or 0,
                            newest.get("Date") if isinstance(newest, dict) else None)
            self._hand_over(Batch(None, cursor, []))
            return
        for batch in self._walk():
            if not self._hand_over(batch):
                return

    def _take_rewind(self) -> bool:
        with self._lock:
            rewind, self._rewind = self._rewind, False
        if rewind is False:
            return False
        self._cursor = rewind  # type: ignore[assignment]  # a Cursor or None
        return True

    def _hand_over(self, batch: Batch) -> bool:
        """Wait for the daemon to take the batch; False if the walk must stop (asked to
        rewind, or stopping)."""
        while not self._stop_event.is_set():
            if self._take_rewind():
                return False
            try:
                self._batches.put(batch, timeout=0.2)
            except queue.Full:
                continue
            self._cursor = batch.cursor
            if self._wake is not None:
                self._wake.set()
            return True
        return False

    def _walk(self) -> Iterator[Batch]:
        """Batches of new entries, oldest first."""
        after = self._cursor
        last_id = after.last_id if after else 0
        min_date = _date(after.last_date) if after else None
        # Never later than now: a date far ahead (a server's wrong clock, a forged entry)
        # would otherwise hide every entry after it.
        since = None if min_date is None else min(min_date, datetime.now(UTC)) - SLACK
        newest, total = self.client.page(0, 1, since)
        if newest and after is not None and (_entry_id(newest[0]) or 0) < last_id:
            # The server's log starts again at lower ids (a new database): take what is
            # newer than the last entry by date.
            self.log.warning("activity_log_restarted", last_id=last_id,
                             newest_id=_entry_id(newest[0]))
            last_id = 0
        size = min(self.page_size, total)
        start = total - size
        reshuffles = 0
        taken: set[int] = set()
        top = last_id
        # Pages that can hold a round's budget of entries twice over (a walk moved by new
        # entries repeats some): more means pages of nothing new, a server that pages
        # without end.
        pages = 2 * self.walk_budget // self.page_size + MAX_RESHUFFLES
        while size > 0:
            pages -= 1
            if pages < 0:
                raise ApiError("the server's pages hold nothing new without end: not "
                               "Jellyfin's paging")
            if len(taken) >= self.walk_budget:
                self.log.info("activity_backlog_continues", taken=len(taken),
                              left=start + size, next_round_in=self.interval)
                return
            items, now_total = self.client.page(start, size, since)
            if now_total != total:
                # Entries came (or went) since the count: ours moved by as many places.
                reshuffles += 1
                if reshuffles > MAX_RESHUFFLES:
                    raise ApiError("the activity log changes faster than it can be paged")
                start = max(0, start + now_total - total)
                total = now_total
                continue
            reshuffles = 0
            # New: above the cursor the walk started from, and not taken in this walk
            # (a page moved by new entries repeats some; entries of one date may come
            # in any id order).
            fresh = sorted(((i, e) for e in items if (i := _entry_id(e)) is not None
                            and i > last_id and i not in taken), key=lambda pair: pair[0])
            unusable = sum(1 for e in items if _entry_id(e) is None)
            if unusable:
                self.malformed += unusable
                self.log.warning("activity_entries_unusable", count=unusable,
                                 problem="no id, an id out of range, or a date that is not one")
            if fresh:
                entries = [e for _, e in fresh]
                taken.update(i for i, _ in fresh)
                self._resolve_users(entries)
                top = max(top, fresh[-1][0])
                date = entries[-1].get("Date")
                cursor = Cursor(top, date if isinstance(date, str) else
                                (after.last_date if after else None))
                yield Batch(after, cursor, [{k: e[k] for k in (*_KEPT, RESOLVED_USER) if k in e}
                                            for e in entries])
                after = cursor
            if start == 0:
                return
            size = min(self.page_size, start)
            start -= size

    def _resolve_users(self, entries: list[dict[str, Any]]) -> None:
        """Add the name of each entry's user (any UI language): ``Name`` is localised."""
        ids = {_guid(e["UserId"]) for e in entries if isinstance(e.get("UserId"), str)}
        ids.discard("0" * 32)  # failures: no user
        if ids - self._names.keys() and self._names_round != self.polls:
            self._names_round = self.polls  # once a round: a deleted user stays unknown
            try:
                self._names.update(self.client.user_names())
            except ApiError as exc:  # the names fall back to Name's template
                self.log.debug("user_names_unavailable", problem=str(exc))
        for entry in entries:
            uid = entry.get("UserId")
            name = self._names.get(_guid(uid)) if isinstance(uid, str) else None
            if name is not None:
                entry[RESOLVED_USER] = name


def _date(text: str | None) -> datetime | None:
    return parse_iso(text, UTC) if text else None
