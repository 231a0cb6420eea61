"""
Parse Jellyfin's Serilog output: the file sink and the console sink (journald,
syslog, ``docker logs``), including the 2FA plugins that write into the same log.

Templates: ``Jellyfin.Server.Implementations/Users/UserManager.cs`` (AuthenticateUser),
``IPBasedAccessValidationMiddleware``, ``CustomAuthenticationHandler``; plugins
ZL154/JellyfinSecurity (``[2FA]`` lines) and le-firehawk/jellyfin-totp-plugin.
See ``shared/research/logformats.md`` section 1 for sources.

Security model.  ``{UserName}`` is raw attacker input that comes *before* the IP.
The file sink renders strings as ``"value"`` and escapes ``"`` as ``\\"`` but not
newlines; the console sink writes strings raw.  Therefore:

* the IP is only ever taken from the end of the line, where Jellyfin writes it;
* in a quoted stream the suffix ``(IP: "x").`` cannot be typed by an attacker (their
  quote would be escaped), so it is trusted even when the username is mangled;
* a stream learns its header style and quoting from its first lines; a line in the
  other style is a forgery (a newline in a username) and becomes
  ``injection_suspected`` without an address;
* an "Authentication request for" line that does not end as a template ends is held
  as an injection opener; in a quoted stream a continuation line that ends with the
  trusted suffix closes it with the real address.
"""

from __future__ import annotations

import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Final

from jfwatch.events import Event, EventKind, IPAddress
from jfwatch.parsers.base import StreamContext, parse_ip
from jfwatch.parsers.jellyfin_templates import (
    _2FA_ACCEPTED,
    _2FA_REPLAY,
    _ACCESS_TOKEN,
    _AUTH,
    _AUTH_PREFIX,
    _CONSOLE_HEADER,
    _FILE_HEADER,
    _INTERESTING,
    _IP_TEMPLATES,
    _LEGACY_INVALID,
    _LOCKOUT,
    _PREAMBLE,
    _TAIL_EVENT,
    _TOKEN,
    _TOTP_REJECT,
    _file_time,
    _looks_forged,
    _needle_hits,
    _unescape,
)
from jfwatch.redact import clean_user, excerpt
from jfwatch.timestamps import parse_iso

NAME: Final = "jellyfin"

PATTERNS: Final = (
    "denied", "disabled", "remote_forbidden", "parental", "succeeded", "no_username",
    "lockout", "token_invalid", "ip_filter", "legacy_invalid", "twofa_challenge",
    "twofa_accepted", "twofa_banned", "twofa_required", "twofa_rate_limited", "twofa_replay",
    "totp_rejected", "injection",
)
_ORIGINS: Final = {pattern: f"{NAME}.{pattern}" for pattern in PATTERNS}

# A success is held this long (monotonic seconds, live) / this many lines, waiting
# for the TOTP plugin's rejection of the same login.
_HOLD_SECONDS = 2.0
_HOLD_LINES = 64
_TOTP_MATCH_WINDOW = timedelta(seconds=5)


def sniff(line: str) -> bool:
    """Whether a line is Jellyfin's Serilog output, file or console sink (``--format auto``;
    collectors' wrappers are taken off before, ``wrappers.unwrap``)."""
    return bool(_FILE_HEADER.match(line) or _CONSOLE_HEADER.match(line))


@dataclass(slots=True)
class _Header:
    when: datetime
    style: str  # "file" or "console"
    message: str
    printable: bool = False  # the whole line is known to hold no control character


@dataclass(slots=True)
class _Held:
    event: Event
    release_line: int
    deadline: float
    user_id: str | None = None  # from SessionManager's "Creating new access token" line


@dataclass(slots=True)
class _Opener:
    event: Event
    raw_lines: list[str] = field(default_factory=list)


