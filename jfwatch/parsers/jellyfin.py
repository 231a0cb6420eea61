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

import bisect
import contextlib
import re
import time
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from typing import Final

from jfwatch.events import Event, EventKind, IPAddress
from jfwatch.parsers._common import BulkResult, StreamContext, parse_ip, parse_iso
from jfwatch.parsers.redact import clean_user, excerpt

NAME: Final = "jellyfin"

# Wrappers put around the console sink by the log collector.
_RFC3339_WRAPPER = re.compile(
    r"^(?P<wts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)"
    r" (?:\S+ [\w./-]+(?:\[\d+\])?: )?(?P<rest>\[.*)$"
)
_BSD_WRAPPER = re.compile(
    r"^(?P<mon>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) +(?P<day>\d{1,2}) "
    r"\d{2}:\d{2}:\d{2} \S+ [\w./-]+(?:\[\d+\])?: (?P<rest>\[.*)$"
)
_COMPOSE_WRAPPER = re.compile(r"^[\w.-]+\s*\| (?P<rest>.*)$")
_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)}

# logging.json: "[{Timestamp:yyyy-MM-dd HH:mm:ss.fff zzz}] [{Level:u3}] [{ThreadId}] {SourceContext}: "
# and the console's "[{Timestamp:HH:mm:ss(.fff)}]".  ThreadId and SourceContext are
# optional (older default templates, see 20250420060000_CreateUserLoggingConfigFile.cs).
# Level, thread and source context are matched over, not kept: no event carries them.
_FILE_HEADER = re.compile(
    r"^\[(?P<date>\d{4}-\d{2}-\d{2}) (?P<time>\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?) "
    r"(?P<zone>[+-]\d{2}:\d{2})\] \[[A-Z]{3}\] (?:\[?\d+\]? )?(?:[A-Za-z_][\w.]*\w: ?)?"
)
_CONSOLE_HEADER = re.compile(
    r"^\[(?P<time>\d{2}:\d{2}:\d{2}(?:\.\d{1,7})?)\] \[[A-Z]{3}\] "
)
_PREAMBLE = re.compile(r"^(?:\[?\d+\]? )?(?:[A-Za-z_][\w.]*\w: ?)?")

_IP = r"(?P<ip>[^\s\"()]+)"
# A quoted value ends at the first unescaped quote (unrolled: one pass, no backtracking).
_Q_VALUE = r'"(?P<user>[^"\\]*(?:\\.[^"\\]*)*)"'
_R_VALUE = r"(?P<user>.*)"

# (pattern, kind, message tail after the username, tail of the trusted suffix)
_AUTH_TEMPLATES: Final = (
    ("denied", EventKind.AUTH_FAILURE, r" has been denied \(IP: {ip}\)\.$"),
    ("disabled", EventKind.AUTH_BLOCKED,
     r" has been denied because this account is currently disabled \(IP: {ip}\)\.$"),
    ("remote_forbidden", EventKind.AUTH_BLOCKED,
     r" forbidden: remote access disabled and user not in local network \(IP: {ip}\)\.$"),
    ("parental", EventKind.AUTH_BLOCKED,
     r" is not allowed at this time due parental restrictions \(IP: {ip}\)\.$"),
)
_AUTH_PREFIX: Final = "Authentication request for "
# Every message _message() looks at contains one of these needles, and a line without
# any is skipped: by a substring search over whole blocks in the bulk path, by
# _INTERESTING line by line.  Each needle is a pass over every block, and a pass costs
# less the longer the needle and the rarer its letters (bytes.find skips ahead by the
# needle's length wherever a byte is not in it): "unsuccessful login attempts" for a
# lockout is two thirds of "Disabling user".  "uthenticatio" serves the three
# authentication templates ("Authentication request", "CustomAuthentication",
# "Rejecting authentication for user").
_NEEDLES: Final = (
    b"uthenticatio", b"unsuccessful login attempts", b"due to IP filtering rule, reason: ",
    b"Invalid username or password entered", b"[2FA]", b"Replay attempt detected for user '",
    b"Creating new access token for user ",
)
_INTERESTING = re.compile("|".join(re.escape(n.decode()) for n in _NEEDLES))


