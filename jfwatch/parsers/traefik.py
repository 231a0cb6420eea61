"""Parse Traefik access logs: CLF (combined plus router fields) and JSON."""

from __future__ import annotations

from typing import Final

from jfwatch.events import Event
from jfwatch.parsers._http import PATTERNS as HTTP_PATTERNS
from jfwatch.parsers._http import Request, to_event
from jfwatch.parsers.base import (
    StatelessParser,
    StreamContext,
    json_object,
    parse_host_port,
    parse_ip,
)
from jfwatch.parsers.nginx import COMBINED, TRAEFIK_TAIL, parse_clf_time
from jfwatch.timestamps import parse_iso

NAME: Final = "traefik"
PATTERNS: Final = HTTP_PATTERNS



def sniff(line: str) -> bool:
    if line.startswith("{"):
        return '"RequestPath"' in line and '"DownstreamStatus"' in line
    return bool(TRAEFIK_TAIL.search(line)) and bool(COMBINED.match(line))


class TraefikParser(StatelessParser):
    def parse(self, line: str) -> Event | None:
        req = self._json(line) if line.startswith("{") else self._clf(line)
        if req is None:
            return None
        return to_event(NAME, req, line, token_failures=self.ctx.proxy_token_failures)

    def _clf(self, line: str) -> Request | None:
        m = COMBINED.match(line)
        if m is None or not TRAEFIK_TAIL.search(line):
            return None
        when = parse_clf_time(m["ts"])
        if when is None:
            return None
        return Request(when, parse_ip(m["ip"]), m["method"], m["path"], int(m["status"]))

    def _json(self, line: str) -> Request | None:
        doc = json_object(line)
        if doc is None:
            return None
        status = doc.get("DownstreamStatus", doc.get("OriginStatus"))
        method, path = doc.get("RequestMethod"), doc.get("RequestPath")
        stamp = doc.get("StartUTC") or doc.get("time")
        if not (isinstance(status, int) and isinstance(method, str) and isinstance(path, str)
                and isinstance(stamp, str)):
            return None
        when = parse_iso(stamp, self.ctx.timezone)
        if when is None:
            return None
        host = doc.get("ClientHost")
        ip = parse_ip(host) if isinstance(host, str) else None
        if ip is None and isinstance(doc.get("ClientAddr"), str):
            ip = parse_host_port(doc["ClientAddr"])
        return Request(when, ip, method, path, status)


def create(ctx: StreamContext) -> TraefikParser:
    return TraefikParser(ctx)
