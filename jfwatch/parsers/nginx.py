"""Parse nginx access logs: ``combined``, vhost-prefixed combined, and Nginx Proxy Manager."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from jfwatch.events import Event
from jfwatch.parsers._http import PATTERNS as HTTP_PATTERNS
from jfwatch.parsers._http import Request, to_event
from jfwatch.parsers.base import StatelessParser, StreamContext, parse_ip

NAME: Final = "nginx"
PATTERNS: Final = HTTP_PATTERNS

# $remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent ...
# The address is the first field (optionally after "$host:$port "), where nginx writes
# it; nginx escapes '"' inside variables as \x22, so the request cannot leak out of its
# quotes.
COMBINED = re.compile(
    r'^(?:\S+ )?(?P<ip>[0-9A-Fa-f:.]+) - \S+ \[(?P<ts>[^\]]+)\] '
    r'"(?P<method>[A-Za-z]+) (?P<path>\S+)(?: [^"]*)?" (?P<status>\d{3}) (?:\d+|-)'
)
# NPM: [time] CACHE STATUS STATUS - METHOD scheme host "path" [Client IP] ...
_NPM = re.compile(
    r'^\[(?P<ts>[^\]]+)\] \S+ (?P<status>\d{3}) (?:\d{3}|-) - (?P<method>[A-Z]+) \S+ \S+ '
    r'"(?P<path>[^"]*)" \[Client (?P<ip>[0-9A-Fa-f:.]+)\]'
)


def parse_clf_time(text: str) -> datetime | None:
    """``04/Dec/2019:21:45:47 -0500`` (nginx $time_local)."""
    try:
        return datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")
    except ValueError:
        return None


# Traefik's CLF is combined plus ' <RequestCount> "<RouterName>" "<ServiceURL>" <Duration>ms':
# such a line is Traefik's, not nginx's (auto-detection must not claim it twice).
TRAEFIK_TAIL = re.compile(r' \d+ "[^"]*" "[^"]*" \d+ms$')


def sniff(line: str) -> bool:
    return bool((COMBINED.match(line) and not TRAEFIK_TAIL.search(line)) or _NPM.match(line))


class NginxParser(StatelessParser):
    def parse(self, line: str) -> Event | None:
        m = COMBINED.match(line) or _NPM.match(line)
        if m is None:
            return None
        when = parse_clf_time(m["ts"])
        if when is None:
            return None
        req = Request(when, parse_ip(m["ip"]), m["method"], m["path"], int(m["status"]))
        return to_event(NAME, req, line, token_failures=self.ctx.proxy_token_failures)


def create(ctx: StreamContext) -> NginxParser:
    return NginxParser(ctx)