def _needle_hits(block: bytes, end: int | None = None) -> list[int]:
    """Every position of every needle in ``block[:end]``, in order (bytes.find is a fast search)."""
    hits: list[int] = []
    find = block.find
    end = len(block) if end is None else end
    for needle in _NEEDLES:
        at = find(needle, 0, end)
        while at != -1:
            hits.append(at)
            at = find(needle, at + 1, end)
    hits.sort()
    return hits


def _compile(quoted: bool) -> list[tuple[str, EventKind, re.Pattern[str], re.Pattern[str]]]:
    ip = f'"{_IP}"' if quoted else _IP
    value = _Q_VALUE if quoted else _R_VALUE
    out = []
    for name, kind, tail in _AUTH_TEMPLATES:
        full = re.compile("^" + re.escape(_AUTH_PREFIX) + value + tail.format(ip=ip))
        suffix = re.compile(tail.format(ip=ip))
        out.append((name, kind, full, suffix))
    return out


_TEMPLATES = {True: _compile(True), False: _compile(False)}
_Q_USER = re.compile(re.escape(_AUTH_PREFIX) + _Q_VALUE)
_SUCCEEDED_TAIL: Final = " has succeeded."
# The file sink's denied / disabled / succeeded lines with a username that needs no
# unescaping: header, preamble and message in one match (see _fast_auth).
_FAST_FILE_AUTH = re.compile(
    _FILE_HEADER.pattern + re.escape(_AUTH_PREFIX) + r'"(?P<user>[^"\\]*)" (?:(?P<succeeded>has succeeded\.)|'
    r'has been denied (?:(?P<disabled>because this account is currently disabled) )?'
    r'\(IP: "(?P<ip>[!#-\'*-~]+)"\)\.)$',
    # ASCII classes are a quarter cheaper to match; a line with other digits, word or
    # space characters in these places simply takes the general path (which decides).
    # Outside the username, a matching line has printable ASCII only: the address is
    # any of it but a space, quote or parenthesis, as _IP in a quoted stream.
    re.ASCII,
)
_RAW_SUCCEEDED = re.compile("^" + re.escape(_AUTH_PREFIX) + _R_VALUE + r" has succeeded\.$")
def _ip_patterns(q: str) -> dict[str, re.Pattern[str]]:
    """Templates that carry an address; ``q`` is the quote the stream's sink writes.

    In a quoted (file sink) stream every address is inside quotes that an attacker
    cannot type, so a line forged through a newline in a username never yields one.
    """
    ip = f"{q}{_IP}{q}"
    return {
        "no_username": re.compile(
            rf"^Authentication request without username has been denied \(IP: {ip}\)\.$"),
        "ip_filter": re.compile(rf'^Blocking request to "?(?P<path>[^"\s]*)"? by {ip} '
                                r"due to IP filtering rule, reason: (?P<why>\w+)$"),
        # ZL154/JellyfinSecurity: "[2FA] Issuing challenge for {Name} from {Ip}",
        # "[2FA] Banned IP {Ip} for {Hours}h ({Note})", "[2FA] App-password attempt
        # rate-limited for IP {Ip}".
        "twofa_challenge": re.compile(rf'^\[2FA\] Issuing challenge for "?(?P<user>.*?)"? from {ip}$'),
        "twofa_banned": re.compile(rf"^\[2FA\] Banned IP {ip} for (?P<hours>\d+)h \(.*\)$"),
        "twofa_rate_limited": re.compile(rf"^\[2FA\] App-password attempt rate-limited for IP {ip}$"),
    }


