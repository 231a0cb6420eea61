"""
A small server on 127.0.0.1 that answers like Jellyfin's ActivityLogController and
UserController (``jfwatch demo`` serves its Activity Log with it; the tests add faults
to it in ``tests/activity_server.py``):
``GET /System/ActivityLog/Entries`` (``startIndex``, ``limit``, ``minDate``; newest first
by date, as ``ActivityManager.GetPagedResultAsync`` orders them) and ``GET /Users``,
with the field names and types of Jellyfin's DTOs.  Only ``Authorization: MediaBrowser
... Token="<key>"`` is accepted (12.0's default); anything else gets 401.
``stop()`` and ``start()`` again serve on the same port.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

EMPTY_GUID = "00000000000000000000000000000000"
_TOKEN = re.compile(r'Token="([^"]*)"')
LABELS = {"en": "IP address: {0}", "de": "IP-Adresse: {0}", "fr": "Adresse IP : {0}"}


def _jellyfin_date(when: datetime) -> str:
    """How Jellyfin writes a UTC DateTime: seven fraction digits and a Z."""
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


class ActivityLogServer:
    def __init__(self, key: str = "0123456789abcdef0123456789abcdef") -> None:
        self.key = key
        self.entries: list[dict[str, Any]] = []
        self.users: dict[str, str] = {}  # id -> name
        self.lock = threading.Lock()
        self.requests: list[str] = []  # paths with queries, as asked
        self.auth_headers: list[str] = []
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._next_id = 1
        self.clock = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- content -------------------------------------------------------------------
    def user(self, name: str) -> str:
        uid = hashlib.md5(name.encode(), usedforsecurity=False).hexdigest()
        self.users[uid] = name
        return uid

    def add(self, kind: str, user: str, ip: str | None, *, lang: str = "en",
            when: datetime | None = None) -> int:
        """An entry as Jellyfin's consumers write it; returns its Id."""
        with self.lock:
            if when is None:
                self.clock += timedelta(seconds=1)
                when = self.clock
            label = LABELS[lang].format(ip if ip is not None else "")
            if kind == "AuthenticationFailed":
                name, overview, uid, severity = (f"Failed login attempt from {user}", label,
                                                  EMPTY_GUID, "Error")
            elif kind == "AuthenticationSucceeded":
                name, overview, uid, severity = (f"{user} successfully authenticated", label,
                                                 self.user(user), "Information")
            elif kind == "UserLockedOut":
                name, overview, uid, severity = (f"User {user} has been locked out", None,
                                                 self.user(user), "Error")
            else:
                name, overview, uid, severity = (f"{user} is online from Firefox", label,
                                                 self.user(user), "Information")
            entry_id = self._next_id
            entry: dict[str, Any] = {"Id": entry_id, "Name": name, "Overview": None,
                     "ShortOverview": overview, "Type": kind, "ItemId": None,
                     "Date": _jellyfin_date(when), "UserId": uid, "UserPrimaryImageTag": None,
                     "Severity": severity}
            self._next_id += 1
            self.entries.append(entry)
            return entry_id

    def reset_database(self) -> None:
        """A reinstalled server: ids start again at 1."""
        with self.lock:
            self.entries.clear()
            self._next_id = 1

    # -- serving -------------------------------------------------------------------
    def start(self) -> ActivityLogServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def do_GET(self) -> None:
                server.requests.append(self.path)
                server.auth_headers.append(self.headers.get("Authorization", ""))
                server.handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Answer one GET as Jellyfin would (401 without the key)."""
        if not self.authorized(request):
            return self.send(request, 401, b"")
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        body: object
        if url.path == "/System/ActivityLog/Entries":
            body = self.page(query)
        elif url.path == "/Users":
            body = [{"Name": n, "Id": i, "HasPassword": True} for i, n in self.users.items()]
        else:
            return self.send(request, 404, b"")
        return self.send(request, 200, json.dumps(body).encode())

    def authorized(self, request: BaseHTTPRequestHandler) -> bool:
        token = _TOKEN.search(request.headers.get("Authorization", ""))
        return token is not None and token.group(1) == self.key

    def send(self, request: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def page(self, query: dict[str, str]) -> dict[str, Any]:
        start, limit = int(query.get("startIndex", 0)), query.get("limit")
        with self.lock:
            rows = list(self.entries)
        if "minDate" in query:
            since = datetime.fromisoformat(query["minDate"].replace("Z", "+00:00"))
            rows = [e for e in rows if _parse(e["Date"]) >= since]
        rows.sort(key=lambda e: _parse(e["Date"]), reverse=True)  # stable: ties by insertion
        items = rows[start:] if limit is None else rows[start:start + int(limit)]
        return {"Items": items, "TotalRecordCount": len(rows), "StartIndex": start}


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text[:26] + "+00:00")
