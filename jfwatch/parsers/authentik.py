"""
Parse authentik's structlog JSON lines: ``login_failed`` (password and MFA stages),
``invalid_identifier`` and ``login`` events.

``client_ip`` is authentik's own view of the client (from X-Forwarded-For only when
the proxy is trusted).  ``timestamp`` is naive and in UTC unless configured otherwise.
"""

from __future__ import annotations

from typing import Any, Final

from jfwatch.events import Event, EventKind
from jfwatch.parsers.base import StatelessParser, StreamContext, json_object, parse_ip
from jfwatch.redact import clean_user, excerpt
from jfwatch.timestamps import parse_iso

NAME: Final = "authentik"
PATTERNS: Final = ("login_failed", "mfa_failed", "invalid_identifier", "login")
_MFA_STAGES = {"authenticatorvalidatestage"}


def sniff(line: str) -> bool:
    return line.startswith("{") and '"auth_via"' in line


def _get(doc: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


class AuthentikParser(StatelessParser):
    def parse(self, line: str) -> Event | None:
        doc = json_object(line)
        if doc is None:
            return None
        action, stamp = doc.get("action"), doc.get("timestamp")
        if action not in ("login_failed", "invalid_identifier", "login") or not isinstance(stamp, str):
            return None
        when = parse_iso(stamp, self.ctx.timezone)
        if when is None:
            return None
        raw_ip = doc.get("client_ip")
        ip = parse_ip(raw_ip) if isinstance(raw_ip, str) else None
        raw_ctx = doc.get("context")
        ctx: dict[str, Any] = raw_ctx if isinstance(raw_ctx, dict) else {}
        method = _get(ctx, "http_request", "method")
        path = _get(ctx, "http_request", "path")

        def event(pattern: str, kind: EventKind, user: Any, detail: str | None) -> Event:
            return Event(time=when, source=NAME, kind=kind, origin=f"{NAME}.{pattern}",
                         service="authentik", ip=ip,
                         user=clean_user(user) if isinstance(user, str) else None,
                         method=method if isinstance(method, str) else None,
                         path=path if isinstance(path, str) else None,
                         detail=detail, excerpt=excerpt(line))

        if action == "invalid_identifier":
            return event("invalid_identifier", EventKind.AUTH_FAILURE, doc.get("identifier"),
                         "unknown identifier")
        if action == "login":
            method_name = _get(ctx, "auth_method")
            return event("login", EventKind.AUTH_SUCCESS, _get(doc, "user", "username"),
                         method_name if isinstance(method_name, str) else None)
        stage = _get(ctx, "stage", "model_name")
        device = _get(ctx, "auth_method_args", "device_class")
        if stage in _MFA_STAGES or isinstance(device, str):
            return event("mfa_failed", EventKind.MFA_FAILURE, ctx.get("username"),
                         device if isinstance(device, str) else "mfa")
        return event("login_failed", EventKind.AUTH_FAILURE, ctx.get("username"),
                     stage if isinstance(stage, str) else None)


def create(ctx: StreamContext) -> AuthentikParser:
    return AuthentikParser(ctx)