_IP_TEMPLATES = {True: _ip_patterns('"'), False: _ip_patterns(""), None: _ip_patterns('"?')}
_LOCKOUT = re.compile(r'^Disabling user "?(?P<user>.*?)"? due to (?P<n>\d+) unsuccessful login attempts\.$')
_TOKEN = re.compile(r'^"?CustomAuthentication"? was not authenticated\. Failure message: "?(?P<why>.*?)"?$')
_LEGACY_INVALID = re.compile(r'^Error processing request: "?Invalid username or password entered"?\. URL:')
_2FA_ACCEPTED = re.compile(r'^\[2FA\] "?(?P<user>.*?)"? 2FA code accepted \("?(?P<method>\w+)"?\)$')
_2FA_REPLAY = re.compile(r"^Replay attempt detected for user '(?P<uid>[0-9a-fA-F-]{32,36})'")
# le-firehawk/jellyfin-totp-plugin rejects *after* core logged "has succeeded".
# SessionManager, right after a success: ties the username to the user id that the TOTP
# plugin's rejection names.
_ACCESS_TOKEN = re.compile(r"^Creating new access token for user (?P<uid>[0-9a-fA-F-]{32,36})$")
_TOTP_REJECT = re.compile(
    r"^Rejecting authentication for user (?P<uid>[0-9a-fA-F-]{32,36}): TOTP (?P<why>.*)$"
)

# Fragments of Jellyfin's own templates inside a username mean someone is trying to
# forge a line.
_FORGERY_HINT = re.compile(r"\(IP:|has been denied|has succeeded|unsuccessful login|[\x00-\x1f]")

PATTERNS: Final = (
    "denied", "disabled", "remote_forbidden", "parental", "succeeded", "no_username",
    "lockout", "token_invalid", "ip_filter", "legacy_invalid", "twofa_challenge",
    "twofa_accepted", "twofa_banned", "twofa_rate_limited", "twofa_replay",
    "totp_rejected", "injection",
)
_ORIGINS: Final = {pattern: f"{NAME}.{pattern}" for pattern in PATTERNS}

# A success is held this long (monotonic seconds, live) / this many lines, waiting
# for the TOTP plugin's rejection of the same login.
_HOLD_SECONDS = 2.0
_HOLD_LINES = 64
_TOTP_MATCH_WINDOW = timedelta(seconds=5)


def sniff(line: str) -> bool:
    """Whether a line looks like Jellyfin's Serilog output (for ``--format auto``)."""
    return _split(line) is not None


@dataclass(slots=True)
class _Header:
    when: datetime
    style: str  # "file" or "console"
    message: str
    printable: bool = False  # the whole line is known to hold no control character
    time_text: str | None = None  # when.isoformat(), for a file-sink header (_file_time)


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


def _split(line: str) -> tuple[str, str | None] | None:
    """Strip a collector wrapper; return (serilog line, wrapper timestamp or month/day)."""
    if line.startswith("["):
        return line, None
    if m := _RFC3339_WRAPPER.match(line):
        return m["rest"], m["wts"]
    if m := _BSD_WRAPPER.match(line):
        return m["rest"], f"{m['mon']} {m['day']}"
    if (m := _COMPOSE_WRAPPER.match(line)) and m["rest"].startswith("["):
        return m["rest"], None
    return None


# Only two things outlive their line: a success, held for _HOLD_LINES lines in case
# the TOTP plugin rejects it, and an injection opener, open for at most 64
# continuation lines.  Both come from "Authentication request" lines that are not a
# plain failure.  A stream may be cut after more lines free of those than that.
QUIET_LINES: Final = 2 * _HOLD_LINES
_AUTH_NEEDLE: Final = _AUTH_PREFIX.encode()


