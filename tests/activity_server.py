"""
The demo's Jellyfin Activity Log server with the faults a test sets: ``delay`` (seconds
before each answer), ``broken`` (malformed JSON), ``status`` (an HTTP error),
``on_page`` (called before each page after the first is answered: entries added while a
client pages), ``hostile`` (the body of every page answer, in pieces, from the query:
what a hostile or intercepted server sends; ``gzip``: sent as gzip-encoded), ``drip``
(seconds between the bytes of an answer's body; ``drip_head``: of its status line and
headers too).  Not shipped: only the plain server is in the wheel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jfwatch.engine import demo_server
from jfwatch.engine.demo_server import EMPTY_GUID, LABELS

__all__ = ["EMPTY_GUID", "LABELS", "ActivityLogServer"]


class ActivityLogServer(demo_server.ActivityLogServer):
    def __init__(self, key: str = "0123456789abcdef0123456789abcdef") -> None:
        super().__init__(key)
        self.delay = 0.0
        self.broken = False
        self.status: int | None = None
        self.on_page: Callable[[int], None] | None = None
        self.hostile: Callable[[dict[str, str]], Iterable[bytes]] | None = None
        self.drip = 0.0
        self.drip_head = False  # the status line and headers dripped too
        self.gzip = False  # the hostile pieces are sent as gzip-encoded

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        if self.delay:
            time.sleep(self.delay)
        if not self.authorized(request):
            return self.send(request, 401, b"")
        if self.status is not None:
            return self.send(request, self.status, b"error")
        url = urlsplit(request.path)
        if url.path == "/System/ActivityLog/Entries" and self.hostile is not None:
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            return self._send_pieces(request, self.hostile(query))
        if self.broken and url.path in ("/System/ActivityLog/Entries", "/Users"):
            return self.send(request, 200, b'{"Items": [')
        return super().handle(request)

    def page(self, query: dict[str, str]) -> dict[str, Any]:
        if int(query.get("startIndex", 0)) and self.on_page is not None:
            self.on_page(int(query["startIndex"]))
        return super().page(query)

    def _send_pieces(self, request: BaseHTTPRequestHandler, pieces: Iterable[bytes]) -> None:
        request.send_response(200)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        if self.gzip:
            request.send_header("Content-Encoding", "gzip")
        request.end_headers()  # no length: read until the connection closes
        request.close_connection = True
        try:
            for piece in pieces:
                request.wfile.write(piece)
        except OSError:
            pass  # the client cut it off

    def send(self, request: BaseHTTPRequestHandler, status: int, data: bytes) -> None:
        if not self.drip:
            return super().send(request, status, data)
        head = (f"HTTP/1.1 {status} OK\r\nContent-Length: {len(data)}\r\n"
                "Content-Type: application/json\r\n\r\n").encode()
        request.close_connection = True
        try:
            if not self.drip_head:
                request.wfile.write(head)
            for byte in (head if self.drip_head else b"") + data:
                request.wfile.write(bytes([byte]))
                time.sleep(self.drip)
        except OSError:
            pass
        return None
