"""Parse Caddy's JSON access log (``http.log.access*`` loggers)."""

from __future__ import annotations

from typing import Final

from jfwatch.events import Event
from jfwatch.parsers._http import PATTERNS as HTTP_PATTERNS
from jfwatch.parsers._http import Request, to_event
from jfwatch.parsers.base import StatelessParser, StreamContext, from_epoch, json_object, parse_ip

NAME: Final = "caddy"
PATTERNS: Final = HTTP_PATTERNS


def sniff(line: str) -> bool:
    return line.startswith("{") and '"http.log.access' in line


class CaddyParser(StatelessParser):
    def parse(self, line: str) -> Event | None:
        doc = json_object(line)
        if doc is None or not str(doc.get("logger", "")).startswith("http.log.access"):
            return None
        request = doc.get("request")
        status, ts = doc.get("status"), doc.get("ts")
        if not (isinstance(request, dict) and isinstance(status, int)
                and isinstance(ts, int | float)):
            return None
        method, uri = request.get("method"), request.get("uri")
        if not (isinstance(method, str) and isinstance(uri, str)):
            return None
        # client_ip is the real client when Caddy's trusted_proxies is set, else it
        # equals remote_ip; both are written by Caddy, never taken from a header as-is.
        raw_ip = request.get("client_ip") or request.get("remote_ip")
        ip = parse_ip(raw_ip) if isinstance(raw_ip, str) else None
        req = Request(from_epoch(float(ts)), ip, method, uri, status)
        return to_event(NAME, req, line, token_failures=self.ctx.proxy_token_failures)


def create(ctx: StreamContext) -> CaddyParser:
    return CaddyParser(ctx)
