"""Timestamps as log writers and APIs write them (shared by the parsers and the API sources)."""

from __future__ import annotations

import re
from datetime import datetime, tzinfo

_LONG_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_iso(text: str, default_tz: tzinfo) -> datetime | None:
    """Parse ISO 8601 / RFC 3339 (``Z`` and nanoseconds allowed); naive times get ``default_tz``."""
    text = text.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    if "." in text and _LONG_FRACTION.search(text):
        # Python accepts at most microseconds: cut nanoseconds (Traefik, docker).
        text = _LONG_FRACTION.sub(r"\1", text)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=default_tz)
