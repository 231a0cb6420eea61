"""Decide which proxy access-log requests are Jellyfin authentication attempts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from jfwatch.events import Event, EventKind, IPAddress
from jfwatch.redact import excerpt, redact

# Jellyfin's login endpoints (UserController.cs), the ZL154 2FA plugin's, and the SSO
# plugin's.  Matching is case-insensitive (clients send /Users/authenticatebyname) and
# allows one base-URL segment (``/jellyfin/Users/...``).
_BASE = r"(?:/[\w.~-]+)?"
_LOGIN = re.compile(rf"(?i)^{_BASE}/users/authenticatebyname/?(?:\?|$)")
_LEGACY_LOGIN = re.compile(rf"(?i)^{_BASE}/users/[0-9a-f-]{{32,36}}/authenticate/?(?:\?|$)")
_QUICK_CONNECT = re.compile(rf"(?i)^{_BASE}/users/authenticatewithquickconnect/?(?:\?|$)")
_TWO_FACTOR = re.compile(rf"(?i)^{_BASE}/twofactorauth/(?:authenticate|verify)/?(?:\?|$)")
_TWO_FACTOR_ANY = re.compile(rf"(?i)^{_BASE}/twofactorauth/")
_SSO = re.compile(rf"(?i)^{_BASE}/sso/")

PATTERNS = (
    "login_failed", "login_blocked", "login_succeeded", "quickconnect_failed",
    "mfa_failed", "mfa_succeeded", "sso_failed", "token_failure",
)


@dataclass(frozen=True, slots=True)
class Request:
    """The fields every access-log format gives us."""

    time: datetime
    ip: IPAddress | None
    method: str
    path: str
    status: int


def classify(req: Request, *, token_failures: bool) -> tuple[str, EventKind] | None:
    """Return (pattern, kind) for an authentication-relevant request, else None."""
    path, status, post = req.path, req.status, req.method.upper() == "POST"
    if post and (_LOGIN.match(path) or _LEGACY_LOGIN.match(path)):
        if status == 401:
            return "login_failed", EventKind.AUTH_FAILURE
        if status == 403:
            return "login_blocked", EventKind.AUTH_BLOCKED
        if 200 <= status < 300:
            return "login_succeeded", EventKind.AUTH_SUCCESS
        if status == 404 and _LEGACY_LOGIN.match(path):
            return "login_failed", EventKind.AUTH_FAILURE  # unknown user id
        return None
    if post and _QUICK_CONNECT.match(path):
        if status in (401, 403, 404):
            return "quickconnect_failed", EventKind.AUTH_FAILURE
        if 200 <= status < 300:
            return "login_succeeded", EventKind.AUTH_SUCCESS
        return None
    if _TWO_FACTOR_ANY.match(path):
        if status in (401, 403):
            return "mfa_failed", EventKind.MFA_FAILURE
        if post and _TWO_FACTOR.match(path) and 200 <= status < 300:
            return "mfa_succeeded", EventKind.MFA_SUCCESS
        return None
    if _SSO.match(path):
        return ("sso_failed", EventKind.AUTH_FAILURE) if status in (401, 403) else None
    # A 401 anywhere else is a bad or expired token.  Off by default: clients with a
    # stale token produce these in bursts, and 403/404 on playback endpoints are normal.
    if token_failures and status == 401:
        return "token_failure", EventKind.TOKEN_FAILURE
    return None


def to_event(source: str, req: Request, line: str, *, token_failures: bool) -> Event | None:
    """Build the event for an authentication-relevant request."""
    found = classify(req, token_failures=token_failures)
    if found is None:
        return None
    pattern, kind = found
    return Event(time=req.time, source=source, kind=kind, origin=f"{source}.{pattern}",
                 service="jellyfin", ip=req.ip, method=req.method.upper(),
                 path=redact(req.path)[:512], status=req.status, excerpt=excerpt(line))
