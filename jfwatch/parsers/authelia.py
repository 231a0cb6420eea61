"""
Parse Authelia logs, text (logrus key=value) and JSON.

Templates: ``internal/handlers/response.go`` (authentication attempts, regulation bans)
and the unknown-user message of 4.39.  The username sits inside ``msg`` in single
quotes with no escaping, so it is never used to find the address: ``remote_ip`` is its
own field, written by Authelia (the first X-Forwarded-For entry if present, so the
proxy must overwrite that header).
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from jfwatch.events import Event, EventKind
from jfwatch.parsers.base import StatelessParser, StreamContext, json_object, parse_ip
from jfwatch.redact import clean_user, excerpt
from jfwatch.timestamps import parse_iso

NAME: Final = "authelia"

_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_FIRST_FACTOR = {"1FA", "Password", "Passkey"}
_TYPES = r"(?P<type>1FA|Passkey|TOTP|WebAuthn|U2F|Duo|Password)"
_FAILED = re.compile(
    rf"^Unsuccessful {_TYPES} authentication attempt by user '(?P<user>.*?)'"
    r"(?P<banned> and they are banned until (?P<until>.*?))?(?:: (?P<why>.*))?$"
)
_SUCCEEDED = re.compile(rf"^Successful {_TYPES} authentication attempt made by user '(?P<user>.*)'$")
_UNKNOWN = re.compile(
    r"^Error occurred getting details for user with username input '(?P<user>.*)' "
    r"which usually indicates they do not exist"
)
# Authelia 4.2x: "Credentials are wrong for user <u>" (no quotes around the name).
_WRONG = re.compile(r"^Credentials are wrong for user (?P<user>.+)$")
# handler_sign_totp.go: a wrong code is logged as "...: error occurred validating the user
# input" and then as "Unsuccessful TOTP authentication attempt" (counted once, there); a
# code of the wrong length or one used already is logged only here.
_TOTP_ERROR = re.compile(
    r"^Error occurred validating a TOTP authentication for user '(?P<user>.*)': "
    r"(?P<why>expected code length .*|error occurred satisfying security policies)$")
PATTERNS: Final = ("failed", "mfa_failed", "banned", "succeeded", "mfa_succeeded", "unknown_user",
                   "wrong_credentials", "totp_rejected")


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        body = value[1:-1]
        try:
            decoded = json.loads(f'"{body}"')
        except ValueError:
            return body.replace('\\"', '"')
        return decoded if isinstance(decoded, str) else body
    return value


def logfmt(line: str) -> dict[str, str]:
    """Split a logrus text line into its fields."""
    return {k: _unquote(v) for k, v in _PAIR.findall(line)}


def sniff(line: str) -> bool:
    if line.startswith("time="):
        return " msg=" in line
    # Caddy's access log has "remote_ip" and "msg" too, but a "logger" and no "time".
    return line.startswith("{") and '"remote_ip"' in line and '"msg"' in line and \
        '"time"' in line and '"logger"' not in line


class AutheliaParser(StatelessParser):
    def parse(self, line: str) -> Event | None:
        fields = self._fields(line)
        if fields is None:
            return None
        msg, stamp = fields.get("msg"), fields.get("time")
        if not isinstance(msg, str) or not isinstance(stamp, str):
            return None
        when = parse_iso(stamp, self.ctx.timezone)
        if when is None:
            return None
        raw_ip = fields.get("remote_ip")
        ip = parse_ip(raw_ip) if isinstance(raw_ip, str) else None
        method = fields.get("method") if isinstance(fields.get("method"), str) else None
        path = fields.get("path") if isinstance(fields.get("path"), str) else None
        error = fields.get("error") if isinstance(fields.get("error"), str) else None

        def event(pattern: str, kind: EventKind, user: str, detail: str | None) -> Event:
            return Event(time=when, source=NAME, kind=kind, origin=f"{NAME}.{pattern}",
                         service="authelia", ip=ip, user=clean_user(user), method=method,
                         path=path, detail=detail, excerpt=excerpt(line))

        if m := _FAILED.match(msg):
            first = m["type"] in _FIRST_FACTOR
            detail = m["type"] + (f": {m['why'] or error}" if (m["why"] or error) else "")
            if m["banned"]:
                return event("banned", EventKind.AUTH_BLOCKED, m["user"],
                             f"{m['type']} failure, banned until {m['until']}")
            return event("failed" if first else "mfa_failed",
                         EventKind.AUTH_FAILURE if first else EventKind.MFA_FAILURE,
                         m["user"], detail)
        if m := _SUCCEEDED.match(msg):
            first = m["type"] in _FIRST_FACTOR
            return event("succeeded" if first else "mfa_succeeded",
                         EventKind.AUTH_SUCCESS if first else EventKind.MFA_SUCCESS,
                         m["user"], m["type"])
        if m := _UNKNOWN.match(msg):
            return event("unknown_user", EventKind.AUTH_FAILURE, m["user"], "unknown user")
        if m := _WRONG.match(msg):
            return event("wrong_credentials", EventKind.AUTH_FAILURE, m["user"], error)
        if m := _TOTP_ERROR.match(msg):
            return event("totp_rejected", EventKind.MFA_FAILURE, m["user"], f"TOTP: {m['why']}")
        return None

    @staticmethod
    def _fields(line: str) -> dict[str, Any] | None:
        if line.startswith("{"):
            return json_object(line)
        if line.startswith("time="):
            return logfmt(line)
        return None


def create(ctx: StreamContext) -> AutheliaParser:
    return AutheliaParser(ctx)
