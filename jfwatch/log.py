"""Structured logging: readable on a terminal, JSON lines otherwise, secrets redacted."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from jfwatch.redact import redact, strip_control


def _scrub(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    # Anything printed may contain attacker text or a URL with credentials.
    for key, value in event_dict.items():
        if isinstance(value, str):
            event_dict[key] = strip_control(redact(value))
    return event_dict


# sd-daemon(3) priority prefixes: journald files each line under its level, so that
# `journalctl -p warning -u jfwatch` shows warnings and errors only.
_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
             "critical": 2}


def _journald_priority(_: Any, method: str, rendered: Any) -> Any:
    return f"<{_PRIORITY.get(method, 6)}>{rendered}"


def _stderr_is_the_journal() -> bool:
    """systemd sets JOURNAL_STREAM to the device and inode of the journal's stream; it only
    counts if stderr is still that stream (not a pipe to a child's reader)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def configure(level: str = "info") -> None:
    # Apprise logs through stdlib logging, sometimes with target details; jfwatch reports
    # delivery outcomes itself, without URLs, so Apprise's own records are not printed.
    apprise_logger = logging.getLogger("apprise")
    apprise_logger.addHandler(logging.NullHandler())
    apprise_logger.propagate = False
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if sys.stderr.isatty()
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    _scrub, renderer,
                    *([_journald_priority] if _stderr_is_the_journal() else [])],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False)


def get(name: str) -> Any:
    return structlog.get_logger(name)
