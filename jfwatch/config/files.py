"""
Which config file a command uses, and the one option ``replay`` reads before the full
(pydantic) validation: the timezone, so that a helper can start parsing at once while
this process imports and validates everything else.  The validated config decides;
when it disagrees, the early start is undone (``commands.cmd_replay``).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_CONFIG = Path("/etc/jfwatch/jfwatch.yml")
DEFAULT_TIMEZONE = "UTC"


def config_path(path: Path | None) -> Path | None:
    """The file a command reads: the one given, else $JFWATCH_CONFIG, else the default
    file if it exists; None means the built-in defaults."""
    if path is None:
        env = os.environ.get("JFWATCH_CONFIG")
        path = Path(env) if env else (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else None)
    return path


def peek_timezone(path: Path | None) -> str | None:
    """The timezone the config file names, unvalidated; None if the file cannot be read
    as a mapping (the full load reports why)."""
    import yaml

    found = config_path(path)
    if found is None:
        return DEFAULT_TIMEZONE
    try:
        data = yaml.safe_load(found.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    data = {} if data is None else data
    zone = data.get("timezone", DEFAULT_TIMEZONE) if isinstance(data, dict) else None
    return zone if isinstance(zone, str) else None