class JellyfinParser:
    """Stateful parser for one Jellyfin log stream."""

    def __init__(self, ctx: StreamContext | None = None, quoting: str = "auto") -> None:
        self.ctx = ctx or StreamContext()
        self._style: str | None = None
        self._quoted: bool | None = {"quoted": True, "raw": False}.get(quoting)
        self._date: date | None = self.ctx.file_date
        self._last_console: datetime | None = None
        self._held: deque[_Held] = deque()
        self._opener: _Opener | None = None
        self._line_no = 0
        self.matched_lines = 0

    # -- stream interface -------------------------------------------------------
    @property
    def holding(self) -> bool:
        return bool(self._held) or self._opener is not None

    def flush(self, *, force: bool) -> list[Event]:
        out: list[Event] = []
        if force and self._opener is not None:
            out.append(self._opener.event)
            self._opener = None
        now = time.monotonic()
        while self._held and (force or self._held[0].deadline <= now):
            out.append(self._held.popleft().event)
        return out

    def feed(self, line: str) -> list[Event]:
        return self._feed(line, has_needle=False)

    def _feed(self, line: str, *, has_needle: bool) -> list[Event]:
        line = line.rstrip()
        self._line_no += 1
        if not line.startswith("["):  # not a header: an exception trace, a username's tail
            return self._continuation(line)
        out = self._close_opener() if self._opener is not None else []
        if self._held and self._held[0].release_line <= self._line_no:
            out += self._age_held()
        if self._style is not None and not has_needle and not _INTERESTING.search(line):
            return out
        header = self._header(line)
        if header is None:
            return out + self._continuation(line)
        pending = len(self._held)
        own = self._message(header, line)
        if own or len(self._held) > pending or self._opener is not None:
            self.matched_lines += 1  # an event now, or one held for a later line
        return out + own

    def feed_block(self, block: bytes, end: int) -> list[Event]:
        """
        Parse many complete lines (valid UTF-8, joined by newlines), ``block[:end]``.

        What feeding each line gives, but only lines holding a needle are decoded and
        looked at in Python; the rest are skipped by a few substring searches over the
        block (this is what makes a backlog fast).  Lines are read one by one only while
        the stream's style is unknown or an injection opener waits for its continuation.
        """
        out: list[Event] = []
        count, find, rfind = block.count, block.find, block.rfind
        pos = 0
        hits = _needle_hits(block, end)
        i, n_hits = 0, len(hits)
        while pos <= end:
            if self._style is None or self._opener is not None:
                stop = find(b"\n", pos, end)
                stop = end if stop == -1 else stop
                out += self.feed(block[pos:stop].decode())
                pos = stop + 1
                continue
            while i < n_hits and hits[i] < pos:
                i += 1  # a second needle on a line already parsed
            if i == n_hits:
                if self._held:  # line numbers only matter to what is held (_HOLD_LINES)
                    self._line_no += count(b"\n", pos, end) + 1
                    out += self._age_held()
                break
            at = hits[i]
            newline = rfind(b"\n", pos, at)
            start = pos if newline == -1 else newline + 1
            if self._held:
                self._line_no += count(b"\n", pos, start)
            stop = find(b"\n", at, end)
            stop = end if stop == -1 else stop
            out += self._feed(block[start:stop].decode(), has_needle=True)
            pos = stop + 1
        return out

    # -- header and time --------------------------------------------------------
    def _header(self, text: str) -> _Header | None:
        if m := _FILE_HEADER.match(text):
            when = _file_time(*m.group("stamp", "zone"))
            if when is None:
                return None
            self._date = when.date()
            return _Header(when, "file", text[m.end():])
        if m := _CONSOLE_HEADER.match(text):
            console_when = self._console_time(m["time"])
            if console_when is None:
                return None
            rest = text[m.end():]
            pre = _PREAMBLE.match(rest)
            return _Header(console_when, "console", rest[pre.end():] if pre else rest)
        return None

    def _console_time(self, clock: str) -> datetime | None:
        """
        A console line has a clock only: the collector's wrapper time (journald, syslog,
        json-file...) when there is one, with its own offset; else the clock on the date
        of the file name or of the lines before, in the configured zone.
        """
        tz = self.ctx.timezone
        outer = self.ctx.outer_time
        if outer is not None:
            self._date = outer.astimezone(tz).date()
            return outer
        if self._date is None:
            self._date = datetime.now(tz).date()
        when = parse_iso(f"{self._date.isoformat()}T{clock[:15]}", tz)
        if when is None:
            return None
        # Console lines carry no date: a clock that jumps back by hours is midnight.
        if self._last_console is not None and self._last_console - when > timedelta(hours=12):
            self._date += timedelta(days=1)
            when += timedelta(days=1)
        self._last_console = when
        return when

    # -- messages -----------------------------------------------------------------
    def _event(self, header: _Header, line: str, pattern: str, kind: EventKind, *,
               ip: IPAddress | None = None, user: str | None = None,
               detail: str | None = None, path: str | None = None) -> Event:
        event = Event(header.when, NAME, kind, _ORIGINS[pattern], "jellyfin", ip, clean_user(user),
                      None, path, None, detail, excerpt(line, printable=header.printable))
        return event

    def _message(self, header: _Header, line: str) -> list[Event]:
        msg = header.message
        if self._style is None:
            self._style = header.style
        forged_style = header.style != self._style

        if msg.startswith(_AUTH_PREFIX):
            if self._quoted is None:
                self._quoted = msg[len(_AUTH_PREFIX):].startswith('"')
            if forged_style:
                return [self._event(header, line, "injection", EventKind.INJECTION_SUSPECTED,
                                    detail="line in another sink's format inside this log")]
            return self._auth(header, line, msg)
        if forged_style:
            return []
        ips = _IP_TEMPLATES[self._quoted]
        if m := ips["no_username"].match(msg):
            return [self._event(header, line, "no_username", EventKind.AUTH_FAILURE,
                                ip=parse_ip(m["ip"]))]
        if m := _LOCKOUT.match(msg):
            return [self._event(header, line, "lockout", EventKind.ACCOUNT_LOCKED,
                                user=_unescape(m["user"]), detail=f"after {m['n']} failures")]
        if m := _TOKEN.match(msg):
            return [self._event(header, line, "token_invalid", EventKind.TOKEN_FAILURE,
                                detail=m["why"])]
        if m := ips["ip_filter"].match(msg):
            return [self._event(header, line, "ip_filter", EventKind.AUTH_BLOCKED,
                                ip=parse_ip(m["ip"]), detail=m["why"], path=m["path"])]
        if m := _LEGACY_INVALID.match(msg):
            return [self._event(header, line, "legacy_invalid", EventKind.AUTH_FAILURE,
                                ip=parse_ip(m["ip"]))]
        if msg.startswith("[2FA]"):
            return self._twofa(header, line, msg, ips)
        if m := _2FA_REPLAY.match(msg):
            return [self._event(header, line, "twofa_replay", EventKind.MFA_FAILURE,
                                detail=f"TOTP replay for user id {m['uid']}")]
        if m := _TOTP_REJECT.match(msg):
            return self._totp_rejected(header, line, m["uid"], m["why"])
        if (m := _ACCESS_TOKEN.match(msg)) and self._held:
            for held in reversed(self._held):
                if held.user_id is None and abs(header.when - held.event.time) <= _TOTP_MATCH_WINDOW:
                    held.user_id = m["uid"].replace("-", "").lower()
                    break
        return []

    def _auth(self, header: _Header, line: str, msg: str) -> list[Event]:
        quoted = bool(self._quoted)
        full, suffix = _AUTH[quoted]
        if m := full.match(msg):
            user = _unescape(m["user"]) if quoted else m["user"]
            if m["succeeded"]:
                return self._success(header, line, user)
            if m["no_ip"]:
                return self._failure(header, line, "denied", EventKind.AUTH_FAILURE, user, None)
            name, kind = _TAIL_EVENT[m["tail"]]
            return self._failure(header, line, name, kind, user, parse_ip(m["ip"]))
        if quoted and (m := suffix.search(msg)):
            # The username was mangled (stray backslash, escaped quotes) but the suffix
            # with unescaped quotes is Jellyfin's own: count the failure, flag the line.
            name, kind = _TAIL_EVENT[m["tail"]]
            ip = parse_ip(m["ip"])
            return [self._event(header, line, name, kind, ip=ip),
                    self._event(header, line, "injection", EventKind.INJECTION_SUSPECTED,
                                ip=ip, detail="username breaks the log template")]
        self._opener = _Opener(self._event(
            header, line, "injection", EventKind.INJECTION_SUSPECTED,
            detail="authentication line does not end as Jellyfin writes it"))
        return []

    def _success(self, header: _Header, line: str, user: str) -> list[Event]:
        event = self._event(header, line, "succeeded", EventKind.AUTH_SUCCESS, user=user)
        # Held: the TOTP plugin may reject this very login on the next lines.
        self._held.append(_Held(event, self._line_no + _HOLD_LINES,
                                time.monotonic() + _HOLD_SECONDS))
        return self._injection_hint(header, line, user, None)

    def _failure(self, header: _Header, line: str, name: str, kind: EventKind, user: str,
                 ip: IPAddress | None) -> list[Event]:
        event = self._event(header, line, name, kind, ip=ip, user=user)
        return [event, *self._injection_hint(header, line, user, ip)]

    def _injection_hint(self, header: _Header, line: str, user: str,
                        ip: IPAddress | None) -> list[Event]:
        if not _looks_forged(user):
            return []
        return [self._event(header, line, "injection", EventKind.INJECTION_SUSPECTED, ip=ip,
                            user=user, detail="username contains log template text")]

    def _continuation(self, line: str) -> list[Event]:
        """Exception traces and the tail of a username that contained a newline."""
        if self._opener is None:
            return []
        self._opener.raw_lines.append(line)
        if self._quoted and (m := _AUTH[True][1].search(line)):
            name, kind = _TAIL_EVENT[m["tail"]]
            ip = parse_ip(m["ip"])
            opener = self._opener.event
            self._opener = None
            counted = replace(opener, kind=kind, origin=f"{NAME}.{name}", ip=ip, detail=None)
            return [counted, replace(opener, ip=ip, detail="username contains a line break")]
        if len(self._opener.raw_lines) > 64:
            return self._close_opener()
        return []

    def _close_opener(self) -> list[Event]:
        if self._opener is None:
            return []
        event = self._opener.event
        self._opener = None
        return [event]

    def _twofa(self, header: _Header, line: str, msg: str,
               ips: dict[str, re.Pattern[str]]) -> list[Event]:
        if m := ips["twofa_challenge"].match(msg):
            return [self._event(header, line, "twofa_challenge", EventKind.MFA_CHALLENGE,
                                ip=parse_ip(m["ip"]), user=_unescape(m["user"]))]
        if m := _2FA_ACCEPTED.match(msg):
            return [self._event(header, line, "twofa_accepted", EventKind.MFA_SUCCESS,
                                user=_unescape(m["user"]), detail=m["method"])]
        if m := ips["twofa_banned"].match(msg):
            return [self._event(header, line, "twofa_banned", EventKind.AUTH_BLOCKED,
                                ip=parse_ip(m["ip"]),
                                detail=f"2FA plugin ban{m['rest'][:120]}".rstrip())]
        if m := ips["twofa_required"].match(msg):
            return [self._event(header, line, "twofa_required", EventKind.MFA_CHALLENGE,
                                user=_unescape(m["user"]))]
        if m := ips["twofa_rate_limited"].match(msg):
            return [self._event(header, line, "twofa_rate_limited", EventKind.MFA_FAILURE,
                                ip=parse_ip(m["ip"]), detail="app-password attempts rate-limited")]
        return []

    def _totp_rejected(self, header: _Header, line: str, uid: str, why: str) -> list[Event]:
        # Take back the held success of this user id (known from the access-token line),
        # else the most recent one without an id: the plugin turned it into a 401.
        uid_key = uid.replace("-", "").lower()
        candidates = [i for i, h in enumerate(self._held) if h.user_id == uid_key] or \
            [i for i, h in enumerate(self._held) if h.user_id is None]
        for i in reversed(candidates):
            held = self._held[i].event
            if abs(header.when - held.time) <= _TOTP_MATCH_WINDOW:
                del self._held[i]
                return [replace(held, kind=EventKind.MFA_FAILURE, origin=f"{NAME}.totp_rejected",
                                detail=f"TOTP {why}", excerpt=excerpt(line))]
        return [self._event(header, line, "totp_rejected", EventKind.MFA_FAILURE,
                            detail=f"user id {uid}: TOTP {why}")]

    def _age_held(self) -> list[Event]:
        """Release held successes that no TOTP rejection followed within _HOLD_LINES lines."""
        out: list[Event] = []
        while self._held and self._held[0].release_line <= self._line_no:
            out.append(self._held.popleft().event)
        return out


def create(ctx: StreamContext) -> JellyfinParser:
    """Registry factory."""
    return JellyfinParser(ctx, quoting=ctx.quoting)
