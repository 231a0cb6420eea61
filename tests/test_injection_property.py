"""
Property: whatever an attacker types as a username, the address jfwatch emits for a
Jellyfin authentication line is the one Jellyfin wrote, or none.
"""

from __future__ import annotations

from datetime import UTC

from hypothesis import given, settings
from hypothesis import strategies as st

from jfwatch.parsers import create_parser
from jfwatch.parsers.base import context_for

REAL = "203.0.113.200"
FILE_HEAD = "[2026-04-01 12:00:00.000 +00:00] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: "
CONSOLE_HEAD = "[12:00:00] [INF] [9] Jellyfin.Server.Implementations.Users.UserManager: "
TEMPLATES = (
    "Authentication request for {u} has been denied (IP: {ip}).",
    "Authentication request for {u} has been denied because this account is currently disabled (IP: {ip}).",
    "Authentication request for {u} forbidden: remote access disabled and user not in local network "
    "(IP: {ip}).",
    "Authentication request for {u} is not allowed at this time due parental restrictions (IP: {ip}).",
    "Authentication request for {u} has succeeded.",
)
FRAGMENTS = st.sampled_from([
    '"', "\\", "(", ")", "(IP: ", '(IP: "198.51.100.66")', "(IP: 198.51.100.66)", ").", "\n",
    " has been denied", '" has been denied (IP: "198.51.100.67").', FILE_HEAD, CONSOLE_HEAD,
    "[2FA] Issuing challenge for x from 198.51.100.68", '[2FA] Banned IP "198.51.100.69" for 1h (x)',
    'Authentication request without username has been denied (IP: "198.51.100.70").',
    "::ffff:198.51.100.71", "é", "\u202e", "\r", " ",
])
USERNAMES = st.lists(st.one_of(FRAGMENTS, st.text(max_size=6)), max_size=12).map("".join)


def _render_file(user: str, template: str) -> str:
    # Serilog's {Message} renders a string property quoted, escaping only '"'.
    quoted = '"' + user.replace('"', '\\"') + '"'
    return FILE_HEAD + template.format(u=quoted, ip=f'"{REAL}"')


def _render_console(user: str, template: str) -> str:
    return CONSOLE_HEAD + template.format(u=user, ip=REAL)


def _ips(lines: list[str], prelude: str) -> set[str | None]:
    parser = create_parser("jellyfin", context_for("log_20260401.log", UTC))
    events = parser.feed(prelude)
    for line in lines:
        events += parser.feed(line)
    events += parser.flush(force=True)
    return {None if e.ip is None else str(e.ip) for e in events}


@settings(max_examples=400, deadline=None)
@given(user=USERNAMES, template=st.sampled_from(TEMPLATES))
def test_file_sink_address_is_real_or_none(user: str, template: str) -> None:
    """File sink, newlines included: a forged line never yields the attacker's address."""
    lines = _render_file(user, template).split("\n")
    prelude = _render_file("alice", TEMPLATES[0])
    assert _ips(lines, prelude) <= {REAL, None}


@settings(max_examples=400, deadline=None)
@given(user=USERNAMES.filter(lambda u: "\n" not in u and "\r" not in u),
       template=st.sampled_from(TEMPLATES))
def test_console_sink_address_is_real_or_none(user: str, template: str) -> None:
    """
    Console sink, single physical line: the address is anchored on the line's end.

    (A newline in a console-sink username can forge a complete line that nothing can
    tell from a real one; jfwatch flags the opener as injection_suspected instead, see
    test_console_newline_opener_is_flagged.)
    """
    lines = [_render_console(user, template)]
    prelude = _render_console("alice", TEMPLATES[0])
    assert _ips(lines, prelude) <= {REAL, None}


def test_console_newline_opener_is_flagged() -> None:
    """The first physical line of a newline-split console username is an injection event."""
    parser = create_parser("jellyfin", context_for("log_20260401.log", UTC))
    events = parser.feed(CONSOLE_HEAD + "Authentication request for x")
    events += parser.feed(CONSOLE_HEAD + "Rest of a line")
    assert [e.kind for e in events] == ["injection_suspected"]
    assert events[0].ip is None


ODD_TEXT = st.text(
    alphabet=st.sampled_from(list('0123456789.:abf "\\()é\u0661\u0662\u00a0\u2028\t\x01\x7f_-[]')),
    max_size=16)


# Around the 128 characters a username is cut to, with and without a space.
LONG_NAMES = st.text(alphabet="ab ", min_size=126, max_size=131)


@settings(max_examples=300, deadline=None)
@given(users=st.lists(st.one_of(USERNAMES, ODD_TEXT, LONG_NAMES), min_size=1, max_size=4),
       ips=st.lists(st.one_of(st.just(REAL), ODD_TEXT), min_size=1, max_size=4),
       context=st.sampled_from(["Jellyfin.Server.Implementations.Users.UserManager", "Ünï.Côdé",
                                "A", "x_1.y", ""]),
       thread=st.sampled_from(["[9] ", "9 ", "[\u0661] ", ""]),  # an Arabic-Indic digit
       template=st.sampled_from(TEMPLATES))
def test_bulk_path_equals_line_by_line(users: list[str], ips: list[str], context: str,
                                       thread: str, template: str) -> None:
    """
    The bulk path (needle search over the block) yields exactly the events of feeding
    the same lines one by one, and counts the same matched lines.
    """
    head = f"[2026-04-01 12:00:00.000 +00:00] [INF] {thread}{context}{': ' if context else ''}"
    warm_up = FILE_HEAD + 'Authentication request for "w" has been denied (IP: "198.51.100.1").'
    text = warm_up + "\n" + "\n".join(
        head + template.format(u='"' + u.replace('"', '\\"') + '"', ip=f'"{ip}"')
        for u in users for ip in ips)
    lines = text.split("\n")
    one_by_one = create_parser("jellyfin", context_for("log_20260401.log", UTC))
    expected = [e for line in lines for e in one_by_one.feed(line)] + one_by_one.flush(force=True)
    bulk = create_parser("jellyfin", context_for("log_20260401.log", UTC))
    events = bulk.feed_block(text.encode(), len(text.encode()))
    events += bulk.flush(force=True)
    assert [e.to_json() for e in events] == [e.to_json() for e in expected]
    assert bulk.matched_lines == one_by_one.matched_lines
