"""Make attacker-controlled or secret-bearing text safe to print, store and send."""

from __future__ import annotations

import re

# Secrets that reach logs: Jellyfin's legacy ``POST /Users/{id}/Authenticate?pw=``,
# API keys in query strings, tokens in headers, and credentials inside URLs
# (Apprise URLs carry them).  Values are replaced, names are kept so that the
# excerpt still says what was there.
_SECRET_PARAMS = re.compile(
    r"(?i)\b(pw|password|passwd|api_key|apikey|access_token|token|x-emby-token|"
    r"x-mediabrowser-token|secret|code)(=|%3D)[^&\s\"',;]*"
)
_AUTH_HEADER = re.compile(
    r"(?i)\b(authorization|x-emby-authorization|x-emby-token|x-mediabrowser-token)"
    r"(\"?\s*[:=]\s*\[?\"?)[^\"\]\r\n]*"
)
_URL_CREDENTIALS = re.compile(r"([a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029\u202a-\u202e\u2066-\u2069]")

EXCERPT_LIMIT = 400
USER_LIMIT = 128  # characters of a username kept


def redact(text: str) -> str:
    """Replace secret values (passwords, keys, tokens, URL credentials) with ``REDACTED``."""
    # Cheap substring checks first: most log lines contain none of these, and the
    # regexes below are the cost of every event otherwise.
    lowered = text.lower()
    if "=" in text or "%3d" in lowered:
        text = _SECRET_PARAMS.sub(r"\1\2REDACTED", text)
    if "authoriz" in lowered or "token" in lowered:
        text = _AUTH_HEADER.sub(r"\1\2REDACTED", text)
    if "@" in text and "://" in text:
        text = _URL_CREDENTIALS.sub(r"\1REDACTED@", text)
    return text


def strip_control(text: str) -> str:
    """Escape control and bidi-override characters so text cannot forge lines or hide."""
    if text.isprintable():  # excludes every character _CONTROL matches
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def excerpt(line: str, *, printable: bool = False) -> str:
    """
    A short, redacted, printable copy of a raw log line for events and alerts.
    ``printable``: the caller has proven the line holds no control character (a parser
    whose pattern matched it whole), which spares a scan of every character.
    """
    cut = redact(line if len(line) <= EXCERPT_LIMIT else line[:EXCERPT_LIMIT] + "…")
    return cut if printable or cut.isprintable() else strip_control(cut)


def clean_user(user: str | None, *, printable: bool = False) -> str | None:
    """Usernames are attacker input: escape control characters, bound the length.
    ``printable``: as for ``excerpt``, the caller has proven there is none to escape."""
    if user is None:
        return None
    if not printable:
        user = strip_control(user)
    return user if len(user) <= USER_LIMIT else user[:USER_LIMIT] + "…"