def _lasting_lines(window: bytes) -> list[int]:
    """Positions of the lines in ``window`` whose effect may outlive them (see above)."""
    out: list[int] = []
    find = window.find
    at = find(_AUTH_NEEDLE)
    while at != -1:
        start = window.rfind(b"\n", 0, at) + 1
        end = find(b"\n", at)
        end = len(window) if end == -1 else end
        m = _FAST_FILE_AUTH.match(window[start:end].decode(errors="replace"))
        if m is None or m["succeeded"] is not None:
            out.append(start)
        at = find(_AUTH_NEEDLE, end)
    return out


def quiet_cut(window: bytes, target: int) -> tuple[int, str | None] | None:
    """
    Where a file-sink stream may be cut so that a parser resumed there
    (``JellyfinParser.resume``) yields exactly what one parser reading on would: a line
    start in ``window`` (bytes from anywhere in the stream), at or after ``target``,
    preceded by QUIET_LINES lines none of which outlives itself.  Returns the cut and
    the last line with a needle before it (it dates the stream), or None.
    """
    lasting = _lasting_lines(window)
    i = bisect.bisect_right(lasting, target)
    prev = lasting[i - 1] if i else 0  # none before target: count from the window's start
    for nxt in [*lasting[i:], len(window)]:
        pos = prev
        for _ in range(QUIET_LINES + 1):  # the first newline ends prev's own line
            pos = window.find(b"\n", pos, nxt)
            if pos == -1:
                break
            pos += 1
        else:
            hits = _needle_hits(window[:pos])
            if not hits:
                return pos, None
            start = window.rfind(b"\n", 0, hits[-1]) + 1
            return pos, window[start:window.find(b"\n", hits[-1])].decode(errors="replace")
        prev = nxt
    return None


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
        self._matched_lines = 0  # lines that yielded an event or a held success (bulk stats)

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

    # -- resuming a stream in another process (jfwatch.batch) ----------------------
    def learnt(self) -> tuple[str, bool] | None:
        """
        The stream's sink style and quoting once both are known (they never change
        after), for a file sink only: a console stream carries a running date instead.
        """
        if self._style == "file" and self._quoted is not None:
            return self._style, self._quoted
        return None

    def resume(self, learnt: tuple[str, bool], last_hit_line: str | None) -> None:
        """
        Start as the parser that learnt ``learnt`` would be at a ``quiet_cut``: nothing
        held, nothing open, the date of the last line with a needle.
        """
        self._style, self._quoted = learnt
        if last_hit_line is not None and (m := _FILE_HEADER.match(last_hit_line)):
            with contextlib.suppress(ValueError):
                self._date = date.fromisoformat(m["date"])

    def feed(self, line: str) -> list[Event]:
        line = line.rstrip()
        self._line_no += 1
        split = _split(line)
        if split is None:
            return self._continuation(line)
        out = self._close_opener() if self._opener is not None else []
        if self._held and self._held[0].release_line <= self._line_no:
            out += self._age_held()
        if self._style is not None and not _INTERESTING.search(split[0]):
            return out
        header = self._header(*split)
        if header is None:
            return out + self._continuation(line)
        held = len(self._held)
        own = self._message(header, line)
        if own or len(self._held) > held:
            self._matched_lines += 1
        return out + own

    def feed_block(self, block: bytes, size: int | None = None) -> BulkResult:
        """
        Parse many complete lines (valid UTF-8, joined by newlines), ``block[:size]``, at once.

        Equivalent to feeding each line, but only lines holding a needle are decoded
        and looked at in Python; the rest are skipped by a few fast substring searches
        over the block (this is what makes backfill and replay fast).  Lines are read
        one by one only while the stream's style is unknown or an injection opener
        waits for its continuation.
        """
        out: list[Event] = []
        first_line, first_matched = self._line_no, self._matched_lines
        count, find, rfind = block.count, block.find, block.rfind
        pos = 0
        size = len(block) if size is None else size
        hits = _needle_hits(block, size)
        i, n_hits = 0, len(hits)
        while pos <= size:
            if self._style is None or self._opener is not None:
                end = find(b"\n", pos, size)
                end = size if end == -1 else end
                out += self.feed(block[pos:end].decode())
                pos = end + 1
                continue
            while i < n_hits and hits[i] < pos:
                i += 1  # a second needle on a line already parsed
            if i == n_hits:
                self._line_no += count(b"\n", pos, size) + 1
                out += self._age_held()
                break
            at = hits[i]
            newline = rfind(b"\n", pos, at)
            start = pos if newline == -1 else newline + 1
            self._line_no += count(b"\n", pos, start)
            end = find(b"\n", at, size)
            end = size if end == -1 else end
            line = block[start:end].decode()
            fast = self._fast_auth(line) if self._quoted and self._style == "file" else None
            out += self.feed(line) if fast is None else fast
            pos = end + 1
        return BulkResult(out, self._matched_lines - first_matched, self._line_no - first_line)

    def _fast_auth(self, line: str) -> list[Event] | None:
        """
        The file sink's three everyday authentication lines in one match (header,
        preamble and template), then the events ``_success``/``_failure`` make on the
        general path; None for anything else.  Most events of a busy server's log are
        these lines.
        """
        m = _FAST_FILE_AUTH.match(line)
        if m is None:
            return None
        day, clock, zone, user, succeeded, disabled, ip_text = m.groups()
        timed = _file_time(day, clock, zone)
        if timed is None or not user.isprintable():
            return None  # the general path decides (and escapes control characters)
        when, time_text = timed
        self._line_no += 1
        out = self._age_held() if self._held and self._held[0].release_line <= self._line_no else []
        self._date = when.date()
        self._matched_lines += 1
        kind, name = (EventKind.AUTH_SUCCESS, "succeeded") if succeeded else \
            (EventKind.AUTH_BLOCKED, "disabled") if disabled else (EventKind.AUTH_FAILURE, "denied")
        # The username is printable, and so the whole line (see _FAST_FILE_AUTH): no
        # control characters to escape in either.
        if _looks_forged(user):
            # What follows needs the header's time only (the message is the template's).
            header = _Header(when, "file", "", printable=True, time_text=time_text)
            if succeeded:
                return out + self._success(header, line, user)
            return out + self._failure(header, line, name, kind, user, parse_ip(ip_text))
        # _success or _failure of a plain username (_looks_forged is false), written out:
        # these are most of the events of a busy server's log.
        event = Event(when, NAME, kind, _ORIGINS[name], "jellyfin", parse_ip(ip_text),  # None if succeeded
                      clean_user(user, printable=True), None, None, None, None,
                      excerpt(line, printable=True))
        event.time_text = time_text
        if succeeded:  # held, as _success holds it
            self._held.append(_Held(event, self._line_no + _HOLD_LINES, time.monotonic() + _HOLD_SECONDS))
        else:
            out.append(event)
        return out

    # -- header and time --------------------------------------------------------
    def _header(self, text: str, wrapper: str | None) -> _Header | None:
        if m := _FILE_HEADER.match(text):
            timed = _file_time(*m.group("date", "time", "zone"))
            if timed is None:
                return None
            when, time_text = timed
            self._date = when.date()
            return _Header(when, "file", text[m.end():], time_text=time_text)
        if m := _CONSOLE_HEADER.match(text):
            console_when = self._console_time(m["time"], wrapper)
            if console_when is None:
                return None
            rest = text[m.end():]
            pre = _PREAMBLE.match(rest)
            return _Header(console_when, "console", rest[pre.end():] if pre else rest)
        return None

    def _console_time(self, clock: str, wrapper: str | None) -> datetime | None:
        tz = self.ctx.timezone
        if wrapper and "T" in wrapper:
            wrapped = parse_iso(wrapper, tz)
            if wrapped is not None:
                self._date = wrapped.astimezone(tz).date()
        elif wrapper:
            mon, day = wrapper.split()
            today = datetime.now(tz).date()
            guess = date(today.year, _MONTHS[mon], int(day))
            self._date = guess if guess <= today else guess.replace(year=today.year - 1)
        if self._date is None:
            self._date = datetime.now(tz).date()
        hms = clock[:15]
        when = parse_iso(f"{self._date.isoformat()}T{hms}", tz)
        if when is None:
            return None
        # Console lines carry no date: a clock that jumps back by hours is midnight.
        if wrapper is None and self._last_console is not None and \
                self._last_console - when > timedelta(hours=12):
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
        event.time_text = header.time_text
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
        if _LEGACY_INVALID.match(msg):
            return [self._event(header, line, "legacy_invalid", EventKind.AUTH_FAILURE)]
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
        if quoted:
            # The quoted username ends at its first unescaped quote, so one match finds
            # it and the template is told by what follows.
            if m := _Q_USER.match(msg):
                user, after = _unescape(m["user"]), m.end()
                if msg.endswith(_SUCCEEDED_TAIL) and len(msg) == after + len(_SUCCEEDED_TAIL):
                    return self._success(header, line, user)
                for name, kind, _full, suffix in _TEMPLATES[True]:
                    if t := suffix.match(msg, after):
                        return self._failure(header, line, name, kind, user, parse_ip(t["ip"]))
        else:
            if m := _RAW_SUCCEEDED.match(msg):
                return self._success(header, line, m["user"])
            for name, kind, full, _suffix in _TEMPLATES[False]:
                if m := full.match(msg):
                    return self._failure(header, line, name, kind, m["user"], parse_ip(m["ip"]))
        if quoted:
            # The username was mangled (stray backslash, escaped quotes) but the suffix
            # with unescaped quotes is Jellyfin's own: count the failure, flag the line.
            for name, kind, _full, suffix in _TEMPLATES[True]:
                if m := suffix.search(msg):
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
        if self._quoted:
            for name, kind, _full, suffix in _TEMPLATES[True]:
                if m := suffix.search(line):
                    ip = parse_ip(m["ip"])
                    opener = self._opener.event
                    self._opener = None
                    counted = replace(opener, kind=kind, origin=f"{NAME}.{name}", ip=ip,
                                      detail=None)
                    return [counted, replace(opener, ip=ip,
                                             detail="username contains a line break")]
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
                                ip=parse_ip(m["ip"]), detail=f"2FA plugin banned for {m['hours']}h")]
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


