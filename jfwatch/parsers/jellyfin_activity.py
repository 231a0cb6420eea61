"""
Parse Jellyfin's Activity Log entries, one JSON object per line: what
``GET /System/ActivityLog/Entries`` returns in ``Items`` (``jq -c '.Items[]'`` of a saved
answer); the ``jellyfin_api`` source hands its entries over as records (``feed_record``).

Fields (``Jellyfin.Server.Implementations/Events/Consumers``): ``Id``, ``Type``, ``Date``
(UTC), ``Name``, ``ShortOverview``, ``UserId``.  The address is in ``ShortOverview``,
after a label in the server's UI language ("IP address: 203.0.113.5", "IP-Adresse: ...",
"{0}: IP ئادرىسى"), so it is found by its syntax, never by the label, and never in
``Name``: a failure's ``Name`` carries the username the client sent (attacker text).
The user of a success or lockout comes from ``jfwatch.user``, which the source resolves
from ``UserId`` (any language); else from ``Name`` by the server's template (English
unless configured).
"""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any, Final

import orjson

from jfwatch.events import Event, EventKind, IPAddress
from jfwatch.parsers.base import StatelessParser, StreamContext, json_object, parse_ip
from jfwatch.redact import clean_user, excerpt
from jfwatch.sources.records import RESOLVED_USER, Record
from jfwatch.timestamps import parse_iso

NAME: Final = "jellyfin_activity"
PATTERNS: Final = ("failed", "succeeded", "locked_out", "injection")
# The entry types that are security events, and their kinds.
_KINDS: Final = {
    "AuthenticationFailed": ("failed", EventKind.AUTH_FAILURE),
    "AuthenticationSucceeded": ("succeeded", EventKind.AUTH_SUCCESS),
    "UserLockedOut": ("locked_out", EventKind.ACCOUNT_LOCKED),
}
# en-US templates of the entries' Name ({0}: the username); other languages are set
# with the source's ``name_templates``.
DEFAULT_TEMPLATES: Final = {
    "AuthenticationFailed": "Failed login attempt from {0}",
    "AuthenticationSucceeded": "{0} successfully authenticated",
    "UserLockedOut": "User {0} has been locked out",
}
_BREAKS: Final = str.maketrans({"\n": "\\n", "\r": "\\r", "\t": "\\t"})
# Address-shaped runs: IPv4, IPv6 (also IPv4-mapped); validated by parse_ip.
_ADDRESS_RUN = re.compile(r"[0-9A-Fa-f]*[:.][0-9A-Fa-f:.]*")


def sniff(line: str) -> bool:
    return (line.startswith("{") and '"ShortOverview"' in line) or \
        (line.startswith('{"Id"') and '"Type"' in line)


def address_in(text: str) -> IPAddress | None:
    """The one address written in ``text`` (any language around it), or None when there
    is none or more than one."""
    # A label's own colon may follow the address ("{0}: IP ..."): tried without it too.
    found = {ip for run in _ADDRESS_RUN.findall(text)
             if (ip := parse_ip(run) or parse_ip(run[:-1])) is not None}
    return found.pop() if len(found) == 1 else None


def user_in(name: str, template: str) -> str | None:
    """The ``{0}`` of ``template`` in ``name``, or None when ``name`` is not of it."""
    before, marker, after = template.partition("{0}")
    if not marker or len(name) <= len(before) + len(after) or \
            not (name.startswith(before) and name.endswith(after)):
        return None
    return name[len(before):len(name) - len(after)]


class ActivityParser(StatelessParser):
    def __init__(self, ctx: StreamContext) -> None:
        super().__init__(ctx)
        self.templates = {**DEFAULT_TEMPLATES, **ctx.activity_templates}

    def feed(self, line: str) -> list[Event]:
        """An entry saved as a JSON line (``jfwatch parse`` of an exported Activity Log)."""
        entry = json_object(line)
        return [] if entry is None else self.feed_record(entry, line)

    def feed_record(self, entry: Record, text: str | None = None) -> list[Event]:
        """An entry as the API source hands it over (``text``: the line it was read
        from, if any, for the excerpt)."""
        found = _KINDS.get(entry.get("Type"))  # type: ignore[arg-type]
        when = entry.get("Date")
        when = parse_iso(when, UTC) if isinstance(when, str) else None
        if found is None or when is None:
            return []
        pattern, kind = found
        overview = entry.get("ShortOverview")
        ip = address_in(overview) if isinstance(overview, str) else None
        raw_user = self._user(entry, entry["Type"])
        # Names come out of JSON, where line breaks and tabs survive (a log line has none).
        user = clean_user(None if raw_user is None else raw_user.translate(_BREAKS))
        text = excerpt(text if text is not None else orjson.dumps(entry).decode())
        events = [Event(when, NAME, kind, f"{NAME}.{pattern}", "jellyfin", ip, user,
                        excerpt=text)]
        if raw_user is not None and not raw_user.isprintable():
            # A name with line breaks or bidi controls: written to forge log lines.
            events.append(Event(when, NAME, EventKind.INJECTION_SUSPECTED, f"{NAME}.injection",
                                "jellyfin", ip, user, detail="username holds control characters",
                                excerpt=text))
        self.matched_lines += 1
        return events

    def _user(self, entry: dict[str, Any], entry_type: str) -> str | None:
        resolved = entry.get(RESOLVED_USER)
        if isinstance(resolved, str) and resolved:
            return resolved
        name = entry.get("Name")
        return user_in(name, self.templates[entry_type]) if isinstance(name, str) else None


def create(ctx: StreamContext) -> ActivityParser:
    return ActivityParser(ctx)
