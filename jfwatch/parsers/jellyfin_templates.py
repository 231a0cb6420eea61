"""
The templates of Jellyfin's log lines that matter for security, as regular expressions:
headers of both sinks, the authentication, lockout, token and 2FA plugin messages, and
the needles that find candidate lines in a whole block.  Sources: see ``jellyfin``.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final

from jfwatch.events import EventKind

# logging.json: "[{Timestamp:yyyy-MM-dd HH:mm:ss.fff zzz}] [{Level:u3}] [{ThreadId}] {SourceContext}: "
# and the console's "[{Timestamp:HH:mm:ss(.fff)}]".  ThreadId and SourceContext are
# optional (older default templates, see 20250420060000_CreateUserLoggingConfigFile.cs).
# Level, thread and source context are matched over, not kept: no event carries them.
_FILE_HEADER = re.compile(
    r"^\[(?P<stamp>\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)(?:(?<=\.\d{6})\d)? "
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

# What follows the username in Jellyfin's authentication templates: (text, pattern, kind).
_AUTH_TAILS: Final = (
    ("has been denied", "denied", EventKind.AUTH_FAILURE),
    ("has been denied because this account is currently disabled", "disabled",
     EventKind.AUTH_BLOCKED),
    ("forbidden: remote access disabled and user not in local network", "remote_forbidden",
     EventKind.AUTH_BLOCKED),
    ("is not allowed at this time due parental restrictions", "parental", EventKind.AUTH_BLOCKED),
)
_TAIL_EVENT: Final = {text: (pattern, kind) for text, pattern, kind in _AUTH_TAILS}
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


def _auth_patterns(quoted: bool) -> tuple[re.Pattern[str], re.Pattern[str]]:
    """
    Every authentication template in one match (username, then ``has succeeded.`` or a
    tail with the address), and the trusted suffix alone (searched when the username
    was mangled).  The address is only ever the one at the end of the line.
    """
    ip = f'"{_IP}"' if quoted else _IP
    tails = "|".join(re.escape(text) for text, _, _ in _AUTH_TAILS)
    suffix = rf" (?P<tail>{tails}) \(IP: {ip}\)\.$"
    value = _Q_VALUE if quoted else _R_VALUE
    # Jellyfin 10.3 and older: "has been denied." with no address (a failure, not a forgery).
    full = (rf"^{re.escape(_AUTH_PREFIX)}{value}(?: (?P<succeeded>has succeeded\.)$|"
            rf" (?P<no_ip>has been denied\.)$|{suffix})")
    return re.compile(full), re.compile(suffix)


_AUTH = {True: _auth_patterns(True), False: _auth_patterns(False)}


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
        # The plugin's own in-process ban; what follows the address varies by version.
        "twofa_banned": re.compile(rf"^\[2FA\] Banned IP {ip}(?P<rest>(?: .*)?)$"),
        "twofa_required": re.compile(
            r'^\[2FA\] 2FA required for "?(?P<user>.*?)"? [—-] middleware will replace '
            r"response with challenge$"),
        "twofa_rate_limited": re.compile(rf"^\[2FA\] App-password attempt rate-limited for IP {ip}$"),
    }


_IP_TEMPLATES = {True: _ip_patterns('"'), False: _ip_patterns(""), None: _ip_patterns('"?')}
_LOCKOUT = re.compile(r'^Disabling user "?(?P<user>.*?)"? due to (?P<n>\d+) unsuccessful login attempts\.$')
_TOKEN = re.compile(r'^"?CustomAuthentication"? was not authenticated\. Failure message: "?(?P<why>.*?)"?$')
# Before 10.6 a failed login was this line only (no "has been denied" line): with "URL:"
# (10.4), or in 10.5 with the address Jellyfin put first in the exception's message.
# (From 10.9, "... entered. URL POST /Users/..." repeats a "denied" line: not counted.)
_LEGACY_INVALID = re.compile(
    r'^Error processing request: "?(?:\[(?P<ip>[0-9A-Fa-f:.]+)\] )?Invalid username or password '
    r'entered(?:"?\. URL:|\."?$)')
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


def _file_time(stamp: str, zone: str) -> datetime | None:
    """The time of a file-sink header, or None if it is no real date.  (The header may
    have seven fraction digits, .NET ticks; the pattern leaves out the seventh.)"""
    try:
        return datetime.fromisoformat(stamp + zone)
    except ValueError:
        return None


def _looks_forged(user: str) -> bool:
    """Whether a username holds fragments of Jellyfin's templates (``_FORGERY_HINT``)."""
    # Every fragment has a space, a parenthesis or a control character: three quick
    # scans spare most usernames the regex.
    return (" " in user or "(" in user or not user.isprintable()) and \
        _FORGERY_HINT.search(user) is not None


def _unescape(value: str) -> str:
    """Undo Serilog's ``\\"`` escaping of quoted string properties."""
    return value.replace('\\"', '"')