def _file_time(day: str, clock: str, zone: str) -> tuple[datetime, str] | None:
    """
    The time of a file-sink header and its ``isoformat()`` text, or None if it is no
    real date.  The text is built from the header's own: isoformat writes six fraction
    digits, or none for a whole second (the header admits up to seven, .NET ticks);
    a zone of ``-00:00`` or with 60 minutes or more, which isoformat writes otherwise,
    takes isoformat itself.  A test checks the text is isoformat's.
    """
    if len(clock) == 12 and clock[9:] != "000":  # Serilog's everyday .fff
        text = f"{day}T{clock}000{zone}"
    else:
        fraction = clock[9:15]  # Python takes six of the seven digits
        text = f"{day}T{clock[:8]}{'.' + fraction.ljust(6, '0') if fraction.strip('0') else ''}{zone}"
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        return None
    return when, (when.isoformat() if zone[4] > "5" or zone == "-00:00" else text)


def _looks_forged(user: str) -> bool:
    """Whether a username holds fragments of Jellyfin's templates (``_FORGERY_HINT``)."""
    # Every fragment has a space, a parenthesis or a control character: three quick
    # scans spare most usernames the regex.
    return (" " in user or "(" in user or not user.isprintable()) and \
        _FORGERY_HINT.search(user) is not None


def _unescape(value: str) -> str:
    """Undo Serilog's ``\\"`` escaping of quoted string properties."""
    return value.replace('\\"', '"')


def create(ctx: StreamContext) -> JellyfinParser:
    """Registry factory."""
    return JellyfinParser(ctx, quoting=ctx.quoting)
